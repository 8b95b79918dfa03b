"""Ping throughput and latency of the real service against the bare waitress app, interleaved, with wrk."""

import json
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from statistics import median

from bench import harness
from support import write_settings

LUA_SCRIPT = harness.ROOT / "bench" / "ping.lua"
USERNAME = "bench-device"
# The plain ping, measured at every concurrency, and the other forms of signal, each measured at
# SIGNAL_CONNECTIONS: a burst of failures (each one short write, as a ping) and the Healthchecks-style path.
PING_FORM = "/ping?username=NAME"
SIGNAL_FORMS = {
    "/ping?username=NAME&status=fail": "/ping?" + urllib.parse.urlencode({"username": USERNAME, "status": "fail"}),
    "/ping/NAME": "/ping/" + urllib.parse.quote(USERNAME, safe=""),
}
SIGNAL_CONNECTIONS = 16


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: requests per second, latency percentiles in ms, failures, and server CPU per request."""

    rps: float
    p50_ms: float
    p99_ms: float
    non_200: int
    socket_errors: int
    cpu_us_per_request: float


@dataclass(frozen=True)
class ThroughputRow:
    """The service and the bare app at one concurrency; with several rounds, each field is the median."""

    connections: int
    service: WrkResult
    bare: WrkResult
    ratios: list
    form: str = PING_FORM

    @property
    def ratio(self):
        """Service req/s over bare req/s (median over rounds)."""
        return median(self.ratios)


def run(concurrencies, duration, warmup, rounds, log):
    """Measure both apps at each concurrency, and each of SIGNAL_FORMS at SIGNAL_CONNECTIONS, `rounds` times
    interleaved; return ThroughputRows (the plain ping's first)."""
    workdir = harness.BUILD_DIR / "throughput"
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
    bare = harness.start(["-m", "bench.bare_app"], {}, workdir / "bare.log")
    ping_path = "/ping?" + urllib.parse.urlencode({"username": USERNAME})
    runs = [(PING_FORM, ping_path, connections) for connections in concurrencies]
    runs += [(form, path, SIGNAL_CONNECTIONS) for form, path in SIGNAL_FORMS.items()]
    results = {}
    try:
        for round_number in range(rounds):
            for form, path, connections in runs:
                for name, started in (("bare", bare), ("service", service)):
                    _wrk(started.url + path, connections, warmup)
                    result = _measure(started, path, connections, duration)
                    results.setdefault((form, connections, name), []).append(result)
                    log(
                        f"  round {round_number + 1}/{rounds}, {form}, {connections:>2} connections, {name:<7}:"
                        f" {result.rps:8.0f} req/s  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms"
                        f"  {result.cpu_us_per_request:.0f} µs CPU/req"
                    )
    finally:
        service.stop()
        bare.stop()
    return [
        ThroughputRow(
            connections,
            _median_result(results[form, connections, "service"]),
            _median_result(results[form, connections, "bare"]),
            [
                s.rps / b.rps
                for s, b in zip(results[form, connections, "service"], results[form, connections, "bare"], strict=True)
            ],
            form,
        )
        for form, _, connections in runs
    ]


def _measure(started, path, connections, duration):
    cpu_before = harness.cpu_seconds(started.pid)
    report = _wrk(started.url + path, connections, duration)
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


def _wrk(url, connections, seconds):
    # wrk takes whole seconds. One wrk thread: on two cores, every cycle wrk spends is one the server
    # under test cannot use.
    command = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", str(LUA_SCRIPT), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return json.loads(output.strip().splitlines()[-1])


def _median_result(results):
    return WrkResult(
        rps=median(r.rps for r in results),
        p50_ms=median(r.p50_ms for r in results),
        p99_ms=median(r.p99_ms for r in results),
        non_200=sum(r.non_200 for r in results),
        socket_errors=sum(r.socket_errors for r in results),
        cpu_us_per_request=median(r.cpu_us_per_request for r in results),
    )
