"""The overview's answers with 10 000 users and 10 million pings: POST /overview/state's data (right after a
start, while the last 24 hours load in the background, then refreshes with new pings as the page asks for
them, with the version of the answer it has, one of them as the window slides by a slot) and a day view of
a busy day, in process."""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from statistics import median

from bench import harness
from overview import SLOT_SECONDS, Overview, overview_day
from store import Store

USERS = 10_000
TOTAL_PINGS = 10_000_000
# Every user but one pings every INTERVAL seconds for the days before NOW (about 100 pings each in the
# last 24 hours, a million in all); the busy one pings every second of the local day before NOW's.
NOW = 1_790_000_000.0
INTERVAL = 864.0
BUSY_PINGS = 86_400
# Between two refreshes of a page (3 s), this many new pings arrive: 200 a second.
NEW_PINGS_PER_REFRESH = 600
REFRESH_SECONDS = 3


@dataclass(frozen=True)
class OverviewResult:
    """Timings in ms of the overview's answers, each its data written as JSON."""

    users: int
    pings_in_table: int
    answer_bytes: int  # an answer holding every user
    refresh_bytes: int  # the median of the refreshes' answers, each holding the users that changed
    first_ms: float  # the first answer after a start, while the histories load
    loaded_s: float  # from the start until every history is loaded
    refreshes: int
    refresh_median_ms: float
    refresh_max_ms: float
    slide_ms: float  # the refresh in which the window moved by a slot
    day_pings: int
    day_median_ms: float
    day_max_ms: float


def run(refreshes, log):
    """Time the first overview answer after a start (its upkeep loading the histories in a thread, as the
    service's loop does), `refreshes` refreshes after new pings, and `refreshes` busy day views."""
    db = _database(log)
    store = Store(db)
    try:
        overview = Overview(store)
        started = time.perf_counter()
        overview.keep_up(NOW)  # the upkeep's first step writes every row, before any page can ask
        loading = threading.Thread(target=_load, args=(overview,))
        loading.start()
        began = time.perf_counter()
        answer = overview.state(NOW)
        first = time.perf_counter() - began
        complete_bytes = len(answer)
        version = json.loads(answer)["version"]
        loading.join()
        loaded = time.perf_counter() - started
        refresh_times, refresh_sizes = [], []
        # Refreshes every 3 s from a moment such that the window moves by a slot halfway through them.
        refreshed = NOW - NOW % SLOT_SECONDS + SLOT_SECONDS - REFRESH_SECONDS * (refreshes // 2)
        slide = None
        for _ in range(refreshes):
            now = refreshed + REFRESH_SECONDS
            _add_pings(store, now)
            began = time.perf_counter()
            answer = overview.state(now, version)
            refresh_times.append(time.perf_counter() - began)
            refresh_sizes.append(len(answer))
            version = json.loads(answer)["version"]
            if now // SLOT_SECONDS != refreshed // SLOT_SECONDS:
                slide = refresh_times[-1]
            refreshed = now
        day_start = _busy_day_start()
        day_times = []
        for _ in range(refreshes):
            began = time.perf_counter()
            day = overview_day(store, "busy", day_start, day_start + 86400, NOW)
            json.dumps(day, separators=(",", ":"))
            day_times.append(time.perf_counter() - began)
    finally:
        _forget_added_pings(store)
        store.close()
    result = OverviewResult(
        USERS,
        TOTAL_PINGS,
        complete_bytes,
        int(median(refresh_sizes)),
        first * 1000,
        loaded,
        refreshes,
        median(refresh_times) * 1000,
        max(refresh_times) * 1000,
        (slide or 0.0) * 1000,
        day["pings"],
        median(day_times) * 1000,
        max(day_times) * 1000,
    )
    log(
        f"  /overview/state: first {result.first_ms:.0f} ms (histories loaded in {result.loaded_s:.1f} s),"
        f" then median {result.refresh_median_ms:.0f} ms (max {result.refresh_max_ms:.0f},"
        f" sliding {result.slide_ms:.0f}); day of {result.day_pings} pings: median {result.day_median_ms:.0f} ms"
    )
    return result


def _load(overview):
    """The service's upkeep loop until every history is loaded (it then goes on every few seconds)."""
    while overview.keep_up(NOW):
        pass


def _busy_day_start():
    # 2026-09-20 in Europe/Paris (BENCH_TZ): a day of 86 400 seconds.
    return time.mktime((*time.localtime(NOW - 86400)[:3], 0, 0, 0, 0, 0, -1))


def _add_pings(store, now):
    """Pings from `now` - 3 s to `now`, each from another user, as the store's trigger would record them (the
    ping and its user's last_ping); different users at each refresh."""
    first = int(now) // REFRESH_SECONDS * NEW_PINGS_PER_REFRESH
    pings = [
        (2 + ((first + index) * 7919) % (USERS - 1), now - 3 + index * 3 / NEW_PINGS_PER_REFRESH)
        for index in range(NEW_PINGS_PER_REFRESH)
    ]
    # Bench-only SQL on the bench's own database (undone by _forget_added_pings).
    with sqlite3.connect(store.path) as connection:
        connection.executemany("INSERT INTO pings (user_id, at) VALUES (?, ?)", pings)
        connection.executemany("UPDATE users SET last_ping = ?2 WHERE id = ?1", pings)


def _forget_added_pings(store):
    """The cached database as _fill made it again: without the pings after NOW, every device's last_ping as it was."""
    with sqlite3.connect(store.path) as connection:
        connection.execute("DELETE FROM pings WHERE at > ?", (NOW,))
        connection.execute("UPDATE users SET last_ping = ? WHERE username != 'busy'", (NOW - INTERVAL,))


def _database(log):
    """The cached database of USERS users and TOTAL_PINGS pings."""
    return harness.cached_database("overview", (USERS, TOTAL_PINGS, NOW, INTERVAL), _fill, log)


def _fill(path):
    # Bench-only bulk SQL, in (user_id, at) order so that the pings index only grows at its end.
    per_user = (TOTAL_PINGS - BUSY_PINGS) // (USERS - 1)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("BEGIN")
        connection.execute(
            "INSERT INTO users (username, configured, monitor, max_sleep, email_frequency, monitored_since, last_ping)"
            " VALUES ('busy', 1, 1, 60, 3600, ?, ?)",
            (NOW - 86400, NOW - 1),
        )
        connection.executemany(
            "INSERT INTO users (username, configured, monitor, max_sleep, email_frequency, monitored_since, last_ping)"
            " VALUES (?, 1, 1, 1200, 3600, ?, ?)",
            [(f"device-{index:05d}", NOW - 86400, NOW - INTERVAL) for index in range(USERS - 1)],
        )
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n LIMIT ?)"
            " INSERT INTO pings (user_id, at) SELECT 1, ? + i FROM n",
            (BUSY_PINGS, _busy_day_start()),
        )
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n LIMIT :count)"
            " INSERT INTO pings (user_id, at)"
            " SELECT 2 + i / :per_user, :now - (:per_user - i % :per_user) * :interval - (i / :per_user) % 97 FROM n",
            {"count": per_user * (USERS - 1), "per_user": per_user, "now": NOW, "interval": INTERVAL},
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()


@dataclass(frozen=True)
class LoadMemory:
    """The overview's history loading after a start, in a process of its own: its peak resident memory, and
    that of the same process before it began."""

    users: int
    recent_pings: int
    baseline_mb: float
    peak_mb: float
    seconds: float


# For the loading's memory: few users, each pinging every few seconds, so that one step of the loading
# (HISTORY_USERS_PER_STEP users) meets every ping of the last 24 hours.
LOAD_USERS = 100


def load_memory(pings, log):
    """Load the last 24 hours of `pings` pings (LOAD_USERS users pinging evenly before NOW) as a start of the
    service does, in a new process; its peak RSS."""
    db = harness.cached_database("load-memory", (LOAD_USERS, pings, NOW), lambda path: _fill_recent(path, pings), log)
    code = "import sys; from bench.overview_data import _measure_load; _measure_load(sys.argv[1])"
    output = subprocess.run(
        [sys.executable, "-c", code, str(db)], cwd=harness.ROOT, capture_output=True, text=True, check=True
    ).stdout
    measured = json.loads(output.strip().splitlines()[-1])
    result = LoadMemory(LOAD_USERS, pings, measured["baseline_mb"], measured["peak_mb"], measured["seconds"])
    log(
        f"  loading {pings:,} pings of {LOAD_USERS} users: peak RSS {result.peak_mb:.0f} MB"
        f" ({result.baseline_mb:.0f} MB before), {result.seconds:.1f} s"
    )
    return result


def _measure_load(db):
    """In the child process: load every history of `db` at NOW as the service's upkeep does; print the process's
    RSS before and its peak after, as JSON."""
    store = Store(db)
    overview = Overview(store)
    baseline = harness.memory_mb(os.getpid())[0]
    began = time.perf_counter()
    while overview.keep_up(NOW):
        pass
    seconds = time.perf_counter() - began
    peak = harness.memory_mb(os.getpid())[1]
    store.close()
    print(json.dumps({"baseline_mb": baseline, "peak_mb": peak, "seconds": seconds}))


def _fill_recent(path, pings):
    # Bench-only bulk SQL, in (user_id, at) order: every user pings evenly over the 24 hours before NOW.
    per_user = pings // LOAD_USERS
    interval = 86_400 / per_user
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO users (username, configured, monitor, max_sleep, email_frequency, monitored_since, last_ping)"
            " VALUES (?, 1, 1, 600, 3600, ?, ?)",
            [(f"device-{index:03d}", NOW - 86400, NOW - interval) for index in range(LOAD_USERS)],
        )
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n LIMIT :count)"
            " INSERT INTO pings (user_id, at) SELECT 1 + i / :per_user, :now - (:per_user - i % :per_user) * :interval"
            " FROM n",
            {"count": per_user * LOAD_USERS, "per_user": per_user, "now": NOW, "interval": interval},
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()
