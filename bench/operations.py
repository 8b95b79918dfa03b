"""Operations at fleet size: a /metrics scrape at 10 000 users and 10 million pings, and pings while
retention deletes millions of old pings."""

import shutil
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from statistics import median

from prometheus_client import Histogram

from bench import harness, throughput
from metrics import Exporter
from store import Store
from support import write_settings

USERS = 10_000
PINGS_PER_USER = 1_000  # 10 million in all
FIRST_PING = 1_700_000_000.0  # years before the retention bench's "now": every ping is old
METRICS_TOKEN = "bench-metrics-token"


@dataclass(frozen=True)
class ScrapeResult:
    """Timings of Exporter.scrape() in ms, and the size of one answer."""

    users: int
    pings: int
    median_ms: float
    max_ms: float
    bytes: int


@dataclass(frozen=True)
class RetentionResult:
    """One client's pings while retention deletes old pings, and how many it deleted meanwhile."""

    seconds: int
    deleted: int
    ping_rps: float
    ping_p50_ms: float
    ping_p99_ms: float
    failures: int


def scrape(repeats, log):
    """Time `repeats` scrapes of the cached 10 000-user, 10-million-ping database, in process."""
    store = Store(_database(log))
    try:
        exporter = Exporter(store, time.time, Histogram("ping_listener_absence_step_seconds", "", registry=None))
        timings, size = [], 0
        for _ in range(repeats + 1):
            began = time.perf_counter()
            size = len(exporter.scrape())
            timings.append((time.perf_counter() - began) * 1000)
    finally:
        store.close()
    rest = timings[1:]  # the first one also warms the page cache
    result = ScrapeResult(USERS, USERS * PINGS_PER_USER, median(rest), max(rest), size)
    log(f"  scrape: median {result.median_ms:.1f} ms, max {result.max_ms:.1f} ms, {size:,} bytes")
    return result


def retention(seconds, log):
    """Serve a copy of the cached database with retention_days 1, so that every ping in it is old, and
    measure one client's pings (wrk, 1 connection, keep-alive) for `seconds` while the retention loop
    deletes."""
    workdir = harness.BUILD_DIR / "retention"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    db = workdir / "ping_listener.db"
    shutil.copyfile(_database(log), db)
    settings = write_settings(
        workdir / "settings.json",
        {"pinger": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}},
        retention_days=1,
    )
    service = harness.start_service(settings, db, workdir / "service.log")
    try:
        time.sleep(1)  # retention is under way
        before = _pings(db)
        pings = throughput.wrk(
            service.url + "/ping?" + urllib.parse.urlencode({"username": "pinger"}), 1, "keep-alive", seconds
        )
        deleted = before - _pings(db)
    finally:
        service.stop()
    result = RetentionResult(
        seconds,
        deleted,
        pings["requests"] / (pings["duration_us"] / 1e6),
        pings["p50_us"] / 1000,
        pings["p99_us"] / 1000,
        pings["non_200"] + pings["socket_errors"],
    )
    log(
        f"  pings while deleting: p50 {result.ping_p50_ms:.2f} ms, p99 {result.ping_p99_ms:.2f} ms; {deleted:,} deleted"
    )
    return result


def _pings(db):
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM pings").fetchone()[0]


def _database(log):
    """The cached database: USERS configured users, PINGS_PER_USER old pings each."""
    key = repr((USERS, PINGS_PER_USER, FIRST_PING))
    return harness.cached_database("fleet", key, _fill, log)


def _fill(path):
    # Bench-only bulk SQL, as in history.py; the counters are set as the ping trigger would have.
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("BEGIN")
        last = FIRST_PING + PINGS_PER_USER
        connection.executemany(
            "INSERT INTO users (username, configured, monitor, max_sleep, email_frequency, monitored_since,"
            " last_ping, due_at, pings_total) VALUES (?, 1, 1, 120, 3600, ?, ?, ?, ?)",
            [(f"device-{index:05d}", FIRST_PING, last, last + 120, PINGS_PER_USER) for index in range(USERS)],
        )
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n LIMIT :count)"
            " INSERT INTO pings (user_id, at) SELECT 1 + i / :per_user, :first + i % :per_user FROM n",
            {"count": USERS * PINGS_PER_USER, "per_user": PINGS_PER_USER, "first": FIRST_PING},
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()
