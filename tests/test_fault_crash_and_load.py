"""The real service killed with SIGKILL under load, and under load while it alerts on 1,000 late users."""

import collections
import concurrent.futures
import http.client
import json
import threading
import time

from support import HttpReceiver, delivered_subjects, free_port, query, wait_until, write_settings

CRASH_CLIENTS = 16
CRASH_LOAD_SECONDS = 2.5
LOAD_CLIENTS = 64
LOAD_SECONDS = 10
LATE_USERS = 1000
# What a client sees when the server dies under it: a reset, a refused connection, a cut answer.
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


def test_a_kill_9_under_load_loses_no_acknowledged_ping_and_leaves_the_database_intact(tmp_path, start_server):
    users = {f"device{i}": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600} for i in range(CRASH_CLIENTS)}
    settings = write_settings(tmp_path / "settings.json", users)
    db_path = tmp_path / "ping_listener.db"
    service = start_server(settings)
    killing, killed = threading.Event(), threading.Event()

    def ping_until_killed(username):
        """Ping as fast as answers come; return the acknowledged (username, date, time)s and other outcomes."""
        acknowledged, other = collections.Counter(), collections.Counter()
        while not killed.is_set():
            try:
                status, answer = service.get(f"/ping?username={username}", timeout=10)
            except CONNECTION_ERRORS as error:
                if not killing.is_set():
                    other[type(error).__name__] += 1
                continue
            if status == 200:
                date, second = answer.split()
                acknowledged[username, date, second] += 1
            else:
                other[status] += 1
        return acknowledged, other

    with concurrent.futures.ThreadPoolExecutor(CRASH_CLIENTS) as pool:
        futures = [pool.submit(ping_until_killed, username) for username in users]
        time.sleep(CRASH_LOAD_SECONDS)  # the load runs meanwhile
        killing.set()
        service.kill()
        killed.set()
        results = [future.result() for future in futures]
    acknowledged = sum((counts for counts, _ in results), collections.Counter())
    other = sum((outcomes for _, outcomes in results), collections.Counter())
    total = sum(acknowledged.values())
    assert total >= CRASH_CLIENTS, f"only {total} pings acknowledged in {CRASH_LOAD_SECONDS} s of load"
    assert not other, f"before the kill, {sum(other.values())} of {total} pings were not answered 200: {dict(other)}"
    assert query(db_path, "PRAGMA integrity_check") == [("ok",)]

    restarted = start_server(settings)
    logged = collections.Counter()
    for username, date in {(username, date) for username, date, _ in acknowledged}:
        year, month, day = date.split("/")
        status, answer = restarted.get(f"/logs?username={username}&year={year}&month={month}&day={day}")
        assert status == 200, answer
        logged.update((username, date, second) for second in json.loads(answer))
    lost = acknowledged - logged
    assert not lost, f"{sum(lost.values())} of {total} acknowledged pings lost after kill -9: {dict(lost)}"
    assert restarted.stop() == 0
    assert query(db_path, "PRAGMA integrity_check") == [("ok",)]


def test_64_pingers_for_10_s_while_1000_late_users_are_alerted_get_no_error_and_no_lock(
    tmp_path, start_server, smtp_server
):
    late = {"monitor": True, "max_sleep": 0, "email_frequency": 2}
    pinging = {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}
    users = {f"late{i:04d}": late for i in range(LATE_USERS)} | {f"pinger{i}": pinging for i in range(LOAD_CLIENTS)}
    settings = write_settings(tmp_path / "settings.json", users, base_frequency=0.05, email_processing_frequency=0.05)
    db_path = tmp_path / "ping_listener.db"
    service = start_server(settings)
    end = time.monotonic() + LOAD_SECONDS

    def ping_until_the_end(username):
        outcomes = collections.Counter()
        while time.monotonic() < end:
            try:
                outcomes[service.get(f"/ping?username={username}", timeout=30)[0]] += 1
            except CONNECTION_ERRORS as error:
                outcomes[type(error).__name__] += 1
        return outcomes

    with concurrent.futures.ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        results = pool.map(ping_until_the_end, [f"pinger{i}" for i in range(LOAD_CLIENTS)])
        outcomes = sum(results, collections.Counter())
    total = sum(outcomes.values())
    assert service.stop() == 0
    assert outcomes == {200: total}, f"{total - outcomes[200]} of {total} pings not answered 200: {dict(outcomes)}"
    assert query(db_path, "SELECT count(*) FROM pings") == [(total,)]
    alerted = query(db_path, "SELECT count(DISTINCT user_id), count(*) FROM alerts")[0]
    assert alerted[0] == LATE_USERS, f"{alerted[0]} of {LATE_USERS} late users alerted ({alerted[1]} alerts)"
    locked = service.log().count("locked")
    assert locked == 0, f'"locked" appears {locked} times in the log'
    assert len(smtp_server.messages) > 0


def test_a_kill_9_between_a_failure_alert_and_the_success_still_sends_exactly_one_recovery(
    tmp_path, start_server, smtp_server
):
    users = {"job": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}}
    settings = write_settings(tmp_path / "settings.json", users)
    db_path = tmp_path / "ping_listener.db"
    service = start_server(settings)
    assert service.post("/ping/job/fail", b"it broke")[0] == 200
    smtp_server.wait_for_messages(1)
    service.kill()
    # This run cannot reach the SMTP server: it is killed with the recovery queued and not sent.
    restarted = start_server(settings, SMTP_PORT=str(free_port()))
    assert restarted.get("/ping/job")[0] == 200
    wait_until(lambda: query(db_path, "SELECT count(*) FROM outbox WHERE subject = 'job is back'") == [(1,)])
    restarted.kill()
    last = start_server(settings)
    smtp_server.wait_for_messages(2)
    assert last.get("/ping/job")[0] == 200
    wait_until(lambda: query(db_path, "SELECT status FROM outbox WHERE subject = 'job is back'") == [("sent",)])
    assert last.stop() == 0
    assert query(db_path, "SELECT subject, status FROM outbox ORDER BY id") == [
        ("job failure reported", "sent"),
        ("job is back", "sent"),
    ]
    # The failure's email may go twice (at least once: killed before its result was recorded), in a digest
    # with the recovery; the recovery goes once.
    assert delivered_subjects(smtp_server.messages).count("job is back") == 1


def test_a_webhook_delivery_killed_between_its_claim_and_the_answer_is_delivered_after_a_restart(
    tmp_path, start_server, ca
):
    hook = HttpReceiver(ca)
    try:
        hook.answers = [HttpReceiver.HANG]
        settings = write_settings(
            tmp_path / "settings.json",
            {"pi": {"monitor": True, "max_sleep": 0.5, "email_frequency": 3600, "notify": ["webhook:ops"]}},
            webhooks={"ops": {"url": hook.url + "/ops", "format": "json"}},
        )
        db_path = tmp_path / "ping_listener.db"
        service = start_server(settings)
        [(_, _, headers, body)] = hook.wait_for_requests(1)
        # Claimed (its next attempt pushed back) and posted; the answer never came.
        assert query(db_path, "SELECT status, attempts FROM webhook_outbox") == [("queued", 0)]
        service.kill()
        restarted = start_server(settings)
        _, (_, _, headers_again, body_again) = hook.wait_for_requests(2)
        wait_until(lambda: query(db_path, "SELECT status, attempts FROM webhook_outbox") == [("sent", 1)])
        assert restarted.stop() == 0
    finally:
        hook.stop()
    assert headers_again["Idempotency-Key"] == headers["Idempotency-Key"] == json.loads(body)["id"]
    assert body_again == body
    assert len(hook.requests) == 2
