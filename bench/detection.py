"""Detection latency: from a silent device's deadline to its alert reaching a local SMTP-over-TLS server."""

import contextlib
import logging
import shutil
import sqlite3
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from statistics import median

import trustme

from bench import harness
from support import SMTP_LOGIN, SMTP_PASSWORD, TlsSmtpServer, write_settings

FREQUENCY = 0.1
# Device i falls silent for max_sleep = FIRST_DEADLINE + i * SPACING after its one ping: deadlines
# come one at a time, each alert well apart from the next.
FIRST_DEADLINE = 1.0
SPACING = 0.5


@dataclass(frozen=True)
class DetectionResult:
    """Seconds from deadline to delivery: median and max over `devices`, and the bound they must stay under."""

    devices: int
    median_s: float
    max_s: float
    bound_s: float


def run(devices, log):
    """Let `devices` devices fall silent one after another and time each alert's arrival."""
    workdir = harness.BUILD_DIR / "detection"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    names = [f"device-{index:02d}" for index in range(devices)]
    settings = write_settings(
        workdir / "settings.json",
        {
            name: {"monitor": True, "max_sleep": FIRST_DEADLINE + index * SPACING, "email_frequency": 3600}
            for index, name in enumerate(names)
        },
        base_frequency=FREQUENCY,
        email_processing_frequency=FREQUENCY,
    )
    # aiosmtpd warns about its own settings on every session; the tests' server uses them on purpose.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    ca = trustme.CA()
    ca_path = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    smtp = TlsSmtpServer(ca).start()
    db = workdir / "ping_listener.db"
    service = harness.start_service(
        settings,
        db,
        workdir / "service.log",
        env={
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_LOGIN": SMTP_LOGIN,
            "SMTP_PASSWORD": SMTP_PASSWORD,
            "SSL_CERT_FILE": str(ca_path),
        },
    )
    try:
        for name in names:
            with urllib.request.urlopen(f"{service.url}/ping?{urllib.parse.urlencode({'username': name})}") as answer:
                answer.read()
        deadlines = _deadlines(db)
        arrivals = {}
        # Each alert is expected within its deadline plus a second; the whole run is bounded.
        give_up = time.monotonic() + FIRST_DEADLINE + devices * SPACING + 10
        while len(arrivals) < devices and time.monotonic() < give_up:
            try:
                messages = smtp.wait_for_messages(len(arrivals) + 1, timeout=1)
            except AssertionError:
                continue
            arrived = time.time()
            for _, _, message in messages:
                arrivals.setdefault(message["Subject"].removesuffix(" disconnection detected"), arrived)
    finally:
        service.stop()
        smtp.stop()
    if len(arrivals) < devices:
        raise RuntimeError(f"only {len(arrivals)} of {devices} alerts arrived; see {service.log_path}")
    latencies = [arrivals[name] - deadlines[name] for name in names]
    result = DetectionResult(devices, median(latencies), max(latencies), 2 * FREQUENCY + 0.25)
    log(f"  {devices} alerts: median {result.median_s * 1000:.0f} ms, max {result.max_s * 1000:.0f} ms after deadline")
    return result


def _deadlines(db):
    # Read from the service's own record: each device's last ping plus its max_sleep.
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        return dict(connection.execute("SELECT username, last_ping + max_sleep FROM users WHERE configured = 1"))
