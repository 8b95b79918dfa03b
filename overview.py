"""The overview page's data: every configured user's last 24 hours at a glance, and one user's day.

Shaping over store reads, with one piece of state: RecentPings, each configured user's last 24 hours
of pings summarised and kept up to date from the pings recorded since the previous answer, so that a
refresh of the page costs the number of users and of new pings, never the size of the history, and the
/ping path does no extra work. States and deadlines come from rules.py (live_state, late_at, silences);
times for people from localtime.py.
"""

import itertools
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import rules
from localtime import local_time_writer, logs_link
from store import AlertHistory, Store, UserState

# The overview's timeline: 24 hours in slots of 15 minutes, the last one holding "now".
SLOT_SECONDS = 900
SLOTS = 96
# A slot's pings as one character, "0" for none, else the bit length of their count up to "9":
# "1" is one ping, "2" two or three, "3" four to seven, ..., "9" 256 or more.
LEVELS = "0123456789"
# The day view's chart: columns of 5 minutes.
DAY_COLUMN_SECONDS = 300
# The most pings (as /logs) and alert emails one day view reads.
DAY_MAX_PINGS = 100_000
DAY_MAX_EMAILS = 500
# Problems first, for the rows and the summary. A state not named here sorts right after "late".
STATE_ORDER = (
    "failed",
    rules.ALERTED,
    rules.LATE,
    rules.SUPPRESSED,
    rules.SNOOZED,
    rules.SILENT,
    "running",
    rules.PINGING,
)
_STATE_RANKS = {state: rank for rank, state in enumerate(STATE_ORDER)}
_UNKNOWN_STATE_RANK = _STATE_RANKS[rules.LATE] + 0.5


@dataclass(frozen=True, slots=True)
class Recent:
    """What RecentPings knows of one user: its slots as LEVELS, and its silences that ended in the window."""

    levels: str
    silences: tuple[tuple[float, float], ...]


@dataclass(slots=True)
class _Recent:
    """One user's pings in the window: count per slot, silences ended in it, and its latest ping."""

    counts: dict[int, int] = field(default_factory=dict)
    silences: list[tuple[float, float]] = field(default_factory=list)
    latest: float | None = None
    shown: Recent | None = None  # what read() answers for the current window; None once stale


class RecentPings:
    """Every configured user's last 24 hours of pings, summarised; safe across threads.

    The first read() reads the window's pings once (their number); each later one reads only the
    pings recorded since (along the primary key), so while a page refreshes every few seconds an
    answer costs the number of users. A read more than a window after the previous one starts afresh.
    """

    def __init__(self, store: Store) -> None:
        """Summarise the pings of `store`."""
        self._store = store
        self._lock = threading.Lock()
        self._users: dict[int, _Recent] = {}
        self._first_slot = 0
        self._read_up_to: int | None = None  # the id of the last ping summarised; None before the first read

    def read(self, users: Sequence[UserState], now: float) -> dict[int, Recent]:
        """Each of `users`' (by id) pings in the window of `now`: SLOTS slots, the last one holding `now`."""
        first_slot = math.floor(now / SLOT_SECONDS) - SLOTS + 1
        with self._lock:
            if (
                self._read_up_to is None
                or first_slot - self._first_slot >= SLOTS
                or any(user.id not in self._users for user in users)
            ):
                self._start_afresh(users, first_slot)
            else:
                self._add_new_pings(users)
                self._slide(first_slot)
            answer = {}
            for user in users:
                recent = self._users[user.id]
                if recent.shown is None:
                    recent.shown = Recent(_levels(recent.counts, first_slot), tuple(recent.silences))
                answer[user.id] = recent.shown
            return answer

    def _start_afresh(self, users, first_slot):
        start = first_slot * SLOT_SECONDS
        self._first_slot = first_slot
        self._read_up_to = self._store.newest_ping_id()
        before = self._store.last_pings_before(start)
        self._users = {user.id: _Recent(latest=before.get(user.id)) for user in users}
        by_id = {user.id: user for user in users}
        rows = self._store.recent_pings(start, self._read_up_to)
        for user_id, group in itertools.groupby(rows, key=lambda row: row[0]):
            if user_id in self._users:
                self._add(self._users[user_id], [at for _, at in group], by_id[user_id])

    def _add_new_pings(self, users):
        rows = self._store.pings_after_id(self._read_up_to or 0)
        if not rows:
            return
        self._read_up_to = rows[-1][0]
        times: dict[int, list[float]] = {}
        for _, user_id, at in rows:
            times.setdefault(user_id, []).append(at)
        for user in users:
            if user.id in times:
                self._add(self._users[user.id], sorted(times[user.id]), user)

    def _add(self, recent, times, user):
        start = self._first_slot * SLOT_SECONDS
        for at in times:
            slot = math.floor(at / SLOT_SECONDS)
            recent.counts[slot] = recent.counts.get(slot, 0) + 1
        recent.silences += [silence for silence in rules.silences(times, user, recent.latest) if silence[1] >= start]
        recent.latest = times[-1] if recent.latest is None else max(recent.latest, times[-1])
        recent.shown = None

    def _slide(self, first_slot):
        moved = first_slot - self._first_slot
        if not moved:
            return
        self._first_slot = first_slot
        start = first_slot * SLOT_SECONDS
        for recent in self._users.values():
            for slot in [slot for slot in recent.counts if slot < first_slot]:
                del recent.counts[slot]
            kept = [silence for silence in recent.silences if silence[1] >= start]
            if recent.shown is not None:
                recent.shown = Recent(recent.shown.levels[moved:] + LEVELS[0] * moved, tuple(kept))
            recent.silences = kept


def _levels(counts: dict[int, int], first_slot: int) -> str:
    return "".join(LEVELS[min(counts.get(slot, 0).bit_length(), 9)] for slot in range(first_slot, first_slot + SLOTS))


class Overview:
    """The overview's answers over a store; safe across threads.

    Besides RecentPings, it keeps each user's row of the last answer as JSON text, and writes it
    again only when something in it changed (the user pinged, was alerted, changed state): a
    refresh then costs a comparison per user, and the JSON of the users that changed.
    """

    def __init__(self, store: Store) -> None:
        """The overview of `store`."""
        self._store = store
        self._recent = RecentPings(store)
        self._lock = threading.Lock()
        self._rows: dict[int, tuple[tuple[Any, ...], str]] = {}

    def state(self, now: float) -> str:
        """The overview's answer at `now`, as JSON text: a summary by state, then every configured user, problems first.

        Each user has its live state, last ping and deadline (rules.live_state and late_at), its last
        24 hours' pings by slot (LEVELS), its silences longer than max_sleep (the last with `end` None
        while it goes on), and its alerts and recoveries (the end of a silence it was alerted in).
        """
        users = self._store.configured_users()
        recent = self._recent.read(users, now)
        first_slot = math.floor(now / SLOT_SECONDS) - SLOTS + 1
        start = first_slot * SLOT_SECONDS
        alerts: dict[int, tuple[float, ...]] = {}
        for user_id, at in self._store.recent_alerts(start):
            alerts[user_id] = (*alerts.get(user_id, ()), at)
        write = local_time_writer()
        ranked = []
        counts: dict[str, int] = {}
        with self._lock:
            rows = {}
            for user in users:
                state = rules.live_state(user, now, user.parent)
                counts[state] = counts.get(state, 0) + 1
                # Everything the row shows (a reload can change its settings, a parent's return its deadline).
                silent = rules.silent_at(user, user.last_ping, now)
                key = (
                    state,
                    silent,
                    user.last_ping,
                    user.last_alert,
                    recent[user.id],
                    alerts.get(user.id, ()),
                    rules.late_at(user),
                    user.monitor,
                    user.max_sleep,
                    user.schedule,
                )
                cached = self._rows.get(user.id)
                if cached is None or cached[0] != key:
                    text = json.dumps(_overview_user(user, *key[:2], *key[4:6], write), separators=(",", ":"))
                    cached = (key, text)
                rows[user.id] = cached
                ranked.append((_state_rank(state), user.username, cached[1]))
            self._rows = rows
        ranked.sort()
        summary = sorted(counts.items(), key=lambda item: _state_rank(item[0]))
        head = {
            "now": now,
            "now_local": write(now),
            "window": {"start": start, "end": start + SLOTS * SLOT_SECONDS, "slot_seconds": SLOT_SECONDS},
            "summary": [{"state": state, "users": number} for state, number in summary],
        }
        return json.dumps(head, separators=(",", ":"))[:-1] + ',"users":[' + ",".join(row for *_, row in ranked) + "]}"


def _state_rank(state: str) -> float:
    return _STATE_RANKS.get(state, _UNKNOWN_STATE_RANK)


def _overview_user(
    user: UserState, state: str, silent: bool, recent: Recent, alerts: tuple[float, ...], write: Callable[[float], str]
) -> dict[str, Any]:
    """A user's row; `silent`: its silence since its last ping (or ever) is past its deadline and goes on."""
    silences = [_silence(start, end, write) for start, end in recent.silences]
    if silent:
        silences.append(_silence(user.last_ping, None, write))
    deadline = rules.late_at(user)
    return {
        "username": user.username,
        "state": state,
        "monitor": bool(user.monitor),
        "max_sleep": user.max_sleep,
        "schedule": user.schedule,
        "last_ping": user.last_ping,
        "last_ping_local": None if user.last_ping is None else write(user.last_ping),
        "late_at": deadline,
        "late_at_local": None if deadline is None else write(deadline),
        "pings": recent.levels,
        "silences": silences,
        "alerts": [{"at": at, "at_local": write(at)} for at in alerts],
        "recoveries": [
            {"at": end, "at_local": write(end)}
            for start, end in recent.silences
            if any(start < at < end for at in alerts)
        ],
    }


def _silence(start: float | None, end: float | None, write: Callable[[float], str]) -> dict[str, Any]:
    """A silence for the page: `start` None when no ping is known before it, `end` None while it goes on."""
    return {
        "start": start,
        "start_local": None if start is None else write(start),
        "end": end,
        "end_local": None if end is None else write(end),
    }


def overview_day(store: Store, username: str, start: float, end: float, now: float) -> dict[str, Any]:
    """`username`'s local day [start, end) for the day view, as known at `now`.

    Its pings counted in columns of DAY_COLUMN_SECONDS, its silences past its deadline (rules.silences) that
    overlap the day (with their full length, also before or after it), its alerts with their
    emails, and the /logs link. At most DAY_MAX_PINGS pings are read (then `truncated` is true and
    the day is shown up to the last of them). Raises store.UnknownUserError for an unknown user.
    """
    user = store.user(username)
    times = store.pings_between(username, start, end, DAY_MAX_PINGS + 1)
    before, after = store.pings_around(user.id, start, end)
    truncated = len(times) > DAY_MAX_PINGS
    if truncated:
        after = times.pop()
    following = [] if after is None else [after]
    spans: list[tuple[float, float | None]] = list(rules.silences(times + following, user, before))
    latest = times[-1] if times else before
    if after is None and latest is not None and rules.silent_at(user, latest, now):
        spans.append((latest, None))  # still silent
    columns = [0] * math.ceil((end - start) / DAY_COLUMN_SECONDS)
    for at in times:
        columns[int((at - start) // DAY_COLUMN_SECONDS)] += 1
    write = local_time_writer()
    return {
        "username": user.username,
        "max_sleep": user.max_sleep,
        "schedule": user.schedule,
        "tz": user.tz,
        "grace": user.grace,
        "start": start,
        "end": end,
        "now": now,
        "date_local": write(start)[:10],
        "pings": len(times),
        "truncated": truncated,
        "column_seconds": DAY_COLUMN_SECONDS,
        "columns": columns,
        "silences": [
            {
                **_silence(silence_start, silence_end, write),
                "seconds": (now if silence_end is None else silence_end) - silence_start,
            }
            for silence_start, silence_end in spans
            if (now if silence_end is None else silence_end) > start and silence_start < end
        ],
        "alerts": [_alert(alert, write) for alert in store.alerts_between(user, start, end, DAY_MAX_EMAILS)],
        "logs_url": logs_link("", user.username, start),
    }


def _alert(alert: AlertHistory, write: Callable[[float], str]) -> dict[str, Any]:
    return {
        "at": alert.at,
        "at_local": write(alert.at),
        "last_ping": alert.last_ping,
        "last_ping_local": None if alert.last_ping is None else write(alert.last_ping),
        "emails": [
            {
                "recipient": email.recipient,
                "status": email.status,
                "attempts": email.attempts,
                "queued_at_local": write(email.queued_at),
                "finished_at_local": None if email.finished_at is None else write(email.finished_at),
            }
            for email in alert.emails
        ],
    }
