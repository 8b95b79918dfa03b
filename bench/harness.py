"""What every benchmark shares: starting the service or the bare app, and reading a process's CPU and memory."""

import hashlib
import os
import platform
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from store import SCHEMA_PATH, Store
from support import write_settings

ROOT = Path(__file__).resolve().parent.parent
# Generated databases and settings; ignored by git, and kept between runs so the big ones are built once.
BUILD_DIR = ROOT / "bench" / "build"
# Every time shown to people is local; a zone with daylight saving time is the realistic case.
BENCH_TZ = "Europe/Paris"
# Nothing listens there: a benchmark that should not send email never waits on a real server.
UNREACHABLE_SMTP = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": "9"}
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Started:
    """A server process that printed its `listening on URL` line."""

    def __init__(self, process, url, startup_seconds, log_path):
        self.process = process
        self.url = url
        self.startup_seconds = startup_seconds
        self.log_path = log_path

    @property
    def pid(self):
        """The process id."""
        return self.process.pid

    def stop(self, timeout=10):
        """SIGTERM it and wait for it to exit; kill it if it takes longer than `timeout` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


def start(args, env_overrides, log_path, timeout=60):
    """Run `python *args` from the project root and wait for its `listening on` line; return a Started."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SMTP_", "TESTING_", "OVERVIEW_"))}
    env.update(TZ=BENCH_TZ, PYTHONUNBUFFERED="1")
    env.update(env_overrides)
    log_path = Path(log_path)
    with log_path.open("ab") as log:
        began = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log
        )
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        line = process.stdout.readline().decode() if selector.select(timeout) else ""
    elapsed = time.perf_counter() - began
    prefix = "listening on "
    if not line.startswith(prefix):
        process.kill()
        process.wait()
        raise RuntimeError(f"{args[0]} did not start (printed {line!r}); see {log_path}")
    return Started(process, line[len(prefix) :].strip(), elapsed, log_path)


def start_service(settings_path, db_path, log_path, env=None, timeout=60):
    """Start `python server.py` on 127.0.0.1 with an OS-chosen port."""
    args = ["server.py", "--settings", settings_path, "--db", db_path, "--host", "127.0.0.1", "--port", "0"]
    return start(args, {**UNREACHABLE_SMTP, **(env or {})}, log_path, timeout)


def serve_copy(name, db, users, **top_level):
    """Start the service (as start_service) over a copy of the database `db` in bench/build/NAME, with a
    settings.json of `users` and the `top_level` keys: the pings of a load go into the copy, not into `db`."""
    workdir = BUILD_DIR / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    shutil.copy(db, workdir / f"{name}.db")
    settings = write_settings(workdir / "settings.json", users, **top_level)
    return start_service(settings, workdir / f"{name}.db", workdir / "service.log")


def cached_database(name, parameters, fill, log):
    """The database bench/build/NAME-KEY.db, made by `fill(path)` on a new database the first time and then kept.

    KEY hashes schema.sql and `parameters`: a new schema or other parameters make a new file, and the
    old one is removed. A build that fails leaves only a `.partial` file, thrown away by the next one.
    """
    key = hashlib.sha256((SCHEMA_PATH.read_text() + repr((parameters, BENCH_TZ))).encode()).hexdigest()[:12]
    path = BUILD_DIR / f"{name}-{key}.db"
    if path.exists():
        return path
    for stale in BUILD_DIR.glob(f"{name}-*.db*"):
        stale.unlink()
    log(f"  building {path.name} (once; it is cached under bench/build)")
    began = time.perf_counter()
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    Store(partial).close()
    fill(partial)
    partial.rename(path)
    log(f"  built in {time.perf_counter() - began:.0f} s")
    return path


def cpu_seconds(pid):
    """User plus system CPU time the process has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory_mb(pid):
    """(current, peak) resident set size of the process, in MB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def load_average():
    """The 1-minute load average, to tell a loaded machine in the results."""
    return os.getloadavg()[0]


def machine():
    """What the results depend on: CPU model, cores, kernel, Python and SQLite versions, date."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
