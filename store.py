"""The SQLite database (Store): the statements and transactions only SQLite runs; sql_store.SqlStore has those
both databases share, store_contract.StoreContract what each method promises.

Each thread gets its own connection (SQLite connections are not shared across threads); write
transactions are serialised by one lock in this process, so its threads never meet "database is
locked", and the busy timeout covers other processes such as a person's `sqlite3` shell.
All times are UTC epoch seconds, passed in by the caller: the store never reads a clock.
"""

import errno
import fcntl
import operator
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, cast

from config import DEFAULT_DURABILITY
from migrations import SCHEMA_VERSION, STEPS
from records import (
    StoreOpenError,
    StoreUnavailableError,
    UnknownUserError,
    UsersChange as UsersChange,
)
from rules import SUCCESS
from rules_sql import RulesSql
from sql_store import (
    DAY_ALERTS_SQL as DAY_ALERTS_SQL,
    DAY_FAILURES_SQL as DAY_FAILURES_SQL,
    FINISHED_COUNTS_SQL as FINISHED_COUNTS_SQL,
    NEW_PINGS_SQL as NEW_PINGS_SQL,
    PING_BEFORE_SQL as PING_BEFORE_SQL,
    PING_FROM_SQL as PING_FROM_SQL,
    PINGS_BEFORE_SQL as PINGS_BEFORE_SQL,
    PINGS_BETWEEN_SQL as PINGS_BETWEEN_SQL,
    QUEUED_COUNT_SQL as QUEUED_COUNT_SQL,
    RECENT_ALERTS_SQL as RECENT_ALERTS_SQL,
    RECENT_EMAILS_SQL as RECENT_EMAILS_SQL,
    RECENT_WEBHOOKS_SQL as RECENT_WEBHOOKS_SQL,
    SCHEDULED_USERS_SQL as SCHEDULED_USERS_SQL,
    SIGNALS_BETWEEN_SQL as SIGNALS_BETWEEN_SQL,
    SQLITE,
    USER_AND_PARENT,
    WITH_PARENT,
    SqlStore,
    Statements,
    outcome_assignments,
    recent_pings_parameters,
)

SCHEMA_PATH = Path(__file__).with_name("schema.sql")
# sqlite3 binds an int, float, str or bytes as it is, but looks for an adapter for any other value first, in
# vain, at a cost several times the binding's: None and bool, the most common parameters of users' rows (a first
# start binds millions of them; an absence step a dozen for each due user), get adapters that give what sqlite3
# binds anyway (NULL, 0 or 1).
sqlite3.register_adapter(type(None), lambda value: value)
sqlite3.register_adapter(bool, int)
# How a SQLite database of an older schema version becomes current (migrations.STEPS, in SQLite's SQL):
# MIGRATIONS[n - 1] upgrades version n to n + 1 (PRAGMA user_version).
MIGRATIONS = tuple(step.sqlite for step in STEPS)
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
# A first start's users go into an empty table faster without users_by_uuid, which is then built from them in
# one sorted pass (Store._adding_users); its definition is read back from the database, as schema.sql wrote it.
USERS_EMPTY_SQL = "SELECT NOT EXISTS (SELECT 1 FROM users)"
UUID_INDEX_SQL = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'users_by_uuid'"
DROP_UUID_INDEX_SQL = "DROP INDEX users_by_uuid"
# Why a health check's write could not commit when the database (or the disk under it) has no room left.
DATABASE_FULL = "database is full: no space left on its disk"


# rules.py's lateness rules in SQLite's SQL (rules_sql.py): the deadline, written at every start
# (SqlStore._restart_monitoring), by every signal and snooze (_SIGNAL_TRIGGER_SQL, snooze()); for the metrics'
# up, when the earliest of a monitored user's conditions begins at :now.
_RULES = RulesSql(null_ignoring=False)
_CONDITION_AT = _RULES.condition_at(":now")

# The queries that run on every tick or /logs; tests check that each is answered through an index.
# `due_at < now`: a condition begins strictly after its deadline, as rules.condition says.
DUE_USERS_SQL = (
    f"SELECT {USER_AND_PARENT} FROM {WITH_PARENT} WHERE child.due_at < :now ORDER BY child.due_at LIMIT :limit"
)
# Each due email with what a digest needs: its user and kind, and the digest that carried it last.
DUE_EMAILS_SQL = (
    "SELECT outbox.id, outbox.recipient, outbox.subject, outbox.body, outbox.message_id, outbox.queued_at,"
    " outbox.attempts, users.username, alerts.kind, digests.id, digests.message_id, digests.created_at,"
    " digests.emails"
    " FROM outbox JOIN alerts ON alerts.id = outbox.alert_id JOIN users ON users.id = alerts.user_id"
    " LEFT JOIN digests ON digests.id = outbox.digest_id"
    " WHERE outbox.status = 'queued' AND outbox.next_attempt_at <= :now ORDER BY outbox.next_attempt_at LIMIT :limit"
)
# Through webhook_outbox_queue, then the alert and its user by primary key.
DUE_WEBHOOKS_SQL = (
    "SELECT webhook_outbox.id, webhook_outbox.webhook, webhook_outbox.attempts, webhook_outbox.event_id, alerts.kind,"
    " users.username, alerts.at, alerts.last_ping, webhook_outbox.title, webhook_outbox.text, webhook_outbox.logs_url,"
    " alerts.went_down_at"
    " FROM webhook_outbox JOIN alerts ON alerts.id = webhook_outbox.alert_id JOIN users ON users.id = alerts.user_id"
    " WHERE webhook_outbox.status = 'queued' AND webhook_outbox.next_attempt_at <= :now"
    " ORDER BY webhook_outbox.next_attempt_at LIMIT :limit"
)
# The overview's last 24 hours of pings, read once after a start, in chunks of users (a range of users' primary
# key, per-user seeks of pings_by_user_time), each chunk in pages that go on after the last row of the previous
# page (`first` is that row's user, the seek into its pings begins at its time, and only pings of that time with
# greater ids are taken).
RECENT_PINGS_SQL = (
    "SELECT users.id, pings.at, pings.id FROM users JOIN pings ON pings.user_id = users.id"
    " WHERE users.configured = 1 AND users.id BETWEEN :first AND :last AND pings.id <= :upto"
    " AND pings.at >= CASE WHEN users.id = :first THEN :after_at ELSE :start END"
    " AND (users.id > :first OR pings.at > :after_at OR pings.id > :after_id)"
    " ORDER BY users.id, pings.at, pings.id LIMIT :limit"
)
# A metrics scrape: one row per configured user (its counters are kept by the ping trigger and by
# save_check_outcomes), and the outbox counted along its two partial indexes without reading a row.
USER_COUNTS_SQL = (
    f"SELECT username, {_CONDITION_AT}, last_ping, pings_total, alerts_total FROM users WHERE configured = 1"
)
# The statements SqlStore's methods run on SQLite; the users in username order as SQLite reads them.
# An outcome of the absence listener applies only if its user is unchanged since it was read
# (StoreContract.save_check_outcomes). Its parameters go by number, which SQLite binds without looking a name up (one
# UPDATE for each due user of a step): ?N is the Nth of OUTCOME_FIELDS (outcome_row's), the one after them :now.
_SAVE_OUTCOME = SQLITE.sql(
    f"UPDATE users SET {outcome_assignments(':{}')}"
    " WHERE id = :id AND due_at IS :due_at AND last_signal IS :last_signal"
)
_PARAMETER = re.compile(r"(?<![:\w]):([a-z_]+)")
OUTCOME_FIELDS = tuple(name for name in dict.fromkeys(_PARAMETER.findall(_SAVE_OUTCOME)) if name != "now")
SAVE_OUTCOME_SQL = _PARAMETER.sub(
    lambda parameter: f"?{(*OUTCOME_FIELDS, 'now').index(parameter[1]) + 1}", _SAVE_OUTCOME
)
_outcome_fields = operator.itemgetter(*OUTCOME_FIELDS)
_SQL = Statements.build(
    SQLITE,
    USER_COUNTS_SQL,
    _RULES,
    "UPDATE {queue} SET next_attempt_at = :now WHERE status = 'queued' AND next_attempt_at > :now",
    (DUE_USERS_SQL, DUE_EMAILS_SQL, DUE_WEBHOOKS_SQL),
)
CONFIGURED_USERS_SQL = _SQL.configured_users
OVERVIEW_USERS_SQL = _SQL.overview_users
DELETE_OLD_EMAILS_SQL, DELETE_OLD_WEBHOOKS_SQL, DELETE_OLD_DIGESTS_SQL, DELETE_OLD_ALERTS_SQL = _SQL.delete_history
# Retention of the pings (the other deletes are sql_store's DELETE_OLD_*_SQL, DELETE_OLD_EMAILS_SQL... above):
# old pings user by user along pings_by_user_time (CROSS JOIN keeps users the outer loop, so a batch costs its
# size plus one index seek per user, never a scan of the pings).
# A failed user's fail signal is kept whatever its age: its alerts quote it (users.fail_signal). So is the
# newest ping: SQLite gives a new row the greatest id + 1, so deleting the greatest would hand its id out again,
# and a reader following new pings by id (pings_after_id: the overview) would miss them (one index seek).
OLD_PINGS_SQL = (
    "SELECT pings.id FROM users CROSS JOIN pings ON pings.user_id = users.id AND pings.at < ?"
    " AND pings.id IS NOT users.fail_signal AND pings.id < (SELECT max(id) FROM pings) LIMIT ?"
)

# A signal is one INSERT of a configured user's ping row, its duration worked out from the user's open
# run in the same statement; this trigger, which exists only on the store's own connections, moves that
# user's state (_SIGNAL_EFFECTS: what each kind does, as rules.py says, in the SQL of rules_sql.signal_effects)
# and deadline (rules.due_at, as rules_sql's due_at) in one UPDATE. Within an UPDATE every expression reads the
# row as it was, so the deadline is due_at with the new values' expressions in place of their columns. A `log`
# changes nothing.
# max() keeps last_ping monotonic if signals ever commit out of time order.
RECORD_SIGNAL_SQL = (
    "INSERT INTO pings (user_id, at, kind, exit_code, body, duration)"
    " SELECT id, ?1, ?2, ?3, ?4, CASE WHEN ?2 IN ('success', 'fail') THEN max(?1 - run_started, 0) END"
    " FROM users WHERE username = ?5 AND configured = 1"
)
_SIGNAL_EFFECTS = _RULES.signal_effects("NEW")
# What the signal counts as for its user (rules.counts_as): a success that closed a run too fast is a fail.
_KIND = _RULES.counts_as("NEW")
# A success of a parent that was down restarts its children's silence from that moment (rules.py): first,
# while the parent's row still reads as it was before this signal. A parent is found through the
# primary key and its children through users_by_parent, so this costs a user with no children one seek.
_PARENT_RETURN_SQL = (
    f"UPDATE users SET silence_from = {_RULES.parent_return('NEW')}, suppressed_kind = NULL,"
    f" due_at = {_RULES.due_at(silence_from=_RULES.parent_return('NEW'))}"
    " WHERE parent_id = NEW.user_id AND NEW.kind = 'success'"
    f" AND (SELECT {_RULES.counts_as('NEW', 'parent.')} = 'success' AND {_RULES.down('NEW.at', 'parent.')}"
    f" FROM users AS parent WHERE parent.id = NEW.user_id);"
)
_SIGNAL_TRIGGER_SQL = (
    "CREATE TEMP TRIGGER IF NOT EXISTS signal_moves_state AFTER INSERT ON main.pings WHEN NEW.kind <> 'log' BEGIN "
    + _PARENT_RETURN_SQL
    + " UPDATE users SET "
    + ", ".join(f"{column} = {expression}" for column, expression in _SIGNAL_EFFECTS.items())
    + ", last_duration = coalesce(NEW.duration, last_duration),"
    f" suppressed_kind = CASE {_KIND} WHEN 'success' THEN NULL ELSE suppressed_kind END,"
    f" fail_signal = CASE {_KIND} WHEN 'success' THEN NULL WHEN 'fail' THEN NEW.id ELSE fail_signal END,"
    f" last_signal = NEW.id, due_at = {_RULES.signal_due_at(_SIGNAL_EFFECTS)}, pings_total = pings_total + 1"
    " WHERE id = NEW.user_id;"
    " END"
)


_BATCH_ROLLED_BACK = "storage unavailable: a batch of pings was rolled back"


class Store(SqlStore):
    """Ping Listener's database at one path; safe to use from any number of threads."""

    _sql = _SQL

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
        """StoreContract.close."""
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

    def record_ping(
        self,
        username: str,
        now: float,
        kind: str = SUCCESS,
        exit_code: int | None = None,
        body: str | None = None,
    ) -> None:
        """StoreContract.record_ping."""
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
        """StoreContract.ping_batch."""
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

    def recent_pings(
        self, start: float, upto_id: int, user_ids: tuple[int, int], after: tuple[int, float, int] | None, limit: int
    ) -> list[tuple[int, float, int]]:
        """StoreContract.recent_pings."""
        with self._read() as connection:
            return connection.execute(
                RECENT_PINGS_SQL, recent_pings_parameters(start, upto_id, user_ids, after, limit)
            ).fetchall()

    def delete_pings_before(self, cutoff: float, limit: int) -> int:
        """StoreContract.delete_pings_before. Only the delete holds the write lock, for a batch of
        `limit` rows; the pings to delete are found before, through pings_by_user_time. SQLite reuses the freed
        pages for new rows."""
        with self._read() as connection:
            old = connection.execute(OLD_PINGS_SQL, (cutoff, limit)).fetchall()
        if not old:
            return 0
        with self._write() as connection:
            return connection.executemany("DELETE FROM pings WHERE id = ?", old).rowcount

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
        """StoreContract.upkeep: here a WAL checkpoint (checkpoint()), and the service's run marked seen."""
        self.checkpoint()
        if self._run_mark_due(now):
            with self._write() as connection:
                self._mark_run(connection, now)

    def check_writable(self, now: float) -> None:
        """StoreContract.check_writable, waiting at most HEALTH_TIMEOUT_MS for another process's
        write lock."""
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

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        if getattr(self._local, "in_batch", False) and connection.in_transaction:
            # A write asked for while this thread's batch of pings is open (a check a signal creates, or a pause
            # it ends): it joins the batch and commits with it, all or nothing through its savepoint.
            with self._write_lock, _storage_faults():
                connection.execute("SAVEPOINT batch_write")
                try:
                    yield connection
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK TO batch_write")
                    raise
                finally:
                    if connection.in_transaction:
                        connection.execute("RELEASE batch_write")
            return
        with self._write_lock, _storage_faults():
            try:
                connection.execute("BEGIN IMMEDIATE")
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        # One writer at a time: a transaction that writes holds the write lock.
        return self._write()

    def _starting(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._write()

    def _join(self, connection: sqlite3.Connection, now: float) -> bool:
        # One process owns a SQLite database (lock_database): it is always alone.
        return True

    def _alone(self, connection: sqlite3.Connection) -> bool:
        return True

    @contextmanager
    def _adding_users(self, connection: sqlite3.Connection) -> Iterator[None]:
        # Into an empty table only: building the index again over rows already there would cost more. Should
        # the INSERT fail, the transaction's rollback brings the index back.
        if not connection.execute(USERS_EMPTY_SQL).fetchone()[0]:
            yield
            return
        (definition,) = connection.execute(UUID_INDEX_SQL).fetchone()
        connection.execute(DROP_UUID_INDEX_SQL)
        yield
        connection.execute(definition)

    def _returned_ids(self, connection: sqlite3.Connection, statement: str, rows: Sequence[Any]) -> list[int]:
        # Statement by statement: SQLite's executemany() takes no RETURNING, and each costs no round trip.
        return [row_id for parameters in rows for (row_id,) in connection.execute(statement, parameters)]

    def _inserted_ids(self, connection: sqlite3.Connection, statement: str, rows: Sequence[Any]) -> list[int]:
        # Each new row's id is the cursor's lastrowid: without RETURNING, SQLite does not buffer an answer for each
        # statement (one for each alert of an absence listener's step).
        insert = statement.removesuffix(" RETURNING id")
        return [cast(int, connection.execute(insert, parameters).lastrowid) for parameters in rows]

    @contextmanager
    def _lazy_rows(
        self, connection: sqlite3.Connection, statement: str, parameters: Sequence[Any]
    ) -> Iterator[Iterable[Sequence[Any]]]:
        # A cursor steps through the rows as it is iterated.
        yield connection.execute(statement, parameters)

    def _apply_outcomes(
        self, connection: sqlite3.Connection, outcomes: Sequence[dict[str, Any]], now: float
    ) -> set[int]:
        # One UPDATE an outcome: each tells by its row count whether it applied.
        return {
            outcome["id"]
            for outcome in outcomes
            if connection.execute(SAVE_OUTCOME_SQL, (*_outcome_fields(outcome), now)).rowcount
        }

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
