"""Wall-clock jumps: neither a flood of false alarms nor alerts silenced until the clock catches up.

The wall clock and the monotonic clock are injected; a jump is the wall clock moving by days
while the monotonic clock moves by seconds.
"""

import time

import pytest

import config
import scheduler
from mailer import SmtpMailer
from scheduler import Scheduler, clock_jump
from support import SMTP_LOGIN, SMTP_PASSWORD, make_settings, query

T0 = 1_790_000_000.0
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
    return Scheduler(store, mail_sender, settings, "https://example.net", lambda: clocks.wall)


def test_a_jump_is_how_far_the_wall_clock_moved_beyond_the_monotonic_clock():
    assert clock_jump((T0, 100.0), (T0 + 1, 101.0)) == 0.0
    assert clock_jump((T0, 100.0), (T0 + 1 + DAYS, 101.0)) == DAYS
    assert clock_jump((T0, 100.0), (T0 + 1 - DAYS, 101.0)) == -DAYS
    # A suspended machine: the monotonic clock stopped for an hour, the wall clock did not.
    assert clock_jump((T0, 100.0), (T0 + 3600, 100.0)) == 3600
    small = scheduler.CLOCK_JUMP_TOLERANCE
    assert clock_jump((T0, 100.0), (T0 + 1 + small, 101.0)) == 0.0


def test_a_forward_jump_floods_no_one_and_a_silent_device_is_still_alerted_on_time(store):
    clocks = Clocks()
    steps = make_steps(store, clocks)
    devices_ping(store, clocks, but=None)
    step(steps, clocks, 10)
    clocks.offset += DAYS
    step(steps, clocks, 10)
    assert alerted(store) == [], f"{len(alerted(store))} alert(s) right after the clock jumped {DAYS} s forward"
    step(steps, clocks, 10)
    devices_ping(store, clocks, but="dead")
    step(steps, clocks, 30)  # 60 s since the last ping, in real time
    assert alerted(store) == []
    step(steps, clocks, 1)
    assert alerted(store) == ["dead"], f"{len(alerted(store))} alert(s) 61 s into dead's silence"


def test_a_backward_jump_does_not_silence_a_device_until_the_clock_catches_up(store):
    clocks = Clocks()
    steps = make_steps(store, clocks)
    devices_ping(store, clocks, but=None)
    step(steps, clocks, 10)
    clocks.offset -= DAYS
    step(steps, clocks, 10)
    devices_ping(store, clocks, but="dead")
    step(steps, clocks, 40)
    assert alerted(store) == []
    step(steps, clocks, 1)  # 61 s since dead's last ping, in real time
    assert alerted(store) == ["dead"], f"{len(alerted(store))} alert(s) 61 s into dead's silence"


def test_a_backward_jump_keeps_the_alert_throttle_in_real_time(store):
    clocks = Clocks()
    steps = make_steps(store, clocks, {"dead": DEVICE})
    step(steps, clocks, 61)
    assert alerted(store) == ["dead"]
    clocks.offset -= DAYS
    step(steps, clocks, 100)
    step(steps, clocks, 499)  # 599 s after the first alert, in real time
    assert alerted(store) == ["dead"]
    step(steps, clocks, 2)
    assert alerted(store) == ["dead", "dead"], f"{len(alerted(store))} alert(s) 601 s after the first"


def test_a_backward_jump_does_not_postpone_a_queued_email(store):
    clocks = Clocks()
    steps = make_steps(store, clocks, {"dead": DEVICE})
    step(steps, clocks, 61)
    [email] = store.due_emails(clocks.wall, 10)
    store.schedule_retry(email.id, clocks.wall + scheduler.retry_delay(1), "451 try later")
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
    assert (user.last_ping, user.due_at) == (restart, restart + 60)


@pytest.mark.usefixtures("trust_test_ca")
def test_the_running_loops_follow_a_jump_of_the_wall_clock(store, smtp_server):
    """The loops wait on a monotonic clock and the listener re-bases on a jump: alerts go on."""
    offset = [0.0]
    settings = make_settings(
        {"dead": {"monitor": True, "max_sleep": 0.3, "email_frequency": 0.5}},
        base_frequency=0,
        email_processing_frequency=0,
    )
    store.sync_users(settings.users, time.time())
    smtp = config.SmtpSettings("127.0.0.1", smtp_server.port, SMTP_LOGIN, SMTP_PASSWORD, None)

    def wall_clock():
        return time.time() + offset[0]

    loops = Scheduler(store, SmtpMailer(smtp, timeout=5), settings, "https://example.net", wall_clock)
    loops.start()
    try:
        smtp_server.wait_for_messages(1)
        offset[0] = -86400.0  # the last alert is now a day in the future, unless re-based
        smtp_server.wait_for_messages(2)
    finally:
        assert loops.stop(timeout=5)
    assert alerted(store)[:2] == ["dead", "dead"]
