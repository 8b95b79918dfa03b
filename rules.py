"""The monitoring rules, each in one place: when a user is late, whether to alert, its live state, retries.

Pure functions of the data and times they are given: no clock, no I/O, no imports of the store or
the scheduler. The scheduler acts on them, the web layer shows them, and the store's SQL restates
late_at for its index (store._LATE_AT and its ping trigger; tests/test_store.py pins them together).
"""

from typing import Protocol

# A wall clock that moves this much more or less than the monotonic clock between two steps of
# the absence listener has jumped. Smaller differences shift alerts by less than that, harmlessly.
CLOCK_JUMP_TOLERANCE = 5.0
FIRST_RETRY_DELAY = 5.0
MAX_RETRY_DELAY = 300.0

# What live_state() answers, for the testing page.
PINGING = "pinging"
SILENT = "silent"
LATE = "late"
ALERTED = "alerted"


class Watched(Protocol):
    """What the rules read about a user (store.UserState has it): its settings and its last signs."""

    @property
    def monitor(self) -> bool: ...
    @property
    def max_sleep(self) -> float: ...
    @property
    def email_frequency(self) -> float: ...
    @property
    def monitored_since(self) -> float: ...
    @property
    def last_ping(self) -> float | None: ...
    @property
    def last_alert(self) -> float | None: ...


def late_at(user: Watched) -> float | None:
    """When `user` becomes late: its last sign of life plus max_sleep.

    The last sign of life is the later of its last ping and the start of monitoring, so the
    service's own downtime never counts against a device. None if it is not monitored.
    """
    if not user.monitor:
        return None
    seen = user.monitored_since if user.last_ping is None else max(user.last_ping, user.monitored_since)
    return seen + user.max_sleep


def decide(user: Watched, now: float) -> tuple[bool, float | None]:
    """Whether to alert about `user` at `now`, and when to look at it next: (alert, next_due_at).

    A user is late once its silence exceeds max_sleep (exactly max_sleep is not late); a late
    user is alerted unless its last alert is email_frequency or less ago.
    """
    deadline = late_at(user)
    if deadline is None:
        return False, None
    if not now > deadline:
        return False, deadline
    if user.last_alert is not None and not now > user.last_alert + user.email_frequency:
        return False, user.last_alert + user.email_frequency
    return True, max(deadline, now + user.email_frequency)


def live_state(user: Watched, now: float) -> str:
    """How `user` looks at `now` to a person watching: PINGING, SILENT, LATE or ALERTED.

    LATE and ALERTED follow the absence listener: a user is late once `now > late_at(user)`, and
    ALERTED once an alert was recorded during this silence (an alert from an earlier silence does
    not count). Otherwise PINGING if its last ping is at most max_sleep ago, else SILENT (monitor
    off, or no ping yet since monitoring began).
    """
    deadline = late_at(user)
    if deadline is not None and now > deadline:
        return ALERTED if user.last_alert is not None and user.last_alert > deadline else LATE
    if user.last_ping is not None and now - user.last_ping <= user.max_sleep:
        return PINGING
    return SILENT


def clock_jump(previous: tuple[float, float], current: tuple[float, float]) -> float:
    """How far the wall clock jumped between two readings, each a (wall, monotonic) pair; 0.0 if it did not.

    Between readings the wall clock should advance as much as the monotonic one. A difference
    beyond CLOCK_JUMP_TOLERANCE is a jump: the clock set by hand or stepped by NTP, or a machine
    that was suspended (its monotonic clock stopped, as the service did).
    """
    jump = (current[0] - previous[0]) - (current[1] - previous[1])
    return jump if abs(jump) > CLOCK_JUMP_TOLERANCE else 0.0


def retry_delay(attempts: int) -> float:
    """Seconds to wait before the next try of an email that has failed `attempts` times (>= 1)."""
    return min(FIRST_RETRY_DELAY * 2.0 ** min(attempts - 1, 16), MAX_RETRY_DELAY)


def is_up(deadline: float | None, now: float) -> bool:
    """Whether a user whose late_at() is `deadline` counts as up at `now` (the metric ping_listener_up): False
    while it is late, alerted or not, True otherwise (a user whose monitor is off included)."""
    return deadline is None or not now > deadline
