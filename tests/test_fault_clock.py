"""Wall-clock jumps: neither a flood of false alarms nor alerts silenced until the clock catches up.

The wall clock and the monotonic clock are injected; a jump is the wall clock moving by days
while the monotonic clock moves by seconds.
"""

import time

import pytest

import config
import rules
from config import LiveSettings
from mailer import SmtpMailer
from rules import clock_jump
from scheduler import Scheduler
from support import T0, make_settings, query, smtp_mailer

DAYS = 3 * 86400
DEVICE = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
DEVICES = {f"device{i}": DEVICE for i in range(100)} | {"dead": DEVICE}


class Clocks:
    """A wall clock and a monotonic clock that advance together until the wall clock jumps."""

    def __init__(self):
        self.monotonic = 0.0
        self.offset = T0

    @property
    def wall(self):
        """The wall clock's time now."""
        return self.monotonic + self.offset


def alerted(store):
    """The usernames of all alerts recorded so far, oldest first."""
    rows = query(store.path, "SELECT username FROM alerts JOIN users ON users.id = alerts.user_id ORDER BY alerts.id")
    return [username for (username,) in rows]


def step(steps, clocks, seconds):
    """Let `seconds` pass on both clocks, then run one step of the absence listener as its loop does."""
    clocks.monotonic += seconds
    steps.follow_clock(clocks.wall, clocks.monotonic)
    steps.check_once(clocks.wall)


def devices_ping(store, clocks, *, but):
    """Every device but `but` pings now."""
    for username in DEVICES:
        if username != but:
            store.record_ping(username, clocks.wall)


def make_steps(store, clocks, users=DEVICES):
    """A Scheduler over `store` whose wall clock is `clocks.wall`, monitoring `users` from now."""
    settings = make_settings(users)
    store.sync_users(settings.users, clocks.wall)
    mail_sender = SmtpMailer(config.load_smtp_settings({}))  # only names messages: check steps send nothing
    return Scheduler(store, mail_sender, LiveSettings(settings), "https://example.net", lambda: clocks.wall)


def test_a_jump_is_how_far_the_wall_clock_moved_beyond_the_monotonic_clock():
    assert clock_jump((T0, 100.0), (T0 + 1, 101.0)) == 0.0
    assert clock_jump((T0, 100.0), (T0 + 1 + DAYS, 101.0)) == DAYS
    assert clock_jump((T0, 100.0), (T0 + 1 - DAYS, 101.0)) == -DAYS
    # A suspended machine: the monotonic clock stopped for an hour, the wall clock did not.
    assert clock_jump((T0, 100.0), (T0 + 3600, 100.0)) == 3600
    small = rules.CLOCK_JUMP_TOLERANCE
    assert clock_jump((T0, 100.0), (T0 + 1 + small, 101.0)) == 0.0


def test_a_forward_jump_floods_no_one_and_a_silent_device_is_still_alerted(store):
    clocks = Clocks()
    steps = make_steps(store, clocks)
    devices_ping(store, clocks, but=None)
    step(steps, clocks, 10)
    clocks.offset += DAYS
    step(steps, clocks, 10)  # the jump is noticed: monitoring restarts now
    assert alerted(store) == [], f"{len(alerted(store))} alert(s) right after the clock jumped {DAYS} s forward"
    step(steps, clocks, 10)
    devices_ping(store, clocks, but="dead")
    step(steps, clocks, 50)  # max_sleep since the restart: not late yet
    assert alerted(store) == []
    step(steps, clocks, 1)
    assert alerted(store) == ["dead"], f"{len(alerted(store))} alert(s) 61 s after the jump was noticed"


def test_a_backward_jump_does_not_silence_a_device_until_the_clock_catches_up(store):
    clocks = Clocks()
    steps = make_steps(store, clocks)
    devices_ping(store, clocks, but=None)
    step(steps, clocks, 10)
    clocks.offset -= DAYS
    step(steps, clocks, 10)  # the jump is noticed: monitoring restarts now
    step(steps, clocks, 10)
    devices_ping(store, clocks, but="dead")
    step(steps, clocks, 50)  # max_sleep since the restart: not late yet
    assert alerted(store) == []
    step(steps, clocks, 1)  # 61 s after the restart, not days later
    assert alerted(store) == ["dead"], f"{len(alerted(store))} alert(s) 61 s after the jump was noticed"


def test_pings_between_a_backward_jump_and_its_detection_raise_no_false_alarm(store):
    # A device pinging every 45 s with a max_sleep of 60, noticed late by a slow listener.
    clocks = Clocks()
    steps = make_steps(store, clocks, {"pi": DEVICE})
    store.record_ping("pi", clocks.wall)
    step(steps, clocks, 40)
    clocks.offset -= DAYS
    clocks.monotonic += 5
    store.record_ping("pi", clocks.wall)  # recorded on the new clock, before the jump is noticed
    for _ in range(4):
        step(steps, clocks, 15)  # the jump is noticed at the first of these steps
        assert alerted(store) == [], f"{len(alerted(store))} alert(s) though pi pinged {clocks.monotonic - 45:g} s ago"
    [user] = store.configured_users()
    assert user.last_ping <= clocks.wall, "a last ping left in the future silences the device"


def test_after_a_backward_jump_alerts_still_repeat_no_more_often_than_email_frequency(store):
    clocks = Clocks()
    steps = make_steps(store, clocks, {"dead": DEVICE})
    step(steps, clocks, 61)
    assert alerted(store) == ["dead"]
    clocks.offset -= DAYS
    step(steps, clocks, 100)  # the jump is noticed: the throttle counts from now
    step(steps, clocks, 600)
    assert alerted(store) == ["dead"], f"{len(alerted(store))} alert(s) 700 s after the first"
    step(steps, clocks, 1)
    assert alerted(store) == ["dead", "dead"], f"{len(alerted(store))} alert(s) 601 s after the jump was noticed"


def test_a_backward_jump_does_not_postpone_a_queued_email(store):
    clocks = Clocks()
    steps = make_steps(store, clocks, {"dead": DEVICE})
    step(steps, clocks, 61)
    [email] = store.due_emails(clocks.wall, 10)
    store.schedule_retry([email.id], clocks.wall + rules.retry_delay(1), "451 try later")
    clocks.offset -= DAYS
    step(steps, clocks, 1)
    assert [due.id for due in store.due_emails(clocks.wall, 10)] == [email.id]


def test_a_clock_that_went_back_while_the_service_was_down_silences_no_one(store):
    settings = make_settings({"dead": DEVICE})
    store.sync_users(settings.users, T0)
    store.record_ping("dead", T0)
    restart = T0 - DAYS
    store.sync_users(settings.users, restart)
    assert store.due_users(restart + 60, 10) == []
    [user] = store.due_users(restart + 61, 10)
    # The only ping is in the future of the new clock: none is known before it.
    assert (user.last_ping, user.due_at) == (None, restart + 60)


@pytest.mark.usefixtures("trust_test_ca")
def test_the_running_loops_follow_a_jump_of_the_wall_clock(store, smtp_server):
    """The loops wait on a monotonic clock and the listener restarts monitoring on a jump: alerts go on."""
    offset = [0.0]
    settings = make_settings(
        {"dead": {"monitor": True, "max_sleep": 0.3, "email_frequency": 0.5}},
        base_frequency=0,
        email_processing_frequency=0,
    )
    store.sync_users(settings.users, time.time())

    def wall_clock():
        return time.time() + offset[0]

    loops = Scheduler(store, smtp_mailer(smtp_server.port), LiveSettings(settings), "https://example.net", wall_clock)
    loops.start()
    try:
        smtp_server.wait_for_messages(1)
        offset[0] = -86400.0  # the last alert is now a day in the future, unless re-based
        smtp_server.wait_for_messages(2)
    finally:
        assert loops.stop(timeout=5)
    assert alerted(store)[:2] == ["dead", "dead"]
