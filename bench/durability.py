"""What `"durability": "power"` costs: ping throughput and latency of the service with every commit synced to disk
(SQLite's synchronous=FULL), against the default "process" (synchronous=NORMAL in WAL mode), each `python server.py`
on a new SQLite file of its own under bench/build, on the same disk as the other sections' databases.
"""

import json
import shutil

from bench import harness, throughput
from config import DURABILITIES
from support import write_settings

# Kept alive: a lone client (every ping its own commit and sync) and the concurrencies at which pings are batched.
CONNECTIONS = (1, 16, 64)


def run(duration, warmup, rounds, log, concurrencies=CONNECTIONS):
    """Measure the service under each durability at each concurrency, `rounds` times (alternating which goes first);
    return a throughput.ThroughputRow per concurrency, its rounds by durability."""
    workdir = harness.BUILD_DIR / "durability"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    shipped = json.loads((harness.ROOT / "settings.json").read_text())
    servers = {}
    try:
        for durability in DURABILITIES:
            settings = write_settings(
                workdir / f"{durability}.json",
                {throughput.USERNAME: {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}},
                base_frequency=shipped["base_frequency"],
                email_processing_frequency=shipped["email_processing_frequency"],
                durability=durability,
            )
            servers[durability] = harness.start_service(
                settings, workdir / f"{durability}.db", workdir / f"{durability}.log"
            )
        results = {}
        for round_number in range(rounds):
            order = DURABILITIES if round_number % 2 else tuple(reversed(DURABILITIES))
            for connections in concurrencies:
                for durability in order:
                    result = throughput.measure(
                        servers[durability], throughput.PING_PATH, connections, "keep-alive", duration, warmup
                    )
                    results.setdefault((connections, durability), []).append(result)
                    log(
                        f"  round {round_number + 1}/{rounds}, {connections:>3} connections, {durability:<7}:"
                        f" {result.rps:8.0f} req/s  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms"
                    )
        return [
            throughput.ThroughputRow(c, "keep-alive", {d: results[c, d] for d in DURABILITIES}) for c in concurrencies
        ]
    finally:
        for started in servers.values():
            started.stop()
