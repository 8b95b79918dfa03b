"""Where a ping's CPU goes: the service's own work per ping, in process and served, beside a hello-world request.

Served (section 1), every request also pays the serving's work (reading the request, answer headers, sockets,
poll rounds), the same for the service and for the bare app. `run` measures in process, on a real SQLite file in
WAL mode, what only the service does: its /ping WSGI app, and within it Store.record_ping (the committed INSERT and
the UPDATE of the user's state that its trigger makes), each committed alone (as at 1 connection) and 16 to
a transaction (Store.ping_batch, as a poll round at 16 connections is). `run_served` measures the CPU per
request of the servers of section 1 and of the service's own app with its write left out, served exactly
the service's way (`python -m bench.ping_cost SETTINGS DB` serves that one): the difference between that
and the service is what the write costs served.
"""

import argparse
import io
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import config
import server
import serving
import web
from bench import harness, throughput
from bench.bare_app import hello
from store import Store
from support import make_test_app, write_settings

BATCH = 16
# The servers measured by run_served, at each of these connections kept alive.
SERVED = ("bare", "unwritten", "service", "waitress")
SERVED_CONNECTIONS = (1, 16)
LONG_USERNAME = "x" * 10_000


@dataclass(frozen=True)
class PingCost:
    """CPU µs per call of one part of a ping: committed alone, and BATCH to a transaction."""

    part: str
    alone_us: float
    batched_us: float


def run(calls, repeats, log):
    """Measure each part `repeats` times over `calls` calls; return PingCosts with the median of the repeats."""
    with tempfile.TemporaryDirectory() as directory:
        settings_path = write_settings(
            Path(directory) / "settings.json",
            {throughput.USERNAME: {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}},
        )
        settings = config.load_settings(settings_path)
        store, unwritten = Store(Path(directory) / "ping_listener.db"), UnwrittenStore(Path(directory) / "unwritten.db")
        try:
            for each in (store, unwritten):
                each.sync_users(settings.users, time.time())
            app, unwritten_app = (make_test_app(each, settings, time.time) for each in (store, unwritten))
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": "/ping",
                "QUERY_STRING": throughput.PING_PATH.partition("?")[2],
                "wsgi.input": io.BytesIO(),
            }
            # Each with the transaction it runs in, if any: the hello-world app and the parsing write nothing.
            parts = {
                "hello-world WSGI app (the bare app's whole app)": (
                    lambda: hello(dict(environ), _start_response),
                    None,
                ),
                "the service's /ping WSGI app without its write (parsing, token check, answer)": (
                    lambda: unwritten_app(dict(environ), _start_response),
                    None,
                ),
                "Store.record_ping (the INSERT and its trigger's UPDATE, committed)": (
                    lambda: store.record_ping(throughput.USERNAME, time.time()),
                    store.ping_batch,
                ),
                "the service's /ping WSGI app": (lambda: app(dict(environ), _start_response), store.ping_batch),
                # What tests/test_fault_hostile_input.py calls a quick 404: nothing is written.
                f"the service's /ping WSGI app answering 404 to a {len(LONG_USERNAME):,}-character unknown username": (
                    lambda: app(dict(environ, QUERY_STRING=f"username={LONG_USERNAME}"), _start_response),
                    None,
                ),
            }
            costs = []
            for part, (call, batch) in parts.items():
                alone = _cpu_us(call, calls, repeats, None)
                batched = alone if batch is None else _cpu_us(call, calls, repeats, batch)
                log(f"  {part}: {alone:.1f} µs alone, {batched:.1f} µs {BATCH} to a transaction")
                costs.append(PingCost(part, alone, batched))
            return costs
        finally:
            store.close()
            unwritten.close()


def _cpu_us(call, calls, repeats, batch):
    """Median over `repeats` of the process CPU µs per `call()`, BATCH calls inside each `batch()` if given."""
    results = []
    for _ in range(repeats):
        began = time.process_time()
        if batch is None:
            for _ in range(calls):
                call()
        else:
            for _ in range(calls // BATCH):
                with batch():
                    for _ in range(BATCH):
                        call()
        results.append((time.process_time() - began) / calls * 1e6)
    return statistics.median(results)


def _start_response(status, headers):
    return None


def run_served(servers, workdir, duration, warmup, rounds, log):
    """CPU µs per request of each of SERVED at SERVED_CONNECTIONS kept alive, the servers in turn in a different
    order each round; return {(name, connections): median over the rounds}. `servers` are section 1's."""
    unwritten = harness.start(
        ["-m", "bench.ping_cost", workdir / "settings.json", workdir / "unwritten.db"], {}, workdir / "unwritten.log"
    )
    try:
        by_name = {**servers, "unwritten": unwritten}
        results = {}
        for round_number in range(rounds):
            order = SERVED if round_number % 2 else tuple(reversed(SERVED))
            for connections in SERVED_CONNECTIONS:
                for name in order:
                    result = throughput.measure(
                        by_name[name], throughput.PING_PATH, connections, "keep-alive", duration, warmup
                    )
                    results.setdefault((name, connections), []).append(result.cpu_us_per_request)
                    log(
                        f"  round {round_number + 1}/{rounds}, {connections:>2} connections, {name:<9}:"
                        f" {result.cpu_us_per_request:.0f} µs CPU/req"
                    )
        return {key: statistics.median(values) for key, values in results.items()}
    finally:
        unwritten.stop()


class UnwrittenStore(Store):
    """The service's store, except that a ping is not written: for measuring what the write costs served."""

    def record_ping(self, username, now, kind="success", exit_code=None, body=None):
        """Write nothing."""


def main(argv=None):
    """Serve the service's app over an UnwrittenStore, exactly the service's way, until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="The service's app with its ping write left out.")
    parser.add_argument("settings")
    parser.add_argument("db")
    args = parser.parse_args(argv)
    stop_requested = server.stop_on_signals()
    settings = config.load_settings(args.settings)
    store = UnwrittenStore(args.db)
    store.sync_users(settings.users, time.time())
    app = make_test_app(store, settings, time.time)
    http_server = serving.create_http_server(
        app, "127.0.0.1", 0, server.QUICK_PATHS, web.MAX_REQUEST_BODY, batch=store.ping_batch
    )
    print(f"listening on http://127.0.0.1:{http_server.port}", flush=True)
    serving.serve_until_signalled(http_server, stop_requested, server.SHUTDOWN_GRACE)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
