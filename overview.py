"""The overview page's data: every configured user's last 24 hours at a glance, and one user's day.

Shaping over store reads, with state kept between answers so that a refresh costs the number of users,
never the size of the history, and the /ping path does no extra work:
- RecentPings: each user's last 24 hours of pings summarised, loaded once after a start in the background
  (Overview.keep_up, a scheduler loop) and then kept up to date from the pings recorded since;
- Overview: each user's state as last read and its row of the answer as JSON text, written again only
  when something in it may have changed; a page that gives the version of the answer it has gets only the
  rows that changed since, and moves the slots of the others itself when the window slides.
States and deadlines come from rules.py (live_state, late_at, silences); times for people from localtime.py.
"""

import bisect
import itertools
import json
import math
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any

import rules
from localtime import local_time_writer, logs_link
from records import AlertHistory, Signal, UserState
from store_contract import StoreContract

# The overview's timeline: 24 hours in slots of 15 minutes, the last one holding "now".
SLOT_SECONDS = 900
SLOTS = 96
# A slot's pings as one character, "0" for none, else the bit length of their count up to "9":
# "1" is one ping, "2" two or three, "3" four to seven, ..., "9" 256 or more.
LEVELS = "0123456789"
# How many users' 24 hours one step of the background loading reads (and then writes their rows): about
# 10 000 pings at 100 pings a user and a day, some 20 ms, so that an answer that begins meanwhile shares the
# interpreter only that long.
HISTORY_USERS_PER_STEP = 100
# How many pings one read of that loading takes at most: its memory is bounded by this, not by those users'
# pings in 24 hours (there may be millions); they are folded into each user's slots one read at a time.
HISTORY_PINGS_PER_READ = 10_000
# How often the upkeep adds the pings recorded meanwhile once every history is loaded: a page's answer
# then reads only the last few seconds' pings, even the first one after hours without a page open.
UPKEEP_INTERVAL = 3.0
# The day view's chart: columns of 5 minutes.
DAY_COLUMN_SECONDS = 300
# The most pings (as /logs) and alert emails one day view reads.
DAY_MAX_PINGS = 100_000
DAY_MAX_EMAILS = 500
# The most failures one day view lists, the latest, each with its output (up to 10 000 bytes kept with it).
DAY_MAX_FAILURES = 50
# Which alerts (the alerts table's kinds) a row draws as which marks: a failure is not drawn as an alert.
_MARKS = {"alerts": (rules.SILENCE, rules.RUN_TIMEOUT), "failures": (rules.FAILURE,), "recoveries": (rules.BACK,)}
# Problems first, for the rows and the summary. A state not named here sorts right after rules.LATE.
STATE_ORDER = (
    rules.FAILED,
    rules.FLAPPING,
    rules.ALERTED,
    rules.LATE,
    rules.SUPPRESSED,
    rules.SNOOZED,
    rules.MAINTENANCE,
    rules.SILENT,
    rules.RUNNING,
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

    # The window's slots' counts, oldest first, kept up to 255 (one more is "9", 256 or more, whatever the rest).
    # Bytes, not a list, so that the garbage collector has no 96 items a user to visit.
    counts: bytearray = field(default_factory=lambda: bytearray(SLOTS))
    levels: bytearray = field(default_factory=lambda: bytearray(LEVELS[0] * SLOTS, "ascii"))  # the same as LEVELS
    silences: tuple[tuple[float, float], ...] = ()  # a tuple of floats: nothing for the garbage collector
    latest: float | None = None


class RecentPings:
    """Every configured user's last 24 hours of pings, summarised; safe across threads.

    A user's history is loaded once (load(), in the background: a window holds a million pings at fleet
    size); until then it is None, and the pings recorded meanwhile wait for it. After that each
    catch_up() or changes() reads only the pings recorded since the previous one (along the primary key).
    If more than a window passes between two, every history is loaded again.
    """

    def __init__(self, store: StoreContract) -> None:
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
        # Users whose summary changed since changes() last answered, other than by the slide of the window.
        self._changed: set[int] = set()
        self._followed: set[int] = set()  # the ids of the users last followed

    def changes(self, users: Mapping[int, UserState], now: float) -> tuple[int, dict[int, Recent | None]]:
        """The window at `now` (its first slot's number: slot n starts at n * SLOT_SECONDS; SLOTS slots, the
        last one holding `now`, never earlier than the previous window), and the pings in it of each of
        `users` (by id) whose pings changed since the previous call other than by the window's slide (None
        for a user whose history is still loading).

        Between two calls a user not named kept its silences, and its slots are the previous ones
        moved by the slide: the first slots dropped, as many empty ones added at the end. A new user, or every
        user when every history is to load again (the window moved a whole window), is named.
        """
        with self._lock:
            self._catch_up(users, now)
            answer: dict[int, Recent | None] = {}
            for user_id in self._changed:
                if user_id in users:
                    recent = self._users.get(user_id)
                    answer[user_id] = None if recent is None else Recent(recent.levels.decode("ascii"), recent.silences)
            self._changed = set()
            return self._first_slot, answer

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

        The store is read without holding the lock (changes() answers meanwhile), HISTORY_PINGS_PER_READ pings at
        a time, each read folded into the users' slots before the next. The pings recorded meanwhile are added
        after them, as any ping recorded later is.
        """
        with self._lock:
            ids = sorted(user_id for user_id in self._loading if user_id in users)[:limit]
            if not ids:
                return 0
            generation, upto, first_slot = self._generation, self._read_up_to or 0, self._first_slot
        start = first_slot * SLOT_SECONDS
        before = self._store.last_pings_before(start, (ids[0], ids[-1]))
        folds = {user_id: _HistoryFold(first_slot, before.get(user_id)) for user_id in ids}
        after = None
        while True:
            rows = self._store.recent_pings(start, upto, (ids[0], ids[-1]), after, HISTORY_PINGS_PER_READ)
            for user_id, group in itertools.groupby(rows, key=lambda row: row[0]):
                if user_id in folds:
                    folds[user_id].add([at for _, at, _ in group], users[user_id])
            if len(rows) < HISTORY_PINGS_PER_READ:
                break
            after = rows[-1]
        with self._lock:
            if generation != self._generation:
                return 0
            for user_id in ids:
                waited = self._loading.pop(user_id, None)
                if waited is None:
                    continue  # no longer configured
                # The window may have moved meanwhile (by less than a window: the generation is the same).
                recent = folds[user_id].recent(self._first_slot)
                # Pings read by _catch_up while this load read the store: those after `upto`.
                self._add(recent, sorted(at for ping_id, at in waited if ping_id > upto), users[user_id])
                self._users[user_id] = recent
                self._changed.add(user_id)
            return len(ids)

    def _catch_up(self, users, now):
        first_slot = _first_slot(now)
        if self._read_up_to is None or first_slot - self._first_slot >= SLOTS:
            self._generation += 1
            self._first_slot = first_slot
            self._read_up_to = self._store.newest_ping_id()
            self._users = {}
            self._loading = {}
            self._next_slot_pings = []
            self._changed = set(users)
            self._followed = set()
        if users.keys() != self._followed:
            self._follow(users)
        self._slide(first_slot)
        self._add_new_pings(users)

    def _follow(self, users):
        """Follow `users`: a new one's history is to load, one no longer among them is forgotten."""
        for user_id in users:
            if user_id not in self._users and user_id not in self._loading:
                self._loading[user_id] = []
                self._changed.add(user_id)
        for user_id in [user_id for user_id in self._users if user_id not in users]:
            del self._users[user_id]
        for user_id in [user_id for user_id in self._loading if user_id not in users]:
            del self._loading[user_id]
        self._followed = set(users)

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
        _count(recent.counts, recent.levels, times, self._first_slot)
        recent.silences += _silences_from(times, user, recent.latest, self._first_slot * SLOT_SECONDS)
        if times:
            recent.latest = times[-1] if recent.latest is None else max(recent.latest, times[-1])
        self._changed.add(user.id)

    def _slide(self, first_slot):
        moved = first_slot - self._first_slot
        if moved <= 0:
            return
        self._first_slot = first_slot
        start = first_slot * SLOT_SECONDS
        empty_counts, empty_levels = bytes(moved), LEVELS[0].encode("ascii") * moved
        for user_id, recent in self._users.items():
            del recent.counts[:moved]
            recent.counts += empty_counts
            del recent.levels[:moved]
            recent.levels += empty_levels
            if recent.silences and recent.silences[0][1] < start:  # they end in order
                recent.silences = tuple(silence for silence in recent.silences if silence[1] >= start)
                self._changed.add(user_id)


@dataclass(slots=True)
class _HistoryFold:
    """One user's history as RecentPings.load() reads it, read by read, in the window of when the load began
    (whose first slot is `first_slot`): its slots' counts and levels over two windows (the window may move by
    less than one while the load reads), its silences ended in it, and its latest ping. Adding the times of
    consecutive reads one after the other gives what adding them all at once would."""

    first_slot: int
    latest: float | None
    counts: bytearray = field(default_factory=lambda: bytearray(2 * SLOTS))
    levels: bytearray = field(default_factory=lambda: bytearray(LEVELS[0] * 2 * SLOTS, "ascii"))
    silences: list[tuple[float, float]] = field(default_factory=list)

    def add(self, times: list[float], user: UserState) -> None:
        """Add `times` of `user`'s pings, ascending and none before the times added earlier."""
        _count(self.counts, self.levels, times, self.first_slot)
        self.silences += _silences_from(times, user, self.latest, self.first_slot * SLOT_SECONDS)
        if times:
            self.latest = times[-1] if self.latest is None else max(self.latest, times[-1])

    def recent(self, first_slot: int) -> _Recent:
        """What RecentPings keeps of this history in the window whose first slot is `first_slot` (from
        self.first_slot to less than a window later)."""
        moved = first_slot - self.first_slot
        start = first_slot * SLOT_SECONDS
        return _Recent(
            self.counts[moved : moved + SLOTS],
            self.levels[moved : moved + SLOTS],
            tuple(silence for silence in self.silences if silence[1] >= start),
            self.latest,
        )


def _count(counts: bytearray, levels: bytearray, times: list[float], first_slot: int) -> None:
    """Count `times` in the slots of `counts` and `levels` (as _Recent's, as many as they hold), the first of
    them numbered `first_slot`."""
    slots = len(counts)
    for at in times:
        index = math.floor(at / SLOT_SECONDS) - first_slot
        if 0 <= index < slots:
            count = counts[index] + 1
            levels[index] = _level(count)
            counts[index] = min(count, 255)


def _silences_from(
    times: list[float], user: UserState, previous: float | None, start: float
) -> tuple[tuple[float, float], ...]:
    """The silences of `user` (rules.silences) between `times`, ascending, after `previous`, that end at or after
    `start`."""
    return tuple(silence for silence in rules.silences(times, user, previous) if silence[1] >= start)


def _first_slot(now: float) -> int:
    """The number of the first slot of the window of `now` (slot n starts at n * SLOT_SECONDS): SLOTS slots, the
    last one holding `now`."""
    return math.floor(now / SLOT_SECONDS) - SLOTS + 1


def _level(count: int) -> int:
    """The LEVELS character of a slot of `count` pings, as a byte."""
    return ord(LEVELS[min(count.bit_length(), 9)])


@dataclass(slots=True)
class _Row:
    """A user's row as last answered: made from `user` (its row in the store), its parent's and its
    `silences` in the window (None while its history loads); its live `state`, the same until `recheck_at`
    at the earliest while neither row changes; what it shows but its slots (`key`); its JSON up to its slots
    (`head`), of its slots in the current window (`pings`) and whole (`text`); and the answer's version in
    which that JSON last changed other than by the window's slide."""

    user: UserState
    silences: tuple[tuple[float, float], ...] | None
    state: str
    recheck_at: float
    key: tuple[Any, ...]
    head: str
    pings: str
    text: str
    version: int


class Overview:
    """The overview's answers over a store; safe across threads.

    It keeps every user's row of the answer as JSON text and brings the rows up to date before each answer,
    writing again only those in which something may have changed: the user's row in the store or its
    parent's (a ping, an alert, a setting), its alerts, its pings in the window, or its state with the clock
    alone (at the next of its deadlines, found with its row; a child's row is written again with its
    parent's). A refresh then costs a read and a comparison per user, and the rows of the users that
    changed. Each answer has a version; asked with the version of an earlier one, an answer holds only the
    rows that changed since (and the order of the rows if it changed). When the window slides, a row whose
    slots only moved with it is not counted as changed: the page moves them itself. keep_up(), run in a
    loop of its own, loads the 24 hours' history in the background, giving way to the answers being
    written, and writes the rows of the users it loaded, so that no answer writes them all.
    """

    def __init__(self, store: StoreContract) -> None:
        """The overview of `store`."""
        self._store = store
        self._recent = RecentPings(store)
        # How many answers are being written: the history's loading waits for none.
        self._answering = 0
        self._answered = threading.Condition()
        # Versions are "INSTANCE:NUMBER": one of another process (another start) is never taken for one of this.
        self._instance = secrets.token_hex(4)
        # Held while the rows are brought up to date and an answer is taken from them: one at a time, so
        # that each sees the rows as the previous one left them.
        self._lock = threading.Lock()
        self._version = 0  # the latest answer's (or update's)
        self._now = -math.inf  # the clock of the latest update
        self._raws: dict[int, tuple[Any, ...]] = {}  # each configured user's row in the store, as last read
        self._users: dict[int, UserState] = {}  # the same as UserState
        self._parents: dict[int, int] = {}  # a user that has a parent -> its parent's id
        self._alerts: dict[int, tuple[tuple[float, str], ...]] = {}  # a user -> its alerts in the window: (time, kind)
        self._first_slot: int | None = None  # the window's, as RecentPings.changes answers it
        self._rows: dict[int, _Row] = {}
        self._order: list[int] = []
        self._order_version = 0
        self._summary: list[tuple[str, int]] = []
        self._pending: set[int] = set()  # users whose rows are to write again, found by an update that failed
        self._loading = 0  # how many users' histories are still loading
        # When a user was last added or removed, or every history was forgotten: an answer since an earlier
        # version has every row.
        self._users_version = 0

    def keep_up(self, now: float) -> int:
        """One step of the background upkeep at `now`: load up to HISTORY_USERS_PER_STEP users' last 24 hours
        (once no answer is being written) and write their rows, or if none is waiting, add the pings recorded
        since the previous step. Returns how many users' histories it loaded (HISTORY_USERS_PER_STEP: more
        may wait).

        The first step writes every row as state() would.
        """
        with self._lock:
            if not self._version:
                self._update(now, read_store=True)
        with self._answered:
            self._answered.wait_for(lambda: not self._answering)
        with self._lock:
            users = dict(self._users)
        loaded = self._recent.load(users, HISTORY_USERS_PER_STEP)
        if loaded:
            with self._lock:
                self._update(now, read_store=False)
        else:
            self._recent.catch_up(users, now)
        return loaded

    def state(self, now: float, since: str | None = None) -> str:
        """The overview's answer at `now`, as JSON text: a summary by state, then every configured user, problems
        first; or, with `since` the `version` of an earlier answer of this overview, only the users whose row
        changed since (`complete` false), with `order`, every username in order, if the order changed.

        A row whose slots only moved with the window (`window.start` later than in the answer of `since`, by
        whole slots: its first slots dropped, as many "0" added at the end) did not change. `since` of
        another overview (such as before a restart), or from before a user was added or removed or the
        window moved by a whole window, gets every user (`complete` true). Each user has its live state, last
        ping and deadline (rules.live_state and late_at), its last 24 hours' pings by slot (LEVELS; null while
        its history loads, and `history_loading` counts those users), its silences longer than max_sleep (the
        last with `end` None while it goes on), and its alerts and recoveries (the end of a silence it was
        alerted in).
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
        with self._lock:
            self._update(now, read_store=True)
            asked = self._asked_version(since)
            complete = asked is None or asked < self._users_version
            newer_than = 0 if asked is None or complete else asked  # every version is at least 1
            rows = self._rows
            sent = [rows[user_id].text for user_id in self._order if rows[user_id].version > newer_than]
            order = None
            if not complete and self._order_version > newer_than:
                order = [rows[user_id].user.username for user_id in self._order]
            version, start, loading, summary = self._version, self._first_slot, self._loading, self._summary
        start = (start or 0) * SLOT_SECONDS
        head: dict[str, Any] = {
            "version": f"{self._instance}:{version}",
            "complete": complete,
            "now": now,
            "now_local": local_time_writer()(now),
            "window": {"start": start, "end": start + SLOTS * SLOT_SECONDS, "slot_seconds": SLOT_SECONDS},
            "history_loading": loading,
            "summary": [{"state": state, "users": number} for state, number in summary],
        }
        if order is not None:
            head["order"] = order
        return json.dumps(head, separators=(",", ":"))[:-1] + ',"users":[' + ",".join(sent) + "]}"

    def _update(self, now: float, read_store: bool) -> None:
        """Bring every row up to date at `now` as a new version: with `read_store`, from the users' rows and
        alerts in the store; else from those last read (the upkeep's steps). Called with the lock held.

        If a read of the store fails, the users found changed until then are written by the next update."""
        self._version += 1
        changed = self._pending
        if read_store:
            raws = self._store.configured_user_rows()
            alerts = self._store.recent_alerts(_first_slot(now) * SLOT_SECONDS)
            changed.update(self._take_users(raws))
        if now < self._now:  # the clock was set back: a state may go back too
            changed.update(self._users)
        first_slot, histories = self._recent.changes(self._users, now)  # the last read of the store
        self._pending = set()
        self._now = now
        changed.update(histories)
        if self._first_slot is not None and first_slot != self._first_slot:
            self._slide(first_slot - self._first_slot)
        self._first_slot = first_slot
        if read_store:
            changed.update(self._take_alerts(alerts, first_slot * SLOT_SECONDS))
        changed.update(user_id for user_id, row in self._rows.items() if row.recheck_at <= now)
        if self._parents and changed:  # a child's state depends on its parent's
            changed.update(child for child, parent in self._parents.items() if parent in changed)
        reorder = recount = self._users_version == self._version  # users were added or removed
        write = local_time_writer()
        for user_id in changed:
            user = self._users.get(user_id)
            if user is None:
                continue  # no longer configured
            old = self._rows.get(user_id)
            if user_id in histories:
                history = histories[user_id]
                silences, pings = (None, "null") if history is None else (history.silences, f'"{history.levels}"')
            else:  # its slots, moved with the window since its history was read
                silences, pings = (None, "null") if old is None else (old.silences, old.pings)
            row = self._row(user, old, silences, pings, now, write)
            reorder = reorder or old is None or old.state != row.state
            recount = recount or row.silences is None or old is None or old.silences is None
            self._rows[user_id] = row
        if reorder:
            ranked = sorted((_state_rank(row.state), row.user.username, user_id) for user_id, row in self._rows.items())
            order = [user_id for *_, user_id in ranked]
            if order != self._order:
                self._order, self._order_version = order, self._version
            counts = Counter(row.state for row in self._rows.values())
            self._summary = sorted(counts.items(), key=lambda item: _state_rank(item[0]))
        if recount:
            self._loading = sum(row.silences is None for row in self._rows.values())

    def _take_users(self, raws: list[tuple[Any, ...]]) -> set[int]:
        """Keep `raws`, every configured user's row in the store; return the ids of those whose row changed
        and those added."""
        previous = self._raws
        new = [raw for raw in raws if previous.get(raw[0]) != raw]
        changed = {raw[0] for raw in new}
        if len(raws) != len(previous) or not changed <= previous.keys():
            self._users_version = self._version
            for user_id in previous.keys() - {raw[0] for raw in raws}:
                del self._raws[user_id], self._users[user_id], self._rows[user_id]
                self._parents.pop(user_id, None)
        for raw in new:
            self._raws[raw[0]] = raw
            self._users[raw[0]] = UserState(*raw[:-1])
            if raw[-1] is None:
                self._parents.pop(raw[0], None)
            else:
                self._parents[raw[0]] = raw[-1]
        return changed

    def _take_alerts(self, rows: list[tuple[int, float, str]], start: float) -> set[int]:
        """Keep the users' alerts from `start` on among `rows` (store.recent_alerts); return the ids of those
        whose alerts changed."""
        alerts: dict[int, tuple[tuple[float, str], ...]] = {}
        for user_id, at, kind in rows:
            if at >= start:
                alerts[user_id] = (*alerts.get(user_id, ()), (at, kind))
        changed = {
            user_id
            for user_id in alerts.keys() | self._alerts.keys()
            if alerts.get(user_id) != self._alerts.get(user_id)
        }
        self._alerts = alerts
        return changed

    def _slide(self, moved: int) -> None:
        """Move every row's slots with the window, `moved` slots later, keeping its version: the page moves
        them too. A window moved by a whole window is every row changed (every history loads again)."""
        if moved >= SLOTS:
            self._users_version = self._version
            return
        for row in self._rows.values():
            if row.silences is not None:
                row.pings = '"' + row.pings[1 + moved : -1] + LEVELS[0] * moved + '"'
                row.text = row.head + row.pings + "}"

    def _row(
        self,
        user: UserState,
        old: _Row | None,
        silences: tuple[tuple[float, float], ...] | None,
        pings: str,
        now: float,
        write: Callable[[float], str],
    ) -> _Row:
        """`user`'s row at `now` with `silences` (None while its history loads) and `pings` as its slots;
        `old`, its row in the previous version (None for a new user)."""
        parent_id = self._parents.get(user.id)
        parent = None if parent_id is None else self._users.get(parent_id)
        state = rules.live_state(user, now, parent)
        # Everything the row shows but its slots, as tuples of numbers and text only (its row in the store for
        # `user`): nothing for the garbage collector to visit at each collection.
        snoozed_until = user.snoozed_until if rules.snoozed(user, now) else None
        # A device not watched is never silent past a deadline: it has none.
        ended = (silences or ()) if user.monitor else ()
        key = (
            self._raws[user.id],
            state,
            _silent_since(user, now),
            ended,
            self._alerts.get(user.id, ()),
            snoozed_until,
            None if parent is None else parent.username,
        )
        head = old.head if old is not None and old.key == key else _row_head(user, *key[1:], write)
        text = head + pings + "}"
        version = old.version if old is not None and old.text == text else self._version
        return _Row(user, silences, state, _recheck_at(user, now), key, head, pings, text, version)

    def _asked_version(self, since: str | None) -> int | None:
        """The number of `since` if it is a version this overview answered, else None. Called with the lock held."""
        instance, _, number = (since or "").partition(":")
        if instance != self._instance or not (number.isascii() and number.isdigit()) or int(number) > self._version:
            return None
        return int(number)


def _recheck_at(user: UserState, now: float) -> float:
    """The first moment from `now` on at which `user`'s live state (rules.live_state, its parent's aside) or
    its silence (rules.silent_at) may change with the clock alone, while its row in the store stays the same:
    the end of its snooze, its run's deadline, its silence's (late_at), its start's (start_deadline) or its last
    ping's; math.inf if none.

    Its parent's state changes at the parent's own such moments, when the parent's row is written again
    with its children's."""
    moments = [
        user.snoozed_until,
        rules.run_deadline(user, now),
        rules.late_at(user, now),
        rules.start_deadline(user, now),
    ]
    if user.last_ping is not None:
        moments.append(rules.deadline_after(user, user.last_ping))
    return min((moment for moment in moments if moment is not None and moment >= now), default=math.inf)


def _silent_since(user: UserState, now: float) -> float | None:
    """Since when `user`'s silence has gone on at `now`, if it is past its deadline (rules.late_at): the moment
    it is measured from (its last ping, or the start of monitoring, a parent's return or a snooze's end if
    later); None while it is not, and for a user not monitored, which has no deadline."""
    deadline = rules.late_at(user, now)
    if deadline is None or now <= deadline:
        return None
    return rules.silence_start(user, now)


def _state_rank(state: str) -> float:
    return _STATE_RANKS.get(state, _UNKNOWN_STATE_RANK)


def _row_head(
    user: UserState,
    state: str,
    silent_since: float | None,
    ended: tuple[tuple[float, float], ...],
    alerts: tuple[tuple[float, str], ...],
    snoozed_until: float | None,
    parent: str | None,
    write: Callable[[float], str],
) -> str:
    """A user's row as JSON text up to its slots, which come last (`"pings":`); `silent_since`: since when its
    silence past its deadline goes on (None if it does not); `ended`: its silences past their deadline that
    ended in the window (none known while its history loads, none for a user not monitored); `alerts`: its
    alerts in the window as (time, kind), drawn as alerts, failures (with its current failure's first
    signal) or recoveries (with the end of a silence it was alerted in); `snoozed_until`: the end of its
    snooze, None if not snoozed; `parent`: the name of the user it depends on.

    Written by hand: when every row is written (after a start, or when the histories are loaded),
    json.dumps of a dict per row would be most of the answer's cost at fleet size.
    """
    failed_since = user.failed_at  # the page draws no mark before its window
    if ended or silent_since is not None or alerts or failed_since is not None:
        silences = [_silence(start, end, write) for start, end in ended]
        if silent_since is not None:
            silences.append(_silence(silent_since, None, write))
        times = {kind: sorted({at for at, of in alerts if of in kinds}) for kind, kinds in _MARKS.items()}
        if failed_since is not None and failed_since not in times["failures"]:
            times["failures"] = sorted([*times["failures"], failed_since])
        alerted = [at for at, kind in alerts if kind in _MARKS["alerts"]]
        returns = {end for start, end in ended if any(start < at < end for at in alerted)}
        times["recoveries"] = sorted(returns.union(times["recoveries"]))
        events = {
            "silences": silences,
            **{kind: [{"at": at, "at_local": write(at)} for at in marks] for kind, marks in times.items()},
        }
        events_json = json.dumps(events, separators=(",", ":"))[1:-1]
    else:
        events_json = '"silences":[],"alerts":[],"failures":[],"recoveries":[]'
    deadline = rules.late_at(user)
    return (
        f'{{"username":{_string(user.username)},"state":{_string(state)},'
        f'"monitor":{"true" if user.monitor else "false"},"max_sleep":{_number(user.max_sleep)},'
        f'"schedule":{_string(user.schedule)},"parent":{_string(parent)},'
        f'"last_ping":{_number(user.last_ping)},"last_ping_local":{_string(_local(user.last_ping, write))},'
        f'"late_at":{_number(deadline)},"late_at_local":{_string(_local(deadline, write))},'
        f'"snoozed_until":{_number(snoozed_until)},"snoozed_until_local":{_string(_local(snoozed_until, write))},'
        f'{events_json},"pings":'
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


def overview_day(store: StoreContract, username: str, start: float, end: float, now: float) -> dict[str, Any]:
    """`username`'s local day [start, end) for the day view, as known at `now`.

    Its pings counted in columns of DAY_COLUMN_SECONDS, its silences past its deadline (rules.silences) that
    overlap the day (with their full length, also before or after it; none for a user not monitored), its
    alerts (with their kind) with their emails and
    webhook deliveries, its latest DAY_MAX_FAILURES failures with their exit code,
    run time and output (the day view is behind the overview's password), and the /logs link. At most
    DAY_MAX_PINGS pings are read (then `truncated` is true and the day is shown up to the last of them).
    Raises store.UnknownUserError for an unknown user.
    """
    user = store.user(username)
    times = store.pings_between(username, start, end, DAY_MAX_PINGS + 1)
    before, after = store.pings_around(user.id, start, end)
    truncated = len(times) > DAY_MAX_PINGS
    if truncated:
        after = times.pop()
    following = [] if after is None else [after]
    spans: list[tuple[float, float | None]] = []
    latest = times[-1] if times else before
    if user.monitor:  # a device not watched has no deadline to be silent past
        spans += rules.silences(times + following, user, before)
        if after is None and latest is not None and rules.silent_at(user, latest, now):
            spans.append((latest, None))  # still silent
    day_columns = math.ceil((end - start) / DAY_COLUMN_SECONDS)
    # `times` ascend: each column's count is where its end falls among them, less where its start does.
    ends = [bisect.bisect_left(times, start + (column + 1) * DAY_COLUMN_SECONDS) for column in range(day_columns)]
    columns = [upto - since for since, upto in zip([0, *ends], ends, strict=False)]
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
        "failures": [
            _failure(signal, write) for signal in store.failures_between(user.id, start, end, DAY_MAX_FAILURES)
        ],
        "logs_url": logs_link("", user.username, start),
    }


def _failure(signal: Signal, write: Callable[[float], str]) -> dict[str, Any]:
    return {
        "at": signal.at,
        "at_local": write(signal.at),
        "exit_code": signal.exit_code,
        "duration": signal.duration,
        "body": signal.body,
    }


def _alert(alert: AlertHistory, write: Callable[[float], str]) -> dict[str, Any]:
    return {
        "kind": alert.kind,
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
        # Each webhook delivery as its channel ("webhook:NAME"), never its URL.
        "deliveries": [
            {
                "channel": delivery.channel,
                "status": delivery.status,
                "attempts": delivery.attempts,
                "queued_at_local": write(delivery.queued_at),
                "finished_at_local": None if delivery.finished_at is None else write(delivery.finished_at),
            }
            for delivery in alert.deliveries
        ],
    }
