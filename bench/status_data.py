"""Status pages and badges, in process: a page listing 1 000 devices with 90 days of hourly pings and a few
alerted outages each, as a request gets it (from the last snapshot) and as made afresh (a new snapshot of the
store, then the page's HTML and JSON: what status.py's thread does every CACHE_SECONDS, and the first request
after a start); and a badge's SVG. Then that page served the service's way: one client's pings while
FLOOD_READERS clients ask for the page, its JSON and badges in a loop."""

import sqlite3
import time
from dataclasses import dataclass
from statistics import median

from bench import harness, history
from config import LiveSettings, parse_settings
from status import StatusPages
from store import Store

DEVICES = 1_000
DAYS = 90
NOW = 1_790_000_000.0
PING_EVERY = 3600.0
# Each device is down this many times in the 90 days, for OUTAGE_HOURS each, at times spread over them.
OUTAGES = 4
OUTAGE_HOURS = 3
BADGE_KEY = "bench-badge-key-0123456789"
SLUG = "fleet"
FLOOD_READERS = 4
# The flood's pings come from a user of their own, on no status page.
PINGER = "pinger"


@dataclass(frozen=True)
class StatusResult:
    """Timings in ms of the status answers."""

    devices: int
    pings: int
    outages: int
    html_bytes: int
    json_bytes: int
    fresh_median_ms: float
    fresh_max_ms: float
    kept_median_ms: float
    kept_max_ms: float
    badge_median_ms: float
    badge_max_ms: float


def run(repeats, log):
    """Time `repeats` fresh and kept answers of the page and `repeats` badges."""
    db = harness.cached_database("status", (DEVICES, DAYS, NOW, PING_EVERY, OUTAGES, OUTAGE_HOURS), _fill, log)
    names = [_name(index) for index in range(DEVICES)]
    settings = parse_settings(
        {
            "base_frequency": 1,
            "email_processing_frequency": 1,
            "recipient": "ops@example.com",
            "users": {name: {"monitor": True, "max_sleep": 2 * PING_EVERY, "email_frequency": 3600} for name in names},
            "status_pages": {"fleet": {"title": "Fleet", "users": names}},
            "badge_key": BADGE_KEY,
        }
    )
    store = Store(db)
    try:
        fresh, kept, badges = [], [], []
        for index in range(repeats):
            # Each a new StatusPages: its first answers take a snapshot and make the page from it, as the
            # thread that takes the next snapshot does every CACHE_SECONDS.
            pages = StatusPages(store, LiveSettings(settings))
            now = NOW + index
            began = time.perf_counter()
            html = pages.page("fleet", "html", now)
            data = pages.page("fleet", "json", now)
            fresh.append(time.perf_counter() - began)
            for _ in range(10):
                began = time.perf_counter()
                pages.page("fleet", "html", now)
                kept.append(time.perf_counter() - began)
            began = time.perf_counter()
            pages.badge(BADGE_KEY, names[index], "svg", now)
            badges.append(time.perf_counter() - began)
        with sqlite3.connect(db) as connection:
            pings = connection.execute("SELECT count(*) FROM pings").fetchone()[0]
            outages = connection.execute("SELECT count(*) FROM alerts").fetchone()[0]
    finally:
        store.close()
    result = StatusResult(
        DEVICES,
        pings,
        outages,
        len(html.body),  # type: ignore[union-attr]
        len(data.body),  # type: ignore[union-attr]
        median(fresh) * 1000,
        max(fresh) * 1000,
        median(kept) * 1000,
        max(kept) * 1000,
        median(badges) * 1000,
        max(badges) * 1000,
    )
    log(
        f"  status page of {DEVICES} devices: answered in {result.kept_median_ms:.2f} ms (max"
        f" {result.kept_max_ms:.2f}), made afresh in {result.fresh_median_ms:.0f} ms (max {result.fresh_max_ms:.0f});"
        f" badge {result.badge_median_ms:.3f} ms"
    )
    return result


def flood(seconds, log):
    """Serve the page's database; measure PINGER's pings while FLOOD_READERS clients ask in turn for the page,
    its JSON and badges of each form for `seconds`."""
    db = harness.cached_database("status", (DEVICES, DAYS, NOW, PING_EVERY, OUTAGES, OUTAGE_HOURS), _fill, log)
    names = [_name(index) for index in range(DEVICES)]
    # The devices' last pings are from NOW, in the past of the served service's clock: a max_sleep beyond that
    # keeps them up, so that no alert to a thousand users competes with the flood.
    device = {"monitor": True, "max_sleep": 10 * DAYS * 86400, "email_frequency": 3600}
    users = {**{name: device for name in names}, PINGER: {**device, "max_sleep": 86400}}
    pages = {SLUG: {"title": "Fleet", "users": names}}
    service = harness.serve_copy(
        "status-flood",
        db,
        users,
        status_pages=pages,
        badge_key=BADGE_KEY,
        base_frequency=1,
        email_processing_frequency=1,
    )
    badges = [f"/badge/{BADGE_KEY}/{names[index]}.{form}" for index, form in enumerate(("svg", "json", "shields"))]
    try:
        load = history.pings_under_reads(
            service.url, [f"/status/{SLUG}", f"/status/{SLUG}.json", *badges], FLOOD_READERS, seconds, PINGER
        )
    finally:
        service.stop()
    log(
        f"  pings while {FLOOD_READERS} clients ask for the status page of {DEVICES} devices, its JSON and badges:"
        f" p50 {load.ping_p50_ms:.2f} ms, p99 {load.ping_p99_ms:.2f} ms ({load.reads_per_second:.0f} answers a second)"
    )
    return load


def _name(index):
    return f"device-{index:04}"


def _fill(path):
    # Bench-only bulk SQL: every device monitored since the history began, pinging every hour but during its
    # outages, each outage alerted an hour after it began and ended by the first ping after it.
    start = NOW - DAYS * 86400
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("BEGIN")
        for index in range(DEVICES):
            user_id = index + 1
            connection.execute(
                "INSERT INTO users (id, username, configured, monitor, max_sleep, email_frequency, monitored_since,"
                " last_ping) VALUES (?, ?, 1, 1, ?, 3600, ?, ?)",
                (user_id, _name(index), 2 * PING_EVERY, start, NOW - 60),
            )
            downs = [start + (n + 0.5) * DAYS * 86400 / OUTAGES + index * 61 % 86400 for n in range(OUTAGES)]
            pings = []
            at = start + index % 3600
            while at < NOW:
                if not any(down <= at < down + OUTAGE_HOURS * 3600 for down in downs):
                    pings.append((user_id, at))
                at += PING_EVERY
            connection.executemany("INSERT INTO pings (user_id, at) VALUES (?, ?)", pings)
            connection.executemany(
                "INSERT INTO alerts (user_id, at, last_ping, kind, went_down_at) VALUES (?, ?, NULL, 'late', ?)",
                [(user_id, down + 3600, down) for down in downs],
            )
        connection.execute("COMMIT")
    finally:
        connection.close()
