"""`/logs` latency for one user's day of 86 400 pings, with 10 million pings in the table."""

import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from statistics import median

from bench import harness, throughput
from support import write_settings

TOTAL_PINGS = 10_000_000
USERNAME = "history-device"
# A local day of exactly 86 400 seconds (no daylight saving change) holding one ping a second.
DAY = (2026, 6, 15)
DAY_PINGS = 86_400
# The rest of the table: other devices pinging every minute around that day, 12 392 pings each.
OTHER_DEVICES = 800
OTHER_INTERVAL = 60.0


@dataclass(frozen=True)
class ReadsUnderLoad:
    """Pings from one client while `readers` clients pull heavy answers (a /logs, status pages) in a loop."""

    readers: int
    seconds: int
    reads_per_second: float
    ping_rps: float
    ping_p50_ms: float
    ping_p99_ms: float
    failures: int


@dataclass(frozen=True)
class HistoryResult:
    """/logs timings in ms: the first request after start, then the median and max of the rest."""

    pings_in_table: int
    pings_in_answer: int
    first_ms: float
    median_ms: float
    max_ms: float
    under_load: ReadsUnderLoad | None = None


def run(requests, log, readers=4, load_seconds=10):
    """Serve the cached 10-million-ping database and time `requests` GETs of the busy day's /logs; then
    measure one client's pings while `readers` clients pull that /logs in a loop for `load_seconds`."""
    db = _database(log)
    workdir = harness.BUILD_DIR / "history"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings = write_settings(
        workdir / "settings.json", {USERNAME: {"monitor": True, "max_sleep": 86400, "email_frequency": 86400}}
    )
    service = harness.start_service(settings, db, workdir / "service.log")
    year, month, day = DAY
    path = "/logs?" + urllib.parse.urlencode({"username": USERNAME, "year": year % 100, "month": month, "day": day})
    host, port = urllib.parse.urlsplit(service.url).netloc.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        timings, count = [], 0
        for _ in range(requests + 1):
            began = time.perf_counter()
            connection.request("GET", path)
            answer = connection.getresponse()
            body = answer.read()
            timings.append(time.perf_counter() - began)
            if answer.status != 200:
                raise RuntimeError(f"/logs answered {answer.status}: {body[:200]!r}")
            count = len(json.loads(body))
        connection.close()
        under_load = pings_under_reads(service.url, [path], readers, load_seconds)
    finally:
        connection.close()
        service.stop()
    first, rest = timings[0] * 1000, [timing * 1000 for timing in timings[1:]]
    result = HistoryResult(TOTAL_PINGS, count, first, median(rest), max(rest), under_load)
    log(f"  /logs of {count} pings: first {result.first_ms:.0f} ms, then median {result.median_ms:.0f} ms")
    log(
        f"  pings while {readers} clients pull it: p50 {under_load.ping_p50_ms:.2f} ms,"
        f" p99 {under_load.ping_p99_ms:.2f} ms ({under_load.reads_per_second:.1f} /logs a second)"
    )
    return result


def pings_under_reads(url, read_paths, readers, seconds, username=USERNAME):
    """`username`'s pings from one client (wrk, 1 connection) while `readers` connections GET `read_paths` in a
    loop (wrk), each connection asking for the next path of the list in turn."""
    ping_path = "/ping?" + urllib.parse.urlencode({"username": username})
    command = ["wrk", "-t1", f"-c{readers}", f"-d{seconds + 2}s", "--timeout", "30s", "-s", str(throughput.LUA_SCRIPT)]
    env = {**os.environ, throughput.PATHS_VARIABLE: " ".join(read_paths)}
    with subprocess.Popen([*command, url + read_paths[0]], stdout=subprocess.PIPE, text=True, env=env) as reads:
        time.sleep(1)  # the readers are under way before the first ping
        pings = throughput.wrk(url + ping_path, 1, "keep-alive", seconds)
        reads_report = json.loads(reads.communicate(timeout=seconds + 60)[0].strip().splitlines()[-1])
    return ReadsUnderLoad(
        readers=readers,
        seconds=seconds,
        reads_per_second=reads_report["requests"] / (reads_report["duration_us"] / 1e6),
        ping_rps=pings["requests"] / (pings["duration_us"] / 1e6),
        ping_p50_ms=pings["p50_us"] / 1000,
        ping_p99_ms=pings["p99_us"] / 1000,
        failures=pings["non_200"] + pings["socket_errors"] + reads_report["non_200"] + reads_report["socket_errors"],
    )


def _database(log):
    """The cached database of TOTAL_PINGS pings."""
    return harness.cached_database("history", (TOTAL_PINGS, DAY, DAY_PINGS, OTHER_DEVICES), _fill, log)


def _fill(path):
    # Bench-only bulk SQL on the bench's own database. Rows go in (user_id, at) order, so the
    # pings index only ever grows at its end, and without a journal: a failed build is thrown away.
    day_start = time.mktime((*DAY, 0, 0, 0, 0, 0, -1))
    others = TOTAL_PINGS - DAY_PINGS
    per_device = others // OTHER_DEVICES
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("BEGIN")
        connection.execute(
            "INSERT INTO users (username, configured, monitor, max_sleep, email_frequency, monitored_since)"
            " VALUES (?, 0, 1, 86400, 86400, ?)",
            (USERNAME, day_start),
        )
        connection.executemany(
            "INSERT INTO users (username, configured, monitor, max_sleep, email_frequency, monitored_since)"
            " VALUES (?, 0, 1, 120, 3600, ?)",
            [(f"device-{index:04d}", day_start) for index in range(OTHER_DEVICES)],
        )
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n LIMIT ?)"
            " INSERT INTO pings (user_id, at) SELECT 1, ? + i + 0.25 FROM n",
            (DAY_PINGS, day_start),
        )
        # Every other device's minutes run from a few days before the busy day to a few after it.
        first = day_start - per_device * OTHER_INTERVAL / 2
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n LIMIT :count)"
            " INSERT INTO pings (user_id, at)"
            " SELECT 2 + i / :per_device, :first + (i % :per_device) * :interval FROM n",
            {"count": others, "per_device": per_device, "first": first, "interval": OTHER_INTERVAL},
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()
