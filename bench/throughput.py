"""Ping throughput and latency with wrk, and bursts of fresh connections: the service against two baselines.

The baselines serve bench/bare_app.py's hello-world app: `waitress` is waitress with its defaults (what a user
would deploy, `waitress-serve`), `bare` is the app served exactly the service's way (serving.py: the limit of
the service's own serving shape). Servers are measured in turn, in a different order in alternate rounds.
"""

import json
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from statistics import median

from bench import harness
from loadgen import burst
from support import write_settings

LUA_SCRIPT = harness.ROOT / "bench" / "ping.lua"
# In wrk's environment: space-separated paths that bench/ping.lua asks for in turn instead of the URL's.
PATHS_VARIABLE = "BENCH_WRK_PATHS"
USERNAME = "bench-device"
SERVERS = ("service", "bare", "waitress")
MODES = ("keep-alive", "close")
# The plain ping, measured at every concurrency and mode, and the other forms of signal, each measured
# kept alive at SIGNAL_CONNECTIONS: a burst of failures (each one short write, as a ping) and the
# Healthchecks-style path. The baselines answer any path alike.
PING_FORM = "/ping?username=NAME"
SIGNAL_FORMS = {
    "/ping?username=NAME&status=fail": "/ping?" + urllib.parse.urlencode({"username": USERNAME, "status": "fail"}),
    "/ping/NAME": "/ping/" + urllib.parse.quote(USERNAME, safe=""),
}
SIGNAL_CONNECTIONS = 16
# A baseline round whose CPU per request is more than this many times its own 1-connection figure (same
# mode and round) has degraded: it is measured again, and never counted in a ratio.
DEGRADED_CPU_FACTOR = 3
DEGRADED_RETRIES = 2


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: requests per second, latency percentiles in ms, failures, and server CPU per request."""

    rps: float
    p50_ms: float
    p99_ms: float
    non_200: int
    socket_errors: int
    cpu_us_per_request: float
    degraded: bool = False


@dataclass(frozen=True)
class ThroughputRow:
    """Every server at one concurrency and connection mode: each round's result per server."""

    connections: int
    mode: str
    rounds: dict  # server name -> [WrkResult per round]
    form: str = PING_FORM

    def median(self, name):
        """The server's median req/s, p99 and CPU over its sound rounds (all rounds if none is sound)."""
        results = [r for r in self.rounds[name] if not r.degraded] or self.rounds[name]
        return WrkResult(
            rps=median(r.rps for r in results),
            p50_ms=median(r.p50_ms for r in results),
            p99_ms=median(r.p99_ms for r in results),
            non_200=sum(r.non_200 for r in results),
            socket_errors=sum(r.socket_errors for r in results),
            cpu_us_per_request=median(r.cpu_us_per_request for r in results),
            degraded=all(r.degraded for r in self.rounds[name]),
        )

    def ratios(self, baseline):
        """Service req/s over `baseline`'s in each round where the baseline was sound."""
        return [
            service.rps / base.rps
            for service, base in zip(self.rounds["service"], self.rounds[baseline], strict=True)
            if not base.degraded
        ]


@dataclass(frozen=True)
class BurstRow:
    """One burst size: per server and round, (seconds until the last answer, p50 s, p99 s, failures)."""

    clients: int
    rounds: dict  # server name -> [(elapsed, p50, p99, failures)]


def start_servers(workdir):
    """Start the service (one user, a new database) and both baselines; return {name: harness.Started}."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings = harness.ROOT / "settings.json"
    shipped = json.loads(settings.read_text())
    write_settings(
        workdir / "settings.json",
        {USERNAME: {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}},
        base_frequency=shipped["base_frequency"],
        email_processing_frequency=shipped["email_processing_frequency"],
    )
    service = harness.start_service(workdir / "settings.json", workdir / "ping_listener.db", workdir / "service.log")
    return {
        "service": service,
        "bare": harness.start(["-m", "bench.bare_app"], {}, workdir / "bare.log"),
        "waitress": harness.start(["-m", "bench.waitress_default"], {}, workdir / "waitress.log"),
    }


# The service's real ping; the baselines answer the same path.
PING_PATH = "/ping?" + urllib.parse.urlencode({"username": USERNAME})


def run_wrk(servers, concurrencies, duration, warmup, rounds, log):
    """Measure every server at each concurrency and mode, and each of SIGNAL_FORMS at SIGNAL_CONNECTIONS,
    `rounds` times; return ThroughputRows (the plain ping's first)."""
    runs = [(PING_FORM, PING_PATH, mode, connections) for mode in MODES for connections in concurrencies]
    runs += [(form, path, "keep-alive", SIGNAL_CONNECTIONS) for form, path in SIGNAL_FORMS.items()]
    results = {}
    for round_number in range(rounds):
        order = SERVERS if round_number % 2 else tuple(reversed(SERVERS))
        for form, path, mode, connections in runs:
            for name in order:
                result = _measure_sound(servers, name, path, mode, connections, duration, warmup, results, round_number)
                results.setdefault((form, connections, mode, name), []).append(result)
                log(
                    f"  round {round_number + 1}/{rounds}, {form}, {mode:<10} {connections:>3} connections,"
                    f" {name:<8}: {result.rps:8.0f} req/s  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms"
                    f"  {result.cpu_us_per_request:.0f} µs CPU/req{'  DEGRADED' if result.degraded else ''}"
                )
    return [
        ThroughputRow(connections, mode, {name: results[form, connections, mode, name] for name in SERVERS}, form)
        for form, _, mode, connections in runs
    ]


def run_bursts(servers, sizes, rounds, log):
    """Send bursts of `sizes` fresh connections to the service and the `waitress` baseline; return BurstRows."""
    rows = []
    for clients in sizes:
        per_server = {}
        for round_number in range(rounds):
            order = ("service", "waitress") if round_number % 2 else ("waitress", "service")
            for name in order:
                started = servers[name]
                host, port = urllib.parse.urlsplit(started.url).netloc.rsplit(":", 1)
                result = burst(host, int(port), [PING_PATH] * clients, timeout=30)
                latencies = sorted(result.latencies) or [float("nan")]
                failures = len(result.failures) + sum(1 for status in result.statuses if status != 200)
                measured = (result.elapsed, _percentile(latencies, 50), _percentile(latencies, 99), failures)
                per_server.setdefault(name, []).append(measured)
                log(
                    f"  burst of {clients:>6}, round {round_number + 1}/{rounds}, {name:<8}: {result.elapsed:.2f} s,"
                    f" p99 {measured[2]:.2f} s, {failures} failed"
                )
        rows.append(BurstRow(clients, per_server))
    return rows


def _measure_sound(servers, name, path, mode, connections, duration, warmup, results, round_number):
    """Measure one server; a baseline that degraded against its own 1-connection CPU is measured again."""
    for _ in range(DEGRADED_RETRIES + 1):
        result = measure(servers[name], path, connections, mode, duration, warmup)
        single = results.get((PING_FORM, 1, mode, name))
        if name == "service" or connections == 1 or single is None:
            return result
        baseline_cpu = single[min(round_number, len(single) - 1)].cpu_us_per_request
        if result.cpu_us_per_request <= DEGRADED_CPU_FACTOR * baseline_cpu:
            return result
    return WrkResult(**{**result.__dict__, "degraded": True})


def measure(started, path, connections, mode, duration, warmup):
    """One WrkResult for the server `started`: wrk for `warmup` seconds, then `duration` seconds timed."""
    wrk(started.url + path, connections, mode, warmup)
    cpu_before = harness.cpu_seconds(started.pid)
    report = wrk(started.url + path, connections, mode, duration)
    cpu = harness.cpu_seconds(started.pid) - cpu_before
    requests = max(report["requests"], 1)
    return WrkResult(
        rps=report["requests"] / (report["duration_us"] / 1e6),
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        non_200=report["non_200"],
        socket_errors=report["socket_errors"],
        cpu_us_per_request=cpu / requests * 1e6,
    )


def wrk(url, connections, mode, seconds):
    """One wrk run against `url` (`mode` "keep-alive" or "close"); its JSON report from bench/ping.lua."""
    # wrk takes whole seconds. One wrk thread: on two cores, every cycle wrk spends is one the server
    # under test cannot use.
    close = ["-H", "Connection: close"] if mode == "close" else []
    command = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", *close]
    command += ["-s", str(LUA_SCRIPT), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return json.loads(output.strip().splitlines()[-1])


def _percentile(sorted_values, percent):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * percent / 100))]
