"""`make install`, its upgrade and `make uninstall` (tools/install.sh), and the unit they install
(contrib/ping-listener.service).

systemd cannot be started here (it is not PID 1 in the test machine), so no test runs the unit under systemd.
Everything short of that is run: `systemd-analyze verify` and `systemd-analyze security --offline` on the unit
as installed; `make install` into a staging root (DESTDIR); and, as root, the real `make install` (no DESTDIR)
in a mount namespace where /etc, /opt, /var/lib and /root (pip's cache) are overlays whose changes land in a
temporary directory (the machine's own are never touched), followed by the service started with the unit's
ExecStart line as its user, an upgrade and an uninstall. And the service's system calls, traced, against the
unit's filter."""

import grp
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from support import ROOT, server_env, wait_for_delivered, wait_until, write_settings

# Each builds a virtualenv (pip installs the requirements), which takes minutes on a loaded machine.
pytestmark = pytest.mark.timeout(900)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
UNIT = ROOT / "contrib" / "ping-listener.service"
# The exposure `systemd-analyze security` gives the unit must be "OK" or better.
MOST_EXPOSURE = 4.0
# The overlays the real install writes through: the machine's directory, and the name of its upper layer.
OVERLAID = {"/etc": "etc", "/opt": "opt", "/var/lib": "var-lib", "/root": "root"}
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="the real install (useradd, chown, mount namespaces) needs root")


def make(target, cwd=ROOT, **variables):
    """`make TARGET VAR=value...` in `cwd`; the CompletedProcess (text), asserted successful."""
    args = ["make", "--no-print-directory", "-C", str(cwd), target] + [f"{k}={v}" for k, v in variables.items()]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path):
    """The permission bits of `path` (not following a symlink), as 0o750."""
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A `make install DESTDIR=...` staging root (module-wide: the virtualenv takes a while) and its output."""
    destdir = tmp_path_factory.mktemp("stage")
    return destdir, make("install", DESTDIR=destdir).stdout


def runnable_unit(destdir, directory):
    """The unit as staged in `destdir`, its paths moved under `destdir`, written to `directory`; its path."""
    text = (destdir / "etc/systemd/system/ping-listener.service").read_text()
    path = directory / "ping-listener.service"
    path.write_text(text.replace("/opt/ping-listener", f"{destdir}/opt/ping-listener"))
    return path


def test_the_installed_unit_passes_systemd_analyze_verify_without_a_word(staged, tmp_path):
    # verify also checks that ExecStart's program (the installed virtualenv's python) exists and is executable.
    unit = runnable_unit(staged[0], tmp_path)
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", unit], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_is_rated_ok_or_better_by_systemd_analyze_security(staged, tmp_path):
    unit = runnable_unit(staged[0], tmp_path)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", f"--threshold={int(MOST_EXPOSURE * 10)}", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for ping-listener\.service: (\d+\.\d+) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found[1]) <= MOST_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_has_each_promised_hardening_setting():
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["User"] == ["ping-listener"]
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "StateDirectory": "ping-listener",
        "ConfigurationDirectory": "ping-listener",
        "CapabilityBoundingSet": "",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "EnvironmentFile": "-/etc/ping-listener/env",
    }.items():
        assert settings[key] == [value], key
    assert settings["SystemCallFilter"] == ["@system-service", "~@privileged"]


def test_a_staged_install_lays_out_code_venv_settings_data_and_unit_with_their_modes(staged):
    destdir, output = staged
    app = destdir / "opt/ping-listener"
    assert (app / "server.py").read_bytes() == (ROOT / "server.py").read_bytes()
    assert (app / "static/overview.js").is_file() and (app / "schema.sql").is_file()
    assert not (app / "tests").exists() and not (app / ".git").exists()
    assert (app / "__pycache__").is_dir()  # compiled at install: the service may not write there
    venv_python = app / ".venv/bin/python"
    check = subprocess.run([venv_python, "-c", "import bottle, waitress, psycopg"], capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert mode(app / "server.py") == 0o644 and mode(app) == 0o755
    assert mode(destdir / "etc/ping-listener") == 0o750
    assert mode(destdir / "etc/ping-listener/settings.json") == 0o640
    assert (destdir / "etc/ping-listener/settings.json").read_bytes() == (ROOT / "settings.json").read_bytes()
    assert mode(destdir / "etc/ping-listener/env") == 0o600
    assert mode(destdir / "var/lib/ping-listener") == 0o750
    unit = destdir / "etc/systemd/system/ping-listener.service"
    assert mode(unit) == 0o644 and unit.read_text() == UNIT.read_text()  # PREFIX is the default
    assert "not created (DESTDIR): the system user ping-listener" in output
    assert "systemd is not running here" in output


def test_a_staged_install_puts_the_prefix_in_the_unit(staged, tmp_path):
    destdir = tmp_path / "stage"
    # The module's virtualenv, copied in, is reused as an upgrade would (pip finds it complete): a second one
    # would take as long again and prove nothing of the prefix.
    shutil.copytree(staged[0] / "opt/ping-listener/.venv", destdir / "srv/pl/.venv", symlinks=True)
    make("install", DESTDIR=destdir, PREFIX="/srv/pl")
    unit = (destdir / "etc/systemd/system/ping-listener.service").read_text()
    assert "/opt/ping-listener" not in unit
    assert "ExecStart=/srv/pl/.venv/bin/python /srv/pl/server.py " in unit
    assert (destdir / "srv/pl/server.py").is_file()


def test_install_refuses_a_relative_or_root_prefix(tmp_path):
    for prefix in ("/", "opt/x"):
        result = subprocess.run(
            ["make", "-C", str(ROOT), "install", f"DESTDIR={tmp_path}", f"PREFIX={prefix}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert f"PREFIX must be an absolute path other than /, got '{prefix}'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def checkout_copy(directory):
    """A copy of the checkout's files that `make install` reads, in `directory`; its path."""
    source = directory / "checkout"
    ignored = shutil.ignore_patterns(".git", ".venv", "__pycache__", "tests", "bench", "*.db*", ".*cache")
    shutil.copytree(ROOT, source, ignore=ignored)
    return source


def in_throwaway_root(layers, script):
    """Run shell `script` as root in a new mount namespace where /etc, /opt, /var/lib and /root are overlays whose
    changes land in `layers`/upper-NAME (kept from one call to the next); the CompletedProcess (text)."""
    mounts = []
    for directory, name in OVERLAID.items():
        (layers / f"upper-{name}").mkdir(parents=True, exist_ok=True)
        (layers / f"work-{name}").mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={directory},upperdir={layers}/upper-{name},workdir={layers}/work-{name}"
        mounts.append(f"mount -t overlay overlay -o {options} {directory}")
    text = "set -eu\n" + "\n".join(mounts) + "\n" + script
    return subprocess.run(["unshare", "--mount", "sh", "-c", text], capture_output=True, text=True, timeout=900)


def ids_in(layers):
    """(uid, gid, shell) of the user ping-listener in the throwaway root's /etc/passwd, and its line count."""
    passwd = (layers / "upper-etc/passwd").read_text().splitlines()
    lines = [line for line in passwd if line.startswith("ping-listener:")]
    fields = lines[0].split(":")
    return int(fields[2]), int(fields[3]), fields[6], len(lines)


def owned(path):
    """(uid, gid, mode) of `path`."""
    info = path.lstat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


# The service started as the unit starts it (its ExecStart line, on an OS-chosen port), as its user, and asked
# for /healthz; then what the service user may read of the environment file.
RUN_AS_THE_UNIT = r"""
cmd=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/ping-listener.service | sed 's/--port 8080/--port 0/')
as_user="setpriv --reuid ping-listener --regid ping-listener --clear-groups --"
cd /opt/ping-listener
$as_user $cmd >"$LOG" 2>&1 &
pid=$!
for _ in $(seq 200); do grep -q '^listening on ' "$LOG" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$LOG")
curl -fsS -m 10 "$url/healthz"; echo
kill -TERM $pid
wait $pid && echo "exit 0"
$as_user cat /etc/ping-listener/env || echo "env unreadable"
"""


@AS_ROOT
def test_as_root_install_runs_upgrades_in_place_and_uninstalls_keeping_settings_and_data(tmp_path):
    source, layers = checkout_copy(tmp_path), tmp_path / "layers"
    (source / "obsolete.py").write_text("# a module that the next version no longer has\n")
    first = in_throwaway_root(layers, f"make -C {source} install\n")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created the system user ping-listener" in first.stdout
    uid, gid, shell, count = ids_in(layers)
    assert (shell, count) == ("/usr/sbin/nologin", 1)
    assert grp.getgrgid(0) and pwd.getpwuid(0)  # root is root in the throwaway root too
    etc, opt, var_lib = (layers / f"upper-{name}" for name in ("etc", "opt", "var-lib"))
    assert owned(etc / "ping-listener") == (0, gid, 0o750)
    assert owned(etc / "ping-listener/settings.json") == (0, gid, 0o640)
    assert owned(etc / "ping-listener/env") == (0, 0, 0o600)
    assert owned(var_lib / "ping-listener") == (uid, gid, 0o750)
    assert owned(etc / "systemd/system/ping-listener.service") == (0, 0, 0o644)
    assert owned(opt / "ping-listener/server.py") == (0, 0, 0o644)
    assert owned(opt / "ping-listener") == (0, 0, 0o755)
    assert (opt / "ping-listener/obsolete.py").is_file()

    # Started as the unit starts it: the service user reads the settings, writes its database, and cannot
    # read the secrets.
    ran = in_throwaway_root(layers, f"LOG={tmp_path}/service.log\n{RUN_AS_THE_UNIT}")
    assert ran.returncode == 0, ran.stdout + ran.stderr + (tmp_path / "service.log").read_text()
    assert ran.stdout.splitlines()[:2] == ["ok", "exit 0"], ran.stdout + (tmp_path / "service.log").read_text()
    assert "env unreadable" in ran.stdout and "Permission denied" in ran.stderr
    database = var_lib / "ping-listener/ping_listener.db"
    assert owned(database)[:2] == (uid, gid)

    # The admin's edits and the data; then the next version, with one module fewer and a changed unit.
    settings = etc / "ping-listener/settings.json"
    edited = json.loads(settings.read_text()) | {"server_root": "https://monitor.example.net"}
    settings.write_text(json.dumps(edited))
    (etc / "ping-listener/env").write_text("SMTP_PASSWORD=kept\n")
    data = database.read_bytes()
    (source / "obsolete.py").unlink()
    (source / "server.py").write_text((source / "server.py").read_text() + "# the next version\n")
    (source / "contrib/ping-listener.service").write_text(UNIT.read_text() + "# the next version\n")
    second = in_throwaway_root(layers, f"make -C {source} install\n")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "created the system user" not in second.stdout and ids_in(layers) == (uid, gid, shell, 1)
    assert (opt / "ping-listener/server.py").read_text().endswith("# the next version\n")
    assert not (opt / "ping-listener/obsolete.py").exists()
    assert (etc / "systemd/system/ping-listener.service").read_text().endswith("# the next version\n")
    assert json.loads(settings.read_text()) == edited and owned(settings) == (0, gid, 0o640)
    assert (etc / "ping-listener/env").read_text() == "SMTP_PASSWORD=kept\n"
    assert database.read_bytes() == data and owned(database)[:2] == (uid, gid)

    third = in_throwaway_root(layers, f"make -C {source} uninstall\n")
    assert third.returncode == 0, third.stdout + third.stderr
    assert not (opt / "ping-listener").exists()
    assert not (etc / "systemd/system/ping-listener.service").exists()
    assert json.loads(settings.read_text()) == edited
    assert (etc / "ping-listener/env").read_text() == "SMTP_PASSWORD=kept\n"
    assert database.read_bytes() == data
    assert ids_in(layers)[3] == 1  # the user that owns the data stays


def test_install_without_root_and_without_destdir_refuses_with_a_clear_error():
    # As an unprivileged user (nobody, when the tests run as root): the refusal looks at the user id only.
    drop = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"] if os.geteuid() == 0 else []
    args = [*drop, "sh", str(ROOT / "tools/install.sh"), "install"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "make install: it writes to /opt/ping-listener, /etc and /var/lib: run it as root" in result.stderr


def syscall_set(name, seen=None):
    """The system calls of `systemd-analyze syscall-filter` set `name` (@system-service), nested sets expanded."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    listing = subprocess.run(
        [SYSTEMD_ANALYZE, "syscall-filter", name], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    calls = set()
    for line in listing.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        calls |= syscall_set(entry, seen) if entry.startswith("@") else {entry}
    return calls


def unit_filter():
    """(system calls the unit allows, address families it allows), from its SystemCallFilter= lines (an allow
    list, then deny lists) and RestrictAddressFamilies=."""
    allowed, families = set(), set()
    for line in UNIT.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "SystemCallFilter" and value.startswith("~"):
            for name in value[1:].split():
                allowed -= syscall_set(name) if name.startswith("@") else {name}
        elif key == "SystemCallFilter":
            for name in value.split():
                allowed |= syscall_set(name) if name.startswith("@") else {name}
        elif key == "RestrictAddressFamilies":
            families |= set(value.split())
    return allowed, families


# System calls that the tests' service makes only because the tests run as root, which the service under its unit
# is not: SQLite gives its -wal and -shm files the database's owner (fchown) only when it runs as root.
ONLY_AS_ROOT = {"fchown"}


def test_every_system_call_the_service_makes_is_one_the_unit_allows(tmp_path, smtp_server, ca_path):
    # systemd cannot apply the filter here, so the service runs under strace instead, through what it does: start
    # (its SMTP check logs in over TLS), pings with and without a body, /logs, the overview, /healthz, an alert
    # sent, a reload and a stop. Each system call it makes must be in the unit's filter (a denied one fails with
    # EPERM), each socket of an allowed family.
    settings = write_settings(
        tmp_path / "settings.json", {"pi": {"monitor": True, "max_sleep": 1, "email_frequency": 1}}
    )
    trace = tmp_path / "strace.out"
    env = server_env(smtp_server.port, ca_path, OVERVIEW_PASSWORD="look")
    command = ["strace", "-f", "-qq", "-o", trace, sys.executable, ROOT / "server.py", "--settings", settings]
    command += ["--db", tmp_path / "ping_listener.db", "--host", "127.0.0.1", "--port", "0"]
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log)
    try:
        url = process.stdout.readline().decode().removeprefix("listening on ").strip()
        assert url.startswith("http://"), url
        for request in (
            urllib.request.Request(f"{url}/ping/pi"),
            urllib.request.Request(f"{url}/ping/pi/fail", data=b"output"),
            urllib.request.Request(f"{url}/logs?username=pi&year=2026&month=1&day=1"),
            urllib.request.Request(f"{url}/healthz"),
            urllib.request.Request(
                f"{url}/overview/state", data=b'{"password": "look"}', headers={"Content-Type": "application/json"}
            ),
        ):
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.status == 200
        wait_for_delivered(smtp_server, 1, timeout=30)  # an alert went out over SMTP
        # The service is strace's child: signals go to it, as systemd's would.
        (service,) = map(int, Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split())
        os.kill(service, signal.SIGHUP)
        wait_until(lambda: "settings reloaded" in (tmp_path / "server.log").read_text(), message="the reload")
        os.kill(service, signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = trace.read_text()
    made = set(re.findall(r"^\d+ +([a-z0-9_]+)\(", text, re.M))
    allowed, families = unit_filter()
    assert made and made - allowed - (ONLY_AS_ROOT if os.geteuid() == 0 else set()) == set()
    assert set(re.findall(r"socket\((AF_\w+)", text)) - families == set()
