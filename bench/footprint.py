"""Startup time and memory with many users configured, and the CPU the service uses when nothing happens."""

import json
import shutil
import time
from dataclasses import dataclass
from statistics import median

from bench import harness
from support import write_settings


@dataclass(frozen=True)
class StartupResult:
    """Seconds to the `listening on` line (new database, then an existing one) and resident memory in MB."""

    users: int
    first_start_s: float
    restart_s: float
    rss_mb: float
    peak_rss_mb: float


def startup(users, runs, log):
    """Start the service `runs` times on a new database and `runs` times on the one it made."""
    workdir = _workdir("startup")
    settings = _settings(workdir, users, max_sleep=3600)
    first, again, rss, peak = [], [], [], []
    for run in range(runs):
        db = workdir / "ping_listener.db"
        for suffix in ("", "-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        for times in (first, again):
            service = harness.start_service(settings, db, workdir / "service.log")
            try:
                times.append(service.startup_seconds)
                # Memory once the first absence-listener step has run over the users.
                time.sleep(1.5)
                current, highest = harness.memory_mb(service.pid)
                rss.append(current)
                peak.append(highest)
            finally:
                service.stop()
        log(
            f"  start {run + 1}/{runs}: {first[-1]:.2f} s new database, {again[-1]:.2f} s existing,"
            f" RSS {rss[-1]:.0f} MB"
        )
    return StartupResult(users, median(first), median(again), median(rss), max(peak))


def idle_cpu(users, seconds, log):
    """Cores the service uses over `seconds` with `users` configured, nobody late, frequencies as shipped."""
    workdir = _workdir("idle")
    settings = _settings(workdir, users, max_sleep=86400)
    service = harness.start_service(settings, workdir / "ping_listener.db", workdir / "service.log")
    try:
        # Let startup's own work (creating the database, the first steps) finish first.
        time.sleep(3)
        before = harness.cpu_seconds(service.pid)
        time.sleep(seconds)
        cores = (harness.cpu_seconds(service.pid) - before) / seconds
    finally:
        service.stop()
    log(f"  idle with {users} users: {cores:.4f} cores over {seconds} s")
    return cores


def _workdir(name):
    workdir = harness.BUILD_DIR / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return workdir


def _settings(workdir, users, max_sleep):
    shipped = json.loads((harness.ROOT / "settings.json").read_text())
    return write_settings(
        workdir / f"settings-{users}.json",
        {
            f"device-{index:06d}": {"monitor": True, "max_sleep": max_sleep, "email_frequency": 3600}
            for index in range(users)
        },
        base_frequency=shipped["base_frequency"],
        email_processing_frequency=shipped["email_processing_frequency"],
    )
