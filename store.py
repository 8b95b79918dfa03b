"""The SQLite database: every SQL statement and transaction of Ping Listener lives here.

Each thread gets its own connection (SQLite connections are not shared across threads); write
transactions are serialised by one lock in this process, so its threads never meet "database is
locked", and the busy timeout covers other processes such as a person's `sqlite3` shell.
All times are UTC epoch seconds, passed in by the caller: the store never reads a clock.
"""

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import UserConfig

SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).with_name("schema.sql")
BUSY_TIMEOUT_MS = 5000
HEALTH_TIMEOUT_MS = 500
# How a database of an older version becomes the next: version it reaches -> its SQL. A new database
# gets schema.sql, which is always the latest version.
MIGRATIONS = {
    # Counters for the metrics, so that a scrape never counts pings; indexes for retention and the
    # outbox's counts by status; alerts_by_time and outbox_by_alert let old alerts go without a scan.
    2: "ALTER TABLE users ADD COLUMN pings_total INTEGER NOT NULL DEFAULT 0;"
    " ALTER TABLE users ADD COLUMN alerts_total INTEGER NOT NULL DEFAULT 0;"
    " UPDATE users SET pings_total = (SELECT count(*) FROM pings WHERE user_id = users.id),"
    " alerts_total = (SELECT count(*) FROM alerts WHERE user_id = users.id);"
    " CREATE INDEX alerts_by_time ON alerts (at);"
    " CREATE INDEX outbox_by_alert ON outbox (alert_id);"
    " CREATE INDEX outbox_finished ON outbox (status, finished_at) WHERE status != 'queued';",
}

# rules.late_at restated in SQL, so that the deadline can be stored and found through an index (and read
# for the metrics without building each user's state):
# the later of its last ping and the start of monitoring, plus max_sleep; NULL when not monitored.
# Written at every start (here) and on every ping (_PING_TRIGGER_SQL, the same rule given the new
# ping). tests/test_store.py checks with random pings and restarts that they agree with the rule.
_LATE_AT = "CASE WHEN monitor THEN max(coalesce(last_ping, monitored_since), monitored_since) + max_sleep END"

# The queries that run on every tick or /logs; tests check that each is answered through an index.
# `due_at < now`: late strictly after the deadline, as rules.decide says (exactly max_sleep is not late).
DUE_USERS_SQL = (
    "SELECT id, username, monitor, max_sleep, email_frequency, monitored_since, last_ping, last_alert, due_at"
    " FROM users WHERE due_at < ? ORDER BY due_at LIMIT ?"
)
DUE_EMAILS_SQL = (
    "SELECT id, recipient, subject, body, message_id, queued_at, attempts FROM outbox"
    " WHERE status = 'queued' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?"
)
PINGS_BETWEEN_SQL = "SELECT at FROM pings WHERE user_id = ? AND at >= ? AND at < ? ORDER BY at LIMIT ?"
# The testing page's queries, run about once a second while it is open. Every configured user is
# read in username order through the UNIQUE index (no sort); the newest emails are read backwards
# along the outbox's primary key and joined through primary keys, so LIMIT bounds the work.
CONFIGURED_USERS_SQL = (
    "SELECT id, username, monitor, max_sleep, email_frequency, monitored_since, last_ping, last_alert, due_at"
    " FROM users WHERE configured = 1 ORDER BY username"
)
RECENT_EMAILS_SQL = (
    "SELECT outbox.id, users.username, outbox.recipient, outbox.status, outbox.attempts, alerts.last_ping,"
    " outbox.queued_at, outbox.finished_at"
    " FROM outbox JOIN alerts ON alerts.id = outbox.alert_id JOIN users ON users.id = alerts.user_id"
    " ORDER BY outbox.id DESC LIMIT ?"
)
# A metrics scrape: one row per configured user (its counters are kept by the ping trigger and by
# save_check_outcomes), and the outbox counted along its two partial indexes without reading a row.
USER_COUNTS_SQL = f"SELECT username, {_LATE_AT}, last_ping, pings_total, alerts_total FROM users WHERE configured = 1"
QUEUED_COUNT_SQL = "SELECT count(*) FROM outbox WHERE status = 'queued'"
FINISHED_COUNTS_SQL = "SELECT status, count(*) FROM outbox WHERE status != 'queued' GROUP BY status"
# Retention: old pings user by user along pings_by_user_time (CROSS JOIN keeps users the outer loop, so a
# batch costs its size plus one index seek per user, never a scan of the pings); finished emails along
# outbox_finished; alerts along alerts_by_time, once no outbox row refers to them.
OLD_PINGS_SQL = "SELECT pings.id FROM users CROSS JOIN pings ON pings.user_id = users.id AND pings.at < ? LIMIT ?"
DELETE_OLD_EMAILS_SQL = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE status != 'queued' AND status IN ('sent', 'failed')"
    " AND finished_at < ? LIMIT ?)"
)
DELETE_OLD_ALERTS_SQL = (
    "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE at < ?"
    " AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.alert_id = alerts.id) LIMIT ?)"
)

# A ping is one INSERT of a configured user's ping; this trigger, which exists only on the store's own
# connections, moves that user's last_ping and deadline (rules.late_at, as _LATE_AT) in the same statement.
# max() keeps last_ping monotonic if pings ever commit out of time order.
RECORD_PING_SQL = "INSERT INTO pings (user_id, at) SELECT id, ? FROM users WHERE username = ? AND configured = 1"
_PING_TRIGGER_SQL = (
    "CREATE TEMP TRIGGER IF NOT EXISTS ping_moves_deadline AFTER INSERT ON main.pings BEGIN"
    " UPDATE users SET last_ping = max(coalesce(last_ping, NEW.at), NEW.at),"
    " due_at = CASE WHEN monitor THEN max(coalesce(last_ping, NEW.at), NEW.at, monitored_since) + max_sleep END,"
    " pings_total = pings_total + 1"
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


@dataclass(frozen=True, slots=True)
class UserCounts:
    """A configured user's deadline (rules.late_at, None if not monitored), last ping and counters.

    The counters, pings and alerts recorded since the user was first configured, never go down:
    retention deletes old pings and alerts, not what was counted.
    """

    username: str
    late_at: float | None
    last_ping: float | None
    pings: int
    alerts: int


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
class CheckOutcome:
    """What the absence listener decided about one due user.

    `emails` empty means no alert now; `next_due_at` is when to look at the user again.
    """

    user: UserState
    next_due_at: float | None
    emails: tuple[NewEmail, ...] = ()


@dataclass(frozen=True, slots=True)
class QueuedEmail:
    """An outbox row waiting to be sent."""

    id: int
    recipient: str
    subject: str
    body: str
    message_id: str
    queued_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class EmailEvent:
    """An alert email as its history shows it: queued, sent or failed, and when.

    `last_ping` is the user's last ping when the alert was decided (None: none since monitoring
    began); `finished_at` is when it was sent or failed (None while queued).
    """

    id: int
    username: str
    recipient: str
    status: str
    attempts: int
    last_ping: float | None
    queued_at: float
    finished_at: float | None


class Store:
    """Ping Listener's database at one path; safe to use from any number of threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating if new) the database at `path`; raise StoreOpenError if it is unusable."""
        self.path = str(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._schema_ready = False
        _refuse_read_only(Path(self.path))
        try:
            connection = self._connection()
            self._prepare_schema(connection)
            connection.execute(_PING_TRIGGER_SQL)
            self._schema_ready = True
        except sqlite3.Error as error:
            self.close()
            raise StoreOpenError(f"{self.path}: cannot use this database: {error}") from None

    def close(self) -> None:
        """Close every connection; waits for a write in progress to finish first."""
        with self._write_lock, self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

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

        Each gets a full max_sleep from `now` before it can be late, so neither the service's
        downtime nor a jump of the wall clock counts against a device. Times left in the future by
        a wall clock that went back are made harmless: a last ping becomes the last one recorded at
        or before `now` (a real ping, or none), and the alert throttle counts from `now`. Queued
        emails are due at once, so fixing the SMTP setup and restarting sends them without waiting
        out their back-off.
        """
        with self._write() as connection:
            _restart_monitoring(connection, now)

    def record_ping(self, username: str, now: float) -> None:
        """Record a ping from `username` at `now`, committed before returning.

        Raises UnknownUserError if the user is not configured.
        """
        connection = self._connection()
        # One statement in autocommit mode: SQLite commits it, with what _PING_TRIGGER_SQL does,
        # before execute() returns. As one statement it releases the GIL once instead of at each
        # of BEGIN, UPDATE, INSERT and COMMIT, which is what lets the HTTP thread keep up.
        with self._write_lock, _storage_faults():
            recorded = connection.execute(RECORD_PING_SQL, (now, username)).rowcount
        if not recorded:
            raise UnknownUserError(f"unknown user {username}")

    def pings_between(self, username: str, start: float, end: float, limit: int | None = None) -> list[float]:
        """Times of `username`'s pings with start <= time < end, ascending; only the first `limit` if given.

        Raises UnknownUserError if the user was never configured.
        """
        with self._read() as connection:
            row = connection.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()
            if row is None:
                raise UnknownUserError(f"unknown user {username}")
            # LIMIT -1 is no limit.
            rows = connection.execute(PINGS_BETWEEN_SQL, (row[0], start, end, limit or -1)).fetchall()
        return [at for (at,) in rows]

    def configured_users(self) -> list[UserState]:
        """Every configured user's state, in username order."""
        with self._read() as connection:
            rows = connection.execute(CONFIGURED_USERS_SQL).fetchall()
        return [UserState(*row) for row in rows]

    def recent_emails(self, limit: int) -> list[EmailEvent]:
        """The `limit` most recently queued alert emails, newest first."""
        with self._read() as connection:
            rows = connection.execute(RECENT_EMAILS_SQL, (limit,)).fetchall()
        return [EmailEvent(*row) for row in rows]

    def due_users(self, now: float, limit: int) -> list[UserState]:
        """Up to `limit` configured users whose due_at is before `now`, earliest first."""
        with self._read() as connection:
            rows = connection.execute(DUE_USERS_SQL, (now, limit)).fetchall()
        return [UserState(*row) for row in rows]

    def save_check_outcomes(self, outcomes: Iterable[CheckOutcome], now: float) -> int:
        """Apply the absence listener's decisions in one transaction; return how many alerts were recorded.

        Each outcome applies only if its user's due_at is still what was read (no ping came in
        meanwhile); an alert records its time, its alerts row and one outbox row per email.
        """
        alerts = 0
        emails: list[tuple[Any, ...]] = []
        with self._write() as connection:
            for outcome in outcomes:
                user = outcome.user
                if not outcome.emails:
                    connection.execute(
                        "UPDATE users SET due_at = ? WHERE id = ? AND due_at IS ?",
                        (outcome.next_due_at, user.id, user.due_at),
                    )
                    continue
                claimed = connection.execute(
                    "UPDATE users SET last_alert = ?, due_at = ?, alerts_total = alerts_total + 1"
                    " WHERE id = ? AND due_at IS ?",
                    (now, outcome.next_due_at, user.id, user.due_at),
                ).rowcount
                if not claimed:
                    continue
                alert_id = connection.execute(
                    "INSERT INTO alerts (user_id, at, last_ping) VALUES (?, ?, ?)", (user.id, now, user.last_ping)
                ).lastrowid
                emails += [(alert_id, e.recipient, e.subject, e.body, e.message_id, now, now) for e in outcome.emails]
                alerts += 1
            # One statement for the whole batch's emails: a step may alert hundreds of users.
            connection.executemany(
                "INSERT INTO outbox (alert_id, recipient, subject, body, message_id, queued_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                emails,
            )
        return alerts

    def due_emails(self, now: float, limit: int) -> list[QueuedEmail]:
        """Up to `limit` queued emails whose next attempt is at or before `now`, oldest due first."""
        with self._read() as connection:
            rows = connection.execute(DUE_EMAILS_SQL, (now, limit)).fetchall()
        return [QueuedEmail(*row) for row in rows]

    def claim_emails(self, retry_times: Mapping[int, float]) -> None:
        """Before sending: set each email's next attempt from `retry_times` (email id -> epoch seconds).

        Committed before the SMTP conversation, so an email whose result cannot be recorded (the
        service is killed, or the database refuses the write) is sent again only after this
        back-off; and while the database refuses writes, nothing is sent at all.
        """
        with self._write() as connection:
            connection.executemany(
                "UPDATE outbox SET next_attempt_at = ? WHERE id = ? AND status = 'queued'",
                [(at, email_id) for email_id, at in retry_times.items()],
            )

    def mark_sent(self, email_id: int, now: float) -> None:
        """Record that the SMTP server accepted the email at `now`; it leaves the queue."""
        self._finish_email(email_id, "sent", now, None)

    def mark_failed(self, email_id: int, now: float, error: str | None) -> None:
        """Record a permanent rejection; the email leaves the queue with status 'failed'."""
        self._finish_email(email_id, "failed", now, error)

    def schedule_retry(self, email_id: int, next_attempt_at: float, error: str | None) -> None:
        """Record a failed attempt; the email stays queued until `next_attempt_at`."""
        with self._write() as connection:
            connection.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                " WHERE id = ? AND status = 'queued'",
                (error, next_attempt_at, email_id),
            )

    def _finish_email(self, email_id, status, now, error):
        with self._write() as connection:
            connection.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ?, finished_at = ?,"
                " next_attempt_at = NULL WHERE id = ? AND status = 'queued'",
                (status, error, now, email_id),
            )

    def user_counts(self) -> list[UserCounts]:
        """Every configured user's deadline and counters, for a metrics scrape: one row per user, no ping read."""
        with self._read() as connection:
            rows = connection.execute(USER_COUNTS_SQL).fetchall()
        return [UserCounts(*row) for row in rows]

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
        """Delete up to `limit` sent or failed emails finished before `cutoff`, and up to `limit` alerts
        decided before it that no email refers to any more; return how many rows were deleted.

        Queued emails, and the alerts they belong to, are kept whatever their age.
        """
        with self._write() as connection:
            emails = connection.execute(DELETE_OLD_EMAILS_SQL, (cutoff, limit)).rowcount
            alerts = connection.execute(DELETE_OLD_ALERTS_SQL, (cutoff, limit)).rowcount
        return emails + alerts

    def check_writable(self) -> None:
        """Return if the database answers and its write lock can be taken within HEALTH_TIMEOUT_MS; raise
        StoreUnavailableError if not.

        Takes the lock (BEGIN IMMEDIATE) and writes nothing: this is what a ping needs first. A health
        check waits less than a ping would for a lock another process holds.
        """
        connection = self._connection()
        connection.execute(f"PRAGMA busy_timeout = {HEALTH_TIMEOUT_MS}")
        try:
            with self._write():
                pass
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
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA foreign_keys = ON")
            # The first connection creates the tables; it gets the trigger once they exist.
            if self._schema_ready:
                connection.execute(_PING_TRIGGER_SQL)
            self._local.connection = connection
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
        if version == 0 and connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
            raise StoreOpenError(f"{self.path}: not a Ping Listener database (it has other tables)")
        # One transaction: a database is at one version or the next, never between.
        steps = (
            [SCHEMA_PATH.read_text()]
            if version == 0
            else [MIGRATIONS[v] for v in range(version + 1, SCHEMA_VERSION + 1)]
        )
        with self._write_lock:
            connection.executescript(
                f"BEGIN IMMEDIATE; {'; '.join(steps)}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )


def _apply_users(connection: sqlite3.Connection, users: Mapping[str, UserConfig], now: float) -> UsersChange:
    """Make the configured users exactly `users`, touching only those added, removed or changed (see reload_users)."""
    configured = {
        name: (bool(monitor), max_sleep, email_frequency)
        for name, monitor, max_sleep, email_frequency in connection.execute(
            "SELECT username, monitor, max_sleep, email_frequency FROM users WHERE configured = 1"
        )
    }
    wanted = {name: (user.monitor, user.max_sleep, user.email_frequency) for name, user in users.items()}
    removed = [name for name in configured if name not in wanted]
    added = [name for name in wanted if name not in configured]
    changed = [name for name in wanted if name in configured and configured[name] != wanted[name]]
    connection.executemany(
        "UPDATE users SET configured = 0, due_at = NULL WHERE username = ?", [(name,) for name in removed]
    )
    connection.executemany(
        "INSERT INTO users (username, configured, monitor, max_sleep, email_frequency, monitored_since)"
        " VALUES (:name, 1, :monitor, :max_sleep, :email_frequency, :now)"
        " ON CONFLICT (username) DO UPDATE SET configured = 1, monitor = excluded.monitor,"
        " max_sleep = excluded.max_sleep, email_frequency = excluded.email_frequency, monitored_since = :now",
        [_user_parameters(name, wanted[name], now) for name in added],
    )
    # Monitoring turned on counts from now, as for a user just added: its silence while off is not a fault.
    connection.executemany(
        "UPDATE users SET monitored_since = CASE WHEN :monitor AND NOT monitor THEN :now ELSE monitored_since END,"
        " monitor = :monitor, max_sleep = :max_sleep, email_frequency = :email_frequency WHERE username = :name",
        [_user_parameters(name, wanted[name], now) for name in changed],
    )
    connection.executemany(
        f"UPDATE users SET due_at = {_LATE_AT} WHERE username = ?", [(name,) for name in added + changed]
    )
    return UsersChange(tuple(added), tuple(removed), tuple(changed))


def _user_parameters(name, parameters, now):
    monitor, max_sleep, email_frequency = parameters
    return {
        "name": name,
        "monitor": int(monitor),
        "max_sleep": max_sleep,
        "email_frequency": email_frequency,
        "now": now,
    }


def _restart_monitoring(connection, now):
    parameters = {"now": now}
    connection.execute(
        "UPDATE users SET last_ping = (SELECT max(at) FROM pings WHERE pings.user_id = users.id AND at <= :now)"
        " WHERE last_ping > :now",
        parameters,
    )
    connection.execute("UPDATE users SET last_alert = :now WHERE last_alert > :now", parameters)
    # Two statements: within one UPDATE, due_at would be computed from the old monitored_since.
    connection.execute("UPDATE users SET monitored_since = :now WHERE configured = 1", parameters)
    connection.execute(f"UPDATE users SET due_at = {_LATE_AT} WHERE configured = 1")
    connection.execute(
        "UPDATE outbox SET next_attempt_at = :now WHERE status = 'queued' AND next_attempt_at > :now", parameters
    )


@contextmanager
def _storage_faults():
    """Turn SQLite's complaints about its surroundings (disk full, locked, damaged file) into StoreUnavailableError."""
    try:
        yield
    except sqlite3.DatabaseError as error:
        if _is_storage_fault(error):
            raise _unavailable(error) from error
        raise


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
