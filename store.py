"""The SQLite database: every SQL statement and transaction of Ping Listener lives here.

Each thread gets its own connection (SQLite connections are not shared across threads); write
transactions are serialised by one lock in this process, so its threads never meet "database is
locked", and the busy timeout covers other processes such as a person's `sqlite3` shell.
All times are UTC epoch seconds, passed in by the caller: the store never reads a clock.
"""

import dataclasses
import errno
import fcntl
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import DEFAULT_DURABILITY, UserConfig
from rules import BACK, SILENCE, SUCCESS
from webhooks import WebhookEvent

SCHEMA_PATH = Path(__file__).with_name("schema.sql")
# Signals (schema version 4): kinds of ping with their exit code, run duration and body; the users' runs,
# failures and outages; the kind of each alert. A user alerted during its current silence keeps that
# outage open (down_since), so its next success gets a recovery.
SIGNALS_UPGRADE_SQL = """
ALTER TABLE users ADD COLUMN max_runtime REAL;
ALTER TABLE users ADD COLUMN notify_recovery INTEGER NOT NULL DEFAULT 1 CHECK (notify_recovery IN (0, 1));
ALTER TABLE users ADD COLUMN run_started REAL;
ALTER TABLE users ADD COLUMN last_duration REAL;
ALTER TABLE users ADD COLUMN failed_at REAL;
ALTER TABLE users ADD COLUMN fail_signal INTEGER;
ALTER TABLE users ADD COLUMN last_alert_kind TEXT;
ALTER TABLE users ADD COLUMN down_since REAL;
ALTER TABLE users ADD COLUMN back_at REAL;
ALTER TABLE users ADD COLUMN last_signal INTEGER;
ALTER TABLE pings ADD COLUMN kind TEXT NOT NULL DEFAULT 'success' CHECK (kind IN ('success', 'start', 'fail', 'log'));
ALTER TABLE pings ADD COLUMN exit_code INTEGER;
ALTER TABLE pings ADD COLUMN duration REAL;
ALTER TABLE pings ADD COLUMN body TEXT;
ALTER TABLE alerts ADD COLUMN kind TEXT NOT NULL DEFAULT 'late'
    CHECK (kind IN ('late', 'failed', 'run_timeout', 'back'));
ALTER TABLE alerts ADD COLUMN went_down_at REAL;
UPDATE users SET last_alert_kind = 'late' WHERE last_alert IS NOT NULL;
UPDATE users SET down_since = max(coalesce(last_ping, monitored_since), monitored_since) + max_sleep
WHERE monitor AND last_alert > max(coalesce(last_ping, monitored_since), monitored_since) + max_sleep;
"""
# Channels (schema version 6): the queue of webhook deliveries, beside the email outbox, with the indexes
# retention deletes along (as the outbox's outbox_by_alert and outbox_finished).
WEBHOOK_OUTBOX_SQL = """
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY,
    alert_id        INTEGER NOT NULL REFERENCES alerts (id),
    webhook         TEXT    NOT NULL,
    event_id        TEXT    NOT NULL UNIQUE,
    title           TEXT    NOT NULL,
    text            TEXT    NOT NULL,
    logs_url        TEXT    NOT NULL,
    queued_at       REAL    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error      TEXT,
    finished_at     REAL
);
CREATE INDEX webhook_outbox_queue ON webhook_outbox (next_attempt_at) WHERE status = 'queued';
CREATE INDEX webhook_outbox_by_alert ON webhook_outbox (alert_id);
CREATE INDEX webhook_outbox_finished ON webhook_outbox (status, finished_at) WHERE status != 'queued';
"""
# Storm control (schema version 7): dependencies, snoozes and suppressed alerts; digests of emails.
STORM_CONTROL_UPGRADE_SQL = """
ALTER TABLE users ADD COLUMN parent_id INTEGER REFERENCES users (id);
ALTER TABLE users ADD COLUMN silence_from REAL;
ALTER TABLE users ADD COLUMN snoozed_until REAL;
ALTER TABLE users ADD COLUMN muted_outage REAL;
ALTER TABLE users ADD COLUMN suppressed_kind TEXT;
CREATE INDEX users_by_parent ON users (parent_id) WHERE parent_id IS NOT NULL;
ALTER TABLE alerts ADD COLUMN suppressed INTEGER NOT NULL DEFAULT 0 CHECK (suppressed IN (0, 1));
CREATE TABLE digests (
    id         INTEGER PRIMARY KEY,
    recipient  TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    emails     INTEGER NOT NULL
);
ALTER TABLE outbox ADD COLUMN digest_id INTEGER REFERENCES digests (id);
CREATE INDEX outbox_by_digest ON outbox (digest_id) WHERE digest_id IS NOT NULL;
"""
# Schedules (schema version 8): a user watched by a cron expression in a zone, with a grace time,
# instead of max_sleep (which is then 0 and unused); and the listener's last answer to "when is it next
# expected" (next_run, after next_run_after), so that SQL can tell whether a scheduled parent was down.
SCHEDULES_UPGRADE_SQL = """
ALTER TABLE users ADD COLUMN schedule TEXT;
ALTER TABLE users ADD COLUMN tz TEXT;
ALTER TABLE users ADD COLUMN grace REAL;
ALTER TABLE users ADD COLUMN next_run_after REAL;
ALTER TABLE users ADD COLUMN next_run REAL;
"""
# Health (schema version 9): the one row that a health check rewrites to prove that a write can commit.
HEALTH_TABLE_SQL = "CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_at REAL NOT NULL, room BLOB)"
# How a database of an older schema version becomes current: MIGRATIONS[n - 1] upgrades version n to
# n + 1 (PRAGMA user_version). All the steps a database needs run in one transaction at start, so it is
# either wholly upgraded or left as it was. A new database gets schema.sql, which is always current:
# a step that changes tables changes schema.sql the same way. Append new steps; never edit old ones.
MIGRATIONS: tuple[str, ...] = (
    # 1 -> 2: authentication answers (530 authentication required, 534, 535 credentials invalid, 538)
    # are the setup's fault and no longer fail an email; those they failed are queued again, due at once.
    "UPDATE outbox SET status = 'queued', next_attempt_at = finished_at, finished_at = NULL"
    " WHERE status = 'failed' AND substr(last_error, 1, 4) IN ('530 ', '534 ', '535 ', '538 ')",
    # 2 -> 3: the overview's day view lists an alert's emails through it.
    "CREATE INDEX outbox_by_alert ON outbox (alert_id)",
    # 3 -> 4: signals.
    SIGNALS_UPGRADE_SQL,
    # 4 -> 5: operations: counters for the metrics, so that a scrape never counts pings (a `log` signal
    # and a recovery are not counted); indexes for retention and for the outbox's counts by status.
    "ALTER TABLE users ADD COLUMN pings_total INTEGER NOT NULL DEFAULT 0;"
    " ALTER TABLE users ADD COLUMN alerts_total INTEGER NOT NULL DEFAULT 0;"
    " UPDATE users SET pings_total = (SELECT count(*) FROM pings WHERE user_id = users.id AND kind <> 'log'),"
    " alerts_total = (SELECT count(*) FROM alerts WHERE user_id = users.id AND kind <> 'back');"
    " CREATE INDEX alerts_by_time ON alerts (at);"
    " CREATE INDEX outbox_finished ON outbox (status, finished_at) WHERE status != 'queued'",
    # 5 -> 6: channels: the queue of webhook deliveries.
    WEBHOOK_OUTBOX_SQL,
    # 6 -> 7: storm control.
    STORM_CONTROL_UPGRADE_SQL,
    # 7 -> 8: schedules.
    SCHEDULES_UPGRADE_SQL,
    # 8 -> 9: health.
    HEALTH_TABLE_SQL,
)
SCHEMA_VERSION = 1 + len(MIGRATIONS)
BUSY_TIMEOUT_MS = 5000
HEALTH_TIMEOUT_MS = 500
# A health check's write: the health table's one row, rewritten whole (so the database never grows by it) with
# the time of the check and new random bytes. SQLite writes only the pages whose bytes changed, and a commit
# needs room in the WAL for each: with fewer bytes, a nearly full disk could take the check's commit and refuse
# the larger one of a batch of pings. 64 KiB is 16 pages, more than a batch of a few dozen pings changes.
HEALTH_WRITE_BYTES = 64 * 1024
HEALTH_WRITE_SQL = (
    f"INSERT INTO health (id, checked_at, room) VALUES (1, ?, randomblob({HEALTH_WRITE_BYTES}))"
    " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at, room = excluded.room"
)
# PRAGMA synchronous for each `durability` of settings.json. In WAL mode, NORMAL syncs the log only when a
# checkpoint copies it into the database file (the store-upkeep loop, every second): a commit survives the
# process's death, not the machine's. FULL syncs the log at every commit, before the pings' answers leave.
SYNCHRONOUS = {"process": "NORMAL", "power": "FULL"}
# Why a health check's write could not commit when the database (or the disk under it) has no room left.
DATABASE_FULL = "database is full: no space left on its disk"


# rules.due_at restated in SQL, so that the deadline can be stored and found through an index: at once
# while a recovery waits; else, if monitored, the earliest of the failure (or the snooze's end, if later),
# the run's deadline (its start, or the restart of its measures if later, plus max_runtime) and the
# silence's deadline (the later of the last ping and that restart, plus max_sleep), as they will be once
# any snooze is over. The restart of the measures (rules._restarted_at) is the latest of the start of
# monitoring, the parent's return and the snooze's end. Multi-argument min() and max() are NULL if any
# argument is, hence the coalesce()s. Written at every start (_restart_monitoring), by every signal and
# snooze (_SIGNAL_TRIGGER_SQL, snooze()). tests/test_store.py checks with random signals, snoozes and
# restarts that they agree. A scheduled user's deadline needs cronsim: SQL makes it due at the moment its
# silence is measured from, so the absence listener looks at it once after each contact or start and
# stores its real deadline (rules.due_at says so too).
def _restarted_sql(at: str | None = None, silence_from: str = "silence_from", prefix: str = "") -> str:
    """rules._restarted_at in SQL, at the time `at` (None: once any snooze is over), over the columns of
    `prefix` (a table alias and a dot, or ""), reading silence_from from the given SQL expression instead."""
    since = f"{prefix}monitored_since"
    snooze_end = (
        f"coalesce({prefix}snoozed_until, {since})"
        if at is None
        else f"CASE WHEN {prefix}snoozed_until <= {at} THEN {prefix}snoozed_until ELSE {since} END"
    )
    return f"max({since}, coalesce({silence_from}, {since}), {snooze_end})"


def _due_at_sql(
    last_ping: str = "last_ping",
    run_started: str = "run_started",
    failed_at: str = "failed_at",
    back_at: str = "back_at",
    silence_from: str = "silence_from",
) -> str:
    """_DUE_AT, reading each of these columns from the given SQL expression instead (the trigger's new values)."""
    restarted = _restarted_sql(silence_from=silence_from)
    late_at = (
        f"max(coalesce({last_ping}, {restarted}), {restarted}) + CASE WHEN schedule IS NULL THEN max_sleep ELSE 0 END"
    )
    failed = f"max({failed_at}, coalesce(snoozed_until, {failed_at}))"
    return (
        f"CASE WHEN {back_at} IS NOT NULL THEN {back_at} WHEN monitor THEN min(coalesce({failed}, {late_at}),"
        f" coalesce(max({run_started}, {restarted}) + max_runtime, {late_at}), {late_at}) END"
    )


def _down_sql(at: str, prefix: str) -> str:
    """Whether the user of the columns of `prefix` is in a condition at the time `at`: rules.condition is
    not None, in SQL (a snooze changes nothing). tests/test_store.py checks that they agree.

    A scheduled user's silence deadline is its next run (plus grace) as the absence listener last stored
    it, if that was for the moment its silence is measured from at `at`; otherwise it is not known here
    and the user counts as not silent (the listener looks at a scheduled user after each of its signals,
    so this is only so within one step of one)."""
    restarted = _restarted_sql(at, f"{prefix}silence_from", prefix)
    seen = f"max(coalesce({prefix}last_ping, {restarted}), {restarted})"
    return (
        f"({prefix}monitor AND ({prefix}failed_at IS NOT NULL"
        f" OR {at} > max({prefix}run_started, {restarted}) + {prefix}max_runtime"
        f" OR CASE WHEN {prefix}schedule IS NULL THEN {at} > {seen} + {prefix}max_sleep"
        f" ELSE {prefix}next_run_after = {seen} AND {at} > {prefix}next_run + {prefix}grace END))"
    )


_DUE_AT = _due_at_sql()
# When the earliest of a monitored user's conditions begins at :now (rules.condition: the failure, the run's
# deadline, the silence's deadline, each measured as rules.silence_start says at :now), for the metrics' up.
_RESTARTED_NOW = _restarted_sql(":now")
_CONDITION_AT = (
    "CASE WHEN monitor THEN min(coalesce(failed_at, {late}), coalesce(max(run_started, {restarted}) + max_runtime,"
    " {late}), {late}) END"
).format(late=f"max(coalesce(last_ping, {_RESTARTED_NOW}), {_RESTARTED_NOW}) + max_sleep", restarted=_RESTARTED_NOW)

# A user as UserState holds it, in its field order.
_USER_COLUMNS = (
    "id, username, monitor, max_sleep, email_frequency, monitored_since, last_ping, last_alert, due_at,"
    " max_runtime, notify_recovery, run_started, last_duration, failed_at, fail_signal, last_alert_kind,"
    " down_since, back_at, last_signal, silence_from, snoozed_until, muted_outage, suppressed_kind, schedule, tz,"
    " grace"
)
# A user and, in the same row, the user it depends on (NULLs if none): read together, so that the
# listener decides about a child from its parent's state at the same moment.
_USER_AND_PARENT = ", ".join(
    [f"child.{column}" for column in _USER_COLUMNS.split(", ")] + [f"parent.{c}" for c in _USER_COLUMNS.split(", ")]
)
_WITH_PARENT = "users AS child LEFT JOIN users AS parent ON parent.id = child.parent_id"
# The queries that run on every tick or /logs; tests check that each is answered through an index.
# `due_at < now`: a condition begins strictly after its deadline, as rules.condition says.
DUE_USERS_SQL = f"SELECT {_USER_AND_PARENT} FROM {_WITH_PARENT} WHERE child.due_at < ? ORDER BY child.due_at LIMIT ?"
# Each due email with what a digest needs: its user and kind, and the digest that carried it last.
DUE_EMAILS_SQL = (
    "SELECT outbox.id, outbox.recipient, outbox.subject, outbox.body, outbox.message_id, outbox.queued_at,"
    " outbox.attempts, users.username, alerts.kind, digests.id, digests.message_id, digests.created_at,"
    " digests.emails"
    " FROM outbox JOIN alerts ON alerts.id = outbox.alert_id JOIN users ON users.id = alerts.user_id"
    " LEFT JOIN digests ON digests.id = outbox.digest_id"
    " WHERE outbox.status = 'queued' AND outbox.next_attempt_at <= ? ORDER BY outbox.next_attempt_at LIMIT ?"
)
# Through webhook_outbox_queue, then the alert and its user by primary key.
DUE_WEBHOOKS_SQL = (
    "SELECT webhook_outbox.id, webhook_outbox.webhook, webhook_outbox.attempts, webhook_outbox.event_id, alerts.kind,"
    " users.username, alerts.at, alerts.last_ping, webhook_outbox.title, webhook_outbox.text, webhook_outbox.logs_url"
    " FROM webhook_outbox JOIN alerts ON alerts.id = webhook_outbox.alert_id JOIN users ON users.id = alerts.user_id"
    " WHERE webhook_outbox.status = 'queued' AND webhook_outbox.next_attempt_at <= ?"
    " ORDER BY webhook_outbox.next_attempt_at LIMIT ?"
)
PINGS_BETWEEN_SQL = "SELECT at FROM pings WHERE user_id = ? AND at >= ? AND at < ? ORDER BY at LIMIT ?"
SIGNALS_BETWEEN_SQL = (
    "SELECT at, kind, exit_code, duration, body FROM pings WHERE user_id = ? AND at >= ? AND at < ? ORDER BY at LIMIT ?"
)
# The testing page's queries, run about once a second while it is open. Every configured user is
# read in username order through the UNIQUE index (no sort); the newest emails are read backwards
# along the outbox's primary key and joined through primary keys, so LIMIT bounds the work.
CONFIGURED_USERS_SQL = (
    f"SELECT {_USER_AND_PARENT} FROM {_WITH_PARENT} WHERE child.configured = 1 ORDER BY child.username"
)
# The overview's queries. Its page refreshes every few seconds: each costs the number of configured users
# (a scan of users, per-user seeks of alerts_by_user_time) or the number of new pings (along the pings'
# primary key), never the size of the history. The last 24 hours' pings are read once after a start, in
# chunks of users (a range of users' primary key, per-user seeks of pings_by_user_time), each chunk in pages
# that go on after the last row of the previous page (`first` is that row's user, the seek into its pings
# begins at its time, and only pings of that time with greater ids are taken).
OVERVIEW_USERS_SQL = f"SELECT {_USER_COLUMNS}, parent_id FROM users WHERE configured = 1 ORDER BY username"
RECENT_PINGS_SQL = (
    "SELECT users.id, pings.at, pings.id FROM users JOIN pings ON pings.user_id = users.id"
    " WHERE users.configured = 1 AND users.id BETWEEN :first AND :last AND pings.id <= :upto"
    " AND pings.at >= CASE WHEN users.id = :first THEN :after_at ELSE :start END"
    " AND (users.id > :first OR pings.at > :after_at OR pings.id > :after_id)"
    " ORDER BY users.id, pings.at, pings.id LIMIT :limit"
)
PINGS_BEFORE_SQL = (
    "SELECT id, (SELECT max(at) FROM pings WHERE pings.user_id = users.id AND pings.at < :start) FROM users"
    " WHERE configured = 1 AND id BETWEEN :first AND :last"
)
NEW_PINGS_SQL = "SELECT id, user_id, at FROM pings WHERE id > ? ORDER BY id"
RECENT_ALERTS_SQL = (
    "SELECT users.id, alerts.at FROM users JOIN alerts ON alerts.user_id = users.id"
    " WHERE users.configured = 1 AND alerts.at >= ? ORDER BY users.id, alerts.at"
)
# One user's day for the overview's day view: the pings around it and its alerts with their emails.
PING_BEFORE_SQL = "SELECT max(at) FROM pings WHERE user_id = ? AND at < ?"
PING_FROM_SQL = "SELECT min(at) FROM pings WHERE user_id = ? AND at >= ?"
DAY_ALERTS_SQL = (
    "SELECT alerts.id, alerts.at, alerts.last_ping, outbox.id, outbox.recipient, outbox.status, outbox.attempts,"
    " outbox.queued_at, outbox.finished_at"
    " FROM alerts LEFT JOIN outbox ON outbox.alert_id = alerts.id"
    " WHERE alerts.user_id = ? AND alerts.at >= ? AND alerts.at < ? ORDER BY alerts.at, alerts.id, outbox.id LIMIT ?"
)
RECENT_EMAILS_SQL = (
    "SELECT outbox.id, users.username, outbox.recipient, outbox.status, outbox.attempts, alerts.last_ping,"
    " outbox.queued_at, outbox.finished_at, alerts.kind, outbox.digest_id, digests.subject"
    " FROM outbox JOIN alerts ON alerts.id = outbox.alert_id JOIN users ON users.id = alerts.user_id"
    " LEFT JOIN digests ON digests.id = outbox.digest_id"
    " ORDER BY outbox.id DESC LIMIT ?"
)
RECENT_WEBHOOKS_SQL = (
    "SELECT webhook_outbox.id, users.username, webhook_outbox.webhook, webhook_outbox.status, webhook_outbox.attempts,"
    " alerts.last_ping, webhook_outbox.queued_at, webhook_outbox.finished_at, alerts.kind"
    " FROM webhook_outbox JOIN alerts ON alerts.id = webhook_outbox.alert_id JOIN users ON users.id = alerts.user_id"
    " ORDER BY webhook_outbox.id DESC LIMIT ?"
)
# A metrics scrape: one row per configured user (its counters are kept by the ping trigger and by
# save_check_outcomes), and the outbox counted along its two partial indexes without reading a row.
USER_COUNTS_SQL = (
    f"SELECT username, {_CONDITION_AT}, last_ping, pings_total, alerts_total FROM users WHERE configured = 1"
)
SCHEDULED_USERS_SQL = f"SELECT {_USER_COLUMNS} FROM users WHERE configured = 1 AND schedule IS NOT NULL"
QUEUED_COUNT_SQL = "SELECT count(*) FROM outbox WHERE status = 'queued'"
FINISHED_COUNTS_SQL = "SELECT status, count(*) FROM outbox WHERE status != 'queued' GROUP BY status"
# Retention: old pings user by user along pings_by_user_time (CROSS JOIN keeps users the outer loop, so a
# batch costs its size plus one index seek per user, never a scan of the pings); finished emails and
# webhook deliveries along outbox_finished and webhook_outbox_finished; alerts along alerts_by_time, once
# no email or webhook delivery refers to them.
# A failed user's fail signal is kept whatever its age: its alerts quote it (users.fail_signal). So is the
# newest ping: SQLite gives a new row the greatest id + 1, so deleting the greatest would hand its id out again,
# and a reader following new pings by id (pings_after_id: the overview) would miss them (one index seek).
OLD_PINGS_SQL = (
    "SELECT pings.id FROM users CROSS JOIN pings ON pings.user_id = users.id AND pings.at < ?"
    " AND pings.id IS NOT users.fail_signal AND pings.id < (SELECT max(id) FROM pings) LIMIT ?"
)
_DELETE_FINISHED_SQL = (
    "DELETE FROM {queue} WHERE id IN (SELECT id FROM {queue} WHERE status != 'queued' AND status IN ('sent', 'failed')"
    " AND finished_at < ? LIMIT ?)"
)
# Digests once none of their emails is left, oldest first: along digests' primary key (ids grow with time),
# each checked through outbox_by_digest.
DELETE_OLD_DIGESTS_SQL = (
    "DELETE FROM digests WHERE id IN (SELECT id FROM digests WHERE created_at < ?"
    " AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.digest_id = digests.id) ORDER BY id LIMIT ?)"
)
DELETE_OLD_EMAILS_SQL = _DELETE_FINISHED_SQL.format(queue="outbox")
DELETE_OLD_WEBHOOKS_SQL = _DELETE_FINISHED_SQL.format(queue="webhook_outbox")
DELETE_OLD_ALERTS_SQL = (
    "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE at < ?"
    " AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.alert_id = alerts.id)"
    " AND NOT EXISTS (SELECT 1 FROM webhook_outbox WHERE webhook_outbox.alert_id = alerts.id) LIMIT ?)"
)

# A signal is one INSERT of a configured user's ping row, its duration worked out from the user's open
# run in the same statement; this trigger, which exists only on the store's own connections, moves that
# user's state (_SIGNAL_EFFECTS: see rules.py for what each kind does) and deadline (rules.due_at, as
# _DUE_AT) in one UPDATE. Within an UPDATE every expression reads the row as it was, so the deadline is
# _DUE_AT with the new values' expressions in place of their columns. A `log` changes nothing.
# max() keeps last_ping monotonic if signals ever commit out of time order.
RECORD_SIGNAL_SQL = (
    "INSERT INTO pings (user_id, at, kind, exit_code, body, duration)"
    " SELECT id, ?1, ?2, ?3, ?4, CASE WHEN ?2 IN ('success', 'fail') THEN max(?1 - run_started, 0) END"
    " FROM users WHERE username = ?5 AND configured = 1"
)
_SIGNAL_EFFECTS = {
    "last_ping": "(CASE NEW.kind WHEN 'start' THEN last_ping ELSE max(coalesce(last_ping, NEW.at), NEW.at) END)",
    "run_started": "(CASE NEW.kind WHEN 'start' THEN NEW.at END)",
    "failed_at": (
        "(CASE NEW.kind WHEN 'success' THEN NULL WHEN 'fail' THEN coalesce(failed_at, NEW.at) ELSE failed_at END)"
    ),
    "back_at": (
        "(CASE WHEN NEW.kind = 'success' AND down_since IS NOT NULL THEN coalesce(back_at, NEW.at) ELSE back_at END)"
    ),
}
# A success of a parent that was down restarts its children's silence from that moment (rules.py): first,
# while the parent's row still reads as it was before this signal. A parent is found through the
# primary key and its children through users_by_parent, so this costs a user with no children one seek.
_PARENT_RETURN_SQL = (
    "UPDATE users SET silence_from = max(coalesce(silence_from, NEW.at), NEW.at), suppressed_kind = NULL,"
    f" due_at = {_due_at_sql(silence_from='max(coalesce(silence_from, NEW.at), NEW.at)')}"
    " WHERE parent_id = NEW.user_id AND NEW.kind = 'success'"
    f" AND (SELECT {_down_sql('NEW.at', 'parent.')} FROM users AS parent WHERE parent.id = NEW.user_id);"
)
_SIGNAL_TRIGGER_SQL = (
    "CREATE TEMP TRIGGER IF NOT EXISTS signal_moves_state AFTER INSERT ON main.pings WHEN NEW.kind <> 'log' BEGIN "
    + _PARENT_RETURN_SQL
    + " UPDATE users SET "
    + ", ".join(f"{column} = {expression}" for column, expression in _SIGNAL_EFFECTS.items())
    + ", last_duration = coalesce(NEW.duration, last_duration),"
    " suppressed_kind = CASE NEW.kind WHEN 'success' THEN NULL ELSE suppressed_kind END,"
    " fail_signal = CASE NEW.kind WHEN 'success' THEN NULL WHEN 'fail' THEN NEW.id ELSE fail_signal END,"
    f" last_signal = NEW.id, due_at = {_due_at_sql(**_SIGNAL_EFFECTS)}, pings_total = pings_total + 1"
    " WHERE id = NEW.user_id;"
    " END"
)


class StoreError(Exception):
    """Base of the store's errors; the message is fit to show a person."""


class StoreOpenError(StoreError):
    """The database file cannot be used (not SQLite, read-only, newer schema, ...)."""


class StoreUnavailableError(StoreError):
    """SQLite refused a read or write for now (disk full, I/O error, locked too long)."""


class UnknownUserError(StoreError):
    """No such user: not configured (for pings) or never known (for history)."""


_BATCH_ROLLED_BACK = "storage unavailable: a batch of pings was rolled back"


@dataclass(frozen=True, slots=True)
class UserState:
    """A user's configuration mirror and monitoring state, as the absence listener sees it."""

    id: int
    username: str
    monitor: bool
    max_sleep: float
    email_frequency: float
    monitored_since: float
    last_ping: float | None
    last_alert: float | None
    due_at: float | None
    max_runtime: float | None = None
    notify_recovery: bool = True
    run_started: float | None = None
    last_duration: float | None = None
    failed_at: float | None = None
    fail_signal: int | None = None
    last_alert_kind: str | None = None
    down_since: float | None = None
    back_at: float | None = None
    last_signal: int | None = None
    silence_from: float | None = None
    snoozed_until: float | None = None
    muted_outage: float | None = None
    suppressed_kind: str | None = None
    schedule: str | None = None
    tz: str | None = None
    grace: float | None = None
    # The user it depends on, read in the same statement (its own parent is not read); None if none.
    parent: "UserState | None" = None


_USER_FIELDS = len(_USER_COLUMNS.split(", "))


def _user_and_parent(row: Sequence[Any]) -> UserState:
    """The UserState of a row of _USER_AND_PARENT: the user's columns, then its parent's (NULLs if none)."""
    user = UserState(*row[:_USER_FIELDS])
    return user if row[_USER_FIELDS] is None else dataclasses.replace(user, parent=UserState(*row[_USER_FIELDS:]))


@dataclass(frozen=True, slots=True)
class Signal:
    """One recorded signal: its time, kind, exit code, the duration of the run it closed, and its body."""

    at: float
    kind: str
    exit_code: int | None
    duration: float | None
    body: str | None


@dataclass(frozen=True, slots=True)
class UserCounts:
    """A configured user's deadline (when its first condition begins, as rules.condition says at the time
    asked about, a snooze changing nothing; None if not monitored), last ping and counters.

    The counters, pings and alerts recorded since the user was first configured, never go down:
    retention deletes old pings and alerts, not what was counted.
    """

    username: str
    condition_at: float | None
    last_ping: float | None
    pings: int
    alerts: int
    # A scheduled user's whole state: its deadline needs its schedule, which SQL cannot evaluate, so its
    # condition_at above counts its silence from its last contact (rules.condition_at gives the real one).
    scheduled: "UserState | None" = None


@dataclass(frozen=True, slots=True)
class UsersChange:
    """What a reload changed among the configured users: usernames added, removed and with new parameters."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NewEmail:
    """An alert email to queue for one recipient."""

    recipient: str
    subject: str
    body: str
    message_id: str


@dataclass(frozen=True, slots=True)
class NewWebhook:
    """A webhook delivery to queue: the webhook's name, the event's id (its Idempotency-Key) and what it says."""

    webhook: str
    event_id: str
    title: str
    text: str
    logs_url: str


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """What the absence listener decided about one due user.

    `emails` and `webhooks` both empty means no alert now; otherwise they alert about the condition
    `kind` (rules.SILENCE, FAILURE or RUN_TIMEOUT), through the user's channels. `next_due_at` is when to
    look at the user again. `ends_outage` says that the success ending the user's alerted outage (its
    back_at) was dealt with, with the `recovery` emails and `recovery_webhooks` (none if notify_recovery
    is off). `down_since` is the user's alerted outage after this step, written when the outcome alerts
    or ends an outage. `suppressed`, if not None,
    is a condition (its kind and when it went down) whose alert the user's parent's outage suppressed:
    recorded, with no email or webhook. `next_run`, for a scheduled user: (the moment its silence is
    measured from, its schedule's next run after it), as rules.decide worked it out (Decision.next_run),
    kept so that SQL can tell whether it is down when it is a parent.
    """

    user: UserState
    next_due_at: float | None
    emails: tuple[NewEmail, ...] = ()
    kind: str = SILENCE
    down_since: float | None = None
    ends_outage: bool = False
    recovery: tuple[NewEmail, ...] = ()
    suppressed: tuple[str, float] | None = None
    webhooks: tuple[NewWebhook, ...] = ()
    recovery_webhooks: tuple[NewWebhook, ...] = ()
    next_run: tuple[float, float | None] | None = None


@dataclass(frozen=True, slots=True)
class QueuedEmail:
    """An outbox row waiting to be sent, or a digest of several (mailer.digest builds those).

    `username` and `kind` say whom and what it is about (rules.BACK for a recovery). `digest` is the
    latest digest that carried it, if one did.
    """

    id: int
    recipient: str
    subject: str
    body: str
    message_id: str
    queued_at: float
    attempts: int
    username: str = ""
    kind: str = SILENCE
    digest: "Digest | None" = None


@dataclass(frozen=True, slots=True)
class Digest:
    """A digest as recorded: its id, Message-ID, when it was made (its Date) and how many emails it carried."""

    id: int
    message_id: str
    created_at: float
    emails: int


@dataclass(frozen=True, slots=True)
class NewDigest:
    """A digest about to be tried for the first time: the ids of the outbox rows it carries, its subject and
    Message-ID (the drain's `now` is its Date)."""

    email_ids: tuple[int, ...]
    recipient: str
    subject: str
    message_id: str


@dataclass(frozen=True, slots=True)
class QueuedWebhook:
    """A webhook_outbox row waiting to be delivered: its id, its webhook's name, its attempts so far and its event."""

    id: int
    webhook: str
    attempts: int
    event: WebhookEvent


@dataclass(frozen=True, slots=True)
class EmailEvent:
    """An alert or recovery email as its history shows it: queued, sent or failed, and when.

    `last_ping` is the user's last ping when the alert was decided (None: none since monitoring
    began); `finished_at` is when it was sent or failed (None while queued); `kind` is what it is
    about (rules.SILENCE, FAILURE, RUN_TIMEOUT or BACK).
    """

    id: int
    username: str
    recipient: str
    status: str
    attempts: int
    last_ping: float | None
    queued_at: float
    finished_at: float | None
    kind: str = SILENCE
    # The latest digest that carried it, and that digest's subject; None if none did.
    digest_id: int | None = None
    digest_subject: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookHistory:
    """A webhook delivery as its history shows it: the channel ("webhook:NAME"), queued, sent or failed, and when."""

    id: int
    username: str
    channel: str
    status: str
    attempts: int
    last_ping: float | None
    queued_at: float
    finished_at: float | None
    kind: str


@dataclass(frozen=True, slots=True)
class AlertHistory:
    """An alert and its emails: when it was decided, the user's last ping then, and each email's history."""

    at: float
    last_ping: float | None
    emails: tuple[EmailEvent, ...]


class Store:
    """Ping Listener's database at one path; safe to use from any number of threads."""

    def __init__(
        self, path: str | os.PathLike[str], durability: str = DEFAULT_DURABILITY, exclusive: bool = False
    ) -> None:
        """Open (creating if new) the database at `path`; raise StoreOpenError if it is unusable.

        `durability` is settings.json's (see SYNCHRONOUS). With `exclusive`, as the service opens its
        database, this process first takes the OS lock of `path`.lock (lock_database) and holds it until
        close(): a second process asking for it is refused before it reads or writes anything. Readers that
        do not ask (a person's `sqlite3`, tools, tests opening more stores in one process) are not stopped.
        """
        self.path = str(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Re-entrant: a ping recorded inside ping_batch() takes it again on the same thread.
        self._write_lock = threading.RLock()
        self._schema_ready = False
        self._synchronous = SYNCHRONOUS[durability]
        self._lock: int | None = None
        # The schema version the database had before this start upgraded it, or None if it did not.
        self.upgraded_from: int | None = None
        # Whether sync_users restarted monitoring: always, as one process is the only one using a SQLite file
        # (pg_store.PgStore's instances may share a database).
        self.started_alone = True
        _refuse_missing_directory(Path(self.path))
        _refuse_read_only(Path(self.path))
        if exclusive:
            self._lock = lock_database(Path(self.path))
        try:
            connection = self._connection()
            self._prepare_schema(connection)
            connection.execute(_SIGNAL_TRIGGER_SQL)
            self._schema_ready = True
        except sqlite3.Error as error:
            self.close()
            raise StoreOpenError(f"{self.path}: cannot use this database: {error}") from None
        except StoreOpenError:
            self.close()
            raise

    def close(self) -> None:
        """Close every connection, then let go of the database's lock if this store holds it; waits for a
        write in progress to finish first."""
        with self._write_lock, self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
            if self._lock is not None:
                os.ftruncate(self._lock, 0)  # no process's id: none holds it
                os.close(self._lock)  # which lets go of the lock
                self._lock = None

    def use_durability(self, durability: str) -> None:
        """Commit as settings.json's `durability` says from now on (see SYNCHRONOUS): each thread's connection
        follows at its next use outside a transaction, so a batch already begun ends as it began."""
        self._synchronous = SYNCHRONOUS[durability]

    def sync_users(self, users: Mapping[str, UserConfig], now: float) -> None:
        """Make the configured users exactly `users` (username -> its config), and restart monitoring at `now`.

        Users missing from `users` stop being monitored but keep their history. See
        restart_monitoring for what a restart does.
        """
        with self._write() as connection:
            _apply_users(connection, users, now)
            _restart_monitoring(connection, now)

    def reload_users(self, users: Mapping[str, UserConfig], now: float) -> UsersChange:
        """Make the configured users exactly `users` without restarting anyone's monitoring, as a reload does.

        A user added (or configured again) is monitored from `now`; a user removed stops being
        monitored and keeps its history; a user whose monitor, max_sleep or email_frequency changed
        gets its deadline moved at once (and, if its monitor was just turned on, is monitored from
        `now`); every other user is left exactly as it was. Returns what changed.
        """
        with self._write() as connection:
            return _apply_users(connection, users, now)

    def restart_monitoring(self, now: float) -> None:
        """Monitor every configured user afresh from `now`, as a restart of the service does.

        Each gets a full max_sleep (and an open run a full max_runtime) from `now` before it can be
        late, so neither the service's downtime nor a jump of the wall clock counts against a device;
        a failure or an alerted outage stays what it was. Times left in the future by a wall clock that
        went back are made harmless: a last ping becomes the last success or fail recorded at or before
        `now` (or none), the alert throttle counts from `now`, and a run's start, a failure or a
        recovery waiting to be queued are moved back to `now`. Queued emails and webhook deliveries are
        due at once, so fixing the SMTP setup (or a webhook) and restarting sends them without waiting
        out their back-off.
        """
        with self._write() as connection:
            _restart_monitoring(connection, now)

    def restart_monitoring_after_clock_jump(self, now: float) -> bool:
        """Restart monitoring at `now` (restart_monitoring) after this instance's wall clock jumped, unless other
        instances run on the database, their clocks unmoved; return whether it restarted. One instance owns a
        SQLite database: here it always restarts."""
        self.restart_monitoring(now)
        return True

    def record_ping(
        self,
        username: str,
        now: float,
        kind: str = SUCCESS,
        exit_code: int | None = None,
        body: str | None = None,
    ) -> None:
        """Record a signal of `kind` (rules.SIGNAL_KINDS) from `username` at `now`: committed before
        returning, or, inside ping_batch() on this thread, committed with the batch.

        A plain ping is a success. `exit_code` is the one it reported, if any; `body` is kept as given
        (the caller cuts it). Its effect on the user is what rules.py describes. Raises
        UnknownUserError if the user is not configured.
        """
        connection = self._connection()
        # One statement in autocommit mode: SQLite commits it, with what _SIGNAL_TRIGGER_SQL does,
        # before execute() returns. As one statement it releases the GIL once instead of at each
        # of BEGIN, UPDATE, INSERT and COMMIT, which is what lets the HTTP thread keep up.
        with self._write_lock:
            if getattr(self._local, "in_batch", False) and not connection.in_transaction:
                # SQLite rolled the batch back after a failed statement: committing this alone would
                # record a ping whose answer the failed batch withholds, and a retry would record it twice.
                raise StoreUnavailableError(_BATCH_ROLLED_BACK)
            # _storage_faults() inlined: a ping is this module's hottest call, and the generator-based
            # context manager cost it about 1 µs of CPU (7 % of a batched ping's SQLite work).
            try:
                recorded = connection.execute(RECORD_SIGNAL_SQL, (now, kind, exit_code, body, username)).rowcount
            except sqlite3.DatabaseError as error:
                if _is_storage_fault(error):
                    raise _unavailable(error) from error
                raise
        if not recorded:
            raise UnknownUserError(f"unknown user {username}")

    @contextmanager
    def ping_batch(self) -> Iterator[None]:
        """Record the pings of this thread's record_ping() calls inside the block in one transaction.

        The transaction commits when the block ends; until then no other thread can write. If it
        cannot commit (or a ping's failure rolled it back), this raises StoreUnavailableError and
        none of the block's pings is recorded: their callers must not have told anyone they were.
        One commit for a poll round's pings instead of one each: under a burst that is most of a
        ping's cost.
        """
        connection = self._connection()
        with self._write_lock, _storage_faults():
            connection.execute("BEGIN IMMEDIATE")
            self._local.in_batch = True
            try:
                yield
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            finally:
                self._local.in_batch = False
            if not connection.in_transaction:  # SQLite rolled it back after a failed statement
                raise StoreUnavailableError(_BATCH_ROLLED_BACK)
            try:
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def pings_between(self, username: str, start: float, end: float, limit: int | None = None) -> list[float]:
        """Times of `username`'s pings with start <= time < end, ascending; only the first `limit` if given.

        Raises UnknownUserError if the user was never configured.
        """
        with self._read() as connection:
            user_id = self._user_id(connection, username)
            # LIMIT -1 is no limit.
            rows = connection.execute(PINGS_BETWEEN_SQL, (user_id, start, end, limit or -1)).fetchall()
        return [at for (at,) in rows]

    def user(self, username: str) -> UserState:
        """`username`'s state, configured or not; raises UnknownUserError if it was never configured."""
        with self._read() as connection:
            row = connection.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            raise UnknownUserError(f"unknown user {username}")
        return UserState(*row)

    def pings_around(self, user_id: int, start: float, end: float) -> tuple[float | None, float | None]:
        """The user's last ping before `start` and its first ping at or after `end` (None where there is none)."""
        with self._read() as connection:
            before = connection.execute(PING_BEFORE_SQL, (user_id, start)).fetchone()[0]
            after = connection.execute(PING_FROM_SQL, (user_id, end)).fetchone()[0]
        return before, after

    def alerts_between(self, user: UserState, start: float, end: float, limit: int) -> list[AlertHistory]:
        """`user`'s alerts decided with start <= time < end, oldest first, each with its emails.

        At most `limit` emails in all are read; an alert whose emails were cut off shows those read.
        """
        with self._read() as connection:
            rows = connection.execute(DAY_ALERTS_SQL, (user.id, start, end, limit)).fetchall()
        return _alert_histories(user, rows)

    def newest_ping_id(self) -> int:
        """The id of the newest ping recorded (0 if none): pings recorded later have greater ids."""
        with self._read() as connection:
            newest: int = connection.execute("SELECT coalesce(max(id), 0) FROM pings").fetchone()[0]
        return newest

    def recent_pings(
        self, start: float, upto_id: int, user_ids: tuple[int, int], after: tuple[int, float, int] | None, limit: int
    ) -> list[tuple[int, float, int]]:
        """(user id, time, ping id) of the pings from `start` on with ids up to `upto_id` of the configured users
        whose ids are in the range `user_ids` (first, last), by user, time then id: the first `limit` of them, or
        with `after` (the last row of an earlier answer to the same question) the first `limit` after it."""
        with self._read() as connection:
            return connection.execute(
                RECENT_PINGS_SQL, recent_pings_parameters(start, upto_id, user_ids, after, limit)
            ).fetchall()

    def last_pings_before(self, start: float, user_ids: tuple[int, int]) -> dict[int, float | None]:
        """Each configured user's id in the range `user_ids` (first, last) -> the time of its last ping before
        `start` (None if none)."""
        with self._read() as connection:
            parameters = {"start": start, "first": user_ids[0], "last": user_ids[1]}
            return dict(connection.execute(PINGS_BEFORE_SQL, parameters).fetchall())

    def configured_user_rows(self) -> list[tuple[Any, ...]]:
        """Every configured user's row, in username order: UserState(*row[:-1]) is its state, row[-1] its
        parent's id (None if none). For a reader that keeps the states it made and compares rows."""
        with self._read() as connection:
            return connection.execute(OVERVIEW_USERS_SQL).fetchall()

    def pings_after_id(self, after_id: int) -> list[tuple[int, int, float]]:
        """(id, user id, time) of every ping whose id is greater than `after_id`, in id order."""
        with self._read() as connection:
            return connection.execute(NEW_PINGS_SQL, (after_id,)).fetchall()

    def recent_alerts(self, start: float) -> list[tuple[int, float]]:
        """(user id, time) of configured users' alerts decided at or after `start`, by user then time."""
        with self._read() as connection:
            return connection.execute(RECENT_ALERTS_SQL, (start,)).fetchall()

    def signals_between(
        self, username: str, start: float, end: float, limit: int, max_size: int, encode: Callable[[Signal], bytes]
    ) -> tuple[list[bytes], bool]:
        """`username`'s signals with start <= time < end, ascending, each as `encode(signal)`, and whether there
        were more.

        Stops after `limit` signals, or before the one whose encoding would take the encodings' lengths past
        `max_size` bytes in all. Raises UnknownUserError if the user was never configured.
        """
        with self._read() as connection:
            user_id = self._user_id(connection, username)
            # Read lazily: the bound stops reading, not only the answer.
            rows = connection.execute(SIGNALS_BETWEEN_SQL, (user_id, start, end, limit + 1))
            return _bounded_encodings(rows, limit, max_size, encode)

    def signal(self, signal_id: int) -> Signal:
        """The recorded signal with id `signal_id` (a UserState's fail_signal)."""
        with self._read() as connection:
            row = connection.execute(
                "SELECT at, kind, exit_code, duration, body FROM pings WHERE id = ?", (signal_id,)
            ).fetchone()
        if row is None:
            raise StoreError(f"no signal {signal_id}")
        return Signal(*row)

    def configured_users(self) -> list[UserState]:
        """Every configured user's state with its parent's, in username order."""
        with self._read() as connection:
            rows = connection.execute(CONFIGURED_USERS_SQL).fetchall()
        return [_user_and_parent(row) for row in rows]

    def recent_emails(self, limit: int) -> list[EmailEvent]:
        """The `limit` most recently queued alert emails, newest first."""
        with self._read() as connection:
            rows = connection.execute(RECENT_EMAILS_SQL, (limit,)).fetchall()
        return [EmailEvent(*row) for row in rows]

    def due_users(self, now: float, limit: int) -> list[UserState]:
        """Up to `limit` configured users whose due_at is before `now`, earliest first, each with its parent
        as it is now (read in the same statement)."""
        with self._read() as connection:
            rows = connection.execute(DUE_USERS_SQL, (now, limit)).fetchall()
        return [_user_and_parent(row) for row in rows]

    def snooze(self, username: str, until: float, now: float) -> float:
        """Snooze the configured user `username` until `until`, or, with `until` <= `now`, end its snooze at
        `now` if it is snoozed (else change nothing); return when its snooze ends (`now` if it is not snoozed).

        A snooze that begins during an alerted outage mutes it (muted_outage): rules.decide alerts it no
        more. The deadline moves with the snooze, as rules.due_at says. Raises UnknownUserError if the user
        is not configured.
        """
        with self._write() as connection:
            row = connection.execute(
                "SELECT id, snoozed_until FROM users WHERE username = ? AND configured = 1", (username,)
            ).fetchone()
            if row is None:
                raise UnknownUserError(f"unknown user {username}")
            user_id, snoozed_until = row
            if until <= now:
                if snoozed_until is None or snoozed_until <= now:
                    return now
                until = now
            connection.execute(
                "UPDATE users SET snoozed_until = ?1,"
                " muted_outage = CASE WHEN ?1 > ?2 AND back_at IS NULL THEN coalesce(down_since, muted_outage)"
                " ELSE muted_outage END WHERE id = ?3",
                (until, now, user_id),
            )
            connection.execute(f"UPDATE users SET due_at = {_DUE_AT} WHERE id = ?", (user_id,))
        return until

    def save_check_outcomes(self, outcomes: Iterable[CheckOutcome], now: float) -> int:
        """Apply the absence listener's decisions in one transaction; return how many alerts were recorded.

        Each outcome applies only if its user is still as it was read (its due_at and last signal are
        unchanged: no signal came in meanwhile). An alert records its time and kind, its alerts row and
        one outbox row per email and one webhook_outbox row per webhook; a recovery records its alerts
        row (kind 'back'), its emails and its webhooks.
        """
        alerts = 0
        emails: list[tuple[Any, ...]] = []
        webhooks: list[tuple[Any, ...]] = []
        with self._write() as connection:
            for outcome in outcomes:
                user = outcome.user
                alerting = bool(outcome.emails or outcome.webhooks)
                changes_outage = alerting or outcome.ends_outage
                suppressed_kind, suppressed_at = outcome.suppressed or (None, None)
                run_after, next_run = outcome.next_run or (None, None)
                claimed = connection.execute(
                    "UPDATE users SET due_at = ?1,"
                    " last_alert = CASE WHEN ?2 THEN ?3 ELSE last_alert END,"
                    " last_alert_kind = CASE WHEN ?2 THEN ?4 ELSE last_alert_kind END,"
                    " down_since = CASE WHEN ?5 THEN ?6 ELSE down_since END,"
                    " back_at = CASE WHEN ?7 THEN NULL ELSE back_at END,"
                    " suppressed_kind = coalesce(?11, suppressed_kind),"
                    " next_run = CASE WHEN ?12 IS NULL THEN next_run ELSE ?13 END,"
                    " next_run_after = coalesce(?12, next_run_after),"
                    " alerts_total = alerts_total + CASE WHEN ?2 THEN 1 ELSE 0 END"
                    " WHERE id = ?8 AND due_at IS ?9 AND last_signal IS ?10",
                    (
                        outcome.next_due_at,
                        alerting,
                        now,
                        outcome.kind,
                        changes_outage,
                        outcome.down_since,
                        outcome.ends_outage,
                        user.id,
                        user.due_at,
                        user.last_signal,
                        suppressed_kind,
                        run_after,
                        next_run,
                    ),
                ).rowcount
                if not claimed:
                    continue
                if suppressed_kind is not None:
                    connection.execute(
                        "INSERT INTO alerts (user_id, at, last_ping, kind, went_down_at, suppressed)"
                        " VALUES (?, ?, ?, ?, ?, 1)",
                        (user.id, now, user.last_ping, suppressed_kind, suppressed_at),
                    )
                # The recovery first: it closes the outage that an alert in the same step may follow.
                for kind, went_down_at, queued, hooks in (
                    (BACK, user.down_since, outcome.recovery, outcome.recovery_webhooks),
                    (outcome.kind, outcome.down_since, outcome.emails, outcome.webhooks),
                ):
                    if not (queued or hooks):
                        continue
                    alert_id = connection.execute(
                        "INSERT INTO alerts (user_id, at, last_ping, kind, went_down_at) VALUES (?, ?, ?, ?, ?)",
                        (user.id, now, user.last_ping, kind, went_down_at),
                    ).lastrowid
                    emails += [(alert_id, e.recipient, e.subject, e.body, e.message_id, now, now) for e in queued]
                    webhooks += [
                        (alert_id, hook.webhook, hook.event_id, hook.title, hook.text, hook.logs_url, now, now)
                        for hook in hooks
                    ]
                alerts += alerting
            # One statement for the whole batch's emails: a step may alert hundreds of users.
            connection.executemany(
                "INSERT INTO outbox (alert_id, recipient, subject, body, message_id, queued_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                emails,
            )
            connection.executemany(
                "INSERT INTO webhook_outbox (alert_id, webhook, event_id, title, text, logs_url, queued_at,"
                " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                webhooks,
            )
        return alerts

    def due_emails(self, now: float, limit: int) -> list[QueuedEmail]:
        """Up to `limit` queued emails whose next attempt is at or before `now`, oldest due first, each with
        its user, kind and the digest that carried it last."""
        with self._read() as connection:
            rows = connection.execute(DUE_EMAILS_SQL, (now, limit)).fetchall()
        return [_queued_email(row) for row in rows]

    def claim_emails(self, retry_times: Mapping[int, float], now: float, digests: Sequence[NewDigest] = ()) -> set[int]:
        """Before sending: set each email's next attempt from `retry_times` (email id -> epoch seconds), and
        record each new digest (made at `now`) with the rows it carries; return the ids of the emails this
        instance may send (here all of `retry_times`: one instance owns a SQLite database; pg_store's may
        have lost some to another instance).

        Committed before the SMTP conversation, so an email whose result cannot be recorded (the
        service is killed, or the database refuses the write) is sent again only after this
        back-off; and while the database refuses writes, nothing is sent at all.
        """
        with self._write() as connection:
            connection.executemany(
                "UPDATE outbox SET next_attempt_at = ? WHERE id = ? AND status = 'queued'",
                [(at, email_id) for email_id, at in retry_times.items()],
            )
            for digest in digests:
                digest_id = connection.execute(
                    "INSERT INTO digests (recipient, subject, message_id, created_at, emails) VALUES (?, ?, ?, ?, ?)",
                    (digest.recipient, digest.subject, digest.message_id, now, len(digest.email_ids)),
                ).lastrowid
                connection.executemany(
                    "UPDATE outbox SET digest_id = ? WHERE id = ?", [(digest_id, i) for i in digest.email_ids]
                )
        return set(retry_times)

    def mark_sent(self, email_ids: Iterable[int], now: float) -> None:
        """Record that the SMTP server accepted the emails (one, or a digest's) at `now`; they leave the queue."""
        self._finish_emails(email_ids, "sent", now, None)

    def mark_failed(self, email_ids: Iterable[int], now: float, error: str | None) -> None:
        """Record a permanent rejection of the emails (one, or a digest's); they leave the queue as 'failed'."""
        self._finish_emails(email_ids, "failed", now, error)

    def schedule_retry(self, email_ids: Iterable[int], next_attempt_at: float, error: str | None) -> None:
        """Record a failed attempt of the emails (one, or a digest's); they stay queued until `next_attempt_at`."""
        with self._write() as connection:
            connection.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                " WHERE id = ? AND status = 'queued'",
                [(error, next_attempt_at, email_id) for email_id in email_ids],
            )

    def _finish_emails(self, email_ids, status, now, error):
        with self._write() as connection:
            connection.executemany(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ?, finished_at = ?,"
                " next_attempt_at = NULL WHERE id = ? AND status = 'queued'",
                [(status, error, now, email_id) for email_id in email_ids],
            )

    def due_webhooks(self, now: float, limit: int) -> list[QueuedWebhook]:
        """Up to `limit` queued webhook deliveries whose next attempt is at or before `now`, oldest due first."""
        with self._read() as connection:
            rows = connection.execute(DUE_WEBHOOKS_SQL, (now, limit)).fetchall()
        return [_queued_webhook(row) for row in rows]

    def claim_webhooks(self, retry_times: Mapping[int, float]) -> set[int]:
        """Before posting: set each delivery's next attempt from `retry_times` (delivery id -> epoch seconds);
        return the ids of the deliveries this instance may post (as claim_emails: here all of them).

        As claim_emails: committed before the POST, so a delivery whose answer cannot be recorded is
        tried again only after this back-off (or at the next start).
        """
        with self._write() as connection:
            connection.executemany(
                "UPDATE webhook_outbox SET next_attempt_at = ? WHERE id = ? AND status = 'queued'",
                [(at, delivery_id) for delivery_id, at in retry_times.items()],
            )
        return set(retry_times)

    def finish_webhook(self, delivery_id: int, status: str, now: float, error: str | None) -> None:
        """Record that the delivery left the queue at `now`: `status` 'sent' (answered 2xx) or 'failed' (for good)."""
        with self._write() as connection:
            connection.execute(
                "UPDATE webhook_outbox SET status = ?, attempts = attempts + 1, last_error = ?, finished_at = ?,"
                " next_attempt_at = NULL WHERE id = ? AND status = 'queued'",
                (status, error, now, delivery_id),
            )

    def retry_webhook(self, delivery_id: int, next_attempt_at: float, error: str | None) -> None:
        """Record a failed attempt; the delivery stays queued until `next_attempt_at`."""
        with self._write() as connection:
            connection.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                " WHERE id = ? AND status = 'queued'",
                (error, next_attempt_at, delivery_id),
            )

    def recent_webhooks(self, limit: int) -> list[WebhookHistory]:
        """The `limit` most recently queued webhook deliveries, newest first."""
        with self._read() as connection:
            rows = connection.execute(RECENT_WEBHOOKS_SQL, (limit,)).fetchall()
        return [_webhook_history(row) for row in rows]

    def user_counts(self, now: float) -> list[UserCounts]:
        """Every configured user's condition time at `now` and counters, for a metrics scrape: one row per user,
        no ping read."""
        with self._read() as connection:
            rows = connection.execute(USER_COUNTS_SQL, {"now": now}).fetchall()
            scheduled = {row[1]: UserState(*row) for row in connection.execute(SCHEDULED_USERS_SQL)}
        return _user_counts(rows, scheduled)

    def outbox_counts(self) -> dict[str, int]:
        """How many emails the outbox holds by status (queued, sent, failed), each present, 0 if none."""
        with self._read() as connection:
            [(queued,)] = connection.execute(QUEUED_COUNT_SQL).fetchall()
            finished = connection.execute(FINISHED_COUNTS_SQL).fetchall()
        return {"queued": queued, "sent": 0, "failed": 0} | dict(finished)

    def delete_pings_before(self, cutoff: float, limit: int) -> int:
        """Delete up to `limit` pings older than `cutoff`; return how many were deleted.

        Only the delete holds the write lock, for a batch of `limit` rows; the pings to delete are
        found before, through pings_by_user_time. SQLite reuses the freed pages for new rows.
        """
        with self._read() as connection:
            old = connection.execute(OLD_PINGS_SQL, (cutoff, limit)).fetchall()
        if not old:
            return 0
        with self._write() as connection:
            return connection.executemany("DELETE FROM pings WHERE id = ?", old).rowcount

    def delete_history_before(self, cutoff: float, limit: int) -> int:
        """Delete up to `limit` sent or failed emails finished before `cutoff`, as many webhook deliveries,
        and up to `limit` digests and `limit` alerts made before it that no email or delivery refers to any
        more; return how many rows were deleted.

        Queued emails and deliveries, and the alerts they belong to, are kept whatever their age.
        """
        with self._write() as connection:
            emails = connection.execute(DELETE_OLD_EMAILS_SQL, (cutoff, limit)).rowcount
            hooks = connection.execute(DELETE_OLD_WEBHOOKS_SQL, (cutoff, limit)).rowcount
            digests = connection.execute(DELETE_OLD_DIGESTS_SQL, (cutoff, limit)).rowcount
            alerts = connection.execute(DELETE_OLD_ALERTS_SQL, (cutoff, limit)).rowcount
        return emails + hooks + digests + alerts

    def checkpoint(self) -> tuple[int, int]:
        """Copy what the WAL holds into the database file as far as readers allow, without blocking
        writers or readers (a PASSIVE checkpoint); return (frames in the WAL, frames copied).

        Once every frame is copied, the next write starts the WAL again from its beginning, so
        calling this often keeps the WAL file small.
        """
        with self._read() as connection:
            _, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return frames, copied

    def upkeep(self, now: float) -> None:
        """What the store needs done every second while the service runs (the scheduler's store-upkeep loop):
        here, a WAL checkpoint (checkpoint()). `now` is unused: the PostgreSQL store renews its lease with it."""
        self.checkpoint()

    def check_writable(self, now: float) -> None:
        """Return once a real write has committed: the health table's one row set to `now`, in a transaction
        of its own. Raise StoreUnavailableError if it cannot commit, its message the reason (DATABASE_FULL
        when there is no room for it), or if another process holds the database's write lock for longer
        than HEALTH_TIMEOUT_MS.

        This is what a ping needs: the write lock, then a commit. The write replaces one row, so checks
        never make the database grow; and a health check waits less than a ping would for another process.
        """
        connection = self._connection()
        connection.execute(f"PRAGMA busy_timeout = {HEALTH_TIMEOUT_MS}")
        try:
            with self._write() as writing:
                writing.execute(HEALTH_WRITE_SQL, (now,))
        except StoreUnavailableError as error:
            if _primary_code(error.__cause__) == sqlite3.SQLITE_FULL:
                raise StoreUnavailableError(DATABASE_FULL) from error.__cause__
            raise
        finally:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def query_plan(self, sql: str, parameters: Sequence[Any] = ()) -> list[str]:
        """How SQLite would run `sql` here: the detail of each EXPLAIN QUERY PLAN row, in order.

        For tests and diagnostics, e.g. checking that a hot query is answered through its index.
        """
        with self._read() as connection:
            rows = connection.execute(f"EXPLAIN QUERY PLAN {sql}", parameters).fetchall()
        return [detail for _, _, _, detail in rows]

    def pragma(self, name: str) -> Any:
        """The value of PRAGMA `name` (a name such as synchronous or page_count) on this thread's connection."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        with self._read() as connection:
            return connection.execute(f"PRAGMA {name}").fetchone()[0]

    def before_use(self, connection: sqlite3.Connection) -> None:
        """Called with this thread's connection each time the store is about to use it; does nothing here.

        A seam for fault injection: a subclass can set what SQLite keeps per connection, such as
        PRAGMA max_page_count to make the disk look full (tests/support.py: SmallDiskStore).
        """

    @staticmethod
    def _user_id(connection: sqlite3.Connection, username: str) -> int:
        row = connection.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            raise UnknownUserError(f"unknown user {username}")
        return int(row[0])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        with self._write_lock, _storage_faults():
            try:
                connection.execute("BEGIN IMMEDIATE")
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with _storage_faults():
            yield self._connection()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # check_same_thread=False only so close() can close every thread's connection.
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
            with self._connections_lock:
                self._connections.append(connection)
            self._local.synchronous = None
            # No commit copies the WAL into the database file (a checkpoint, with its fsync, can take
            # hundreds of milliseconds on a big file): the scheduler's checkpoint loop does
            # (checkpoint()), so a ping never waits for one.
            connection.execute("PRAGMA wal_autocheckpoint = 0")
            connection.execute("PRAGMA foreign_keys = ON")
            # The first connection creates the tables; it gets the trigger once they exist.
            if self._schema_ready:
                connection.execute(_SIGNAL_TRIGGER_SQL)
            self._local.connection = connection
        if self._local.synchronous != self._synchronous and not connection.in_transaction:
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            self._local.synchronous = self._synchronous
        self.before_use(connection)
        return connection

    def _prepare_schema(self, connection):
        if connection.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise StoreOpenError(f"{self.path}: cannot switch the database to WAL mode")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"{self.path}: database schema version {version} is newer than this Ping Listener"
                f" understands ({SCHEMA_VERSION}); upgrade Ping Listener or use another --db"
            )
        if version == SCHEMA_VERSION:
            return
        if version == 0:
            if connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
                raise StoreOpenError(f"{self.path}: not a Ping Listener database (it has other tables)")
            script = SCHEMA_PATH.read_text()
        else:
            # Every step from its version on; then schema.sql's views in place of the old ones, since a
            # step may add columns that they show.
            views = connection.execute("SELECT name FROM sqlite_schema WHERE type = 'view'").fetchall()
            drop_views = "".join(f'DROP VIEW "{name}";' for (name,) in views)
            new_views = "".join(re.findall(r"^CREATE VIEW .*?;$", SCHEMA_PATH.read_text(), re.DOTALL | re.MULTILINE))
            script = ";\n".join(MIGRATIONS[version - 1 :]) + ";\n" + drop_views + new_views
            self.upgraded_from = version
        with self._write_lock:
            try:
                connection.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise


def _queued_email(row: Sequence[Any]) -> QueuedEmail:
    """The QueuedEmail of a row of DUE_EMAILS_SQL."""
    email_id, recipient, subject, body, message_id, queued_at, attempts, username, kind = row[:9]
    digest = None if row[9] is None else Digest(*row[9:])
    return QueuedEmail(email_id, recipient, subject, body, message_id, queued_at, attempts, username, kind, digest)


def _alert_histories(user: UserState, rows: Iterable[Sequence[Any]]) -> list[AlertHistory]:
    """DAY_ALERTS_SQL's rows for `user` (an alert with each of its emails) as AlertHistory, in their order."""
    alerts: dict[int, tuple[float, float | None, list[EmailEvent]]] = {}
    for alert_id, at, last_ping, email_id, recipient, status, attempts, queued_at, finished_at in rows:
        emails = alerts.setdefault(alert_id, (at, last_ping, []))[2]
        if email_id is not None:
            emails.append(
                EmailEvent(email_id, user.username, recipient, status, attempts, last_ping, queued_at, finished_at)
            )
    return [AlertHistory(at, last_ping, tuple(emails)) for at, last_ping, emails in alerts.values()]


def recent_pings_parameters(
    start: float, upto_id: int, user_ids: tuple[int, int], after: tuple[int, float, int] | None, limit: int
) -> dict[str, Any]:
    """RECENT_PINGS_SQL's parameters for Store.recent_pings's arguments (either store's)."""
    first, after_at, after_id = (user_ids[0], start, 0) if after is None else after
    return {
        "start": start,
        "upto": upto_id,
        "first": first,
        "last": user_ids[1],
        "after_at": after_at,
        "after_id": after_id,
        "limit": limit,
    }


def _bounded_encodings(
    rows: Iterable[Sequence[Any]], limit: int, max_size: int, encode: Callable[[Signal], bytes]
) -> tuple[list[bytes], bool]:
    """The signals of SIGNALS_BETWEEN_SQL's `rows`, each as `encode(signal)`, read only until there are `limit`
    of them or the next would take their lengths past `max_size` in all, and whether there were more."""
    encodings: list[bytes] = []
    size = 0
    for row in rows:
        if len(encodings) == limit:
            return encodings, True
        encoding = encode(Signal(*row))
        size += len(encoding)
        if size > max_size:
            return encodings, True
        encodings.append(encoding)
    return encodings, False


def _user_counts(rows: Iterable[Sequence[Any]], scheduled: Mapping[str, UserState]) -> list[UserCounts]:
    """USER_COUNTS_SQL's rows as UserCounts, each with its UserState in `scheduled` (username -> state) if any."""
    return [
        UserCounts(name, at, last_ping, pings, alerts, scheduled.get(name))
        for name, at, last_ping, pings, alerts in rows
    ]


def _queued_webhook(row: Sequence[Any]) -> QueuedWebhook:
    """The QueuedWebhook of a row of DUE_WEBHOOKS_SQL."""
    return QueuedWebhook(row[0], row[1], row[2], WebhookEvent(*row[3:]))


def _webhook_history(row: Sequence[Any]) -> WebhookHistory:
    """The WebhookHistory of a row of RECENT_WEBHOOKS_SQL."""
    return WebhookHistory(row[0], row[1], f"webhook:{row[2]}", *row[3:])


# The settings a users row mirrors (depends_on aside, kept as parent_id), as columns and as _user_settings
# gives them.
_SETTINGS_COLUMNS = (
    "monitor",
    "max_sleep",
    "email_frequency",
    "max_runtime",
    "notify_recovery",
    "schedule",
    "tz",
    "grace",
)


def _apply_users(connection: sqlite3.Connection, users: Mapping[str, UserConfig], now: float) -> UsersChange:
    """Make the configured users exactly `users`, touching only those added, removed or changed (see reload_users)."""
    configured = {
        name: (bool(row[0]), *row[1:4], bool(row[4]), *row[5:])
        for name, *row in connection.execute(
            "SELECT child.username, "
            + ", ".join(f"child.{column}" for column in _SETTINGS_COLUMNS)
            + ", parent.username FROM users AS child"
            " LEFT JOIN users AS parent ON parent.id = child.parent_id WHERE child.configured = 1"
        )
    }
    wanted = {name: _user_settings(user) for name, user in users.items()}
    removed = [name for name in configured if name not in wanted]
    added = [name for name in wanted if name not in configured]
    changed = [name for name in wanted if name in configured and configured[name] != wanted[name]]
    connection.executemany(
        "UPDATE users SET configured = 0, due_at = NULL WHERE username = ?", [(name,) for name in removed]
    )
    columns = ", ".join(_SETTINGS_COLUMNS)
    values = ", ".join(f":{column}" for column in _SETTINGS_COLUMNS)
    updates = ", ".join(f"{column} = excluded.{column}" for column in _SETTINGS_COLUMNS)
    connection.executemany(
        f"INSERT INTO users (username, configured, {columns}, monitored_since) VALUES (:name, 1, {values}, :now)"
        f" ON CONFLICT (username) DO UPDATE SET configured = 1, {updates}, monitored_since = :now",
        [_user_parameters(name, wanted[name], now) for name in added],
    )
    # Monitoring turned on counts from now, as for a user just added: its silence while off is not a fault.
    connection.executemany(
        "UPDATE users SET monitored_since = CASE WHEN :monitor AND NOT monitor THEN :now ELSE monitored_since END, "
        + ", ".join(f"{column} = :{column}" for column in _SETTINGS_COLUMNS)
        + " WHERE username = :name",
        [_user_parameters(name, wanted[name], now) for name in changed],
    )
    # Once every user is in: a parent may be added with its children.
    connection.executemany(
        "UPDATE users SET parent_id = (SELECT id FROM users AS parent WHERE parent.username = ?) WHERE username = ?",
        [(users[name].depends_on, name) for name in added + changed],
    )
    connection.executemany(
        f"UPDATE users SET due_at = {_DUE_AT} WHERE username = ?", [(name,) for name in added + changed]
    )
    return UsersChange(tuple(added), tuple(removed), tuple(changed))


def _user_settings(user: UserConfig) -> tuple[Any, ...]:
    """`user`'s settings as its row holds them, in _SETTINGS_COLUMNS order (a scheduled user's max_sleep is 0),
    then its depends_on."""
    return (
        user.monitor,
        user.max_sleep or 0.0,
        user.email_frequency,
        user.max_runtime,
        user.notify_recovery,
        user.schedule,
        user.tz,
        user.grace,
        user.depends_on,
    )


def _user_parameters(name, settings, now):
    parameters = dict(zip(_SETTINGS_COLUMNS, settings, strict=False))
    return {**parameters, "monitor": int(settings[0]), "notify_recovery": int(settings[4]), "name": name, "now": now}


def _restart_monitoring(connection, now):
    parameters = {"now": now}
    # Walks the user's signals backwards from `now` to the latest contact: no scan of its whole history.
    connection.execute(
        "UPDATE users SET last_ping = (SELECT at FROM pings WHERE pings.user_id = users.id AND at <= :now"
        " AND kind IN ('success', 'fail') ORDER BY at DESC LIMIT 1)"
        " WHERE last_ping > :now",
        parameters,
    )
    connection.execute("UPDATE users SET last_alert = :now WHERE last_alert > :now", parameters)
    # min() of NULL is NULL: only times in the future change.
    connection.execute(
        "UPDATE users SET run_started = min(run_started, :now), failed_at = min(failed_at, :now),"
        " back_at = min(back_at, :now) WHERE run_started > :now OR failed_at > :now OR back_at > :now",
        parameters,
    )
    # Two statements: within one UPDATE, due_at would be computed from the old monitored_since.
    connection.execute("UPDATE users SET monitored_since = :now WHERE configured = 1", parameters)
    connection.execute(f"UPDATE users SET due_at = {_DUE_AT} WHERE configured = 1")
    for queue in ("outbox", "webhook_outbox"):
        connection.execute(
            f"UPDATE {queue} SET next_attempt_at = :now WHERE status = 'queued' AND next_attempt_at > :now", parameters
        )


def lock_database(path: Path) -> int:
    """Take the OS lock (flock) of the file `path`.lock next to the SQLite database `path`, created if missing,
    and write this process's id in it; return its open descriptor, which holds the lock until it is closed
    (or the process ends, however it ends).

    Raise StoreOpenError, one line naming the database and the process that holds the lock, if another
    process (or another descriptor in this one) holds it.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise StoreOpenError(f"{path}: cannot open its lock file {lock_path}: {error.strerror}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.pread(descriptor, 20, 0).decode("ascii", "replace").strip()
        os.close(descriptor)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StoreOpenError(f"{path}: cannot lock its lock file {lock_path}: {error.strerror}") from None
        raise StoreOpenError(
            f"{path}: in use by another Ping Listener process (pid {holder if holder.isdigit() else 'unknown'},"
            f" holding {lock_path}); one process per SQLite database: stop it, or give this one another --db"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


@contextmanager
def _storage_faults():
    """Turn SQLite's complaints about its surroundings (disk full, locked, damaged file) into StoreUnavailableError."""
    try:
        yield
    except sqlite3.DatabaseError as error:
        if _is_storage_fault(error):
            raise _unavailable(error) from error
        raise


def _refuse_missing_directory(path):
    # SQLite would only say "unable to open database file".
    if not path.parent.is_dir():
        raise StoreOpenError(f"{path}: the directory {path.parent} does not exist; create it or choose another --db")


def _refuse_read_only(path):
    # SQLite opens a file it cannot write read-only and fails only at the first write, with
    # "attempt to write a readonly database" whether the file or its directory is to blame.
    if path.exists() and not os.access(path, os.W_OK):
        raise StoreOpenError(f"{path}: the database file is read-only; Ping Listener must be able to write it")
    if path.parent.is_dir() and not os.access(path.parent, os.W_OK):
        raise StoreOpenError(
            f"{path}: its directory is read-only; SQLite must be able to create {path.name}-wal and"
            f" {path.name}-shm next to it"
        )


_UNAVAILABLE_REASONS = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_BUSY: "the database is locked by another process",
    sqlite3.SQLITE_LOCKED: "the database is locked",
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_IOERR: "the database had an I/O error",
    sqlite3.SQLITE_CORRUPT: "the database file is corrupt",
    sqlite3.SQLITE_NOTADB: "the database file is not a database",
}


def _primary_code(error):
    # Extended codes (e.g. SQLITE_IOERR_WRITE) carry the primary code in their low byte.
    return getattr(error, "sqlite_errorcode", 0) & 0xFF


def _is_storage_fault(error):
    # Faults of the environment are OperationalErrors, except a damaged file: a plain DatabaseError.
    # Other DatabaseErrors (IntegrityError, ProgrammingError...) are bugs and stay what they are.
    return isinstance(error, sqlite3.OperationalError) or (
        type(error) is sqlite3.DatabaseError and _primary_code(error) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    )


def _unavailable(error):
    reason = _UNAVAILABLE_REASONS.get(_primary_code(error), str(error))
    return StoreUnavailableError(f"storage unavailable: {reason}")
