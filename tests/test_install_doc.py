"""docs/install.md, run: every command of its shell blocks, in order, in one root shell, as written but for what a
test machine cannot do (the page says which): `apt-get` checks that the packages are installed, `git clone` takes
a git copy of the checkout under test, `systemctl` and `journalctl` become the unit's own ExecStart line run as its
user with its environment file (systemd is not PID 1 here), Caddy runs with `caddy run` and a certificate from the
tests' CA, and curl reaches the documented name at 127.0.0.1 trusting that CA.

It all runs as root in a new mount and network namespace where /etc, /opt, /var, /usr/local and /root are
overlays whose changes land in a temporary directory: the machine's own files, ports and users are untouched."""

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys

import pytest

from support import ROOT

from test_install import checkout_copy  # isort: skip

# Each builds a virtualenv (pip installs the requirements), which takes minutes on a loaded machine.
pytestmark = pytest.mark.timeout(900)
INSTALL_MD = ROOT / "docs" / "install.md"
DOCUMENTED_NAME = "monitor.example.net"
OVERLAID = {"/etc": "etc", "/opt": "opt", "/var": "var", "/usr/local": "usr-local", "/root": "root"}
NEXT_VERSION = "# the next version"

# What the shell has before the page's commands: the overlays, loopback up, and the functions that stand in for
# systemd (the service as its unit starts it) and for Caddy's service.
PREAMBLE = r"""
set -eu
{mounts}
ip link set lo up
export HOME=/root CURL_CA_BUNDLE="$TEST_CA" GIT_AUTHOR_NAME=test GIT_AUTHOR_EMAIL=test@example.com
export GIT_COMMITTER_NAME=test GIT_COMMITTER_EMAIL=test@example.com
SERVICE_PID= CADDY_PID=
: >"$LOG"
trap 'kill $SERVICE_PID $CADDY_PID 2>/dev/null || true' EXIT
unit=/etc/systemd/system/ping-listener.service
wait_for() {{  # wait_for DESCRIPTION COMMAND...: up to 20 s for COMMAND to succeed
    what=$1; shift
    for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "$what: not within 20 s" >&2; cat "$LOG" "$CADDY_LOG" >&2; exit 1
}}
listening() {{ grep -c '^listening on ' "$LOG" || true; }}
started_again() {{ [ "$(listening)" -gt "$started" ]; }}
start_service() {{  # as systemd would: EnvironmentFile, WorkingDirectory, User and Group, then ExecStart
    set -- PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    while IFS= read -r line; do case "$line" in ''|'#'*) ;; *) set -- "$@" "$line" ;; esac; done </etc/ping-listener/env
    here=$PWD; cd "$(sed -n 's/^WorkingDirectory=//p' $unit)"
    started=$(listening)
    env -i "$@" setpriv --reuid "$(sed -n 's/^User=//p' $unit)" --regid "$(sed -n 's/^Group=//p' $unit)" \
        --clear-groups -- $(sed -n 's/^ExecStart=//p' $unit) >>"$LOG" 2>&1 &
    SERVICE_PID=$!; cd "$here"
    wait_for "the service listening" started_again
}}
stop_service() {{ kill -TERM $SERVICE_PID; wait $SERVICE_PID; SERVICE_PID=; }}
start_caddy() {{
    if [ -n "$CADDY_PID" ]; then kill $CADDY_PID; wait $CADDY_PID || true; fi
    caddy run --config /etc/caddy/Caddyfile --adapter caddyfile >>"$CADDY_LOG" 2>&1 &
    CADDY_PID=$!
    wait_for "Caddy answering" curl -s --resolve {name}:443:127.0.0.1 -o /dev/null https://{name}/
}}
"""


def shell_lines():
    """The lines of every ```sh block of docs/install.md, in order."""
    return [
        line for block in re.findall(r"```sh\n(.*?)```", INSTALL_MD.read_text(), re.S) for line in block.splitlines()
    ]


def runnable(line):
    """Documented shell `line` as the test runs it (see the module's docstring); fails on a systemctl or
    journalctl line it does not know."""
    command = line.split("  #")[0].strip()
    fixed = {
        "apt-get update": "true",
        "systemctl enable --now ping-listener": "start_service",
        "systemctl reload ping-listener": 'kill -HUP $SERVICE_PID; wait_for reload grep -q "settings reloaded" "$LOG"',
        "systemctl restart ping-listener": "stop_service; start_service",
        "systemctl reload caddy": "start_caddy",
        "git pull": f'echo "{NEXT_VERSION}" >>"$ORIGIN/server.py" && git -C "$ORIGIN" commit -qam next && git pull -q',
        "cp contrib/Caddyfile /etc/caddy/Caddyfile": (
            "cp contrib/Caddyfile /etc/caddy/Caddyfile && sed -i"
            ' "s|# tls /etc/caddy/monitor.crt /etc/caddy/monitor.key|tls $TEST_CERT $TEST_KEY|" /etc/caddy/Caddyfile'
        ),
    }
    if command in fixed:
        return fixed[command]
    if command.startswith("apt-get install -y "):
        return f"dpkg-query -W {command.removeprefix('apt-get install -y ')} >/dev/null"
    if command.startswith("journalctl -u ping-listener --no-pager"):
        return line.replace("journalctl -u ping-listener --no-pager", 'cat "$LOG"')
    if command.startswith("git clone REPOSITORY_URL "):
        return line.replace("REPOSITORY_URL", '"$ORIGIN"')
    if command.startswith("curl "):
        return line.replace("curl ", f"curl --resolve {DOCUMENTED_NAME}:443:127.0.0.1 ", 1)
    assert not command.startswith(("systemctl", "journalctl", "service ")), f"the test does not know {line!r}"
    return line


def origin_repository(tmp_path):
    """A git repository of the checkout's files under test (committed or not), to clone from."""
    origin = checkout_copy(tmp_path)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the checkout under test"]):
        subprocess.run(["git", "-C", origin, *args], check=True, capture_output=True, env=git_env())
    return origin


def wheels(directory):
    """The wheels of requirements.txt, downloaded into `directory` (the namespace has no network); its path."""
    args = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", directory]
    subprocess.run([*args, "-r", ROOT / "requirements.txt"], check=True, capture_output=True, timeout=600)
    return directory


def git_env():
    names = ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL")
    return os.environ | dict.fromkeys(names[:2], "test") | dict.fromkeys(names[2:], "test@example.com")


@pytest.mark.skipif(os.geteuid() != 0, reason="the page is run as root (useradd, chown, namespaces), as it says")
def test_every_command_of_install_md_runs_from_a_fresh_machine_to_https_and_back(tmp_path, ca, ca_path):
    layers = tmp_path / "layers"
    mounts = []
    for directory, name in OVERLAID.items():
        (layers / f"upper-{name}").mkdir(parents=True)
        (layers / f"work-{name}").mkdir(parents=True)
        options = f"lowerdir={directory},upperdir={layers}/upper-{name},workdir={layers}/work-{name}"
        mounts.append(f"mount -t overlay overlay -o {options} {directory}")
    issued = ca.issue_cert(DOCUMENTED_NAME)
    cert, key = tmp_path / "name.crt", tmp_path / "name.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    lines = shell_lines()
    assert f"NAME={DOCUMENTED_NAME}" in " ".join(lines)
    commands = [runnable(line) for line in lines]
    # The install after `git pull` installs the next version.
    upgrade = commands.index("make install", lines.index("git pull"))
    commands[upgrade] += f' && grep -q "{NEXT_VERSION}" /opt/ping-listener/server.py'
    script = PREAMBLE.format(mounts="\n".join(mounts), name=DOCUMENTED_NAME) + "\n".join(commands) + "\n"
    (tmp_path / "install.sh").write_text(script)
    env = {
        "PATH": os.environ["PATH"],
        "ORIGIN": str(origin_repository(tmp_path)),
        "LOG": str(tmp_path / "service.log"),
        "CADDY_LOG": str(tmp_path / "caddy.log"),
        "TEST_CA": str(ca_path),
        "TEST_CERT": str(cert),
        "TEST_KEY": str(key),
        # pip (in make install) takes the wheels downloaded beforehand.
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels(tmp_path / "wheels")),
    }
    result = subprocess.run(
        ["unshare", "--mount", "--net", "sh", tmp_path / "install.sh"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    assert output.count("ok") >= 3, output  # /healthz: on loopback, through Caddy, and after the upgrade
    assert re.search(r"\d\d/\d\d/\d\d \d\d:\d\d:\d\d", output), output  # the ping's answer through Caddy
    assert "unlocked" in output, output

    etc, opt, var = (layers / f"upper-{name}" for name in ("etc", "opt", "var"))
    settings = json.loads((etc / "ping-listener/settings.json").read_text())
    assert (settings["server_root"], settings["trusted_proxy"]) == (f"https://{DOCUMENTED_NAME}", "127.0.0.1")
    assert stat.S_IMODE((etc / "ping-listener/env").stat().st_mode) == 0o600
    assert stat.S_IMODE((etc / "ping-listener/settings.json").stat().st_mode) == 0o640
    # Upgraded (the next version was installed), then uninstalled: the code is gone, the data and settings stay.
    assert not (opt / "ping-listener").exists()
    assert not (etc / "systemd/system/ping-listener.service").exists()
    assert (var / "backups/ping_listener-before-upgrade.db").is_file()
    with sqlite3.connect(var / "lib/ping-listener/ping_listener.db") as connection:
        assert connection.execute("SELECT count(*) FROM pings").fetchone()[0] == 1
