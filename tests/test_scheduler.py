import contextlib
import datetime
import itertools
import json
import sqlite3
import threading
import time
import zoneinfo

import pytest

import apprise_channel
import config
import mailer
import rules
import scheduler
import server
from config import LiveSettings
from pg_store import LOCKED_INSTANCES_SQL, PgStore
from rules import live_state, retry_delay
from scheduler import Scheduler
from store import Store
from support import (
    BACKENDS,
    T0,
    Clock,
    HttpReceiver,
    SilentSmtpServer,
    Trickler,
    db_of,
    free_port,
    make_settings,
    outbox,
    query,
    wait_until,
)
from webhooks import WEBHOOK_DEADLINE


class RecordingMailer:
    """Stands in for SmtpMailer: answers each email with the next scripted result (default: sent)."""

    def __init__(self):
        self.sent = []
        self.results = []

    def new_message_id(self):
        return f"<{len(self.sent)}.{time.monotonic_ns()}@test>"

    def send_all(self, emails):
        for email in emails:
            result = self.results.pop(0) if self.results else mailer.SendResult(mailer.SENT)
            if result.status == mailer.SENT:
                self.sent.append(email)
            yield email, result


@pytest.fixture
def recording_mailer():
    return RecordingMailer()


# The scheduler's tests that use the store only through its methods, and SQL both backends read alike, run on
# both backends (support.BACKENDS).


def make_scheduler(store, recording_mailer, users=None, now=T0, clock=None, **top_level):
    settings = make_settings(users, **top_level)
    store.sync_users(settings.users, now)
    return Scheduler(store, recording_mailer, LiveSettings(settings), "https://example.net", clock or Clock(now))


@BACKENDS
def test_a_late_user_gets_one_email_per_recipient_then_none_until_email_frequency_passed(store, recording_mailer):
    users = {
        "pi": {
            "monitor": True,
            "max_sleep": 60,
            "email_frequency": 600,
            "device_email": ["a@example.com", "b@example.com"],
        }
    }
    steps = make_scheduler(store, recording_mailer, users)
    store.record_ping("pi", T0)
    steps.check_once(T0 + 60)
    assert outbox(db_of(store)) == []
    steps.check_once(T0 + 61)
    assert outbox(db_of(store)) == [("a@example.com", "queued", 0), ("b@example.com", "queued", 0)]
    steps.check_once(T0 + 300)
    steps.check_once(T0 + 661)
    assert len(outbox(db_of(store))) == 2
    steps.check_once(T0 + 662)
    assert len(outbox(db_of(store))) == 4


@BACKENDS
def test_the_queued_alert_names_the_user_and_links_to_its_logs(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    store.record_ping("pi", T0)
    steps.check_once(T0 + 61)
    [email] = store.due_emails(T0 + 61, 10)
    assert email.subject == "pi disconnection detected"
    assert "https://example.net/logs?username=pi&year=26&month=09&day=21" in email.body


def subjects(store):
    return [subject for (subject,) in query(db_of(store), "SELECT subject FROM outbox ORDER BY id")]


@BACKENDS
def test_a_ping_ends_the_silence_with_one_recovery_email(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    steps.check_once(T0 + 61)
    store.record_ping("pi", T0 + 100)
    steps.check_once(T0 + 100.5)
    steps.check_once(T0 + 160)
    assert subjects(store) == ["pi disconnection detected", "pi is back"]


@BACKENDS
def test_a_throttled_user_is_looked_at_again_only_when_the_throttle_ends(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    steps.check_once(T0 + 61)
    store.record_ping("pi", T0 + 62)
    # Back (its recovery queued), and late again, but alerted 62 s ago: pushed to the throttle's end.
    assert steps.check_once(T0 + 123) == 1
    assert steps.check_once(T0 + 124) == 0
    assert steps.check_once(T0 + 661) == 0
    assert steps.check_once(T0 + 661.5) == 1
    assert subjects(store) == ["pi disconnection detected", "pi is back", "pi disconnection detected"]


@BACKENDS
def test_monitor_false_never_queues_an_email(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, {"pi": {"monitor": False, "max_sleep": 0, "email_frequency": 0}})
    for second in range(1, 100):
        steps.check_once(T0 + second)
    assert outbox(db_of(store)) == []


@BACKENDS
def test_one_user_that_cannot_be_decided_does_not_stop_the_others(store, recording_mailer, caplog, monkeypatch):
    settings = make_settings(
        {
            "pi": {"monitor": True, "max_sleep": 1, "email_frequency": 1},
            "nas": {"monitor": True, "max_sleep": 1, "email_frequency": 1000},
        }
    )
    store.sync_users(settings.users, T0)
    compose = mailer.compose_alert

    def compose_or_fail(user, server_root):
        if user.username == "pi":
            raise ValueError("a bug")
        return compose(user, server_root)

    monkeypatch.setattr(mailer, "compose_alert", compose_or_fail)
    steps = Scheduler(store, recording_mailer, LiveSettings(settings), "https://example.net", Clock(T0))
    assert steps.check_once(T0 + 2) == 2
    assert [row[0] for row in outbox(db_of(store))] == ["oncall@example.com"]
    assert "cannot decide about user 'pi'" in caplog.text
    assert steps.check_once(T0 + 2 + scheduler.BAD_USER_DELAY - 1) == 0


@BACKENDS
def test_a_user_removed_from_the_settings_in_force_is_no_longer_alerted(store, recording_mailer, caplog):
    user_config = {"monitor": True, "max_sleep": 1, "email_frequency": 1}
    live = LiveSettings(make_settings({"pi": user_config, "nas": user_config}))
    store.sync_users(live.current.users, T0)
    steps = Scheduler(store, recording_mailer, live, "https://example.net", Clock(T0))
    # A reload has put new settings in force and the store has not followed yet.
    live.replace(make_settings({"nas": user_config}))
    assert steps.check_once(T0 + 2) == 2
    assert [row[0] for row in outbox(db_of(store))] == ["oncall@example.com"]
    assert caplog.text == ""
    # nas again, and pi too (looked at again in case the reload fails), but still not alerted.
    assert steps.check_once(T0 + 1000) == 2
    assert [row[0] for row in outbox(db_of(store))] == ["oncall@example.com"] * 2


@BACKENDS
def test_a_step_looks_at_a_bounded_batch_of_users(store, recording_mailer):
    user_config = {"monitor": True, "max_sleep": 1, "email_frequency": 1000}
    users = {f"d{i}": user_config for i in range(scheduler.USERS_PER_STEP + 7)}
    steps = make_scheduler(store, recording_mailer, users)
    assert steps.check_once(T0 + 2) == scheduler.USERS_PER_STEP
    assert steps.check_once(T0 + 2) == 7
    assert steps.check_once(T0 + 2) == 0


def queue_one_alert(store, recording_mailer, **top_level):
    steps = make_scheduler(store, recording_mailer, **top_level)
    steps.check_once(T0 + 61)
    return steps


@BACKENDS
def test_drain_removes_an_email_from_the_queue_once_accepted(store, recording_mailer):
    steps = queue_one_alert(store, recording_mailer)
    assert steps.drain_once(T0 + 61) == 1
    assert outbox(db_of(store)) == [("oncall@example.com", "sent", 1)]
    assert [email.recipient for email in recording_mailer.sent] == ["oncall@example.com"]
    assert steps.drain_once(T0 + 62) == 0


@BACKENDS
def test_drain_retries_a_failed_email_with_backoff(store, recording_mailer):
    clock = Clock(T0 + 61)
    steps = queue_one_alert(store, recording_mailer, clock=clock)
    recording_mailer.results = [mailer.SendResult(mailer.RETRY, "ConnectionRefusedError")] * 2
    steps.drain_once(T0 + 61)
    assert outbox(db_of(store)) == [("oncall@example.com", "queued", 1)]
    assert steps.drain_once(T0 + 61 + retry_delay(1) - 0.1) == 0
    clock.now = T0 + 61 + retry_delay(1)
    assert steps.drain_once(clock.now) == 1
    assert steps.drain_once(clock.now + retry_delay(2) - 0.1) == 0
    assert steps.drain_once(clock.now + retry_delay(2)) == 1
    assert outbox(db_of(store)) == [("oncall@example.com", "sent", 3)]


@BACKENDS
def test_drain_marks_a_permanently_rejected_email_failed(store, recording_mailer):
    steps = queue_one_alert(store, recording_mailer)
    recording_mailer.results = [mailer.SendResult(mailer.REJECTED, "550 no such user")]
    steps.drain_once(T0 + 61)
    assert outbox(db_of(store)) == [("oncall@example.com", "failed", 1)]
    assert steps.drain_once(T0 + 10_000) == 0


def counted_check_once(steps, monkeypatch):
    """The times of the absence listener's steps, as `steps` takes them from now on."""
    calls = []
    original = steps.check_once
    monkeypatch.setattr(steps, "check_once", lambda now: calls.append(now) or original(now))
    return calls


def test_the_loops_stop_when_asked_in_the_middle_of_a_wait(store, recording_mailer, monkeypatch):
    # Every loop waits a minute or an hour between steps: only a wait that ends when asked to stop ends in time.
    steps = make_scheduler(
        store, recording_mailer, clock=time.time, base_frequency=3600, email_processing_frequency=3600
    )
    calls = counted_check_once(steps, monkeypatch)
    steps.start()
    wait_until(lambda: calls, message="the absence listener's first step")
    # The deadline the service gives its loops on SIGTERM.
    assert steps.stop(timeout=server.SCHEDULER_STOP_TIMEOUT)


def test_a_zero_frequency_does_not_spin(store, recording_mailer, monkeypatch):
    steps = make_scheduler(store, recording_mailer, clock=time.time, base_frequency=0, email_processing_frequency=0)
    calls = counted_check_once(steps, monkeypatch)
    started = time.monotonic()
    steps.start()
    try:
        wait_until(lambda: len(calls) >= 5, message="five steps")  # as often as possible, so again and again
    finally:
        assert steps.stop(timeout=2)
    elapsed = time.monotonic() - started
    # Each step waited MIN_LOOP_DELAY after the one before; spinning would be thousands of steps.
    assert (len(calls) - 1) * scheduler.MIN_LOOP_DELAY <= elapsed, f"{len(calls)} steps in {elapsed:.2f} s"


def emails(store):
    return store.due_emails(T0 + 1e6, 100)


@BACKENDS
def test_a_failure_is_alerted_at_the_next_step_with_its_output_and_repeated_every_email_frequency(
    store, recording_mailer
):
    steps = make_scheduler(
        store, recording_mailer, {"pi": {"monitor": True, "max_sleep": 3600, "email_frequency": 600}}
    )
    store.record_ping("pi", T0 + 10, "fail", exit_code=2, body="line\n" * 1000 + "rsync: disk full")
    steps.check_once(T0 + 10.5)
    [email] = emails(store)
    assert email.subject == "pi failure reported"
    assert "exit code 2" in email.body
    assert email.body.endswith("rsync: disk full\n")
    steps.check_once(T0 + 610)
    assert len(emails(store)) == 1
    steps.check_once(T0 + 611)
    assert subjects(store) == ["pi failure reported"] * 2


@BACKENDS
def test_failure_then_success_sends_exactly_one_recovery_however_many_successes_follow(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    store.record_ping("pi", T0 + 1, "fail")
    steps.check_once(T0 + 2)
    for second in (3, 4, 5):
        store.record_ping("pi", T0 + second)
        steps.check_once(T0 + second + 0.5)
    assert subjects(store) == ["pi failure reported", "pi is back"]
    [_, back] = emails(store)
    assert "Went down: 2026-09-21 16:13:21\n" in back.body
    assert "Came back: 2026-09-21 16:13:23\n" in back.body
    assert "Down for: 2 seconds" in back.body


@BACKENDS
def test_a_failure_after_a_silence_alerts_at_once_and_the_outage_gets_one_recovery(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    steps.check_once(T0 + 61)
    store.record_ping("pi", T0 + 70, "fail")
    steps.check_once(T0 + 71)  # within email_frequency of the silence's alert, but another condition
    store.record_ping("pi", T0 + 80)
    steps.check_once(T0 + 81)
    assert subjects(store) == ["pi disconnection detected", "pi failure reported", "pi is back"]
    assert "Went down: 2026-09-21 16:14:20\n" in emails(store)[2].body  # the silence's deadline


@BACKENDS
def test_a_run_past_max_runtime_is_alerted_then_its_success_is_a_recovery_with_the_runs_duration(
    store, recording_mailer
):
    users = {"job": {"monitor": True, "max_sleep": 3600, "email_frequency": 600, "max_runtime": 30}}
    steps = make_scheduler(store, recording_mailer, users)
    store.record_ping("job", T0 + 5, "start")
    steps.check_once(T0 + 35)
    assert subjects(store) == []
    steps.check_once(T0 + 35.5)
    assert subjects(store) == ["job did not finish in time"]
    assert "Run started: 2026-09-21 16:13:25\n" in emails(store)[0].body
    store.record_ping("job", T0 + 50)
    steps.check_once(T0 + 50.5)
    assert subjects(store) == ["job did not finish in time", "job is back"]
    assert query(db_of(store), "SELECT duration FROM pings WHERE kind = 'success'") == [(45.0,)]


@BACKENDS
def test_notify_recovery_false_sends_no_recovery_but_ends_the_outage(store, recording_mailer):
    users = {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 0, "notify_recovery": False}}
    steps = make_scheduler(store, recording_mailer, users)
    store.record_ping("pi", T0 + 1, "fail")
    steps.check_once(T0 + 2)
    store.record_ping("pi", T0 + 3)
    steps.check_once(T0 + 4)
    assert subjects(store) == ["pi failure reported"]
    assert query(db_of(store), "SELECT down_since, back_at FROM users") == [(None, None)]


@BACKENDS
def test_a_success_before_the_first_alert_sends_no_recovery(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    store.record_ping("pi", T0 + 1, "fail")
    store.record_ping("pi", T0 + 2)
    steps.check_once(T0 + 3)
    steps.check_once(T0 + 62.5)
    assert subjects(store) == ["pi disconnection detected"]


def paris(*fields, fold=0):
    """The epoch of a wall-clock time in Paris (fold=1: the second pass of the hour repeated in October)."""
    return datetime.datetime(*fields, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"), fold=fold).timestamp()


NIGHTLY = {
    "nightly": {"monitor": True, "schedule": "30 2 * * *", "tz": "Europe/Paris", "grace": 900, "email_frequency": 3600}
}


def bodies(store):
    return [body for (body,) in query(db_of(store), "SELECT body FROM outbox ORDER BY id")]


@BACKENDS
def test_a_scheduled_user_is_alerted_once_its_run_and_grace_have_passed_naming_the_missed_run(store, recording_mailer):
    monday = paris(2026, 11, 30, 1)
    steps = make_scheduler(store, recording_mailer, NIGHTLY, now=monday)
    # Due at once after the start: the listener stores the real deadline, 02:45.
    assert steps.check_once(monday + 1) == 1
    assert store.user("nightly").due_at == paris(2026, 11, 30, 2, 45)
    assert steps.check_once(paris(2026, 11, 30, 2, 45)) == 0
    steps.check_once(paris(2026, 11, 30, 2, 45, 1))
    assert subjects(store) == ["nightly missed its 02:30 run"]
    assert (
        "nightly missed its run expected at 2026-11-30 02:30 (schedule 30 2 * * *, with 15 minutes of grace)"
        in bodies(store)[0]
    )
    assert "All times are in CET (Europe/Paris).\n" in bodies(store)[0]


@BACKENDS
def test_a_scheduled_ping_costs_one_look_of_the_listener_which_stores_the_next_runs_deadline(store, recording_mailer):
    monday = paris(2026, 11, 30, 1)
    steps = make_scheduler(store, recording_mailer, NIGHTLY, now=monday)
    steps.check_once(monday + 1)
    store.record_ping("nightly", paris(2026, 11, 30, 2, 31))
    assert store.user("nightly").due_at == paris(2026, 11, 30, 2, 31)
    assert steps.check_once(paris(2026, 11, 30, 2, 31, 1)) == 1
    assert store.user("nightly").due_at == paris(2026, 12, 1, 2, 45)
    assert steps.check_once(paris(2026, 12, 1, 2, 45)) == 0
    assert subjects(store) == []


@BACKENDS
def test_no_false_alarm_in_the_repeated_hour_and_an_alert_right_after_the_skipped_one(store, recording_mailer):
    # Healthchecks #912: a job run at the first 02:30 of the day clocks go back must not be late at the second.
    steps = make_scheduler(store, recording_mailer, NIGHTLY, now=paris(2026, 10, 24, 12))
    store.record_ping("nightly", paris(2026, 10, 25, 2, 31))
    for minute in range(0, 60, 5):
        steps.check_once(paris(2026, 10, 25, 2, minute, fold=1))
    steps.check_once(paris(2026, 10, 26, 2, 45))
    assert subjects(store) == []
    # The day clocks go forward, 02:30 does not exist: the run is expected at 03:00, late after 03:15.
    steps = make_scheduler(store, recording_mailer, NIGHTLY, now=paris(2026, 3, 28, 12))
    steps.check_once(paris(2026, 3, 28, 12, 0, 1))
    assert store.user("nightly").due_at == paris(2026, 3, 29, 3, 15)
    steps.check_once(paris(2026, 3, 29, 3, 15, 1))
    assert "expected at 2026-03-29 03:00 (schedule 30 2 * * *, with 15 minutes of grace)" in bodies(store)[0]
    assert subjects(store) == ["nightly missed its 03:00 run"]


def test_a_restart_in_the_middle_of_a_missed_run_keeps_the_outage_and_expects_the_next_run(tmp_path, recording_mailer):
    path = tmp_path / "ping_listener.db"
    monday = paris(2026, 11, 30, 1)
    with contextlib.closing(Store(path)) as first:
        steps = make_scheduler(first, recording_mailer, NIGHTLY, now=monday)
        steps.check_once(paris(2026, 11, 30, 2, 46))  # the 02:30 run was missed: alerted
    # Down from 02:47 to 03:00: started again, the outage is the same one; tomorrow's run is expected next.
    with contextlib.closing(Store(path)) as second:
        steps = make_scheduler(second, recording_mailer, NIGHTLY, now=paris(2026, 11, 30, 3))
        steps.check_once(paris(2026, 11, 30, 3, 0, 1))
        nightly = second.user("nightly")
        assert (nightly.down_since, nightly.due_at) == (paris(2026, 11, 30, 2, 45), paris(2026, 12, 1, 2, 45))
        assert steps.check_once(paris(2026, 11, 30, 3, 50)) == 0
        second.record_ping("nightly", paris(2026, 11, 30, 9))
        steps.check_once(paris(2026, 11, 30, 9, 0, 1))
    assert subjects(second) == ["nightly missed its 02:30 run", "nightly is back"]


def test_a_restart_within_the_grace_forgives_the_run_it_interrupted(store, recording_mailer):
    # The run at 02:30 may have pinged while the service was down: monitoring restarts at 02:40, and the
    # next run expected is tomorrow's.
    steps = make_scheduler(store, recording_mailer, NIGHTLY, now=paris(2026, 11, 30, 1))
    store.sync_users(make_settings(NIGHTLY).users, paris(2026, 11, 30, 2, 40))
    steps.check_once(paris(2026, 11, 30, 2, 40, 1))
    steps.check_once(paris(2026, 11, 30, 2, 50))
    assert subjects(store) == []
    assert store.user("nightly").due_at == paris(2026, 12, 1, 2, 45)


# Storm control: a router with 40 devices behind it.
ROUTER = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
DEVICE = {"monitor": True, "max_sleep": 60, "email_frequency": 600, "depends_on": "router"}


def site(devices=40, router=None, device=None):
    users = {"router": {**ROUTER, **(router or {})}}
    users.update({f"cam{index:02d}": {**DEVICE, **(device or {})} for index in range(devices)})
    return users


def sent_subjects(recording_mailer):
    return sorted((email.recipient, email.subject) for email in recording_mailer.sent)


def suppressed_alerts(store):
    return query(
        db_of(store),
        "SELECT users.username, alerts.kind FROM alerts JOIN users ON users.id = alerts.user_id"
        " WHERE alerts.suppressed ORDER BY users.username",
    )


@BACKENDS
def test_forty_devices_silent_with_their_router_make_one_email_the_routers(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, site())
    # The devices' last pings came a little before the router's, as they do when a router dies.
    for index in range(40):
        store.record_ping(f"cam{index:02d}", T0 + index / 100)
    store.record_ping("router", T0 + 1)
    for second in range(60, 130):
        steps.check_once(T0 + second)
        steps.drain_once(T0 + second)
    assert sent_subjects(recording_mailer) == [("oncall@example.com", "router disconnection detected")]
    assert suppressed_alerts(store) == [(f"cam{index:02d}", "late") for index in range(40)]
    assert {live_state(user, T0 + 130, user.parent) for user in store.configured_users()} == {"alerted", "suppressed"}


@BACKENDS
def test_forty_devices_behind_a_router_with_two_recipients_make_one_email_each(store, recording_mailer):
    two = {"device_email": ["a@example.com", "b@example.com"]}
    steps = make_scheduler(store, recording_mailer, site(router=two, device=two))
    for index in range(40):
        store.record_ping(f"cam{index:02d}", T0)
    store.record_ping("router", T0)
    steps.check_once(T0 + 61)
    steps.drain_once(T0 + 61)
    assert sent_subjects(recording_mailer) == [
        ("a@example.com", "router disconnection detected"),
        ("b@example.com", "router disconnection detected"),
    ]
    assert len(suppressed_alerts(store)) == 40


@BACKENDS
def test_a_suppressed_device_is_recorded_once_and_gets_no_recovery(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, site(devices=1))
    steps.check_once(T0 + 61)
    store.record_ping("cam00", T0 + 100, "start")  # no sign of life, but cam00 is looked at again
    steps.check_once(T0 + 101)
    steps.check_once(T0 + 700)  # the router's reminder; the device stays suppressed, recorded once
    store.record_ping("cam00", T0 + 701)
    steps.check_once(T0 + 702)
    assert subjects(store) == ["router disconnection detected"] * 2
    assert suppressed_alerts(store) == [("cam00", "late")]


@BACKENDS
def test_when_the_router_comes_back_each_device_gets_a_full_max_sleep_from_that_moment(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, site(devices=3, device={"max_sleep": 100}))
    steps.check_once(T0 + 101)  # all late: the router alerted, the devices suppressed
    store.record_ping("router", T0 + 200)
    store.record_ping("router", T0 + 250)
    store.record_ping("cam00", T0 + 250)  # reconnects a little after its router: no alarm
    steps.check_once(T0 + 300)
    assert subjects(store) == ["router disconnection detected", "router is back"]
    # Those still silent a full max_sleep after the router's return are alerted as usual.
    store.record_ping("router", T0 + 300.2)
    steps.check_once(T0 + 300.5)
    assert subjects(store)[2:] == ["cam01 disconnection detected", "cam02 disconnection detected"]
    assert query(db_of(store), "SELECT DISTINCT went_down_at FROM alerts WHERE kind = 'late' AND NOT suppressed") == [
        (T0 + 60,),
        (T0 + 300,),
    ]


@BACKENDS
def test_a_device_silent_since_before_its_routers_last_ping_waits_for_the_routers_deadline(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, site(devices=2))
    store.record_ping("cam00", T0)
    store.record_ping("cam01", T0)
    store.record_ping("router", T0 + 30)
    # The devices are late at T0 + 60, but the router, last heard at T0 + 30, may be why: wait for it.
    steps.check_once(T0 + 61)
    assert subjects(store) == []
    store.record_ping("router", T0 + 80)  # the router is up after the devices went down: they are alerted
    steps.check_once(T0 + 90.5)
    assert subjects(store) == ["cam00 disconnection detected", "cam01 disconnection detected"]


@BACKENDS
def test_a_device_whose_router_pinged_after_its_deadline_is_alerted_at_once(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, site(devices=1))
    store.record_ping("cam00", T0)
    store.record_ping("router", T0 + 30)
    store.record_ping("router", T0 + 61)
    steps.check_once(T0 + 61.5)
    assert subjects(store) == ["cam00 disconnection detected"]


@BACKENDS
def test_a_failure_behind_a_failed_router_is_suppressed_too(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, site(devices=1, router={"max_sleep": 3600}))
    store.record_ping("router", T0 + 1, "fail")
    store.record_ping("cam00", T0 + 2, "fail")
    steps.check_once(T0 + 3)
    assert subjects(store) == ["router failure reported"]
    assert suppressed_alerts(store) == [("cam00", "failed")]
    store.record_ping("router", T0 + 4)  # back: cam00's failure is alerted at the next step
    steps.check_once(T0 + 5)
    assert sorted(subjects(store)) == ["cam00 failure reported", "router failure reported", "router is back"]


@BACKENDS
def test_a_chain_of_dependencies_leaves_only_the_head_alerted(store, recording_mailer):
    users = {
        "wan": ROUTER,
        "router": {**ROUTER, "depends_on": "wan"},
        "switch": {**ROUTER, "depends_on": "router"},
        "cam": {**ROUTER, "depends_on": "switch"},
    }
    steps = make_scheduler(store, recording_mailer, users)
    steps.check_once(T0 + 61)
    assert subjects(store) == ["wan disconnection detected"]
    assert suppressed_alerts(store) == [("cam", "late"), ("router", "late"), ("switch", "late")]


@BACKENDS
def test_no_alert_while_snoozed_and_the_silence_is_measured_from_the_snoozes_end(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    store.record_ping("pi", T0)
    assert store.snooze("pi", T0 + 600, T0 + 10) == T0 + 600
    for second in range(61, 661, 10):
        steps.check_once(T0 + second)
    assert subjects(store) == []
    steps.check_once(T0 + 660.5)
    assert subjects(store) == ["pi disconnection detected"]


@BACKENDS
def test_a_failure_during_a_snooze_is_alerted_when_it_ends(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    store.snooze("pi", T0 + 300, T0)
    store.record_ping("pi", T0 + 10, "fail")
    steps.check_once(T0 + 11)
    assert steps.check_once(T0 + 299) == 0
    steps.check_once(T0 + 300.5)
    assert subjects(store) == ["pi failure reported"]


@BACKENDS
def test_an_outage_alerted_before_a_snooze_is_not_alerted_again_but_still_gets_its_recovery(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 60}})
    steps.check_once(T0 + 61)
    store.snooze("pi", T0 + 200, T0 + 100)
    for second in range(201, 2000, 10):
        steps.check_once(T0 + second)
    assert subjects(store) == ["pi disconnection detected"]
    store.record_ping("pi", T0 + 2000)
    steps.check_once(T0 + 2001)
    # Its next outage is alerted as usual.
    steps.check_once(T0 + 2061)
    assert subjects(store) == ["pi disconnection detected", "pi is back", "pi disconnection detected"]


@BACKENDS
def test_minutes_zero_ends_a_snooze_now_and_changes_nothing_for_a_user_not_snoozed(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    assert store.snooze("pi", T0, T0) == T0  # not snoozed: nothing changes
    assert query(db_of(store), "SELECT snoozed_until, due_at FROM users") == [(None, T0 + 60)]
    store.snooze("pi", T0 + 3600, T0 + 10)
    assert store.snooze("pi", T0 + 100, T0 + 100) == T0 + 100
    steps.check_once(T0 + 160)
    assert subjects(store) == []
    steps.check_once(T0 + 160.5)
    assert subjects(store) == ["pi disconnection detected"]


@BACKENDS
def test_a_snoozed_router_that_is_late_still_suppresses_its_devices(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, site(devices=3))
    store.snooze("router", T0 + 3600, T0)
    steps.check_once(T0 + 61)
    assert subjects(store) == []
    assert len(suppressed_alerts(store)) == 3
    states = {user.username: live_state(user, T0 + 61, user.parent) for user in store.configured_users()}
    assert states == {"router": "snoozed", "cam00": "suppressed", "cam01": "suppressed", "cam02": "suppressed"}


def three_late(store, recording_mailer, **extra):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600, **extra}
    steps = make_scheduler(store, recording_mailer, {"nas": user, "pi": user, "cam": user}, clock=Clock(T0 + 61))
    steps.check_once(T0 + 61)
    return steps


def outbox_rows(store):
    return query(db_of(store), "SELECT recipient, status, attempts, digest_id FROM outbox ORDER BY id")


@BACKENDS
def test_emails_due_for_one_recipient_at_one_drain_step_go_as_one_digest(store, recording_mailer):
    steps = three_late(store, recording_mailer)
    assert steps.drain_once(T0 + 61) == 3
    [digest] = recording_mailer.sent
    assert digest.subject == "3 devices need attention: cam, nas, pi"
    assert [digest.body.count(f"{name} disconnection detected") for name in ("cam", "nas", "pi")] == [1, 1, 1]
    assert digest.queued_at == T0 + 61
    assert outbox_rows(store) == [("oncall@example.com", "sent", 1, 1)] * 3
    assert query(db_of(store), "SELECT recipient, subject, message_id, emails FROM digests") == [
        ("oncall@example.com", digest.subject, digest.message_id, 3)
    ]


@BACKENDS
def test_each_recipient_gets_its_own_digest_and_a_single_email_keeps_its_subject(store, recording_mailer):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    users = {"nas": user, "pi": user, "cam": {**user, "device_email": "cam@example.com"}}
    steps = make_scheduler(store, recording_mailer, users)
    steps.check_once(T0 + 61)
    steps.drain_once(T0 + 61)
    assert sent_subjects(recording_mailer) == [
        ("cam@example.com", "cam disconnection detected"),
        ("oncall@example.com", "2 devices need attention: nas, pi"),
    ]


@BACKENDS
def test_a_digest_of_recoveries_says_they_are_back(store, recording_mailer):
    steps = three_late(store, recording_mailer)
    steps.drain_once(T0 + 61)
    for name in ("cam", "pi"):
        store.record_ping(name, T0 + 70)
    steps.check_once(T0 + 71)
    steps.drain_once(T0 + 71)
    assert recording_mailer.sent[-1].subject == "2 devices are back: cam, pi"


@BACKENDS
def test_a_digest_is_retried_as_it_was_with_its_message_id_and_date_then_sent_once(store, recording_mailer):
    steps = three_late(store, recording_mailer)
    recording_mailer.results = [mailer.SendResult(mailer.RETRY, "ConnectionRefusedError")]
    steps.drain_once(T0 + 61)
    assert [row[1:] for row in outbox_rows(store)] == [("queued", 1, 1)] * 3
    assert steps.drain_once(T0 + 61 + retry_delay(1) - 0.1) == 0
    steps.drain_once(T0 + 61 + retry_delay(1))
    [digest] = recording_mailer.sent
    [(message_id,)] = query(db_of(store), "SELECT message_id FROM digests")
    assert (digest.message_id, digest.queued_at) == (message_id, T0 + 61)
    assert [row[1:] for row in outbox_rows(store)] == [("sent", 2, 1)] * 3


@BACKENDS
def test_a_digest_rejected_for_good_fails_all_its_emails(store, recording_mailer):
    steps = three_late(store, recording_mailer)
    recording_mailer.results = [mailer.SendResult(mailer.REJECTED, "550 no such user")]
    steps.drain_once(T0 + 61)
    assert [row[1:] for row in outbox_rows(store)] == [("failed", 1, 1)] * 3
    assert steps.drain_once(T0 + 10_000) == 0


@BACKENDS
def test_an_email_due_while_a_digest_waits_to_be_retried_makes_a_new_digest_of_them_all(store, recording_mailer):
    steps = three_late(store, recording_mailer)
    recording_mailer.results = [mailer.SendResult(mailer.RETRY, "ConnectionRefusedError")]
    steps.drain_once(T0 + 61)
    store.record_ping("pi", T0 + 62)
    steps.check_once(T0 + 62.5)  # pi's recovery
    store.restart_monitoring(T0 + 63)  # a restart makes every queued email due at once
    steps.drain_once(T0 + 63)
    [digest] = recording_mailer.sent
    assert digest.subject == "3 devices need attention: cam, nas, pi"
    assert [row[1:] for row in outbox_rows(store)] == [("sent", 2, 2)] * 3 + [("sent", 1, 2)]


def delivery_counts(steps):
    """ping_listener_deliveries_total's samples as {(channel_kind, outcome): value}, those not zero."""
    [family] = steps.deliveries.collect()
    return {
        (sample.labels["channel_kind"], sample.labels["outcome"]): sample.value
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value
    }


def test_each_email_tried_counts_once_by_its_outcome_a_digest_as_one(store, recording_mailer):
    steps = three_late(store, recording_mailer)
    recording_mailer.results = [mailer.SendResult(mailer.RETRY, "ConnectionRefusedError")]
    steps.drain_once(T0 + 61)
    steps.drain_once(T0 + 61 + retry_delay(1))
    assert delivery_counts(steps) == {("email", "retried"): 1.0, ("email", "sent"): 1.0}


@BACKENDS
def test_an_alert_and_its_reminder_queued_during_an_smtp_outage_go_as_one_email_once_it_is_over(
    store, recording_mailer
):
    steps = make_scheduler(store, recording_mailer, clock=Clock(T0 + 61))
    steps.check_once(T0 + 61)
    recording_mailer.results = [mailer.SendResult(mailer.RETRY, "ConnectionRefusedError")]
    steps.drain_once(T0 + 61)
    steps.check_once(T0 + 662)  # the reminder, email_frequency later
    assert steps.drain_once(T0 + 662) == 2
    [email] = recording_mailer.sent
    assert email.subject == "pi disconnection detected" and "=====" not in email.body
    assert [row[1:3] for row in outbox_rows(store)] == [("sent", 2), ("sent", 1)]


@BACKENDS
def test_an_outage_over_before_its_alert_could_be_sent_goes_as_its_recovery_alone(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, clock=Clock(T0 + 61))
    steps.check_once(T0 + 61)
    recording_mailer.results = [mailer.SendResult(mailer.RETRY, "ConnectionRefusedError")]
    steps.drain_once(T0 + 61)
    store.record_ping("pi", T0 + 62)
    steps.check_once(T0 + 62.5)
    assert steps.drain_once(T0 + 61 + retry_delay(1)) == 2
    [email] = recording_mailer.sent
    assert email.subject == "pi is back"
    assert "Went down: 2026-09-21 16:14:20\n" in email.body
    assert [row[1:3] for row in outbox_rows(store)] == [("sent", 2), ("sent", 1)]


# Webhooks, POSTed to a real local HTTPS server.


@pytest.fixture
def hook(ca, trust_test_ca):
    server = HttpReceiver(ca)
    yield server
    server.stop()


def with_webhooks(store, recording_mailer, hook, users, clock=None):
    webhooks = {
        "ops": {"url": hook.url + "/ops", "format": "json"},
        "chat": {"url": hook.url + "/chat", "format": "slack"},
    }
    return make_scheduler(store, recording_mailer, users, clock=clock, webhooks=webhooks)


def deliver(steps, now):
    """One step of the webhook delivery at `now`, waiting until the deliveries it started are recorded; returns
    how many were due."""
    due = steps.deliver_once(now)
    assert steps.wait_for_deliveries(10)
    return due


def deliveries(store):
    """(username, webhook, event, status, attempts) of each queued delivery, oldest first."""
    return query(
        db_of(store),
        "SELECT users.username, webhook, alerts.kind, status, attempts FROM webhook_outbox"
        " JOIN alerts ON alerts.id = alert_id JOIN users ON users.id = alerts.user_id ORDER BY webhook_outbox.id",
    )


def pi_notifying(*channels):
    return {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600, "notify": list(channels)}}


@BACKENDS
def test_each_user_is_told_through_its_own_channels_in_the_alerts_transaction(store, recording_mailer, hook):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    users = {
        "both": {**user, "notify": ["email", "webhook:ops"]},
        "hooks": {**user, "notify": ["webhook:ops", "webhook:chat"]},
        "mail": user,
    }
    steps = with_webhooks(store, recording_mailer, hook, users)
    steps.check_once(T0 + 61)
    assert outbox(db_of(store)) == [("oncall@example.com", "queued", 0)] * 2
    assert [username for (username,) in query(db_of(store), "SELECT username FROM outbox_readable")] == ["both", "mail"]
    assert deliveries(store) == [
        ("both", "ops", "late", "queued", 0),
        ("hooks", "ops", "late", "queued", 0),
        ("hooks", "chat", "late", "queued", 0),
    ]
    # A user told only by webhook is alerted all the same: not again before its email_frequency.
    assert store.user("hooks").last_alert == T0 + 61
    steps.check_once(T0 + 600)
    assert len(deliveries(store)) == 3


@BACKENDS
def test_a_webhook_gets_the_alert_and_then_the_recovery_as_json(store, recording_mailer, hook):
    steps = with_webhooks(store, recording_mailer, hook, pi_notifying("webhook:ops"))
    store.record_ping("pi", T0 + 1)
    steps.check_once(T0 + 62)
    store.record_ping("pi", T0 + 100)
    steps.check_once(T0 + 100.5)
    assert deliver(steps, T0 + 101) == 2
    assert recording_mailer.sent == [] and outbox(db_of(store)) == []
    late, back = [json.loads(body) for _, _, _, body in hook.requests]
    assert late["event"] == "late" and back["event"] == "back"
    assert (late["username"], late["at"], late["last_ping"]) == ("pi", T0 + 62, T0 + 1)
    assert late["text"].startswith("Ping Listener has heard nothing from pi for more than 1 minute.\n")
    assert late["logs_url"] == "https://example.net/logs?username=pi&year=26&month=09&day=21"
    assert (back["at"], back["last_ping"]) == (T0 + 100.5, T0 + 100)
    assert back["text"].startswith("pi is back.")
    assert late["id"] != back["id"]
    assert deliveries(store) == [("pi", "ops", "late", "sent", 1), ("pi", "ops", "back", "sent", 1)]
    assert deliver(steps, T0 + 10_000) == 0


@BACKENDS
def test_a_5xx_is_retried_with_backoff_and_the_same_idempotency_key_then_delivered(store, recording_mailer, hook):
    clock = Clock(T0 + 61)
    steps = with_webhooks(store, recording_mailer, hook, pi_notifying("webhook:chat"), clock=clock)
    steps.check_once(T0 + 61)
    hook.answers = [500, 503]
    assert deliver(steps, T0 + 61) == 1
    assert deliveries(store) == [("pi", "chat", "late", "queued", 1)]
    assert deliver(steps, T0 + 61 + retry_delay(1) - 0.1) == 0
    clock.now = T0 + 61 + retry_delay(1)
    assert deliver(steps, clock.now) == 1
    assert deliver(steps, clock.now + retry_delay(2) - 0.1) == 0
    assert deliver(steps, clock.now + retry_delay(2)) == 1
    assert deliveries(store) == [("pi", "chat", "late", "sent", 3)]
    assert delivery_counts(steps) == {("slack", "retried"): 2.0, ("slack", "sent"): 1.0}
    keys = {headers["Idempotency-Key"] for _, _, headers, _ in hook.requests}
    assert len(hook.requests) == 3 and len(keys) == 1 and {body for *_, body in hook.requests} == {hook.requests[0][3]}
    assert query(db_of(store), "SELECT event_id FROM webhook_outbox") == [tuple(keys)]


@pytest.mark.parametrize(
    ("retry_after", "delay"), [("120", 120), ("3600", rules.MAX_RETRY_DELAY), ("1", retry_delay(1))]
)
@BACKENDS
def test_a_429_waits_as_long_as_retry_after_asks_within_the_backoff_cap(
    store, recording_mailer, hook, retry_after, delay
):
    steps = with_webhooks(store, recording_mailer, hook, pi_notifying("webhook:ops"), clock=Clock(T0 + 61))
    steps.check_once(T0 + 61)
    hook.answers = [(429, {"Retry-After": retry_after})]
    deliver(steps, T0 + 61)
    assert query(db_of(store), "SELECT next_attempt_at, last_error FROM webhook_outbox") == [
        (T0 + 61 + delay, "HTTP 429: ok")
    ]
    assert deliver(steps, T0 + 61 + delay - 0.1) == 0
    assert deliver(steps, T0 + 61 + delay) == 1
    assert deliveries(store) == [("pi", "ops", "late", "sent", 2)]


@BACKENDS
def test_a_4xx_fails_the_delivery_for_good(store, recording_mailer, hook, caplog):
    steps = with_webhooks(store, recording_mailer, hook, pi_notifying("webhook:ops"))
    steps.check_once(T0 + 61)
    hook.answers = [404]
    deliver(steps, T0 + 61)
    assert deliveries(store) == [("pi", "ops", "late", "failed", 1)]
    assert "late webhook 1 (pi) to ops refused for good: HTTP 404" in caplog.text
    assert deliver(steps, T0 + 100_000) == 0


def test_a_webhook_that_trickles_its_answer_delays_only_its_own_deliveries(store, recording_mailer, hook, ca):
    # The slow webhook answers (a 503, to be retried) a byte every 0.2 s for ever; each of its POSTs is given up
    # after WEBHOOK_DEADLINE.
    slow_answer = lambda: itertools.chain([b"HTTP/1.1 503 Busy\r\n"], itertools.repeat(b"x"))  # noqa: E731
    users = {
        "pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600, "notify": ["webhook:slow", "webhook:fine"]},
        "nas": {"monitor": True, "max_sleep": 200, "email_frequency": 600, "notify": ["webhook:fine"]},
    }
    clock = Clock(T0 + 61)
    with Trickler(slow_answer, 0.2, ca) as slow:
        settings = make_settings(
            users,
            webhooks={"slow": {"url": slow.url, "format": "json"}, "fine": {"url": hook.url, "format": "json"}},
        )
        store.sync_users(settings.users, T0)
        steps = Scheduler(store, recording_mailer, LiveSettings(settings), "https://example.net", clock)
        steps.check_once(T0 + 61)
        assert steps.deliver_once(T0 + 61) == 2
        wait_until(
            lambda: ("pi", "fine", "late", "sent", 1) in deliveries(store), message="pi's fine delivery recorded"
        )
        clock.now = T0 + 201
        steps.check_once(T0 + 201)
        # pi's POST to slow is due again (its claim's back-off passed) but still under way: not posted twice.
        assert steps.deliver_once(T0 + 201) == 2
        [_, nas] = hook.wait_for_requests(2)
        # Both of fine's deliveries went out while slow's first POST was still being answered.
        assert (slow.closed_by_client, len(slow.sent)) == (0, 1)
    assert json.loads(nas[3])["username"] == "nas"
    # Closed by the slow webhook before its answer ended: retried.
    assert steps.wait_for_deliveries(10)
    assert deliveries(store) == [
        ("pi", "slow", "late", "queued", 1),
        ("pi", "fine", "late", "sent", 1),
        ("nas", "fine", "late", "sent", 1),
    ]
    assert query(db_of(store), "SELECT next_attempt_at FROM webhook_outbox WHERE webhook = 'slow'") != [(None,)]


def test_a_claimed_delivery_whose_answer_was_never_recorded_is_sent_again_after_a_restart(
    tmp_path, recording_mailer, hook
):
    first = Store(tmp_path / "ping_listener.db")
    steps = with_webhooks(first, recording_mailer, hook, pi_notifying("webhook:ops"))
    steps.check_once(T0 + 61)
    [delivery] = first.due_webhooks(T0 + 61, 10)
    # Claimed, then the service died before the webhook answered.
    first.claim_webhooks({delivery.id: T0 + 61 + retry_delay(1)})
    first.close()
    second = Store(tmp_path / "ping_listener.db")
    try:
        steps = with_webhooks(second, recording_mailer, hook, pi_notifying("webhook:ops"), clock=Clock(T0 + 62))
        assert deliver(steps, T0 + 62) == 1
        assert deliveries(second) == [("pi", "ops", "late", "sent", 1)]
        assert hook.requests[0][2]["Idempotency-Key"] == delivery.event.id
    finally:
        second.close()


# The third release's channels: incidents opened and closed, a choice of recoveries, Apprise.


def pi_late_then_back(store, steps):
    """pi pings, goes silent past its max_sleep (alerted at T0 + 62) and is back at T0 + 100.5."""
    store.record_ping("pi", T0 + 1)
    steps.check_once(T0 + 62)
    store.record_ping("pi", T0 + 100)
    steps.check_once(T0 + 100.5)


def test_a_webhook_told_no_recoveries_gets_the_alert_only(store, recording_mailer, hook):
    webhooks = {
        "ops": {"url": hook.url + "/ops", "format": "json"},
        "pager": {"url": hook.url + "/pager", "format": "json", "recoveries": False},
    }
    steps = make_scheduler(store, recording_mailer, pi_notifying("webhook:ops", "webhook:pager"), webhooks=webhooks)
    pi_late_then_back(store, steps)
    assert deliveries(store) == [
        ("pi", "ops", "late", "queued", 0),
        ("pi", "pager", "late", "queued", 0),
        ("pi", "ops", "back", "queued", 0),
    ]


@pytest.mark.parametrize("top_level", [{"email_recoveries": False}, {}])
def test_email_recoveries_false_emails_no_recovery_but_the_webhooks_still_get_it(
    store, recording_mailer, hook, top_level
):
    webhooks = {"ops": {"url": hook.url + "/ops", "format": "json"}}
    users = pi_notifying("email", "webhook:ops")
    steps = make_scheduler(store, recording_mailer, users, webhooks=webhooks, **top_level)
    pi_late_then_back(store, steps)
    # The default emails the recovery, as before email_recoveries existed.
    back = [] if top_level else ["pi is back"]
    assert subjects(store) == ["pi disconnection detected", *back]
    assert deliveries(store) == [("pi", "ops", "late", "queued", 0), ("pi", "ops", "back", "queued", 0)]
    # The outage is over all the same: the next silence is a new one.
    assert query(db_of(store), "SELECT down_since, back_at FROM users") == [(None, None)]


@BACKENDS
def test_a_pagerduty_incident_is_triggered_then_resolved_by_one_dedup_key_per_outage(store, recording_mailer, hook):
    webhooks = {"pd": {"format": "pagerduty", "routing_key": "R0UT1NG", "url": hook.url + "/v2/enqueue"}}
    steps = make_scheduler(store, recording_mailer, pi_notifying("webhook:pd"), webhooks=webhooks)
    pi_late_then_back(store, steps)
    # A second outage: silent again past max_sleep, alerted once email_frequency has passed since the last alert.
    steps.check_once(T0 + 701)
    assert deliver(steps, T0 + 701) == 3
    events = [json.loads(body) for *_, body in hook.requests]
    assert [e["event_action"] for e in events] == ["trigger", "resolve", "trigger"]
    assert {e["routing_key"] for e in events} == {"R0UT1NG"}
    assert events[0]["dedup_key"] == events[1]["dedup_key"] != events[2]["dedup_key"]
    assert deliveries(store) == [
        ("pi", "pd", "late", "sent", 1),
        ("pi", "pd", "back", "sent", 1),
        ("pi", "pd", "late", "sent", 1),
    ]


def deliver_within(steps, now):
    """deliver(), waiting as long as the deliveries it started may take: an Apprise one may first start its
    process (apprise_channel.START_DEADLINE)."""
    due = steps.deliver_once(now)
    assert steps.wait_for_deliveries(apprise_channel.START_DEADLINE + WEBHOOK_DEADLINE)
    return due


@BACKENDS
@pytest.mark.parametrize("format_", ["pagerduty", "opsgenie", "apprise"])
def test_a_delivery_that_fails_then_succeeds_is_sent_once_more_and_counted(store, recording_mailer, hook, format_):
    url = {"apprise": "jsons://" + hook.url.removeprefix("https://") + "/hook"}.get(format_, hook.url + "/hook")
    webhook = {"format": format_, "url": url, "routing_key": "R", "api_key": "K"}
    webhook = {
        key: value
        for key, value in webhook.items()
        if key in ("format", "url") or config.WEBHOOK_FORMAT_KEYS.get(format_) == key
    }
    clock = Clock(T0 + 61)
    steps = make_scheduler(store, recording_mailer, pi_notifying("webhook:w"), clock=clock, webhooks={"w": webhook})
    steps.check_once(T0 + 61)
    hook.answers = [503]
    assert deliver_within(steps, T0 + 61) == 1
    assert deliveries(store) == [("pi", "w", "late", "queued", 1)]
    clock.now = T0 + 61 + retry_delay(1)
    assert deliver_within(steps, clock.now) == 1
    assert deliver_within(steps, clock.now + rules.MAX_RETRY_DELAY * 10) == 0
    assert deliveries(store) == [("pi", "w", "late", "sent", 2)]
    assert len(hook.requests) == 2 and hook.requests[0][3] == hook.requests[1][3]
    assert delivery_counts(steps) == {(format_, "retried"): 1.0, (format_, "sent"): 1.0}


def test_a_slow_apprise_service_delays_no_email_and_no_other_channel(store, recording_mailer, hook):
    # The slow service answers a byte every 0.5 s for ever (within Apprise's own read timeout): only the
    # delivery's deadline ends it.
    slow_answer = lambda: itertools.chain([b"HTTP/1.1 200 OK\r\n"], itertools.repeat(b"X-Slow: y\r\n"))  # noqa: E731
    with Trickler(slow_answer, 0.5) as slow:
        webhooks = {
            "slow": {"format": "apprise", "url": "json://" + slow.url.removeprefix("http://") + "/hook"},
            "fine": {"format": "json", "url": hook.url},
        }
        steps = make_scheduler(
            store, recording_mailer, pi_notifying("webhook:slow", "email", "webhook:fine"), webhooks=webhooks
        )
        steps.check_once(T0 + 61)
        assert steps.deliver_once(T0 + 61) == 2
        assert steps.drain_once(T0 + 61) == 1
        assert [email.subject for email in recording_mailer.sent] == ["pi disconnection detected"]
        wait_until(lambda: ("pi", "fine", "late", "sent", 1) in deliveries(store), message="fine's delivery recorded")
        wait_until(
            lambda: slow.sent and slow.sent[0] > 0,
            timeout=apprise_channel.START_DEADLINE,
            message="the slow service answering",
        )
        # Both went while Apprise was still being answered by the slow service.
        assert ("pi", "slow", "late", "queued", 0) in deliveries(store)
        assert slow.closed_by_client == 0
    # The slow service gone, Apprise reports the failure: retried.
    assert steps.wait_for_deliveries(10)
    assert ("pi", "slow", "late", "queued", 1) in deliveries(store)


# --- retention, health, heartbeat, requests ------------------------------------------------------------


@BACKENDS
def test_retention_deletes_old_pings_and_history_in_batches_and_keeps_queued_emails(
    store, recording_mailer, monkeypatch
):
    monkeypatch.setattr(scheduler, "RETENTION_BATCH", 3)
    users = {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600}}
    steps = make_scheduler(store, recording_mailer, users, retention_days=1)
    for at in range(5):
        store.record_ping("pi", T0 + at)
    steps.check_once(T0 + 100)  # an alert, its email sent
    steps.drain_once(T0 + 100)
    steps.check_once(T0 + 800)  # another, its email left queued
    store.record_ping("pi", T0 + 86_400)
    now = T0 + 86_400 + 801  # a day after all but the last ping, and after both alerts
    assert steps.retain_once(now) == 3 + 2  # a batch of pings; the sent email, then its alert
    assert steps.retain_once(now) == 2
    assert steps.retain_once(now) == 0
    assert store.pings_between("pi", T0, now) == [T0 + 86_400]
    assert outbox(db_of(store)) == [("oncall@example.com", "queued", 0)]


@BACKENDS
def test_without_retention_days_nothing_is_ever_deleted(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    store.record_ping("pi", T0)
    assert steps.retain_once(T0 + 1e9) == 0
    assert store.pings_between("pi", T0, T0 + 1) == [T0]


def test_health_names_a_loop_not_running_or_a_database_that_does_not_answer(store, recording_mailer, monkeypatch):
    monkeypatch.setattr(scheduler, "HEALTH_CHECK_REUSE", 0)  # every call checks the database again
    steps = make_scheduler(store, recording_mailer, clock=time.time)
    assert steps.health_problem() == "the absence listener is not running"
    steps.start()
    try:
        assert steps.health_problem() is None
        with sqlite3.connect(store.path) as other_process:
            other_process.execute("BEGIN IMMEDIATE")
            assert steps.health_problem() == (
                "the database cannot commit a write: storage unavailable: the database is locked by another process"
            )
            other_process.execute("ROLLBACK")
        assert steps.health_problem() is None
    finally:
        assert steps.stop(2)
    assert steps.health_problem() == "the absence listener is not running"


def test_health_checks_within_a_second_of_the_last_reuse_its_database_check(store, recording_mailer):
    clock = Clock(T0)
    steps = make_scheduler(store, recording_mailer, clock=clock)
    steps.start()
    try:
        for now, checked_at in ((T0, T0), (T0 + 0.5, T0), (T0 + 0.99, T0), (T0 + 1, T0 + 1), (T0 + 1.5, T0 + 1)):
            clock.now = now
            assert steps.health_problem() is None
            assert query(store.path, "SELECT checked_at FROM health") == [(checked_at,)], now
        with sqlite3.connect(store.path) as other_process:
            other_process.execute("BEGIN IMMEDIATE")
            assert steps.health_problem() is None  # as the check at T0 + 1 found
            clock.now = T0 + 2
            assert "locked by another process" in steps.health_problem()
            other_process.execute("ROLLBACK")
    finally:
        assert steps.stop(2)


def absence_steps(steps):
    [family] = steps.absence_step_seconds.collect()
    return next(sample.value for sample in family.samples if sample.name.endswith("_count"))


def started_scheduler(store, recording_mailer, **top_level):
    steps = make_scheduler(store, recording_mailer, clock=time.time, **top_level)
    steps.start()
    return steps


def test_a_heartbeat_is_a_get_of_the_url_while_healthy(store, recording_mailer):
    with HttpReceiver() as receiver:
        steps = started_scheduler(store, recording_mailer, heartbeat_url=receiver.url + "/ping/abc?x=1")
        try:
            assert steps.beat_once() is True
            assert receiver.paths[-1] == "/ping/abc?x=1"
        finally:
            steps.stop(2)
        # Stopped loops: no heartbeat, so that the outside monitor notices.
        count = len(receiver.paths)
        assert steps.beat_once() is False
        assert len(receiver.paths) == count


def test_a_heartbeat_url_that_trickles_its_answer_is_given_up_within_the_heartbeats_deadline(
    store, recording_mailer, monkeypatch
):
    monkeypatch.setattr(scheduler, "HEARTBEAT_TIMEOUT", 1.0)
    # A status line and headers taking about 5 s, a byte about every 0.1 s: each well within the 1 s timeout.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Slow: " + b"x" * 20 + b"\r\n\r\n"
    with Trickler(lambda: (answer[i : i + 1] for i in range(len(answer))), 5.0 / len(answer)) as trickling:
        steps = started_scheduler(store, recording_mailer, heartbeat_url=trickling.url + "/hb")
        try:
            assert steps.beat_once() is False
            assert trickling.sent[0] < len(answer)
        finally:
            steps.stop(2)


def test_the_heartbeat_loop_gets_the_url_every_heartbeat_frequency(store, recording_mailer):
    frequency = 0.2
    with HttpReceiver() as receiver:
        started = time.monotonic()
        # The other loops' frequencies are far from the heartbeat's, so a heartbeat at their pace is seen too.
        steps = started_scheduler(
            store,
            recording_mailer,
            heartbeat_url=receiver.url + "/hb",
            heartbeat_frequency=frequency,
            base_frequency=60,
            email_processing_frequency=60,
        )
        try:
            wait_until(lambda: len(receiver.paths) >= 4, message="four heartbeats")
        finally:
            assert steps.stop(2)
        # The loop has stopped: every heartbeat it sent was answered, so is counted, and all of them
        # came between `started` and now, each after a wait of heartbeat_frequency since the one before.
        elapsed = time.monotonic() - started
        beats = len(receiver.paths)
    assert (beats - 1) * frequency <= elapsed, f"{beats} heartbeats in {elapsed:.2f} s, one every {frequency} s at most"


def test_no_heartbeat_while_the_database_refuses_writes(store, recording_mailer, caplog, monkeypatch):
    monkeypatch.setattr(scheduler, "HEALTH_CHECK_REUSE", 0)  # the loop's first check is not reused
    with HttpReceiver() as receiver:
        steps = started_scheduler(store, recording_mailer, heartbeat_url=receiver.url + "/hb")
        try:
            # The loop's own heartbeat, sent at start; the next is a minute away.
            wait_until(lambda: receiver.paths, message="the loop's first heartbeat")
            with sqlite3.connect(store.path) as other_process:
                other_process.execute("BEGIN IMMEDIATE")
                before = len(receiver.paths)
                assert steps.beat_once() is False
                assert len(receiver.paths) == before
                other_process.execute("ROLLBACK")
        finally:
            steps.stop(2)
    assert "no heartbeat sent: the database cannot commit a write" in caplog.text


@pytest.mark.parametrize("failure", ["down", "500", "hangs"])
def test_a_failed_heartbeat_is_logged_naming_only_the_host_and_blocks_nothing(
    store, recording_mailer, caplog, monkeypatch, failure
):
    monkeypatch.setattr(scheduler, "HEARTBEAT_TIMEOUT", 0.3)
    receiver = HttpReceiver()
    hung = SilentSmtpServer()  # accepts connections and never answers
    try:
        url = {
            "down": f"http://127.0.0.1:{free_port()}/secret-uuid",
            "500": receiver.url + "/secret-uuid",
            "hangs": f"http://127.0.0.1:{hung.port}/secret-uuid",
        }[failure]
        receiver.status = 500
        steps = started_scheduler(
            store, recording_mailer, heartbeat_url=url, heartbeat_frequency=0.05, base_frequency=0.01
        )
        try:
            assert steps.beat_once() is False
            # Meanwhile the absence listener went on taking steps.
            wait_until(lambda: absence_steps(steps) > 5, message="absence listener steps")
        finally:
            assert steps.stop(2)
    finally:
        receiver.stop()
        hung.stop()
    expected = {"down": "Connection refused", "500": "HTTP 500", "hangs": "timed out"}[failure]
    assert "heartbeat to 127.0.0.1 failed: " in caplog.text and expected in caplog.text
    assert "secret-uuid" not in caplog.text


@BACKENDS
def test_a_request_runs_its_action_in_a_thread_of_its_own_even_after_one_failed(store, recording_mailer, caplog):
    steps = make_scheduler(store, recording_mailer)
    requested = threading.Event()
    runs = []

    def action():
        runs.append(threading.current_thread().name)
        if len(runs) == 1:
            raise ValueError("a bug")

    steps.on_request("reload", requested, action)
    try:
        requested.set()
        wait_until(lambda: len(runs) == 1 and not requested.is_set(), message="first run")
        requested.set()
        wait_until(lambda: len(runs) == 2, message="second run")
    finally:
        assert steps.stop(2)
    assert runs == ["reload", "reload"]
    assert "reload failed" in caplog.text


def test_a_loop_of_its_own_goes_on_at_once_after_a_full_step_and_waits_after_the_others(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, clock=lambda: T0)
    results = iter([2, 5, 1, 2])
    runs = []

    def step(now):
        runs.append((threading.current_thread().name, now))
        return next(results)

    steps.run_loop("upkeep", step, 2, 60.0)
    try:
        # Two full steps, then one that is not: the fourth waits a minute.
        wait_until(lambda: len(runs) == 3, message="three steps")
        threading.Event().wait(0.3)
    finally:
        assert steps.stop(2)
    assert runs == [("upkeep", T0)] * 3


def test_an_upkeep_step_on_sqlite_copies_the_wal_so_the_next_write_starts_it_again(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    for second in range(300):
        store.record_ping("pi", T0 + second)
    assert steps.store_upkeep_once(T0 + 300) == 0
    store.record_ping("pi", T0 + 301)
    assert store.checkpoint()[0] < 10  # only the last ping's pages: the WAL was started again


@BACKENDS
def test_a_scheduled_parent_back_from_a_missed_run_restarts_its_childs_silence(store, recording_mailer):
    users = {
        **NIGHTLY,
        "nas": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600, "depends_on": "nightly"},
    }
    steps = make_scheduler(store, recording_mailer, users, now=paris(2026, 11, 30, 1))
    steps.check_once(paris(2026, 11, 30, 1, 0, 1))  # the listener learns when nightly is next expected
    # nightly missed 02:30 (late after 02:45) and came back at 02:50: nas's silence is measured from then.
    store.record_ping("nightly", paris(2026, 11, 30, 2, 50))
    assert store.user("nas").silence_from == paris(2026, 11, 30, 2, 50)
    # Back before its deadline is no return: nothing restarts.
    steps.check_once(paris(2026, 11, 30, 2, 50, 1))
    store.record_ping("nightly", paris(2026, 12, 1, 2, 40))
    assert store.user("nas").silence_from == paris(2026, 11, 30, 2, 50)


@BACKENDS
def test_a_user_missing_from_the_settings_in_force_is_looked_at_again_not_forgotten(store, recording_mailer):
    live = LiveSettings(make_settings())
    store.sync_users(live.current.users, T0)
    steps = Scheduler(store, recording_mailer, live, "https://example.net", Clock(T0))
    # A reload put settings without pi in force, and the store has not followed (yet, or ever: it failed).
    live.replace(make_settings({"nas": {"monitor": True, "max_sleep": 60, "email_frequency": 600}}))
    assert steps.check_once(T0 + 61) == 1
    [pi] = store.due_users(T0 + 61 + scheduler.BAD_USER_DELAY + 1, 10)
    assert pi.username == "pi" and outbox(db_of(store)) == []


def test_an_instance_frozen_past_its_lease_sends_none_of_the_emails_another_instance_took_over(
    postgres_url, monkeypatch
):
    frozen, other = PgStore(postgres_url), PgStore(postgres_url)
    try:
        frozen_mailer, other_mailer = RecordingMailer(), RecordingMailer()
        steps = make_scheduler(frozen, frozen_mailer)
        other_steps = make_scheduler(other, other_mailer)
        steps.check_once(T0 + 61)
        frozen.upkeep(T0 + 100)
        claim = frozen.due_emails

        def claimed_then_frozen(now, limit):
            emails = claim(now, limit)
            # Frozen here past its lease: the other instance takes the claims over.
            other.upkeep(now + 100)
            assert [email.id for email in other.due_emails(now + 100, 10)] == [email.id for email in emails]
            return emails

        monkeypatch.setattr(frozen, "due_emails", claimed_then_frozen)
        assert steps.drain_once(T0 + 100) == 1
        assert frozen_mailer.sent == []
        assert other_steps.drain_once(T0 + 200) == 1
        assert [email.subject for email in other_mailer.sent] == ["pi disconnection detected"]
        assert outbox(db_of(other)) == [("oncall@example.com", "sent", 1)]
    finally:
        frozen.close()
        other.close()


def test_a_clock_jump_on_one_instance_restarts_monitoring_only_when_no_other_instance_runs(postgres_url, caplog):
    jumping, other = PgStore(postgres_url), PgStore(postgres_url)
    try:
        steps = make_scheduler(jumping, RecordingMailer(), now=T0)
        make_scheduler(other, RecordingMailer(), now=T0 + 1)
        jumping.record_ping("pi", T0 + 10)
        deadlines = "SELECT monitored_since, due_at FROM users"
        before = query(postgres_url, deadlines)
        steps.follow_clock(T0 + 20, 20.0)
        # A day forward (the other's lease looks long gone by this clock), then an hour back: nothing changes.
        assert steps.follow_clock(T0 + 21 + 86_400, 21.0) == 86_400
        assert steps.follow_clock(T0 + 22 - 3600, 22.0) == -3600 - 86_400
        assert query(postgres_url, deadlines) == before
        assert "monitoring not restarted" in caplog.text
        other.close()
        # The server frees the other's liveness lock once its backend sees the connection gone, a moment later.
        wait_until(
            lambda: query(postgres_url, LOCKED_INSTANCES_SQL) == [(jumping.instance_id,)],
            message="the other instance's liveness lock freed",
        )
        assert steps.follow_clock(T0 + 23, 23.0) == 3600
        assert query(postgres_url, deadlines) == [(T0 + 23, T0 + 83)]
        assert "monitoring restarted as after a restart" in caplog.text
    finally:
        jumping.close()
        other.close()
