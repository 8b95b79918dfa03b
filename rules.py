"""The monitoring rules, each in one place: a user's condition, whether to alert or say it is back, its live
state, retries.

Pure functions of the data and times they are given: no clock, no I/O, no imports of the store or
the scheduler. The scheduler acts on them, the web layer shows them, and the store's SQL restates
due_at for its index (store._DUE_AT, written at every start and by its signal trigger;
tests/test_store.py pins them together).

What a signal does to a user (store.py's trigger records it): `success` is a sign of life, closes an open
run and clears a failure; `fail` is contact too (it restarts the max_sleep measure), closes an open run and
makes the user failed until its next success; `start` opens a run (a new one if one is open) and is no sign
of life; `log` only goes into history. An outage begins with a condition and lasts until the next success;
it is *alerted* once its first alert was queued (`down_since`), and only an alerted outage gets a recovery.

A user is watched either by `max_sleep` (expected again at most that long after its last contact) or by
a `schedule`: a cron expression in its zone `tz`, expected at the schedule's first firing strictly after
its last contact (silence_start) and late once `grace` has passed after that (schedules.next_time, which follows Debian
cron across daylight-saving changes). expected_after() is that rule for both; everything else is the same.

Storm control. A user may depend on a parent (its router, say): while the parent is down (in a condition,
snoozed or not), the child's alerts are *suppressed*, recorded but not sent, and a child that went down
after its parent's last contact waits for the parent's own deadline before being alerted, since the
parent may be the cause. When the parent comes back, its children's silence is measured from that moment
(`silence_from`, which store.py's trigger moves). A *snoozed* user (until `snoozed_until`) gets no alert;
its silence is measured from the snooze's end once that is over, and an outage alerted before the snooze
(`muted_outage`) is not alerted again. The moment a silence is measured from is one function,
silence_start; late_at is deadline_after() it, for max_sleep and schedules alike.
"""

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import schedules

# A wall clock that moves this much more or less than the monotonic clock between two steps of
# the absence listener has jumped. Smaller differences shift alerts by less than that, harmlessly.
CLOCK_JUMP_TOLERANCE = 5.0
FIRST_RETRY_DELAY = 5.0
MAX_RETRY_DELAY = 300.0

# The conditions a user can be alerted about, highest priority first, and the recovery notice.
FAILURE = "failed"
RUN_TIMEOUT = "run_timeout"
SILENCE = "late"
START_LATE = "start_late"
BACK = "back"
# Not a condition but a notice about one event, with no outage and no recovery: two successes closer than
# min_interval.
TOO_OFTEN = "too_often"
# A notice too: the user's outages come and go so often that each would be an email; sent once, then no alert
# or recovery until it has been stable for flap_quiet.
FLAPPING = "flapping"
# Its state changes are counted within this long, from the first of them.
FLAP_WINDOW = 3600.0

# What live_state() answers, for the testing page. A user in a condition shows that condition's own name.
PINGING = "pinging"
SILENT = "silent"
LATE = SILENCE
ALERTED = "alerted"
FAILED = FAILURE
RUNNING = "running"
SNOOZED = "snoozed"
MAINTENANCE = "maintenance"
SUPPRESSED = "suppressed"

# Kinds of signal, as /ping's `status` names them (store.py's SQL names them too).
SUCCESS = "success"
START = "start"
FAIL = "fail"
LOG = "log"
SIGNAL_KINDS = (SUCCESS, START, FAIL, LOG)
MAX_EXIT_CODE = 255


class Watched(Protocol):
    """What the rules read about a user (records.UserState has it): its settings and its last signs."""

    @property
    def monitor(self) -> bool: ...
    @property
    def max_sleep(self) -> float: ...
    @property
    def schedule(self) -> str | None: ...
    @property
    def tz(self) -> str | None: ...
    @property
    def grace(self) -> float | None: ...
    @property
    def email_frequency(self) -> float: ...
    @property
    def monitored_since(self) -> float: ...
    @property
    def last_ping(self) -> float | None: ...
    @property
    def last_alert(self) -> float | None: ...
    @property
    def max_runtime(self) -> float | None: ...
    @property
    def notify_recovery(self) -> bool: ...
    @property
    def run_started(self) -> float | None: ...
    @property
    def failed_at(self) -> float | None: ...
    @property
    def last_alert_kind(self) -> str | None: ...
    @property
    def down_since(self) -> float | None: ...
    @property
    def back_at(self) -> float | None: ...
    @property
    def silence_from(self) -> float | None: ...
    @property
    def snoozed_until(self) -> float | None: ...
    @property
    def muted_outage(self) -> float | None: ...
    @property
    def suppressed_kind(self) -> str | None: ...
    @property
    def fail_threshold(self) -> int: ...
    @property
    def fail_count(self) -> int: ...
    @property
    def start_grace(self) -> float | None: ...
    @property
    def too_often_at(self) -> float | None: ...
    @property
    def maintenance_at(self) -> float | None: ...
    @property
    def maintenance_until(self) -> float | None: ...
    @property
    def flap_threshold(self) -> int: ...
    @property
    def flap_quiet(self) -> float: ...
    @property
    def flap_window_start(self) -> float | None: ...
    @property
    def flap_count(self) -> int: ...
    @property
    def last_outage_at(self) -> float | None: ...
    @property
    def flapping_since(self) -> float | None: ...


class Window(Protocol):
    """A recurring maintenance window (config.MaintenanceWindow): opens when `schedule` fires in `tz`, lasts
    `duration` seconds."""

    @property
    def schedule(self) -> str: ...
    @property
    def duration(self) -> float: ...
    @property
    def tz(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Condition:
    """What a user is alerted about: `kind` (FAILURE, RUN_TIMEOUT, SILENCE or START_LATE), and when it went
    down; or a notice (TOO_OFTEN) and when its event happened."""

    kind: str
    down_at: float


@dataclass(frozen=True, slots=True)
class Decision:
    """What the absence listener does about a user at one step.

    `alert`: the condition to alert about now (None: no alert). `recovery`: whether to say that the user
    is back (its alerted outage, `down_since` to `back_at`, ended). `down_since`: the user's alerted outage
    after this step (None: none open). `next_due_at`: when to look at the user again if no signal comes.
    `suppressed`: a condition whose alert its parent's outage suppresses, to record now (None: none).
    `next_run`, for a scheduled user: (the moment its silence is measured from at `now`, its schedule's
    next run after it), which the store keeps so that SQL can tell whether it was down as a parent.
    """

    alert: Condition | None
    recovery: bool
    down_since: float | None
    next_due_at: float | None
    suppressed: Condition | None = None
    next_run: tuple[float, float | None] | None = None
    flap: "Flap | None" = None


@dataclass(frozen=True, slots=True)
class Flap:
    """What a new outage does to the count of a user's state changes (count_outage): the counting window's start,
    the outages in it, this outage's start, and when the user began flapping (None: it is not flapping)."""

    window_start: float
    count: int
    outage_at: float
    flapping_since: float | None


def signal_kind(exit_code: int) -> str:
    """The kind of signal an exit code reports: 0 is a success, 1 to 255 a failure."""
    return SUCCESS if exit_code == 0 else FAIL


def expected_after(user: Watched, after: float) -> float | None:
    """When `user` is next expected if its last contact was at `after`: `after` plus max_sleep, or, for a
    scheduled user, the first time its schedule fires strictly after `after` in its zone.

    None if the schedule never fires again.
    """
    if user.schedule is None:
        return after + user.max_sleep
    return schedules.next_time(user.schedule, user.tz or "UTC", after)


def deadline_after(user: Watched, after: float) -> float | None:
    """When `user` is late if its last contact was at `after`: expected_after(), plus the grace if scheduled.

    None if a schedule never fires again.
    """
    expected = expected_after(user, after)
    if expected is None or user.schedule is None:
        return expected
    return expected + (user.grace or 0.0)


def counts_as(kind: str, duration: float | None, min_runtime: float | None) -> str:
    """What a signal of `kind` counts as for its user: a success that closed a run of `duration` seconds shorter
    than `min_runtime` is a FAIL (the job finished too fast to have done its work); any other signal is its kind."""
    if kind == SUCCESS and duration is not None and min_runtime is not None and duration < min_runtime:
        return FAIL
    return kind


def too_often(previous_success: float | None, at: float, min_interval: float | None) -> bool:
    """Whether a success at `at` comes too soon after the user's previous one (at `previous_success`): closer
    than `min_interval` seconds, either way (signals may commit out of time order)."""
    return previous_success is not None and min_interval is not None and abs(at - previous_success) < min_interval


def failing(user: Watched) -> bool:
    """Whether `user` is failed as the rules count it: reported fails (fail_count of them since its last success)
    reached its fail_threshold. Fewer fails in a row are noise: no condition, no alert."""
    return user.failed_at is not None and user.fail_count >= user.fail_threshold


def maintenance_window(windows: Iterable[Window], now: float) -> tuple[float, float] | None:
    """The maintenance window open at `now`, as (its start, its end), of those `windows` that are: the one that
    ends last; None if none is open. A window opens when its schedule fires (schedules.next_time: daylight-saving
    changes as cron) and is open from then, included, until `duration` later, excluded."""
    open_ = None
    for window in windows:
        start = schedules.next_time(window.schedule, window.tz, now - window.duration)
        if start is not None and start <= now and (open_ is None or start + window.duration > open_[1]):
            open_ = (start, start + window.duration)
    return open_


def next_maintenance(windows: Iterable[Window], after: float) -> float | None:
    """When the first of `windows` next opens strictly after `after`; None if none ever does."""
    starts = (schedules.next_time(window.schedule, window.tz, after) for window in windows)
    return min((start for start in starts if start is not None), default=None)


def in_maintenance(user: Watched, until: float) -> Watched:
    """`user` as a maintenance window ending at `until` leaves it: snoozed until then (unless snoozed longer),
    which mutes an alerted outage it is in (muted_outage), as /snooze does; its silence is measured from the
    window's end. store.save_check_outcomes writes the same (CheckOutcome.maintenance_until)."""
    if user.snoozed_until is not None and user.snoozed_until >= until:
        return user
    muted = user.down_since if user.down_since is not None and user.back_at is None else user.muted_outage
    return dataclasses.replace(user, snoozed_until=until, muted_outage=muted, maintenance_until=until)  # type: ignore[type-var]


def flapping(user: Watched, now: float, flap: Flap | None = None) -> bool:
    """Whether `user` is flapping at `now`: it began to (flapping_since) and has had no new outage for flap_quiet
    since its last one (last_outage_at); both as the new count `flap` (count_outage's) leaves them, if given."""
    since, last = (user.flapping_since, user.last_outage_at) if flap is None else (flap.flapping_since, flap.outage_at)
    return since is not None and last is not None and now < last + user.flap_quiet


def count_outage(user: Watched, current: Condition | None, now: float) -> Flap | None:
    """The count of `user`'s state changes once the absence listener has seen its `current` condition, if that is
    an outage it had not counted yet (None otherwise).

    Each outage is two changes (down, then up), the last one's up still to come: more than flap_threshold changes
    within FLAP_WINDOW of the first makes the user flapping from `now` (unless it already is). An outage flap_quiet
    or more after the last one (the user was stable) starts the count again."""
    if current is None or current.kind in (TOO_OFTEN, FLAPPING):
        return None
    if user.last_outage_at is not None and not current.down_at > user.last_outage_at:
        return None
    start, count = user.flap_window_start, user.flap_count + 1
    stable = user.last_outage_at is not None and current.down_at - user.last_outage_at >= user.flap_quiet
    if start is None or current.down_at - start > FLAP_WINDOW or stable:
        start, count = current.down_at, 1
    since = user.flapping_since if flapping(user, now) else None
    if since is None and 2 * count - 1 > user.flap_threshold:
        since = now
    return Flap(start, count, current.down_at, since)


def snoozed(user: Watched, now: float) -> bool:
    """Whether `user` is snoozed at `now`: its snooze ends strictly after `now`."""
    return user.snoozed_until is not None and now < user.snoozed_until


def silence_start(user: Watched, now: float | None = None) -> float:
    """The moment `user`'s silence is measured from at `now`: the latest of its last ping, the start of
    monitoring, its parent's return (silence_from) and the end of a snooze that is over by `now`.

    `now` None: as it will be once any snooze is over (what the stored deadline counts on). While a snooze
    goes on, the silence is still measured as before it: a snoozed parent can be late for its children.
    """
    since = _restarted_at(user, now)
    return since if user.last_ping is None else max(since, user.last_ping)


def late_at(user: Watched, now: float | None = None) -> float | None:
    """When `user` becomes late: deadline_after() the moment its silence is measured from (silence_start at
    `now`): max_sleep after it, or its schedule's next run after it plus grace.

    So the service's own downtime, a parent's outage and a snooze never count against a device. None if it
    is not monitored (or its schedule never fires again).
    """
    if not user.monitor:
        return None
    return deadline_after(user, silence_start(user, now))


def expected_at(user: Watched, now: float | None = None) -> float | None:
    """When `user` is next expected after the moment its silence is measured from, as late_at counts it
    (before any grace); None if it is not monitored."""
    if not user.monitor:
        return None
    return expected_after(user, silence_start(user, now))


def run_deadline(user: Watched, now: float | None = None) -> float | None:
    """When `user`'s open run overruns: its start plus max_runtime; None without an open run, a max_runtime or monitor.

    The start counts from the start of monitoring, the parent's return or a snooze's end at the latest,
    as late_at does: the service's own downtime, a parent's outage or a snooze never count against a device (a
    success sent meanwhile was lost).
    """
    if not user.monitor or user.run_started is None or user.max_runtime is None:
        return None
    return max(user.run_started, _restarted_at(user, now)) + user.max_runtime


def start_deadline(user: Watched, now: float | None = None) -> float | None:
    """When a scheduled `user` with a start_grace is late to start: its next expected run (expected_at at `now`)
    plus start_grace, if no run is open; None otherwise (a run is open, no start_grace, no schedule, or not
    monitored)."""
    if user.schedule is None or user.start_grace is None or user.run_started is not None:
        return None
    expected = expected_at(user, now)
    return None if expected is None else expected + user.start_grace


def pending_notice(user: Watched) -> Condition | None:
    """The TOO_OFTEN notice waiting to be sent about `user`: its latest success that came too soon after the
    one before (too_often_at, cleared once alerted), unless it came at or before the end of a snooze (a snooze
    drops the notices of its time). None if none."""
    at = user.too_often_at
    if at is None or (user.snoozed_until is not None and not at > user.snoozed_until):
        return None
    return Condition(TOO_OFTEN, at)


def condition(user: Watched, now: float) -> Condition | None:
    """The one condition `user` is in at `now`, by priority: failed (failing()), then a run past max_runtime,
    then a silence past max_sleep (or its scheduled run's grace), then a scheduled run not started within
    start_grace; None if none (or monitor is off).

    Each begins strictly after its deadline (a silence of exactly max_sleep is not late). It went down at
    the first fail signal's time, the run's deadline, the silence's deadline or the start's deadline. A snooze
    changes none of this (only whether it is alerted): a snoozed parent that is late is down for its children.
    """
    if not user.monitor:
        return None
    if failing(user):
        return Condition(FAILURE, user.failed_at or 0.0)
    overrun = run_deadline(user, now)
    if overrun is not None and now > overrun:
        return Condition(RUN_TIMEOUT, overrun)
    deadline = late_at(user, now)
    if deadline is not None and now > deadline:
        return Condition(SILENCE, deadline)
    start = start_deadline(user, now)
    if start is not None and now > start:
        return Condition(START_LATE, start)
    return None


def due_at(user: Watched) -> float | None:
    """When the absence listener must look at `user`, as stored after each signal and each start (store._DUE_AT).

    At once while a recovery waits to be queued (`back_at`); otherwise, if monitored, at the earliest of
    its failure (once failing(); or the end of its snooze, if later), its run's deadline, its silence's
    deadline, as they will be once any snooze is over, a pending TOO_OFTEN notice (pending_notice) and the next
    maintenance window's start as the listener stored it (maintenance_at). The
    listener then pushes it on to the end of the alert throttle (decide's next_due_at). None: nothing can become
    due without a signal.

    A schedule's deadline needs cronsim, which SQL cannot run: for a scheduled user the silence's
    deadline stands in as its last sign of life, so the listener looks at it once after each contact
    or start and stores decide's next_due_at, which holds the real deadlines (late_at, start_deadline).
    """
    if user.back_at is not None:
        return user.back_at
    if not user.monitor:
        return None
    deadline = silence_start(user) if user.schedule is not None else late_at(user)
    failed = user.failed_at if failing(user) else None
    if failed is not None and user.snoozed_until is not None:
        failed = max(failed, user.snoozed_until)
    notice = pending_notice(user)
    times = (failed, run_deadline(user), deadline, None if notice is None else notice.down_at, user.maintenance_at)
    return min(t for t in times if t is not None)


def decide(user: Watched, now: float, parent: Watched | None = None) -> Decision:
    """What to do about `user` at `now`: alert, say it is back, both, or neither; and when to look again.

    A success that ended an alerted outage (`back_at`) gets one recovery, unless notify_recovery or monitor
    is off; the outage is over either way. A user in a condition is alerted unless its last alert was
    about the same condition email_frequency or less ago: a change to a different condition alerts at
    once. The throttle spans outages, so a device that flaps is not alerted more often than
    email_frequency. The first alert of an outage sets its `down_since`.

    With no condition, a pending TOO_OFTEN notice (pending_notice) is alerted the same way, at most once per
    email_frequency, but opens no outage (so no recovery) and is never suppressed or held back by a parent:
    a parent's outage cannot make a device ping too often.

    No alert while `user` is snoozed, nor about an outage alerted before a snooze (`muted_outage`). With
    a `parent` (the user it depends on, as read in the same step): while the parent is down its alert is
    suppressed instead (recorded once per condition, never sent, no outage opened, so no recovery); a
    silence or overlong run that went down after the parent's last contact waits for the parent's
    deadline, since the parent's own outage may be its cause.
    """
    ended = user.back_at is not None
    recovery = ended and user.down_since is not None and user.notify_recovery and user.monitor
    down_since = None if ended else user.down_since
    current = condition(user, now) or pending_notice(user)
    alert = suppressed = None
    repeat_at = None
    # The user's count of outages as this step leaves it (no copy of `user`: this runs for every due user).
    flap = count_outage(user, current, now)
    if flapping(user, now, flap):
        # One notice as it begins; then neither alert nor recovery until it has been stable for flap_quiet.
        recovery = False
        if flap is not None and flap.flapping_since == now and not snoozed(user, now):
            alert = Condition(FLAPPING, now)
        if current is not None and current.kind != TOO_OFTEN:
            last_outage_at = user.last_outage_at if flap is None else flap.outage_at
            repeat_at = (last_outage_at or now) + user.flap_quiet
        if current is None or current.kind == TOO_OFTEN:
            # Up: its next outage, counted when it begins.
            candidates = [repeat_at, run_deadline(user), late_at(user), start_deadline(user)]
        else:
            candidates = [repeat_at]
        times = [t for t in candidates if t is not None]
        return Decision(alert, recovery, down_since, min(times) if times else None, None, _next_run(user, now), flap)
    if current is not None:
        notice = current.kind == TOO_OFTEN
        repeat_at = _repeat_at(user, current.kind)
        if repeat_at is None or now > repeat_at:
            waits_until = None if notice else _parent_deadline_ahead(current, parent, now)
            if snoozed(user, now):
                repeat_at = user.snoozed_until
            elif not notice and _muted(user):
                repeat_at = None
            elif not notice and parent is not None and (condition(parent, now) is not None or flapping(parent, now)):
                repeat_at = None
                if user.suppressed_kind != current.kind:
                    suppressed = current
            elif waits_until is not None:
                repeat_at = waits_until
            else:
                alert = current
                repeat_at = now + user.email_frequency
                if down_since is None and not notice:
                    down_since = current.down_at
    # Besides the throttle's end, only a condition of higher priority than the current one can begin
    # without a signal: a run's deadline during a silence or a late start, the silence's during a late start,
    # or any deadline when all is well (a notice is no condition). Until something changes, a suppressed or
    # muted condition waits for a signal (its parent's included).
    kind = None if current is None or current.kind == TOO_OFTEN else current.kind
    candidates = [repeat_at]
    if kind in (None, SILENCE, START_LATE):
        candidates.append(run_deadline(user))
    if kind in (None, START_LATE):
        candidates.append(late_at(user))
    if kind is None:
        candidates.append(start_deadline(user))
    times = [t for t in candidates if t is not None]
    return Decision(alert, recovery, down_since, min(times) if times else None, suppressed, _next_run(user, now), flap)


def _next_run(user: Watched, now: float) -> tuple[float, float | None] | None:
    """Decision.next_run: for a scheduled `user`, the moment its silence is measured from at `now` and its
    schedule's next run after it."""
    if user.schedule is None:
        return None
    start = silence_start(user, now)
    return (start, expected_after(user, start))


def held_back_until(user: Watched, now: float, parent: Watched | None = None) -> float | None:
    """When the absence listener may next alert about `user`, if something holds back an alert about its
    current condition at `now`: email_frequency, a snooze, or a parent whose deadline it waits for.

    None if `user` is in no condition at `now`, or nothing holds its alert back (it is queued at the next
    step), or only a signal can end what holds it back (a parent that is down, an outage muted by a snooze).
    """
    current = condition(user, now)
    if current is None:
        return None
    repeat_at = _repeat_at(user, current.kind)
    if repeat_at is not None and not now > repeat_at:
        return repeat_at
    if snoozed(user, now):
        return user.snoozed_until
    if _muted(user) or (parent is not None and condition(parent, now) is not None):
        return None
    return _parent_deadline_ahead(current, parent, now)


def live_state(user: Watched, now: float, parent: Watched | None = None) -> str:
    """How `user` looks at `now` to a person watching: MAINTENANCE, SNOOZED, FAILED, SUPPRESSED, LATE, ALERTED,
    RUNNING, PINGING or SILENT.

    MAINTENANCE while a maintenance window snoozes it (in_maintenance), SNOOZED while otherwise snoozed,
    FLAPPING while flapping().
    FAILED from a fail until the next success. SUPPRESSED while in a condition
    whose alert its `parent`'s outage suppresses. LATE and ALERTED follow the absence listener: a user is
    late once its run is past max_runtime or its silence past its deadline (condition()), and ALERTED once
    an alert about that condition was queued during this outage. Otherwise RUNNING while a run is open,
    PINGING if its last ping's deadline (deadline_after) has not passed, else SILENT (monitor off, or no ping yet since
    monitoring began).
    """
    if snoozed(user, now):
        return MAINTENANCE if user.snoozed_until == user.maintenance_until else SNOOZED
    if flapping(user, now):
        return FLAPPING
    current = condition(user, now)
    alerted = (
        current is not None
        and user.down_since is not None
        and user.back_at is None
        and user.last_alert_kind == current.kind
    )
    if current is not None and not alerted and parent is not None and condition(parent, now) is not None:
        return SUPPRESSED
    if failing(user):
        return FAILED
    if current is not None:
        return ALERTED if alerted else LATE
    if user.run_started is not None:
        return RUNNING
    if user.last_ping is not None and now <= (deadline_after(user, user.last_ping) or now):
        return PINGING
    return SILENT


def silences(pings: Iterable[float], user: Watched, previous: float | None) -> list[tuple[float, float]]:
    """Each silence of `user` past its deadline between consecutive pings, as (start, end), in order.

    `pings` are times in ascending order; `previous` is the ping before them (None: none known),
    so a silence that began before the first of them is found too. Past the deadline as late_at
    counts (deadline_after): a silence of exactly max_sleep is none, and a scheduled user's is one
    that outlasted its next expected time plus grace. A silence still going on is the caller's to add.
    """
    found = []
    if user.schedule is None:
        # _silent inline: the overview runs this over every ping of a day (86 400 for a ping a second).
        max_sleep = user.max_sleep
        for at in pings:
            if previous is not None and at - previous > max_sleep:
                found.append((previous, at))
            if previous is None or at > previous:
                previous = at
        return found
    for at in pings:
        if previous is not None and _silent(user, previous, at):
            found.append((previous, at))
        previous = at if previous is None else max(previous, at)
    return found


def silent_at(user: Watched, last_ping: float | None, now: float) -> bool:
    """Whether `user`, whose last ping was at `last_ping` (None: none known), is silent past its deadline at `now`."""
    return last_ping is None or _silent(user, last_ping, now)


def _silent(user: Watched, previous: float, at: float) -> bool:
    if user.schedule is None:
        return at - previous > user.max_sleep
    deadline = deadline_after(user, previous)
    return deadline is not None and at > deadline


def clock_jump(previous: tuple[float, float], current: tuple[float, float]) -> float:
    """How far the wall clock jumped between two readings, each a (wall, monotonic) pair; 0.0 if it did not.

    Between readings the wall clock should advance as much as the monotonic one. A difference
    beyond CLOCK_JUMP_TOLERANCE is a jump: the clock set by hand or stepped by NTP, or a machine
    that was suspended (its monotonic clock stopped, as the service did).
    """
    jump = (current[0] - previous[0]) - (current[1] - previous[1])
    return jump if abs(jump) > CLOCK_JUMP_TOLERANCE else 0.0


def retry_delay(attempts: int, asked: float | None = None) -> float:
    """Seconds to wait before the next try of an email or webhook delivery that has failed `attempts` times (>= 1).

    At least `asked` (a webhook's Retry-After, in seconds) if given, and never more than MAX_RETRY_DELAY.
    """
    backoff = FIRST_RETRY_DELAY * 2.0 ** min(attempts - 1, 16)
    return min(max(backoff, asked or 0.0), MAX_RETRY_DELAY)


def _muted(user: Watched) -> bool:
    """Whether `user`'s current outage was alerted before a snooze (muted_outage): it is not alerted again."""
    return user.down_since is not None and user.down_since == user.muted_outage


def _parent_deadline_ahead(current: Condition, parent: Watched | None, now: float) -> float | None:
    """The deadline of a `parent` that is not down at `now` and whose last contact came before `current` (a
    silence or an overlong run) went down: its own outage may be the cause, so the alert waits for it.
    None: no parent, a failure (reported by the device itself), or a parent heard from since."""
    if parent is None or current.kind == FAILURE:
        return None
    deadline = late_at(parent, now)
    if deadline is None or not silence_start(parent, now) < current.down_at:
        return None
    return deadline


def _restarted_at(user: Watched, now: float | None) -> float:
    """The latest moment that restarts `user`'s measures at `now` (see silence_start), its pings aside."""
    since = user.monitored_since
    if user.silence_from is not None:
        since = max(since, user.silence_from)
    if user.snoozed_until is not None and (now is None or not snoozed(user, now)):
        since = max(since, user.snoozed_until)
    return since


def _repeat_at(user: Watched, kind: str) -> float | None:
    """When an alert about `kind` may be repeated: email_frequency after the last alert if that was about `kind`."""
    if user.last_alert is None or user.last_alert_kind != kind:
        return None
    return user.last_alert + user.email_frequency


def condition_at(user: Watched, now: float) -> float | None:
    """When `user`'s earliest condition begins at `now` if no signal comes (a snooze changing nothing): its
    failure (once failing()), its run's deadline, its silence's deadline (late_at) or its start's
    (start_deadline), whichever is first; None if it is not monitored."""
    if not user.monitor:
        return None
    failed = user.failed_at if failing(user) else None
    times = (failed, run_deadline(user, now), late_at(user, now), start_deadline(user, now))
    return min((t for t in times if t is not None), default=None)


def is_up(condition_at: float | None, now: float) -> bool:
    """Whether a user counts as up at `now` (the metric ping_listener_up), given `condition_at`, when its
    earliest condition begins (its failure, its run's deadline or its silence's deadline; None if not
    monitored): False while it is failed, late or past max_runtime, alerted or not; True otherwise."""
    return condition_at is None or not now > condition_at
