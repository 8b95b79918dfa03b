"""PostgreSQL next to SQLite: ping throughput with one and two instances of the service on one PostgreSQL
database, and the absence tick at 100 000 users on PostgreSQL.

The PostgreSQL server is a throwaway cluster of the bench's own (tests/pgcluster.py) with PostgreSQL's
durable defaults: fsync and synchronous_commit on, so a commit waits for its WAL to reach the disk (SQLite's
synchronous=NORMAL in WAL mode does not wait for the disk at each commit). Two instances get no load balancer:
one wrk per instance, each with half the connections, at the same time; their requests are added up.
"""

import concurrent.futures
import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from bench import harness, throughput, tick
from pgcluster import PostgreSQLCluster
from support import write_settings

SETUPS = ("sqlite", "postgresql", "postgresql ×2")
RUNS = (("keep-alive", 16), ("keep-alive", 64), ("close", 16))


@dataclass(frozen=True)
class PingResult:
    """One setup's wrk run(s): requests per second (all instances), latency in ms (the worst instance's),
    failures, and CPU per request of the service's processes and of the database server's."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    service_cpu_us: float
    database_cpu_us: float


@dataclass(frozen=True)
class PingRow:
    """Every setup at one mode and number of connections: its result in each round."""

    mode: str
    connections: int
    rounds: dict  # setup -> [PingResult per round]

    def median(self, setup):
        """The setup's medians over the rounds."""
        results = self.rounds[setup]
        return PingResult(
            *(median(getattr(result, field) for result in results) for field in PingResult.__dataclass_fields__)
        )


def ping(duration, warmup, rounds, log):
    """Measure each of SETUPS at each of RUNS, `rounds` times, in a different order each round; return PingRows."""
    workdir = harness.BUILD_DIR / "postgresql"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings = write_settings(
        workdir / "settings.json",
        {throughput.USERNAME: {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}},
        base_frequency=1,
        email_processing_frequency=5,
    )
    cluster = PostgreSQLCluster(durable=True).start()
    started = []
    try:
        url = cluster.url(cluster.create_database())
        started = [
            harness.start_service(settings, workdir / "ping_listener.db", workdir / "sqlite.log"),
            harness.start_service(settings, url, workdir / "postgresql-1.log"),
            harness.start_service(settings, url, workdir / "postgresql-2.log"),
        ]
        instances = {"sqlite": started[:1], "postgresql": started[1:2], "postgresql ×2": started[1:]}
        results = {}
        for round_number in range(rounds):
            order = SETUPS if round_number % 2 == 0 else tuple(reversed(SETUPS))
            for mode, connections in RUNS:
                for setup in order:
                    database = [] if setup == "sqlite" else [cluster.process.pid]
                    result = _measure(instances[setup], database, mode, connections, duration, warmup)
                    results.setdefault((mode, connections), {}).setdefault(setup, []).append(result)
                    log(
                        f"  round {round_number + 1}/{rounds}, {mode:<10} {connections:>3} connections,"
                        f" {setup:<13}: {result.rps:8.0f} req/s  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms"
                        f"  CPU/req {result.service_cpu_us:.0f} µs service + {result.database_cpu_us:.0f} µs database"
                    )
    finally:
        for service in started:
            service.stop()
        cluster.stop()
    return [PingRow(mode, connections, results[mode, connections]) for mode, connections in RUNS]


def tick_at(size, log):
    """The absence tick (bench/tick.py) at `size` users on a PostgreSQL database; return its TickRow."""
    cluster = PostgreSQLCluster(durable=True).start()
    try:
        [row] = tick.run((size,), 21, 501, log, database=cluster.url(cluster.create_database()))
    finally:
        cluster.stop()
    return row


def _measure(services, database_pids, mode, connections, duration, warmup):
    """wrk against `services` at once, `connections` shared between them."""
    share = connections // len(services)
    urls = [service.url + throughput.PING_PATH for service in services]
    _wrk_at_once(urls, share, mode, warmup)
    service_pids = [service.pid for service in services]
    service_before, database_before = _cpu(service_pids), _cpu(_with_children(database_pids))
    reports = _wrk_at_once(urls, share, mode, duration)
    service_cpu = _cpu(service_pids) - service_before
    database_cpu = _cpu(_with_children(database_pids)) - database_before
    requests = max(sum(report["requests"] for report in reports), 1)
    return PingResult(
        rps=sum(report["requests"] / (report["duration_us"] / 1e6) for report in reports),
        p50_ms=max(report["p50_us"] for report in reports) / 1000,
        p99_ms=max(report["p99_us"] for report in reports) / 1000,
        errors=sum(report["non_200"] + report["socket_errors"] for report in reports),
        service_cpu_us=service_cpu / requests * 1e6,
        database_cpu_us=database_cpu / requests * 1e6,
    )


def _wrk_at_once(urls, connections, mode, seconds):
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(lambda url: throughput.wrk(url, connections, mode, seconds), urls))


def _with_children(pids):
    """`pids` and their children: the PostgreSQL server is its postmaster and a process per connection."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            continue  # a process that ended meanwhile
        if parent in pids:
            children.append(int(stat.parent.name))
    return [*pids, *children]


def _cpu(pids):
    total = 0.0
    for pid in pids:
        # A process that ended meanwhile is left out (the pool keeps the server's connections open).
        with contextlib.suppress(OSError):
            total += harness.cpu_seconds(pid)
    return total
