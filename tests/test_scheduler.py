import sqlite3
import threading
import time

import pytest

import mailer
import scheduler
from scheduler import ALERTED, LATE, PINGING, SILENT, Scheduler, decide, late_at, live_state, retry_delay
from store import UserState
from support import Clock, make_settings

T0 = 1_790_000_000.0


def user(monitor=True, max_sleep=60.0, email_frequency=600.0, monitored_since=T0, last_ping=None, last_alert=None):
    return UserState(1, "pi", monitor, max_sleep, email_frequency, monitored_since, last_ping, last_alert, None)


# --- pure decisions -----------------------------------------------------------------------------


def test_a_silence_of_exactly_max_sleep_is_not_late():
    assert decide(user(last_ping=T0), T0 + 60) == (False, T0 + 60)


def test_a_silence_longer_than_max_sleep_alerts_and_waits_email_frequency():
    assert decide(user(last_ping=T0), T0 + 60.5) == (True, T0 + 660.5)


def test_an_unmonitored_user_never_alerts():
    assert decide(user(monitor=False, last_ping=T0), T0 + 1e9) == (False, None)
    assert late_at(user(monitor=False)) is None


def test_repeats_wait_more_than_email_frequency_since_the_last_alert():
    silent = user(last_ping=T0, last_alert=T0 + 61)
    assert decide(silent, T0 + 661) == (False, T0 + 661)
    assert decide(silent, T0 + 661.01) == (True, T0 + 1261.01)


def test_a_user_that_never_pinged_is_late_max_sleep_after_monitoring_began():
    assert decide(user(), T0 + 60) == (False, T0 + 60)
    assert decide(user(), T0 + 61)[0]


def test_the_services_own_downtime_never_counts_against_a_device():
    # Last ping long ago, but this process only started monitoring at T0 + 5000.
    restarted = user(last_ping=T0, monitored_since=T0 + 5000)
    assert decide(restarted, T0 + 5060) == (False, T0 + 5060)
    assert decide(restarted, T0 + 5061)[0]


def test_an_email_frequency_of_zero_alerts_on_every_step_of_a_silence():
    silent = user(last_ping=T0, email_frequency=0, last_alert=T0 + 61)
    assert decide(silent, T0 + 61) == (False, T0 + 61)
    assert decide(silent, T0 + 62) == (True, T0 + 62)


def test_a_user_that_pinged_within_max_sleep_is_pinging():
    assert live_state(user(last_ping=T0), T0 + 60) == PINGING


def test_a_user_without_a_ping_since_monitoring_began_is_silent_until_late():
    assert live_state(user(), T0 + 60) == SILENT
    assert live_state(user(), T0 + 60.5) == LATE


def test_an_unmonitored_user_is_silent_after_max_sleep_but_never_late():
    assert live_state(user(monitor=False, last_ping=T0), T0 + 60) == PINGING
    assert live_state(user(monitor=False, last_ping=T0), T0 + 1e9) == SILENT


def test_a_late_user_is_alerted_once_an_alert_was_recorded_during_this_silence():
    assert live_state(user(last_ping=T0), T0 + 61) == LATE
    assert live_state(user(last_ping=T0, last_alert=T0 + 61), T0 + 61) == ALERTED
    # An alert from an earlier silence: the device came back at T0 + 100 and went silent again.
    assert live_state(user(last_ping=T0 + 100, last_alert=T0 + 61), T0 + 161) == LATE


def test_the_live_state_turns_late_exactly_when_the_listener_would_alert():
    for silent in (user(last_ping=T0), user(last_ping=T0, monitored_since=T0 + 30), user(max_sleep=0)):
        deadline = late_at(silent)
        assert live_state(silent, deadline) != LATE and not decide(silent, deadline)[0]
        assert live_state(silent, deadline + 0.01) == LATE and decide(silent, deadline + 0.01)[0]


def test_retries_start_within_ten_seconds_back_off_and_are_capped_at_five_minutes():
    delays = [retry_delay(attempts) for attempts in range(1, 40)]
    assert delays[0] <= 10
    assert delays == sorted(delays)
    assert delays[1] > delays[0]
    assert max(delays) == 300


# --- steps over a real store ----------------------------------------------------------------------


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


def make_scheduler(store, recording_mailer, users=None, now=T0, clock=None, **top_level):
    settings = make_settings(users, **top_level)
    store.sync_users(settings.users, now)
    return Scheduler(store, recording_mailer, settings, "https://example.net", clock or Clock(now))


def queued(store):
    with sqlite3.connect(store.path) as connection:
        return connection.execute("SELECT recipient, status, attempts FROM outbox ORDER BY id").fetchall()


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
    assert queued(store) == []
    steps.check_once(T0 + 61)
    assert queued(store) == [("a@example.com", "queued", 0), ("b@example.com", "queued", 0)]
    steps.check_once(T0 + 300)
    steps.check_once(T0 + 661)
    assert len(queued(store)) == 2
    steps.check_once(T0 + 662)
    assert len(queued(store)) == 4


def test_the_queued_alert_names_the_user_and_links_to_its_logs(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    store.record_ping("pi", T0)
    steps.check_once(T0 + 61)
    [email] = store.due_emails(T0 + 61, 10)
    assert email.subject == "pi disconnection detected"
    assert "https://example.net/logs?username=pi&year=26&month=09&day=21" in email.body


def test_a_ping_ends_the_silence(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    steps.check_once(T0 + 61)
    store.record_ping("pi", T0 + 100)
    steps.check_once(T0 + 160)
    assert len(queued(store)) == 1


def test_a_throttled_user_is_looked_at_again_only_when_the_throttle_ends(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer)
    steps.check_once(T0 + 61)
    store.record_ping("pi", T0 + 62)
    assert steps.check_once(T0 + 123) == 1  # late again, but alerted 62 s ago: pushed to the throttle's end
    assert steps.check_once(T0 + 124) == 0
    assert steps.check_once(T0 + 661) == 0
    assert steps.check_once(T0 + 661.5) == 1
    assert len(queued(store)) == 2


def test_monitor_false_never_queues_an_email(store, recording_mailer):
    steps = make_scheduler(store, recording_mailer, {"pi": {"monitor": False, "max_sleep": 0, "email_frequency": 0}})
    for second in range(1, 100):
        steps.check_once(T0 + second)
    assert queued(store) == []


def test_one_user_that_cannot_be_decided_does_not_stop_the_others(store, recording_mailer, caplog):
    steps = make_scheduler(
        store,
        recording_mailer,
        {
            "pi": {"monitor": True, "max_sleep": 1, "email_frequency": 1},
            "nas": {"monitor": True, "max_sleep": 1, "email_frequency": 1000},
        },
    )
    steps._settings.users.pop("pi")  # as if its config vanished: composing its alert raises
    assert steps.check_once(T0 + 2) == 2
    assert [row[0] for row in queued(store)] == ["oncall@example.com"]
    assert "cannot decide about user 'pi'" in caplog.text
    assert steps.check_once(T0 + 2 + scheduler.BAD_USER_DELAY - 1) == 0


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


def test_drain_removes_an_email_from_the_queue_once_accepted(store, recording_mailer):
    steps = queue_one_alert(store, recording_mailer)
    assert steps.drain_once(T0 + 61) == 1
    assert queued(store) == [("oncall@example.com", "sent", 1)]
    assert [email.recipient for email in recording_mailer.sent] == ["oncall@example.com"]
    assert steps.drain_once(T0 + 62) == 0


def test_drain_retries_a_failed_email_with_backoff(store, recording_mailer):
    clock = Clock(T0 + 61)
    steps = queue_one_alert(store, recording_mailer, clock=clock)
    recording_mailer.results = [mailer.SendResult(mailer.RETRY, "ConnectionRefusedError")] * 2
    steps.drain_once(T0 + 61)
    assert queued(store) == [("oncall@example.com", "queued", 1)]
    assert steps.drain_once(T0 + 61 + retry_delay(1) - 0.1) == 0
    clock.now = T0 + 61 + retry_delay(1)
    assert steps.drain_once(clock.now) == 1
    assert steps.drain_once(clock.now + retry_delay(2) - 0.1) == 0
    assert steps.drain_once(clock.now + retry_delay(2)) == 1
    assert queued(store) == [("oncall@example.com", "sent", 3)]


def test_drain_marks_a_permanently_rejected_email_failed(store, recording_mailer):
    steps = queue_one_alert(store, recording_mailer)
    recording_mailer.results = [mailer.SendResult(mailer.REJECTED, "550 no such user")]
    steps.drain_once(T0 + 61)
    assert queued(store) == [("oncall@example.com", "failed", 1)]
    assert steps.drain_once(T0 + 10_000) == 0


def test_the_loops_stop_promptly_and_a_zero_frequency_does_not_spin(store, recording_mailer, monkeypatch):
    steps = make_scheduler(store, recording_mailer, clock=time.time, base_frequency=0, email_processing_frequency=0)
    calls = []
    original = steps.check_once
    monkeypatch.setattr(steps, "check_once", lambda now: calls.append(now) or original(now))
    steps.start()
    threading.Event().wait(0.5)
    started = time.monotonic()
    assert steps.stop(timeout=2)
    assert time.monotonic() - started < 1
    # Spinning would be tens of thousands of steps in half a second.
    assert 5 <= len(calls) <= 0.5 / scheduler.MIN_LOOP_DELAY + 5
