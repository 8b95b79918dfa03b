"""HTTP pings while email pings flood the service's SMTP listener (email_pings.py): ping latency without mail,
then with SMTP_SENDERS clients each sending message after message (a session each) and IDLE_SESSIONS
sessions held open doing nothing."""

import contextlib
import shutil
import smtplib
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from email.message import EmailMessage

from bench import harness, throughput
from support import free_port, write_settings

SMTP_SENDERS = 16
IDLE_SESSIONS = 50
DOMAIN = "ping.example.net"


@dataclass(frozen=True)
class FloodResult:
    """Ping latency (ms) without and with the flood, the messages recorded a second during it, and failures
    (pings not answered 200, messages not answered 250)."""

    quiet_p50_ms: float
    quiet_p99_ms: float
    flood_p50_ms: float
    flood_p99_ms: float
    messages_per_second: float
    failures: int


def run(seconds, log):
    """Measure one client's pings (wrk, 1 connection, keep-alive) for `seconds`, then again under the flood."""
    workdir = harness.BUILD_DIR / "email-flood"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    port = free_port()
    user = {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}
    settings = write_settings(
        workdir / "settings.json",
        {"pinger": user, "nas": {**user, "email_keywords": {"fail": ["failed"], "success": ["completed"]}}},
        email_pings={"port": port, "domain": DOMAIN, "host": "127.0.0.1"},
    )
    service = harness.start_service(settings, workdir / "ping_listener.db", workdir / "service.log")
    url = service.url + "/ping?" + urllib.parse.urlencode({"username": "pinger"})
    try:
        quiet = throughput.wrk(url, 1, "keep-alive", seconds)
        stopping = threading.Event()
        outcomes = {"sent": 0, "failed": 0}
        lock = threading.Lock()

        def send():
            mail = EmailMessage()
            mail["From"], mail["To"], mail["Subject"] = "nas@home.example", f"nas@{DOMAIN}", "Backup completed"
            mail.set_content("Task nightly completed.\n" * 40)
            while not stopping.is_set():
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                        refused = smtp.send_message(mail)
                    outcome = "failed" if refused else "sent"
                except (OSError, smtplib.SMTPException):
                    outcome = "failed"
                with lock:
                    outcomes[outcome] += 1

        with contextlib.ExitStack() as idle:
            # From addresses of their own: one address holds at most 20 sessions (ListenerLimits).
            for index in range(IDLE_SESSIONS):
                source = (f"127.0.0.{10 + index % 10}", 0)
                idle.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10, source_address=source))
            senders = [threading.Thread(target=send, daemon=True) for _ in range(SMTP_SENDERS)]
            for sender in senders:
                sender.start()
            began = time.monotonic()
            flood = throughput.wrk(url, 1, "keep-alive", seconds)
            elapsed = time.monotonic() - began
            stopping.set()
            for sender in senders:
                sender.join(60)
    finally:
        service.stop()
    result = FloodResult(
        quiet["p50_us"] / 1000,
        quiet["p99_us"] / 1000,
        flood["p50_us"] / 1000,
        flood["p99_us"] / 1000,
        outcomes["sent"] / elapsed,
        quiet["non_200"] + quiet["socket_errors"] + flood["non_200"] + flood["socket_errors"] + outcomes["failed"],
    )
    log(
        f"  pings p99 {result.quiet_p99_ms:.2f} ms quiet, {result.flood_p99_ms:.2f} ms under"
        f" {result.messages_per_second:.0f} email pings/s; {result.failures} failures"
    )
    return result
