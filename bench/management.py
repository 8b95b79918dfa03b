"""Checks by program at fleet size: the management API listing 10 000 checks, creating 1 000 checks one request
each, and a ping by UUID against a ping by name."""

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass
from statistics import median

from bench import harness, throughput
from support import write_settings

CHECKS = 10_000
CREATED = 1_000
API_KEY = "bench-api-key-0123456789"
ROUNDS = 4
PINGER = {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}


@dataclass(frozen=True)
class ManagementResult:
    """Listing CHECKS checks (ms), creating CREATED checks one request each (s), and pings by name and by UUID."""

    checks: int
    list_median_ms: float
    list_max_ms: float
    list_bytes: int
    created: int
    create_seconds: float
    by_name: throughput.WrkResult
    by_uuid: throughput.WrkResult


def run(duration, warmup, log):
    """Serve CHECKS checks of settings.json with API_KEY set; time 20 listings, then CREATED creations over one
    keep-alive connection, then wrk (16 connections, keep-alive) on /ping/<name> and /ping/<uuid>, ROUNDS rounds each in
    alternating order, the best round of each kept."""
    workdir = harness.BUILD_DIR / "management"
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "ping_listener.db"
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    users = {f"dev{index:05}": PINGER for index in range(CHECKS)}
    settings = write_settings(workdir / "settings.json", users, defaults={"max_sleep": 3600})
    service = harness.start_service(settings, db, workdir / "service.log", env={"API_KEY": API_KEY})
    try:
        connection = http.client.HTTPConnection(urllib.parse.urlsplit(service.url).netloc, timeout=60)
        headers = {"X-Api-Key": API_KEY, "Content-Type": "application/json"}
        timings, size, listed = [], 0, None
        for _ in range(21):
            began = time.perf_counter()
            connection.request("GET", "/api/v3/checks/", headers=headers)
            body = connection.getresponse().read()
            timings.append((time.perf_counter() - began) * 1000)
            size, listed = len(body), json.loads(body)["checks"]
        rest = timings[1:]
        log(f"  list {len(listed):,} checks: median {median(rest):.0f} ms, max {max(rest):.0f} ms")
        began = time.perf_counter()
        for index in range(CREATED):
            document = json.dumps({"name": f"made{index:04}", "timeout": 3600, "grace": 60})
            connection.request("POST", "/api/v3/checks/", document, headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 201:
                raise RuntimeError(f"creating made{index:04} answered {answer.status}")
        create_seconds = time.perf_counter() - began
        log(f"  create {CREATED:,} checks: {create_seconds:.1f} s")
        check_uuid = next(check["uuid"] for check in listed if check["name"] == "dev00000")
        # Rounds in alternating order, the best of each kept: on a shared machine the load moves between runs.
        names, uuids = [], []
        for round_number in range(ROUNDS):
            pair = [(names, "/ping/dev00000"), (uuids, f"/ping/{check_uuid}")]
            for results, path in pair if round_number % 2 == 0 else reversed(pair):
                results.append(throughput.measure(service, path, 16, "keep-alive", duration, warmup))
        by_name, by_uuid = (max(results, key=lambda result: result.rps) for results in (names, uuids))
        log(f"  ping by name {by_name.rps:.0f}/s, by uuid {by_uuid.rps:.0f}/s")
    finally:
        service.stop()
    return ManagementResult(CHECKS, median(rest), max(rest), size, CREATED, create_seconds, by_name, by_uuid)
