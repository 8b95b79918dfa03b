"""The overview page's data: every configured user's last 24 hours at a glance, and one user's day.

Shaping over store reads, with state kept between answers so that a refresh costs the number of users,
never the size of the history, and the /ping path does no extra work:
- RecentPings: each user's last 24 hours of pings summarised, loaded once after a start in the background
  (Overview.keep_up, a scheduler loop) and then kept up to date from the pings recorded since;
- Overview: each user's state as last read and its row of the answer as JSON text, written again only
  when something in it changed; a page that gives the version of the answer it has gets only the rows
  that changed since.
States and deadlines come from rules.py (live_state, late_at, silences); times for people from localtime.py.
"""

import itertools
import json
import math
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
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
# How many users' 24 hours one step of the background loading reads: about 10 000 pings at 100 pings a
# user and a day, some 15 ms, so that an answer that begins meanwhile shares the interpreter only that long.
HISTORY_USERS_PER_STEP = 100
# How often the upkeep adds the pings recorded meanwhile once every history is loaded: a page's answer
# then reads only the last few seconds' pings, even the first one after hours without a page open.
UPKEEP_INTERVAL = 3.0
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
    """One user's pings in the window: count per slot, silences ended in it, and its latest ping.

    A ping in a slot after the window's (from a clock set back since) is not counted; one in the slot just
    after it waits in RecentPings until the window reaches it.
    """

    counts: list[int] = field(default_factory=lambda: [0] * SLOTS)  # the window's slots, oldest first
    levels: bytearray = field(default_factory=lambda: bytearray(LEVELS[0] * SLOTS, "ascii"))  # the same as LEVELS
    silences: list[tuple[float, float]] = field(default_factory=list)
    latest: float | None = None
    shown: Recent | None = None  # what read() answers for the current window; None once stale


class RecentPings:
    """Every configured user's last 24 hours of pings, summarised; safe across threads.

    A user's history is loaded once (load(), in the background: a window holds a million pings at fleet
    size); until then read() answers None for it, and the pings recorded meanwhile wait for it. After
    that each catch_up() or read() reads only the pings recorded since the previous one (along the
    primary key). If more than a window passes between two, every history is loaded again.
    """

    def __init__(self, store: Store) -> None:
        """Summarise the pings of `store`."""
        self._store = store
        self._lock = threading.Lock()
        self._users: dict[int, _Recent] = {}
        # Users whose history is not loaded yet -> their pings read since, as (id, time).
        self._loading: dict[int, list[tuple[int, float]]] = {}
        self._first_slot = 0
        self._read_up_to: int | None = None  # the id of the last ping read; None before anything was
        self._generation = 0  # counts the times everything was forgotten, so that a load then in flight is dropped
        # Pings read that fall in the slot just after the window: recorded after the clock of the read that found
        # them was taken, they are counted once the window reaches their slot (the id read past them is not read again).
        self._next_slot_pings: list[tuple[int, int, float]] = []

    def read(self, users: Mapping[int, UserState], now: float) -> dict[int, Recent | None]:
        """Each of `users`' (by id) pings in the window of `now` (SLOTS slots, the last one holding `now`);
        None for a user whose history is still loading."""
        with self._lock:
            self._catch_up(users, now)
            answer: dict[int, Recent | None] = {}
            for user_id in users:
                recent = self._users.get(user_id)
                if recent is not None and recent.shown is None:
                    recent.shown = Recent(recent.levels.decode("ascii"), tuple(recent.silences))
                answer[user_id] = None if recent is None else recent.shown
            return answer

    def catch_up(self, users: Mapping[int, UserState], now: float) -> None:
        """Follow `users` (a new one's history is to load) and add the pings recorded since the last read."""
        with self._lock:
            self._catch_up(users, now)

    def loading(self) -> int:
        """How many users' histories are still to load."""
        with self._lock:
            return len(self._loading)

    def load(self, users: Mapping[int, UserState], limit: int) -> int:
        """Load the histories of up to `limit` users still waiting for theirs, among `users`; return how many.

        The store is read without holding the lock: read() answers meanwhile.
        """
        with self._lock:
            ids = sorted(user_id for user_id in self._loading if user_id in users)[:limit]
            if not ids:
                return 0
            generation, upto, start = self._generation, self._read_up_to or 0, self._first_slot * SLOT_SECONDS
        before = self._store.last_pings_before(start, (ids[0], ids[-1]))
        rows = self._store.recent_pings(start, upto, (ids[0], ids[-1]))
        times: dict[int, list[float]] = {user_id: [] for user_id in ids}
        for user_id, group in itertools.groupby(rows, key=lambda row: row[0]):
            if user_id in times:
                times[user_id] = [at for _, at in group]
        with self._lock:
            if generation != self._generation:
                return 0
            for user_id in ids:
                waited = self._loading.pop(user_id, None)
                if waited is None:
                    continue  # no longer configured
                # Pings read by _catch_up while this load read the store: those after `upto`.
                later = [at for ping_id, at in waited if ping_id > upto]
                recent = _Recent(latest=before.get(user_id))
                self._add(recent, sorted(times[user_id] + later), users[user_id])
                self._users[user_id] = recent
            return len(ids)

    def _catch_up(self, users, now):
        first_slot = math.floor(now / SLOT_SECONDS) - SLOTS + 1
        if self._read_up_to is None or first_slot - self._first_slot >= SLOTS:
            self._generation += 1
            self._first_slot = first_slot
            self._read_up_to = self._store.newest_ping_id()
            self._users = {}
            self._loading = {}
            self._next_slot_pings = []
        for user_id in users:
            if user_id not in self._users and user_id not in self._loading:
                self._loading[user_id] = []
        for user_id in [user_id for user_id in self._users if user_id not in users]:
            del self._users[user_id]
        for user_id in [user_id for user_id in self._loading if user_id not in users]:
            del self._loading[user_id]
        self._slide(first_slot)
        self._add_new_pings(users)

    def _add_new_pings(self, users):
        rows = self._store.pings_after_id(self._read_up_to or 0)
        if rows:
            self._read_up_to = rows[-1][0]
        next_slot = self._first_slot + SLOTS
        held, self._next_slot_pings = self._next_slot_pings, []
        times: dict[int, list[float]] = {}
        for ping_id, user_id, at in (*held, *rows):
            if math.floor(at / SLOT_SECONDS) == next_slot:
                self._next_slot_pings.append((ping_id, user_id, at))
            elif user_id in self._loading:
                self._loading[user_id].append((ping_id, at))
            elif user_id in self._users:
                times.setdefault(user_id, []).append(at)
        for user_id, new in times.items():
            self._add(self._users[user_id], sorted(new), users[user_id])

    def _add(self, recent, times, user):
        start = self._first_slot * SLOT_SECONDS
        for at in times:
            index = math.floor(at / SLOT_SECONDS) - self._first_slot
            if 0 <= index < SLOTS:
                recent.counts[index] += 1
                recent.levels[index] = _level(recent.counts[index])
        recent.silences += [silence for silence in rules.silences(times, user, recent.latest) if silence[1] >= start]
        if times:
            recent.latest = times[-1] if recent.latest is None else max(recent.latest, times[-1])
        recent.shown = None

    def _slide(self, first_slot):
        moved = first_slot - self._first_slot
        if moved <= 0:
            return
        self._first_slot = first_slot
        start = first_slot * SLOT_SECONDS
        empty_counts, empty_levels = [0] * moved, LEVELS[0].encode("ascii") * moved
        for recent in self._users.values():
            del recent.counts[:moved]
            recent.counts += empty_counts
            del recent.levels[:moved]
            recent.levels += empty_levels
            recent.silences = [silence for silence in recent.silences if silence[1] >= start]
            recent.shown = None


def _level(count: int) -> int:
    """The LEVELS character of a slot of `count` pings, as a byte."""
    return ord(LEVELS[min(count.bit_length(), 9)])


@dataclass(slots=True)
class _Row:
    """A user's row as last answered: its state made from `raw` (its row in the store), what the row showed
    but its slots (`key`), its JSON up to its slots (`head`) and its slots' (`pings`), and the answer's
    version in which that JSON last changed (set only under Overview's lock)."""

    raw: tuple[Any, ...]
    user: UserState
    key: tuple[Any, ...]
    head: str
    pings: str
    version: int = 0


class Overview:
    """The overview's answers over a store; safe across threads, and no answer waits for another's work.

    It keeps each user's state as last read (made again only when its row in the store changed) and its
    row of the last answer as JSON text, written again only when something in it changed (the user
    pinged, was alerted, changed state): a refresh then costs a read and a comparison per user, and the
    JSON of the users that changed. Each answer has a version; asked with the version of an earlier one,
    an answer holds only the rows that changed since (and the order of the rows if it changed). keep_up(),
    run in a loop of its own, loads the 24 hours' history in the background, giving way to the answers
    being written, and writes every row once, so that no answer writes them all.
    """

    def __init__(self, store: Store) -> None:
        """The overview of `store`."""
        self._store = store
        self._recent = RecentPings(store)
        self._written = False
        # How many answers are being written: the history's loading waits for none.
        self._answering = 0
        self._answered = threading.Condition()
        # Versions are "INSTANCE:NUMBER": one of another process (another start) is never taken for one of this.
        self._instance = secrets.token_hex(4)
        # Held only to give the rows of an answer their versions and keep them: a few ms at fleet size.
        self._lock = threading.Lock()
        self._version = 0
        self._rows: dict[int, _Row] = {}
        self._order: list[int] = []
        self._order_version = 0
        self._users_version = 0  # when a user was last added or removed

    def keep_up(self, now: float) -> int:
        """One step of the background upkeep at `now`: load up to HISTORY_USERS_PER_STEP users' last 24 hours
        (once no answer is being written), or if none is waiting, add the pings recorded since the
        previous step. Returns how many users' histories it loaded (HISTORY_USERS_PER_STEP: more may wait).

        The first step, and the one that loads the last history, write every row as state() would.
        """
        if not self._written:
            self.state(now)
        with self._answered:
            self._answered.wait_for(lambda: not self._answering)
        users = {user_id: row.user for user_id, row in self._rows.items()}
        loaded = self._recent.load(users, HISTORY_USERS_PER_STEP)
        if loaded and not self._recent.loading():
            self.state(now)
        elif not loaded:
            self._recent.catch_up(users, now)
        return loaded

    def state(self, now: float, since: str | None = None) -> str:
        """The overview's answer at `now`, as JSON text: a summary by state, then every configured user, problems
        first; or, with `since` the `version` of an earlier answer of this overview, only the users whose row
        changed since (`complete` false), with `order`, every username in order, if the order changed.

        `since` of another overview (such as before a restart), or from before a user was added or removed,
        gets every user (`complete` true). Each user has its live state, last ping and deadline
        (rules.live_state and late_at), its last 24 hours' pings by slot (LEVELS; null while its history
        loads, and `history_loading` counts those users), its silences longer than max_sleep (the last with
        `end` None while it goes on), and its alerts and recoveries (the end of a silence it was alerted in).
        """
        with self._answered:
            self._answering += 1
        try:
            return self._state(now, since)
        finally:
            with self._answered:
                self._answering -= 1
                self._answered.notify_all()

    def _state(self, now: float, since: str | None) -> str:
        self._written = True
        raw_rows = self._store.configured_user_rows()
        first_slot = math.floor(now / SLOT_SECONDS) - SLOTS + 1
        start = first_slot * SLOT_SECONDS
        alerts: dict[int, tuple[float, ...]] = {}
        for user_id, at in self._store.recent_alerts(start):
            alerts[user_id] = (*alerts.get(user_id, ()), at)
        previous = self._rows
        users = {}
        for raw in raw_rows:
            row = previous.get(raw[0])
            users[raw[0]] = row.user if row is not None and row.raw == raw else UserState(*raw[:-1])
        recent = self._recent.read(users, now)
        write = local_time_writer()
        counts: dict[str, int] = {}
        ranked = []
        rows = {}
        loading = 0
        for raw in raw_rows:
            user = users[raw[0]]
            state = rules.live_state(user, now, None if raw[-1] is None else users.get(raw[-1]))
            counts[state] = counts.get(state, 0) + 1
            history = recent[user.id]
            if history is None:
                loading += 1
                pings = "null"
            else:
                pings = f'"{history.levels}"'
            # Everything the row shows but its slots, which change with each ping and each slide of the
            # window: `user` is the same object while its row in the store is the same.
            silent = rules.silent_at(user, user.last_ping, now)
            key = (user, state, silent, () if history is None else history.silences, alerts.get(user.id, ()))
            row = previous.get(user.id)
            if row is None or row.key != key:
                row = _Row(raw, user, key, _row_head(user, *key[1:], write), pings)
            elif row.pings != pings:
                row = _Row(raw, user, key, row.head, pings)
            rows[user.id] = row
            ranked.append((_state_rank(state), user.username, user.id))
        ranked.sort()
        order = [user_id for *_, user_id in ranked]
        with self._lock:
            version, asked = self._keep(rows, order), self._asked_version(since)
            complete = asked is None or asked < self._users_version
            newer_than = 0 if asked is None or complete else asked  # every version is at least 1
            sent = [rows[user_id] for user_id in order if rows[user_id].version > newer_than]
            order_changed = not complete and self._order_version > newer_than
        summary = sorted(counts.items(), key=lambda item: _state_rank(item[0]))
        head = {
            "version": f"{self._instance}:{version}",
            "complete": complete,
            "now": now,
            "now_local": write(now),
            "window": {"start": start, "end": start + SLOTS * SLOT_SECONDS, "slot_seconds": SLOT_SECONDS},
            "history_loading": loading,
            "summary": [{"state": state, "users": number} for state, number in summary],
        }
        if order_changed:
            head["order"] = [users[user_id].username for user_id in order]
        return (
            json.dumps(head, separators=(",", ":"))[:-1]
            + ',"users":['
            + ",".join(row.head + row.pings + "}" for row in sent)
            + "]}"
        )

    def _keep(self, rows: dict[int, _Row], order: list[int]) -> int:
        """Keep `rows` and `order` as the latest answer's, each row with the version in which its JSON last
        changed; return the new answer's version. Called with the lock held."""
        self._version += 1
        for user_id, row in rows.items():
            kept = self._rows.get(user_id)
            if kept is row:
                continue
            if kept is not None and kept.head == row.head and kept.pings == row.pings:
                row.version = kept.version
            else:
                row.version = self._version
        if rows.keys() != self._rows.keys():
            self._users_version = self._version
        if order != self._order:
            self._order, self._order_version = order, self._version
        self._rows = rows
        return self._version

    def _asked_version(self, since: str | None) -> int | None:
        """The number of `since` if it is a version this overview answered, else None. Called with the lock held."""
        instance, _, number = (since or "").partition(":")
        if instance != self._instance or not (number.isascii() and number.isdigit()) or int(number) > self._version:
            return None
        return int(number)


def _state_rank(state: str) -> float:
    return _STATE_RANKS.get(state, _UNKNOWN_STATE_RANK)


def _row_head(
    user: UserState,
    state: str,
    silent: bool,
    ended: tuple[tuple[float, float], ...],
    alerts: tuple[float, ...],
    write: Callable[[float], str],
) -> str:
    """A user's row as JSON text up to its slots, which come last (`"pings":`); `silent`: its silence since its
    last ping (or ever) is past its deadline and goes on; `ended`: its silences that ended in the window
    (none known while its history loads).

    Written by hand: when every row is written (after a start, or when the histories are loaded),
    json.dumps of a dict per row would be most of the answer's cost at fleet size.
    """
    if ended or silent or alerts:
        silences = [_silence(start, end, write) for start, end in ended]
        if silent:
            silences.append(_silence(user.last_ping, None, write))
        events = {
            "silences": silences,
            "alerts": [{"at": at, "at_local": write(at)} for at in alerts],
            "recoveries": [
                {"at": end, "at_local": write(end)} for start, end in ended if any(start < at < end for at in alerts)
            ],
        }
        events_json = json.dumps(events, separators=(",", ":"))[1:-1]
    else:
        events_json = '"silences":[],"alerts":[],"recoveries":[]'
    deadline = rules.late_at(user)
    return (
        f'{{"username":{_string(user.username)},"state":{_string(state)},'
        f'"monitor":{"true" if user.monitor else "false"},"max_sleep":{_number(user.max_sleep)},'
        f'"schedule":{_string(user.schedule)},'
        f'"last_ping":{_number(user.last_ping)},"last_ping_local":{_string(_local(user.last_ping, write))},'
        f'"late_at":{_number(deadline)},"late_at_local":{_string(_local(deadline, write))},{events_json},"pings":'
    )


def _string(text: str | None) -> str:
    return "null" if text is None else encode_basestring_ascii(text)


def _number(number: float | None) -> str:
    # repr() of a finite float or an int is how json.dumps writes it.
    return "null" if number is None else repr(number)


def _local(epoch: float | None, write: Callable[[float], str]) -> str | None:
    return None if epoch is None else write(epoch)


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
