"""Run every benchmark in one go, print the results table and write it to bench/results.md.

python -m bench.run [--duration 10] [--rounds 3] [--only ping,tick,...]   (`make bench` runs it all)
"""

import argparse
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from statistics import median

import overview
import scheduler
import server
import serving
import web
from bench import (
    details,
    detection,
    durability,
    email_flood,
    footprint,
    harness,
    history,
    management,
    operations,
    overview_data,
    ping_cost,
    postgresql,
    status_data,
    throughput,
    tick,
)

SECTIONS = (
    "ping",
    "ping-cost",
    "burst",
    "durability",
    "tick",
    "startup",
    "idle",
    "history",
    "details",
    "overview",
    "status",
    "status-flood",
    "load-memory",
    "detection",
    "metrics",
    "retention",
    "pg-ping",
    "pg-tick",
    "email-flood",
    "api",
)
RESULTS = harness.ROOT / "bench" / "results.md"
# The sections that measure section 1's servers (started once for all of them).
SERVED_SECTIONS = {"ping", "ping-cost", "burst"}


def main(argv=None):
    """Run the selected benchmarks; write the report if all of them ran (or --output was given)."""
    args = _parse_args(argv)
    os.environ["TZ"] = harness.BENCH_TZ
    time.tzset()
    # The sections measured in this process (the tick, the overview, ...) run with the service's collector.
    server.tune_garbage_collector()
    sections = args.only or SECTIONS
    harness.BUILD_DIR.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    load_before = harness.load_average()
    results = {}
    servers = None
    try:
        for section in sections:
            _log(f"{section}:")
            if section in SERVED_SECTIONS and servers is None:
                servers = throughput.start_servers(harness.BUILD_DIR / "throughput")
            results[section] = _run_section(section, args, servers)
            if servers is not None and not SERVED_SECTIONS & set(sections[sections.index(section) + 1 :]):
                for started in servers.values():
                    started.stop()
                servers = None
    finally:
        for started in (servers or {}).values():
            started.stop()
    elapsed = time.monotonic() - began
    report = _report(results, args, load_before, harness.load_average(), elapsed)
    print(report)
    output = args.output or (RESULTS if set(sections) == set(SECTIONS) else None)
    if output:
        Path(output).write_text(report)
        _log(f"written to {output}")
    return 0


def _run_section(section, args, servers):
    if section == "ping":
        return throughput.run_wrk(servers, (1, 16, 64, 256), args.duration, args.warmup, args.rounds, _log)
    if section == "ping-cost":
        in_process = ping_cost.run(calls=16_000, repeats=5, log=_log)
        workdir = harness.BUILD_DIR / "throughput"
        return in_process, ping_cost.run_served(servers, workdir, args.duration, args.warmup, args.rounds, _log)
    if section == "burst":
        return throughput.run_bursts(servers, (1_000, 5_000, 10_000), args.rounds, _log)
    if section == "durability":
        return durability.run(args.duration, args.warmup, args.rounds, _log)
    if section == "tick":
        plain = tick.run((1_000, 10_000, 100_000), late_repeats=21, idle_repeats=501, log=_log)
        chained = tick.run((100_000,), 21, 501, _log, chain_length=tick.CHAIN_LENGTH)
        return plain + chained + tick.run((100_000,), 21, 501, _log, scheduled=True)
    if section == "startup":
        return footprint.startup(100_000, runs=3, log=_log)
    if section == "idle":
        return footprint.idle_cpu(10_000, args.idle_seconds, _log)
    if section == "history":
        return history.run(requests=20, log=_log)
    if section == "details":
        return details.run(requests=10, log=_log, load_seconds=args.duration * 2)
    if section == "overview":
        return overview_data.run(refreshes=20, log=_log)
    if section == "status":
        return status_data.run(repeats=20, log=_log)
    if section == "status-flood":
        return status_data.flood(args.duration * 2, _log)
    if section == "load-memory":
        return overview_data.load_memory(args.load_pings, _log)
    if section == "metrics":
        return operations.scrape(repeats=20, log=_log)
    if section == "retention":
        return operations.retention(seconds=10, log=_log)
    if section == "pg-ping":
        return postgresql.ping(args.duration, args.warmup, args.rounds, _log)
    if section == "pg-tick":
        return postgresql.tick_at(100_000, _log)
    if section == "email-flood":
        return email_flood.run(args.duration, _log)
    if section == "api":
        return management.run(args.duration, args.warmup, _log)
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
    if "ping-cost" in results:
        lines += _ping_cost_table(results["ping-cost"])
    if "burst" in results:
        lines += _burst_table(results["burst"], targets)
    if "durability" in results:
        lines += _durability_table(results["durability"])
    if "tick" in results:
        lines += _tick_table(results["tick"], targets)
    if "startup" in results or "idle" in results:
        lines += _footprint_table(results.get("startup"), results.get("idle"), args, targets)
    if "history" in results:
        lines += _history_table(results["history"], targets)
    if "details" in results:
        lines += _details_table(results["details"], targets)
    if "overview" in results:
        lines += _overview_table(results["overview"], targets)
    if "status" in results:
        lines += _status_table(results["status"], targets)
    if "status-flood" in results:
        lines += _status_flood_table(results["status-flood"], targets)
    if "load-memory" in results:
        lines += _load_memory_table(results["load-memory"], targets)
    if "detection" in results:
        lines += _detection_table(results["detection"], targets)
    if "metrics" in results or "retention" in results:
        lines += _operations_table(results.get("metrics"), results.get("retention"), targets)
    if "pg-ping" in results or "pg-tick" in results:
        lines += _postgresql_table(results.get("pg-ping"), results.get("pg-tick"))
    if "email-flood" in results:
        lines += _email_flood_table(results["email-flood"])
    if "api" in results:
        lines += _management_table(results["api"], targets)
    lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {'met' if met else '**missed**'} |" for target, measured, met in targets]
    return "\n".join(lines) + "\n"


def _machine(load_before, load_after, elapsed):
    facts = harness.machine()
    facts["packages"] = ", ".join(f"{name} {metadata.version(name)}" for name in ("waitress", "bottle"))
    facts["wrk"] = "one thread (`-t1`), on the same machine"
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
        f"`wrk -t1 -cN -d{args.duration}s` against `GET /ping?username=...` after a {args.warmup} s warm-up, with"
        " connections kept alive and with `Connection: close` (a new connection per ping, as `curl` in a crontab"
        f" does); {args.rounds} round(s), the servers measured in turn in a different order each round; medians"
        " over the rounds. The service is `python server.py` on a real SQLite file in WAL mode, every ping"
        " committed before its answer. Two baselines answer the same path with a hello-world WSGI app"
        " (bench/bare_app.py): **waitress** is `waitress-serve` with its defaults (4 threads, 100 connections;"
        " bench/waitress_default.py), what a user would deploy; **bare** is the app served exactly the service's"
        f" way (serving.py: quick paths on the I/O thread, {serving.WORKER_THREADS} worker threads, GIL switch"
        f" interval {serving.SWITCH_INTERVAL * 1000:g} ms, same limits), the limit of the service's serving shape."
        " CPU is the server process's user + system time per request. A baseline round whose CPU per request"
        f" exceeds {throughput.DEGRADED_CPU_FACTOR}× its own 1-connection figure has degraded: it is measured"
        f" again (up to {throughput.DEGRADED_RETRIES} times) and, if it stays degraded, marked † and left out of"
        " every ratio.",
        "",
        f"The last rows are the other forms of signal at {throughput.SIGNAL_CONNECTIONS} connections kept alive,"
        " held to the same targets: a burst of `status=fail` (each recorded with its state change, as a ping is)"
        " and the Healthchecks-style `/ping/NAME`.",
        "",
        "| form | mode | connections | service req/s | waitress req/s | bare req/s | ratio to waitress | ratio to bare"
        " | p50 / p99 ms service | p99 ms waitress / bare | errors service / waitress / bare"
        " | CPU µs/req service / waitress / bare |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        service, waitress, bare = row.median("service"), row.median("waitress"), row.median("bare")
        to_waitress, to_bare = row.ratios("waitress"), row.ratios("bare")
        lines.append(
            f"| `{row.form}` | {row.mode} | {row.connections} | {service.rps:.0f}"
            f" | {waitress.rps:.0f}{_dagger(waitress)} | {bare.rps:.0f}{_dagger(bare)}"
            f" | {_ratio(to_waitress)} | {_ratio(to_bare)}"
            f" | {service.p50_ms:.2f} / {service.p99_ms:.2f} | {waitress.p99_ms:.2f} / {bare.p99_ms:.2f}"
            f" | {_errors(service)} / {_errors(waitress)} / {_errors(bare)}"
            f" | {service.cpu_us_per_request:.0f} / {waitress.cpu_us_per_request:.0f}"
            f" / {bare.cpu_us_per_request:.0f} |"
        )
        where = f"{row.mode}, {row.connections} connection{'s' if row.connections > 1 else ''}"
        if row.form != throughput.PING_FORM:
            where += f", `{row.form}`"
        if to_waitress:
            ratio = median(to_waitress)
            targets.append((f"ping throughput ≥ 1.0× waitress-serve ({where})", f"{ratio:.2f}×", ratio >= 1.0))
        if to_bare:
            ratio = median(to_bare)
            targets.append(
                (f"ping throughput ≥ 0.8× bare served the service's way ({where})", f"{ratio:.2f}×", ratio >= 0.8)
            )
    by_key = {(row.mode, row.connections): row for row in rows if row.form == throughput.PING_FORM}
    for mode in throughput.MODES:
        if (mode, 16) in by_key and (mode, 256) in by_key:
            at_16, at_256 = by_key[mode, 16].median("service").rps, by_key[mode, 256].median("service").rps
            targets.append(
                (f"no collapse: 256 connections ≥ 0.9× 16 ({mode})", f"{at_256 / at_16:.2f}×", at_256 >= 0.9 * at_16)
            )
    lines += ["", "Ratio in each sound round (to waitress; to bare): "]
    lines[-1] += (
        "; ".join(
            f"`{row.form}` {row.mode} {row.connections}: "
            + ", ".join(f"{ratio:.2f}" for ratio in row.ratios("waitress"))
            + "; "
            + ", ".join(f"{ratio:.2f}" for ratio in row.ratios("bare"))
            for row in rows
        )
        + "."
    )
    degraded = [
        f"{name} at {row.mode} {row.connections} (round {index + 1}, {result.cpu_us_per_request:.0f} µs/req)"
        for row in rows
        for name in ("waitress", "bare")
        for index, result in enumerate(row.rounds[name])
        if result.degraded
    ]
    if degraded:
        lines += ["", "† Degraded baseline rounds, left out of the ratios: " + "; ".join(degraded) + "."]
    return [*lines, ""]


def _ping_cost_table(results):
    costs, served = results
    lines = [
        "### Where a ping's CPU goes",
        "",
        "In process (bench/ping_cost.py), no HTTP: CPU µs per call, median of 5 runs of 16 000 calls, on a real"
        " SQLite file in WAL mode.",
        "",
        f"| part | committed alone (as at 1 connection) | {ping_cost.BATCH} to a transaction (as at"
        f" {ping_cost.BATCH} connections) |",
        "|---|---|---|",
    ]
    lines += [f"| {cost.part} | {cost.alone_us:.1f} | {cost.batched_us:.1f} |" for cost in costs]
    lines += [
        "",
        "Served, CPU µs per request (wrk kept alive, as above, medians of the rounds, measured in their own"
        " rounds): the bare app and the service, the service's own app over a store that writes no ping, served"
        " exactly the service's way (*service without its write*), and waitress-serve. The service minus that"
        " is what the write costs served, where its code and data are no longer warm in the CPU's caches"
        " between pings.",
        "",
        "| server | "
        + " | ".join(f"{n} connection{'s' if n > 1 else ''}" for n in ping_cost.SERVED_CONNECTIONS)
        + " |",
        "|---|" + "---|" * len(ping_cost.SERVED_CONNECTIONS),
    ]
    names = {
        "bare": "bare",
        "unwritten": "service without its write",
        "service": "service",
        "waitress": "waitress",
    }
    for name in ping_cost.SERVED:
        cells = " | ".join(f"{served[name, n]:.0f}" for n in ping_cost.SERVED_CONNECTIONS)
        lines.append(f"| {names[name]} | {cells} |")
    return [*lines, ""]


def _burst_table(rows, targets):
    lines = [
        "## 2. Bursts of fresh connections",
        "",
        "N clients connect at the same instant (asyncio, tests/loadgen.py, on the same machine), each sends one"
        " `GET /ping?username=...` with `Connection: close` and reads its answer; a connection refused, reset or"
        " unanswered within 30 s is a failure. Seconds until the last answer, and the answers' p50 / p99"
        " latency from the start of the burst, per round; service and waitress-serve in alternate order.",
        "",
        "| clients | service: total s (p50 / p99) per round | waitress: total s (p50 / p99) per round"
        " | failures service / waitress |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = []
        for name in ("service", "waitress"):
            cells.append(", ".join(f"{total:.2f} ({p50:.2f} / {p99:.2f})" for total, p50, p99, _ in row.rounds[name]))
        failures = {name: sum(measured[3] for measured in row.rounds[name]) for name in ("service", "waitress")}
        lines.append(f"| {row.clients:,} | {cells[0]} | {cells[1]} | {failures['service']} / {failures['waitress']} |")
        service_total = median(measured[0] for measured in row.rounds["service"])
        waitress_total = median(measured[0] for measured in row.rounds["waitress"])
        targets.append(
            (f"burst of {row.clients:,}: no failure", f"{failures['service']} failed", not failures["service"])
        )
        targets.append(
            (
                f"burst of {row.clients:,}: total time ≤ waitress-serve's",
                f"{service_total:.2f} s vs {waitress_total:.2f} s (medians)",
                service_total <= waitress_total,
            )
        )
    return [*lines, ""]


def _ratio(ratios):
    return f"{median(ratios):.2f}" if ratios else "—"


def _dagger(result):
    return " †" if result.degraded else ""


def _errors(result):
    return str(result.non_200 + result.socket_errors)


def _durability_table(rows):
    lines = [
        "### What `durability` costs",
        "",
        "`wrk -t1 -cN` kept alive against `GET /ping?username=...`, as in section 1, on two services side by side"
        " (bench/durability.py), each on a new SQLite file: `process` (the default: synchronous=NORMAL in WAL mode,"
        " a commit survives the process's death) and `power` (synchronous=FULL: the write-ahead log synced at every"
        " commit, before the answers of its batch leave). Medians over the rounds. No targets: the cost of a sync"
        " is the disk's, and this disk's is what these figures say.",
        "",
        "| connections | process req/s | power req/s | power / process | p50 / p99 ms process | p50 / p99 ms power |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        process, power = row.median("process"), row.median("power")
        lines.append(
            f"| {row.connections} | {process.rps:.0f} | {power.rps:.0f} | {power.rps / process.rps:.2f}×"
            f" | {process.p50_ms:.2f} / {process.p99_ms:.2f} | {power.p50_ms:.2f} / {power.p99_ms:.2f} |"
        )
    return [*lines, ""]


def _tick_table(rows, targets):
    lines = [
        "## 3. Absence tick",
        "",
        "One `Scheduler.check_once(now)` in-process on a real SQLite file (median of 21 steps with 1 % of the"
        " users late, 501 with nobody late), alert emails composed and queued with a recording mailer (no SMTP)."
        f" A step handles at most {scheduler.USERS_PER_STEP} due users; *all late users* is the listener's"
        " back-to-back steps until one is not full. Between timed steps, bench-only SQL on the bench's own"
        " database puts the late users back as they were. With dependencies, every user is in a chain of"
        f" {tick.CHAIN_LENGTH} (each depends on the one before it) and the late users are whole chains: a step"
        " reads each due user's parent in the same statement, alerts the heads and suppresses the rest."
        " *Scheduled* users are watched by cron schedules in Europe/Paris (the late 1 % every minute, the"
        " others nightly with an hour's grace): a late one's step also computes its next run with cronsim."
        " After a start every scheduled user is due once, so that the listener stores its real deadline:"
        " *after a start* is those back-to-back steps.",
        "",
        "| users | dependencies | late | one step, 1 % late | all late users (steps) | one step, 0 % late"
        " | after a start (steps) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        chains = f"chains of {row.chain_length}" if row.chain_length > 1 else "none"
        settle = "–" if row.settle_ms is None else f"{row.settle_ms:,.0f} ms ({row.steps_to_settle})"
        lines.append(
            f"| {row.users:,}{' scheduled' if row.scheduled else ''} | {chains} | {row.late:,}"
            f" | {row.step_late_ms:.2f} ms | {row.backlog_late_ms:.2f} ms ({row.steps_for_backlog})"
            f" | {row.step_none_late_ms * 1000:.0f} µs | {settle} |"
        )
    chained = [row for row in rows if row.chain_length > 1 and row.users == 100_000]
    if chained:
        targets.append(
            (
                "tick at 100 000 users in chains of dependencies, 0 % late < 1 ms",
                f"{chained[0].step_none_late_ms:.3f} ms",
                chained[0].step_none_late_ms < 1,
            )
        )
    largest = max((row for row in rows if row.chain_length == 1 and not row.scheduled), key=lambda row: row.users)
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
    lines = ["## 4. Startup, memory and idle CPU", ""]
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
    lines = [
        "## 5. History",
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
    load = result.under_load
    if load is not None:
        targets.append(
            (
                f"ping p99 while {load.readers} clients pull that /logs < 100 ms",
                f"{load.ping_p99_ms:.1f} ms",
                load.ping_p99_ms < 100 and not load.failures,
            )
        )
        lines += [
            f"Heavy reads: {load.readers} connections pull that /logs in a loop (wrk) while one more pings"
            f" (wrk, 1 connection, keep-alive) for {load.seconds} s.",
            "",
            "| /logs answered a second | pings a second | ping p50 | ping p99 | errors |",
            "|---|---|---|---|---|",
            f"| {load.reads_per_second:.1f} | {load.ping_rps:.0f} | {load.ping_p50_ms:.2f} ms"
            f" | {load.ping_p99_ms:.2f} ms | {load.failures} |",
            "",
        ]
    return lines


def _details_table(results, targets):
    lines = [
        "### Details of heavy days",
        "",
        "`GET /logs?details=1` for one user's day, over HTTP on one kept-alive connection: the answer's size, how"
        " many signals it holds (the first that fit in"
        f" {web.LOGS_MAX_DETAILS_BYTES:,} bytes), and the median and max of 10 requests; then {details.READERS}"
        " connections pull it in a loop (wrk) while one more pings (wrk, 1 connection, keep-alive). The long bodies"
        " are 10 000 bytes of control characters each, which JSON writes as six bytes each.",
        "",
        "| day | answer | signals in it | truncated | median | max | /logs a second under load | ping p50 | ping p99"
        " | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        load = result.under_load
        targets.append(
            (
                f"/logs?details=1 of {result.day} <= {web.LOGS_MAX_DETAILS_BYTES:,} bytes",
                f"{result.answer_bytes:,} bytes",
                result.answer_bytes <= web.LOGS_MAX_DETAILS_BYTES,
            )
        )
        targets.append(
            (
                f"ping p99 while {load.readers} clients pull /logs?details=1 of {result.day} < 100 ms",
                f"{load.ping_p99_ms:.1f} ms",
                load.ping_p99_ms < 100 and not load.failures,
            )
        )
        lines.append(
            f"| {result.day} | {result.answer_bytes:,} bytes | {result.signals_in_answer:,}"
            f" | {'yes' if result.truncated else 'no'} | {result.median_ms:.0f} ms | {result.max_ms:.0f} ms"
            f" | {load.reads_per_second:.1f} | {load.ping_p50_ms:.2f} ms | {load.ping_p99_ms:.2f} ms"
            f" | {load.failures} |"
        )
    return [*lines, ""]


def _load_memory_table(result, targets):
    targets.append(
        (
            f"overview's history loading at {result.recent_pings:,} pings in 24 h: peak RSS < 100 MB",
            f"{result.peak_mb:.0f} MB",
            result.peak_mb < 100,
        )
    )
    return [
        "### Loading the last 24 hours",
        "",
        f"A start with {result.recent_pings:,} pings in the last 24 hours, from {result.users} users (one step of"
        " the loading meets them all): the overview's upkeep loads them as after a start, in a process of its"
        " own, reading the store at most"
        f" {overview.HISTORY_PINGS_PER_READ:,} pings at a time.",
        "",
        "| pings in 24 h | users | RSS before | peak RSS | seconds |",
        "|---|---|---|---|---|",
        f"| {result.recent_pings:,} | {result.users} | {result.baseline_mb:.0f} MB | {result.peak_mb:.0f} MB"
        f" | {result.seconds:.1f} |",
        "",
    ]


def _overview_table(result, targets):
    slowest = max(result.first_ms, result.refresh_max_ms, result.day_max_ms)
    targets.append(("every overview answer < 100 ms", f"{slowest:.0f} ms at most", slowest < 100))
    return [
        "## 6. Overview",
        "",
        f"The overview's data, in process and written as JSON, with {result.users:,} configured users and"
        f" {result.pings_in_table:,} pings (a million of them in the last 24 hours): the first"
        " `/overview/state` after a start, while the service's upkeep loads the last 24 hours in the"
        f" background (done {result.loaded_s:.1f} s after the start), then {result.refreshes} refreshes, each"
        f" after {overview_data.NEW_PINGS_PER_REFRESH} new pings (3 s at 200 pings a second), each asked as the"
        " page does, with the version of the answer it has, the window moving by a slot in one of them"
        f" ({result.slide_ms:.0f} ms), and {result.refreshes} day views of a day holding one ping a second.",
        "",
        "| answer | first | median | max |",
        "|---|---|---|---|",
        f"| `/overview/state` ({result.answer_bytes / 1e6:.1f} MB holding every user, refreshes"
        f" {result.refresh_bytes / 1e3:.0f} kB) | {result.first_ms:.0f} ms"
        f" | {result.refresh_median_ms:.0f} ms | {result.refresh_max_ms:.0f} ms |",
        f"| `/overview/day` ({result.day_pings:,} pings) | |"
        f" {result.day_median_ms:.0f} ms | {result.day_max_ms:.0f} ms |",
        "",
    ]


def _status_table(result, targets):
    targets.append(
        (
            f"a status page of {result.devices:,} devices answered < 50 ms",
            f"{result.kept_max_ms:.2f} ms at most",
            result.kept_max_ms < 50,
        )
    )
    targets.append(("a badge < 2 ms (median)", f"{result.badge_median_ms:.2f} ms", result.badge_median_ms < 2))
    return [
        "## Status pages and badges",
        "",
        f"A status page listing {result.devices:,} devices, in process, over a database of {result.pings:,} pings"
        f" (90 days, one an hour each) and {result.outages:,} alerted outages. A request is answered from the"
        " last snapshot of the store (status.py); every 10 s while the page is asked for, a thread of its own"
        ' takes the next and makes the page\'s HTML and JSON from it ("made afresh": only the first request'
        " after a start or a reload waits for that). And a device's SVG badge.",
        "",
        "| answer | median | max |",
        "|---|---|---|",
        f"| a request for the page (HTML, {result.html_bytes / 1e3:.0f} kB) | {result.kept_median_ms:.2f} ms"
        f" | {result.kept_max_ms:.2f} ms |",
        f"| made afresh: snapshot, HTML and JSON ({result.json_bytes / 1e3:.0f} kB) | {result.fresh_median_ms:.0f} ms"
        f" | {result.fresh_max_ms:.0f} ms |",
        f"| badge (SVG) | {result.badge_median_ms:.3f} ms | {result.badge_max_ms:.3f} ms |",
        "",
    ]


def _status_flood_table(load, targets):
    targets.append(
        (
            "ping p99 under a status-page flood < 100 ms",
            f"{load.ping_p99_ms:.1f} ms",
            load.ping_p99_ms < 100 and not load.failures,
        )
    )
    return [
        "### Pings under a status-page flood",
        "",
        f"The service over that database, with that page: {load.readers} connections ask in a loop (wrk) for the"
        " page, its JSON and a device's badge in each form (SVG, JSON, shields), in turn and without"
        f" `If-None-Match`, while one more pings (wrk, 1 connection, keep-alive) for {load.seconds} s.",
        "",
        "| answers a second | pings a second | ping p50 | ping p99 | errors |",
        "|---|---|---|---|---|",
        f"| {load.reads_per_second:.0f} | {load.ping_rps:.0f} | {load.ping_p50_ms:.2f} ms"
        f" | {load.ping_p99_ms:.2f} ms | {load.failures} |",
        "",
    ]


def _operations_table(scrape, retention, targets):
    lines = ["## 7. Operations at fleet size", ""]
    if scrape is not None:
        targets.append(
            (
                f"/metrics scrape at {scrape.users:,} users < 50 ms",
                f"{scrape.max_ms:.1f} ms at most",
                scrape.max_ms < 50,
            )
        )
        lines += [
            f"`Exporter.scrape()` (what `GET /metrics` answers), in process, over a database of {scrape.users:,}"
            f" configured users and {scrape.pings:,} pings: median and max of 20 scrapes after a first one.",
            "",
            "| users | pings | median | max | answer |",
            "|---|---|---|---|---|",
            f"| {scrape.users:,} | {scrape.pings:,} | {scrape.median_ms:.1f} ms | {scrape.max_ms:.1f} ms"
            f" | {scrape.bytes / 1e6:.1f} MB |",
            "",
        ]
    if retention is not None:
        targets.append(
            (
                "ping p99 while retention deletes old pings < 20 ms",
                f"{retention.ping_p99_ms:.1f} ms",
                retention.ping_p99_ms < 20 and not retention.failures,
            )
        )
        lines += [
            f"The service over a copy of that database with `retention_days: 1`, so that all its pings are old;"
            f" one client pings (wrk, 1 connection, keep-alive) for {retention.seconds} s while the retention loop"
            " deletes.",
            "",
            "| pings deleted meanwhile | pings a second | ping p50 | ping p99 | errors |",
            "|---|---|---|---|---|",
            f"| {retention.deleted:,} | {retention.ping_rps:.0f} | {retention.ping_p50_ms:.2f} ms"
            f" | {retention.ping_p99_ms:.2f} ms | {retention.failures} |",
            "",
        ]
    return lines


def _management_table(result, targets):
    ratio = result.by_uuid.rps / result.by_name.rps
    targets += [
        (
            f"management API lists {result.checks:,} checks < 200 ms",
            f"{result.list_max_ms:.0f} ms at most",
            result.list_max_ms < 200,
        ),
        (
            f"creating {result.created:,} checks, one request each, < 10 s",
            f"{result.create_seconds:.1f} s",
            result.create_seconds < 10,
        ),
        ("a ping by UUID within 5 % of a ping by name", f"{ratio:.3f} of by name", ratio >= 0.95),
    ]
    return [
        "## Checks by program",
        "",
        f"The service with {result.checks:,} checks in settings.json and `API_KEY` set, one client on one keep-alive"
        f" connection: `GET /api/v3/checks/` 20 times after a first one, then {result.created:,} `POST /api/v3/checks/`"
        " one after the other; then wrk (16 connections, keep-alive) on `/ping/<name>` and `/ping/<uuid>` of one"
        f" check, {management.ROUNDS} rounds each in alternating order, the best round of each shown.",
        "",
        "| list: median | list: max | answer | create all | ping by name | ping by UUID | ratio |",
        "|---|---|---|---|---|---|---|",
        f"| {result.list_median_ms:.0f} ms | {result.list_max_ms:.0f} ms | {result.list_bytes / 1e6:.1f} MB"
        f" | {result.create_seconds:.1f} s | {result.by_name.rps:.0f}/s | {result.by_uuid.rps:.0f}/s | {ratio:.3f} |",
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
        "## 8. Detection latency",
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


def _email_flood_table(result):
    return [
        "## Email pings under a flood",
        "",
        "One client pinging over HTTP (wrk, 1 connection, keep-alive), first alone, then while"
        f" {email_flood.SMTP_SENDERS} SMTP clients send email pings as fast as they are answered (a session each)"
        f" and {email_flood.IDLE_SESSIONS} more SMTP sessions are held open doing nothing.",
        "",
        "| ping p50 alone | ping p99 alone | ping p50, flood | ping p99, flood | email pings/s | failures |",
        "|---|---|---|---|---|---|",
        f"| {result.quiet_p50_ms:.2f} ms | {result.quiet_p99_ms:.2f} ms | {result.flood_p50_ms:.2f} ms"
        f" | {result.flood_p99_ms:.2f} ms | {result.messages_per_second:.0f} | {result.failures} |",
        "",
    ]


def _postgresql_table(ping_rows, tick_row):
    lines = [
        "## 9. PostgreSQL",
        "",
        "The service on PostgreSQL (a cluster of the bench's own, bench/postgresql.py, with PostgreSQL's durable"
        " defaults: a commit waits for its WAL flush, which SQLite's synchronous=NORMAL does not) on this same"
        " machine. No targets: these figures say what moving to PostgreSQL costs here.",
        "",
    ]
    if ping_rows:
        lines += [
            f"`GET /ping?username=...` with wrk as in section 1 ({len(ping_rows[0].rounds['sqlite'])} round(s),"
            " medians): the service on SQLite, one"
            " instance on PostgreSQL, and two instances on the same PostgreSQL database (no load balancer: one"
            " wrk per instance with half the connections, at the same time; req/s added up, latency of the worse"
            " instance; the second instance runs idle during the one-instance runs). CPU per request of the"
            " service's processes and of the PostgreSQL server's (all its processes). Two instances share the"
            " machine's 2 cores with PostgreSQL and wrk, and their ping batches take turns at the database's"
            " write lock (docs/database.md), each batch sharing one commit: this shows what a second instance"
            " costs, not what two machines would give.",
            "",
            "| mode | connections | setup | req/s | p50 / p99 ms | errors | CPU µs/req service + database |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in ping_rows:
            for setup in postgresql.SETUPS:
                result = row.median(setup)
                lines.append(
                    f"| {row.mode} | {row.connections} | {setup} | {result.rps:.0f}"
                    f" | {result.p50_ms:.2f} / {result.p99_ms:.2f} | {result.errors:.0f}"
                    f" | {result.service_cpu_us:.0f} + {result.database_cpu_us:.0f} |"
                )
        lines.append("")
    if tick_row:
        lines += [
            f"The absence tick of section 3 at {tick_row.users:,} users on PostgreSQL ({tick_row.late:,} late):"
            f" one step {tick_row.step_late_ms:.2f} ms with 1 % late (all late users:"
            f" {tick_row.backlog_late_ms:.2f} ms in {tick_row.steps_for_backlog} steps), one step with nobody late"
            f" {tick_row.step_none_late_ms * 1000:.0f} µs.",
            "",
        ]
    return lines


def _parse_args(argv):
    parser = argparse.ArgumentParser(description="Ping Listener's benchmarks.")
    parser.add_argument("--duration", type=int, default=5, help="seconds of each wrk run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each timed run (default 1)")
    # Several rounds: on a shared two-core machine one 10 s run is at the mercy of whatever else runs.
    # Two rounds, the servers in a different order in each: 30 wrk runs a round at 1 to 256 connections.
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the ping and burst benchmarks (default 2)")
    parser.add_argument(
        "--load-pings", type=int, default=3_000_000, help="pings in 24 h for load-memory (default 3 000 000)"
    )
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
