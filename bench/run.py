"""Run every benchmark in one go, print the results table and write it to bench/results.md.

python -m bench.run [--duration 10] [--rounds 3] [--only ping,tick,...]   (`make bench` runs it all)
"""

import argparse
import os
import sys
import time
from importlib import metadata
from pathlib import Path

import scheduler
import serving
from bench import detection, footprint, harness, history, throughput, tick

SECTIONS = ("ping", "tick", "startup", "idle", "history", "detection")
RESULTS = harness.ROOT / "bench" / "results.md"


def main(argv=None):
    """Run the selected benchmarks; write the report if all of them ran (or --output was given)."""
    args = _parse_args(argv)
    os.environ["TZ"] = harness.BENCH_TZ
    time.tzset()
    sections = args.only or SECTIONS
    harness.BUILD_DIR.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    load_before = harness.load_average()
    results = {}
    for section in sections:
        _log(f"{section}:")
        results[section] = _run_section(section, args)
    elapsed = time.monotonic() - began
    report = _report(results, args, load_before, harness.load_average(), elapsed)
    print(report)
    output = args.output or (RESULTS if set(sections) == set(SECTIONS) else None)
    if output:
        Path(output).write_text(report)
        _log(f"written to {output}")
    return 0


def _run_section(section, args):
    if section == "ping":
        return throughput.run((1, 16, 64), args.duration, args.warmup, args.rounds, _log)
    if section == "tick":
        return tick.run((1_000, 10_000, 100_000), late_repeats=21, idle_repeats=501, log=_log)
    if section == "startup":
        return footprint.startup(100_000, runs=3, log=_log)
    if section == "idle":
        return footprint.idle_cpu(10_000, args.idle_seconds, _log)
    if section == "history":
        return history.run(requests=20, log=_log)
    return detection.run(devices=20, log=_log)


def _report(results, args, load_before, load_after, elapsed):
    lines = [
        "# Ping Listener benchmarks",
        "",
        "Written by `make bench` (bench/run.py); every number below is from one run.",
        "",
    ]
    lines += _machine(load_before, load_after, elapsed)
    targets = []
    if "ping" in results:
        lines += _ping_table(results["ping"], args, targets)
    if "tick" in results:
        lines += _tick_table(results["tick"], targets)
    if "startup" in results or "idle" in results:
        lines += _footprint_table(results.get("startup"), results.get("idle"), args, targets)
    if "history" in results:
        lines += _history_table(results["history"], targets)
    if "detection" in results:
        lines += _detection_table(results["detection"], targets)
    lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {'met' if met else '**missed**'} |" for target, measured, met in targets]
    return "\n".join(lines) + "\n"


def _machine(load_before, load_after, elapsed):
    facts = harness.machine()
    facts["packages"] = ", ".join(f"{name} {metadata.version(name)}" for name in ("waitress", "bottle"))
    facts["TZ"] = harness.BENCH_TZ
    facts["load average (1 min)"] = f"{load_before:.2f} at start, {load_after:.2f} at end"
    facts["duration"] = f"{elapsed / 60:.1f} min"
    lines = ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in facts.items()]
    if max(load_before, load_after) > 0.5:
        lines += [
            "",
            f"The machine was not idle (load average up to {max(load_before, load_after):.1f} on"
            f" {facts['cores']} cores, from other work): absolute numbers are lower and noisier than on a quiet"
            " machine; the bare app ran interleaved with the service so that their ratios stay comparable.",
        ]
    return [*lines, ""]


def _ping_table(rows, args, targets):
    lines = [
        "## 1. Ping throughput and latency",
        "",
        f"`wrk -t1 -cN -d{args.duration}s` against `GET /ping?username=...` after a {args.warmup} s warm-up,"
        f" {args.rounds} round(s) with the service and the bare app interleaved; medians over the rounds."
        " The service is `python server.py` on a real SQLite file in WAL mode, every ping committed before"
        " its answer. The bare app (bench/bare_app.py) is a hello-world WSGI app served through server.py's own"
        f" `create_http_server` and serving loop: same waitress settings (worker threads:"
        f" {serving.WORKER_THREADS}, GIL switch interval {serving.SWITCH_INTERVAL * 1000:g} ms, `waitress.queue`"
        " logger quieted, same limits). CPU is the server process's user + system time per request.",
        "",
        f"The last rows are the other forms of signal at {throughput.SIGNAL_CONNECTIONS} connections, held to the"
        " same targets: a burst of `status=fail` (each recorded with its state change, as a ping is) and the"
        " Healthchecks-style `/ping/NAME`.",
        "",
        "| signal | connections | service req/s | bare req/s | ratio | service p50 / p99 ms | bare p50 / p99 ms"
        " | p99 ratio | non-200 service / bare | CPU µs/req service / bare |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        service, bare = row.service, row.bare
        lines.append(
            f"| `{row.form}` | {row.connections} | {service.rps:.0f} | {bare.rps:.0f} | {row.ratio:.2f}"
            f" | {service.p50_ms:.2f} / {service.p99_ms:.2f} | {bare.p50_ms:.2f} / {bare.p99_ms:.2f}"
            f" | {service.p99_ms / bare.p99_ms:.1f}× | {service.non_200 + service.socket_errors}"
            f" / {bare.non_200 + bare.socket_errors}"
            f" | {service.cpu_us_per_request:.0f} / {bare.cpu_us_per_request:.0f} |"
        )
        of = "" if row.form == throughput.PING_FORM else f" (`{row.form}`)"
        if row.connections == 16:
            targets.append((f"throughput ≥ 70 % of bare at 16 connections{of}", f"{row.ratio:.1%}", row.ratio >= 0.7))
            p99_ratio = service.p99_ms / bare.p99_ms
            targets.append((f"p99 at 16 connections ≤ 3× bare's{of}", f"{p99_ratio:.1f}×", p99_ratio <= 3))
        if row.connections == 64:
            targets.append(("throughput ≥ 50 % of bare at 64 connections", f"{row.ratio:.1%}", row.ratio >= 0.5))
    if any(len(row.ratios) > 1 for row in rows):
        lines += [
            "",
            "Ratio in each round: "
            + "; ".join(
                f"`{row.form}` at {row.connections} connections " + ", ".join(f"{ratio:.2f}" for ratio in row.ratios)
                for row in rows
            )
            + ".",
        ]
    # The notes compare concurrencies: the plain ping's rows.
    plain = [row for row in rows if row.form == throughput.PING_FORM]
    lines += ["", *_spin_note(plain), *_busy_note(plain)]
    return [*lines, ""]


def _busy_note(rows):
    """Why the service falls behind the bare app at 64 connections when the bare app is not spinning."""
    by_connections = {row.connections: row for row in rows}
    if 16 not in by_connections or 64 not in by_connections or by_connections[64].ratio >= 0.5:
        return []
    busy, moderate = by_connections[64], by_connections[16]
    return [
        "",
        f"At 64 connections the service reached {busy.ratio:.1%} of the bare app. There waitress's one I/O thread"
        " does Python work for every open connection each time it wakes, and it shares the GIL with the worker:"
        " whenever the worker lets go of the GIL (the service does once per ping, while SQLite commits; the bare"
        " app only to send), the I/O thread takes a whole pass before the worker gets it back. That, not the"
        f" ping's own work, is the service's extra CPU per request: {busy.service.cpu_us_per_request:.0f} µs"
        f" against {busy.bare.cpu_us_per_request:.0f} for the bare app at 64 connections, and"
        f" {moderate.service.cpu_us_per_request:.0f} against {moderate.bare.cpu_us_per_request:.0f} at 16."
        " A worker that lets go of the GIL less often falls into the spinning state described above instead.",
    ]


def _spin_note(rows):
    """How to read the 64-connection row, and whether this run shows the state it describes."""
    lines = [
        "Reading the 64-connection row: waitress's I/O thread can spin on a connection whose answer a worker is"
        " still writing, holding the GIL that worker needs; the lighter the app, the more often, so the bare app"
        " is hit hardest. It shows as CPU per request many times that at 1 connection, and makes that row swing"
        " from run to run."
    ]
    single = next((row for row in rows if row.connections == 1), None)
    if single is None:
        return lines
    for name in ("bare", "service"):
        baseline = getattr(single, name).cpu_us_per_request
        for row in rows:
            cpu = getattr(row, name).cpu_us_per_request
            if cpu > 3 * baseline:
                lines.append(
                    f"In this run the {'bare app' if name == 'bare' else 'service'} was in that state at"
                    f" {row.connections} connections ({cpu:.0f} µs CPU per request, {baseline:.0f} at 1 connection)."
                )
    return [" ".join(lines)]


def _tick_table(rows, targets):
    lines = [
        "## 2. Absence tick",
        "",
        "One `Scheduler.check_once(now)` in-process on a real SQLite file (median of 21 steps with 1 % of the"
        " users late, 501 with nobody late), alert emails composed and queued with a recording mailer (no SMTP)."
        f" A step handles at most {scheduler.USERS_PER_STEP} due users; *all late users* is the listener's"
        " back-to-back steps until one is not full. Between timed steps, bench-only SQL on the bench's own"
        " database puts the late users back as they were.",
        "",
        "| users | late | one step, 1 % late | all late users (steps) | one step, 0 % late |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.users:,} | {row.late:,} | {row.step_late_ms:.2f} ms | {row.backlog_late_ms:.2f} ms"
            f" ({row.steps_for_backlog}) | {row.step_none_late_ms * 1000:.0f} µs |"
        )
    largest = max(rows, key=lambda row: row.users)
    if largest.users == 100_000:
        targets.append(
            ("tick at 100 000 users, 1 % late < 20 ms", f"{largest.step_late_ms:.1f} ms", largest.step_late_ms < 20)
        )
        targets.append(
            (
                "tick at 100 000 users, 0 % late < 1 ms",
                f"{largest.step_none_late_ms:.3f} ms",
                largest.step_none_late_ms < 1,
            )
        )
    return [*lines, ""]


def _footprint_table(startup, idle, args, targets):
    lines = ["## 3. Startup, memory and idle CPU", ""]
    if startup:
        lines += [
            f"`python server.py` with {startup.users:,} users in settings.json: seconds from starting the process"
            " to its `listening on` line (median of 3, on a new database and on the existing one), and its"
            " resident memory 1.5 s later (median; peak over all starts).",
            "",
            "| users | startup, new database | startup, existing database | RSS | peak RSS |",
            "|---|---|---|---|---|",
            f"| {startup.users:,} | {startup.first_start_s:.2f} s | {startup.restart_s:.2f} s"
            f" | {startup.rss_mb:.0f} MB | {startup.peak_rss_mb:.0f} MB |",
            "",
        ]
        slowest = max(startup.first_start_s, startup.restart_s)
        targets.append(("startup at 100 000 users < 3 s", f"{slowest:.2f} s", slowest < 3))
        targets.append(("RSS at 100 000 users < 150 MB", f"{startup.peak_rss_mb:.0f} MB", startup.peak_rss_mb < 150))
    if idle is not None:
        lines += [
            f"Idle CPU: 10,000 users, nobody late, frequencies as in the shipped settings.json, over"
            f" {args.idle_seconds} s: **{idle:.4f} cores**.",
            "",
        ]
        targets.append(("idle CPU < 0.01 core", f"{idle:.4f}", idle < 0.01))
    return lines


def _history_table(result, targets):
    slowest = max(result.first_ms, result.max_ms)
    targets.append(("/logs of 86 400 pings < 150 ms", f"{slowest:.0f} ms at most", slowest < 150))
    return [
        "## 4. History",
        "",
        "`GET /logs` for one user's day holding one ping a second, over HTTP on one kept-alive connection:"
        " the first request after the service started, then the median and max of 20 more.",
        "",
        "| pings in the table | pings in the answer | first | median | max |",
        "|---|---|---|---|---|",
        f"| {result.pings_in_table:,} | {result.pings_in_answer:,} | {result.first_ms:.0f} ms"
        f" | {result.median_ms:.0f} ms | {result.max_ms:.0f} ms |",
        "",
    ]


def _detection_table(result, targets):
    targets.append(
        (
            "detection latency max ≤ base + email processing + 0.25 s",
            f"{result.max_s * 1000:.0f} ms (bound {result.bound_s * 1000:.0f} ms)",
            result.max_s <= result.bound_s,
        )
    )
    return [
        "## 5. Detection latency",
        "",
        f"`base_frequency` and `email_processing_frequency` {detection.FREQUENCY} s; {result.devices} devices ping"
        " once and fall silent, their deadlines 0.5 s apart. Time from each deadline (last ping + max_sleep)"
        " to its alert being accepted by a local SMTP-over-TLS server (aiosmtpd, as in the tests).",
        "",
        "| alerts | median | max | bound |",
        "|---|---|---|---|",
        f"| {result.devices} | {result.median_s * 1000:.0f} ms | {result.max_s * 1000:.0f} ms"
        f" | {result.bound_s * 1000:.0f} ms |",
        "",
    ]


def _parse_args(argv):
    parser = argparse.ArgumentParser(description="Ping Listener's benchmarks.")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each timed run (default 2)")
    # Several rounds: on a shared two-core machine one 10 s run is at the mercy of whatever else runs.
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the ping benchmark (default 3)")
    parser.add_argument("--idle-seconds", type=int, default=30, help="seconds the idle CPU is measured over")
    parser.add_argument(
        "--only",
        type=lambda text: [part for part in text.split(",") if part],
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--output", help="where to write the report (default bench/results.md, after a full run)")
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


def _log(message):
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
