"""`/logs?details=1` of two heavy days: one of long bodies that JSON escapes at length, one of a ping a second;
each answer's size and time, and the pings of another client while two clients pull it in a loop."""

import http.client
import json
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from statistics import median

from bench import harness, history

# A local day of exactly 86 400 seconds (no daylight saving change).
DAY = (2026, 6, 15)
# The days, each one user's: SIGNALS signals with a body of 10 000 bytes (the most kept) of control characters
# (JSON writes each as six bytes, \u0001: the day's bodies would be 60 MB as JSON), and a ping a second.
LONG_BODIES = "backup-job"
SIGNALS = 1_000
BUSY = "busy-device"
BUSY_PINGS = 86_400
# Control characters that JSON has no two-byte escape for (such as \n).
_LONG_ESCAPES = [chr(code) for code in range(1, 32) if chr(code) not in "\b\t\n\f\r"]
BODY = "".join(_LONG_ESCAPES[index % len(_LONG_ESCAPES)] for index in range(10_000))
READERS = 2
# Bodies are answered only with the user's token; the pings come from a user of their own, without one.
TOKEN = "bench-details-token-0123"
PINGER = "pinger"


@dataclass(frozen=True)
class DetailsResult:
    """One `/logs?details=1` answer of a day (its size, how many signals it holds, whether it was cut) and its
    timings in ms over one kept-alive connection, then pings while READERS clients pull it in a loop."""

    day: str
    signals_in_day: int
    answer_bytes: int
    signals_in_answer: int
    truncated: bool
    median_ms: float
    max_ms: float
    under_load: history.ReadsUnderLoad


def run(requests, log, load_seconds=10):
    """Serve the days' database; for each day, time `requests` GETs of its `/logs?details=1`, then measure one
    client's pings while READERS clients pull it in a loop for `load_seconds`."""
    db = harness.cached_database("details", (DAY, SIGNALS, BODY, BUSY_PINGS), _fill, log)
    user = {"monitor": True, "max_sleep": 86400, "email_frequency": 86400}
    users = {LONG_BODIES: {**user, "token": TOKEN}, BUSY: {**user, "token": TOKEN}, PINGER: user}
    service = harness.serve_copy("details", db, users)
    try:
        results = [
            _measure(
                service.url, f"{SIGNALS:,} signals with long bodies", LONG_BODIES, SIGNALS, requests, load_seconds
            ),
            _measure(service.url, f"{BUSY_PINGS:,} pings without bodies", BUSY, BUSY_PINGS, requests, load_seconds),
        ]
    finally:
        service.stop()
    for result in results:
        load = result.under_load
        log(
            f"  /logs?details=1 of {result.day}: {result.answer_bytes:,} bytes, {result.signals_in_answer:,}"
            f" signals, median {result.median_ms:.0f} ms; pings while {READERS} clients pull it:"
            f" p50 {load.ping_p50_ms:.2f} ms, p99 {load.ping_p99_ms:.2f} ms "
            f" ({load.reads_per_second:.1f} /logs a second)"
        )
    return results


def _measure(url, day_name, username, signals, requests, load_seconds):
    year, month, day = DAY
    path = "/logs?" + urllib.parse.urlencode(
        {"username": username, "year": year % 100, "month": month, "day": day, "details": 1, "token": TOKEN}
    )
    host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        timings = []
        for _ in range(requests):
            began = time.perf_counter()
            connection.request("GET", path)
            answer = connection.getresponse()
            body = answer.read()
            timings.append((time.perf_counter() - began) * 1000)
            if answer.status != 200:
                raise RuntimeError(f"/logs answered {answer.status}: {body[:200]!r}")
        truncated = answer.getheader("Ping-Listener-Truncated") is not None
    finally:
        connection.close()
    under_load = history.pings_under_reads(url, [path], READERS, load_seconds, PINGER)
    return DetailsResult(
        day_name, signals, len(body), len(json.loads(body)), truncated, median(timings), max(timings), under_load
    )


def _fill(path):
    # Bench-only bulk SQL on the bench's own database: a `log` signal every 86.4 s of the day for one user, a
    # ping every second for the other.
    day_start = time.mktime((*DAY, 0, 0, 0, 0, 0, -1))
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO users (id, username, configured, monitor, max_sleep, email_frequency, monitored_since)"
            " VALUES (?, ?, 0, 1, 86400, 86400, ?)",
            [(1, LONG_BODIES, day_start), (2, BUSY, day_start)],
        )
        connection.executemany(
            "INSERT INTO pings (user_id, at, kind, body) VALUES (1, ?, 'log', ?)",
            [(day_start + index * 86_400 / SIGNALS, BODY) for index in range(SIGNALS)],
        )
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n LIMIT ?)"
            " INSERT INTO pings (user_id, at) SELECT 2, ? + i + 0.25 FROM n",
            (BUSY_PINGS, day_start),
        )
        connection.execute("COMMIT")
    finally:
        connection.close()
