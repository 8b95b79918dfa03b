"""The PostgreSQL database (PgStore): the statements and transactions only PostgreSQL runs.

PgStore satisfies store_contract.StoreContract (read the promises there; only what differs is said here), with
the methods both databases share from sql_store.SqlStore, the same tables and columns (schema_pg.sql) and the
same errors. Connections come
from a psycopg pool, in autocommit mode: a statement on its own commits before it returns, and statements
that must commit together run in one transaction.

Several instances of the service may share one database, which is then the only thing they share:
- each registers in `instances`, renews a lease there (upkeep(), every second) until it stops, and holds a
  session advisory lock (its liveness lock) on a connection of its own. It is alive while both last: a
  killed process's connection closes and the server frees its lock at once; a partitioned or frozen one's
  lease passes CLAIM_TIMEOUT after its last renewal;
- the absence listener's due users and the due emails and webhook deliveries are claimed by one UPDATE of
  the rows found with FOR UPDATE SKIP LOCKED, setting claimed_by to the instance: another instance skips a
  row while its claimer is alive, so no row is handed to two live instances, and a dead instance's claims
  are free as soon as it is not alive;
- an outcome of the listener still applies only if its user is unchanged (StoreContract.save_check_outcomes),
  so an alert is decided once even if a claim was taken over;
- monitoring restarts (StoreContract.restart_monitoring) when an instance starts while no other one is alive, or
  when its wall clock jumps while no other holds its liveness lock; one joining running instances changes no
  deadline;
- an instance sends, and records a result for, only the emails and deliveries still claimed by it.
Times are the callers' (each instance's own clock): the store never reads a clock.
"""

import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool

from database import display_name, hide_password
from migrations import SCHEMA_VERSION, postgresql_steps
from records import StoreError, StoreOpenError, StoreUnavailableError, UnknownUserError
from rules import SUCCESS
from rules_sql import RulesSql
from sql_store import (
    POSTGRESQL,
    USER_AND_PARENT,
    SqlStore,
    Statements,
    outcome_assignments,
    recent_pings_parameters,
    refuse_nul,
)
from store import _BATCH_ROLLED_BACK, BUSY_TIMEOUT_MS, DATABASE_FULL, HEALTH_TIMEOUT_MS

SCHEMA_PATH = Path(__file__).with_name("schema_pg.sql")
# How a database of an older schema version becomes the next (migrations.STEPS, in PostgreSQL's SQL): version ->
# the SQL that makes it version + 1, run in one transaction at start. PostgreSQL databases are upgraded from
# version 8 on (the first release with PostgreSQL); older ones are refused.
PG_MIGRATIONS = postgresql_steps()
# The pool would log each failed reconnection, several lines a second while the server is down: the loops that
# need the database already log each refusal once per step, on one line.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
# How long an instance's lease lasts after its last renewal (upkeep(), every second): a dead or cut-off
# instance's claims are taken over this long after it last renewed. Long enough that a busy instance
# (a slow SMTP server, a long step) keeps its claims; the failover bound of docs/database.md.
CLAIM_TIMEOUT = 15.0
# Connections: enough for the pings' thread, the web workers and every scheduler loop at once.
POOL_SIZE = 10
CONNECT_TIMEOUT = 5
# How long a statement may wait for a connection of the pool, or for a row lock (as SQLite's busy timeout).
WAIT_TIMEOUT = BUSY_TIMEOUT_MS / 1000
HEALTH_TIMEOUT = HEALTH_TIMEOUT_MS / 1000
# Set by the store on every connection, so that the server releases what a dead or cut-off instance holds:
# a transaction left open (its locks) ends after 5 s idle (the store's transactions never wait for anything but
# the database: a cut-off instance holding the write lock stops the others' writes that long at most), no
# statement runs longer than 60 s, a lock is waited for at most WAIT_TIMEOUT, TCP keepalives (both ways) find a
# vanished peer within about 25 s, and data left unacknowledged that long ends the connection (tcp_user_timeout,
# both ways: keepalives are not sent while data waits). synchronous_commit is on whatever the server's or the
# role's default: a commit (a ping's answer) means the row is on the server's disk.
TCP_USER_TIMEOUT_MS = 25_000
SERVER_SETTINGS = {
    "idle_in_transaction_session_timeout": "5s",
    "statement_timeout": "60s",
    "lock_timeout": f"{int(WAIT_TIMEOUT * 1000)}ms",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": f"{TCP_USER_TIMEOUT_MS}",
    "synchronous_commit": "on",
}
CONNECTION_SETTINGS: dict[str, Any] = {
    "autocommit": True,
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    "application_name": "ping-listener",
    "options": " ".join(f"-c {name}={value}" for name, value in SERVER_SETTINGS.items()),
}
# store.HEALTH_WRITE_SQL without the room (schema_pg.sql says why).
PG_HEALTH_WRITE_SQL = (
    "INSERT INTO health (id, checked_at) VALUES (1, %s) ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at"
)
# pg_advisory_xact_lock keys: creating the schema, and an instance's start (is it alone?), one at a time.
SCHEMA_LOCK = 7_170_001
START_LOCK = 7_170_002
# The first key of each instance's liveness lock (pg_advisory_lock(LIVENESS_LOCK, instance id)).
LIVENESS_LOCK = 7_170_003
# Taken first by every transaction that may wait for several users rows (a batch of pings, the listener's
# outcomes, a start, a reload, a restart of monitoring), so that no two of them, in one instance or in several,
# ever wait for each other's rows in a cycle (a deadlock, which PostgreSQL breaks by failing one of them after
# a second). The users' writes are serialised as SQLite's write lock serialises them. Other statements lock one
# users row, or skip the rows others have locked (SKIP LOCKED), and never wait while holding another. As every
# signal is recorded under it, pings commit in the order of their ids, as newest_ping_id() promises.
WRITE_LOCK = 7_170_004
WRITE_LOCK_SQL = f"SELECT pg_advisory_xact_lock({WRITE_LOCK})"
# The ids of the instances whose liveness lock is held in this database, and of those alive at %(now)s (their
# lease running too).
LOCKED_INSTANCES_SQL = (
    f"SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid = {LIVENESS_LOCK}"
    " AND objsubid = 2 AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
LIVE_INSTANCES_SQL = f"SELECT id FROM instances WHERE lease_until >= %(now)s AND id IN ({LOCKED_INSTANCES_SQL})"
# This instance's row with its lease, put back if another instance's start forgot it meanwhile.
RENEW_LEASE_SQL = (
    "INSERT INTO instances (id, host, pid, started_at, lease_until) OVERRIDING SYSTEM VALUE"
    " VALUES (%(me)s, %(host)s, %(pid)s, %(now)s, %(lease)s)"
    " ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until"
)


# rules.py's lateness rules in PostgreSQL's SQL (rules_sql.py), as store.py has them in SQLite's.
_RULES = RulesSql(null_ignoring=True)
_CONDITION_AT = _RULES.condition_at("%(now)s")


def _claiming(table: str, due: str, order: str) -> str:
    """The start of a statement claiming for the instance %(me)s, at %(now)s, up to %(limit)s rows of `table`
    that are `due`, in `order`, and not claimed by another live instance; it continues with SELECT ... FROM
    claimed (the rows claimed, as they are now). Rows locked by another transaction are left for later."""
    return (
        f"WITH live AS MATERIALIZED ({LIVE_INSTANCES_SQL}),"
        f" claimed AS (UPDATE {table} SET claimed_by = %(me)s WHERE id IN (SELECT id FROM {table} WHERE {due}"
        " AND (claimed_by IS NULL OR claimed_by = %(me)s OR claimed_by NOT IN (SELECT id FROM live))"
        f" ORDER BY {order} LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING {table}.*)"
    )


# The listener's due users, claimed for this instance, each with its parent as it is now (store.DUE_USERS_SQL).
DUE_USERS_SQL = (
    _claiming("users", "due_at < %(now)s", "due_at")
    + f" SELECT {USER_AND_PARENT} FROM claimed AS child LEFT JOIN users AS parent ON parent.id = child.parent_id"
    " ORDER BY child.due_at, child.id"
)
DUE_EMAILS_SQL = (
    _claiming("outbox", "status = 'queued' AND next_attempt_at <= %(now)s", "next_attempt_at, id")
    + " SELECT claimed.id, claimed.recipient, claimed.subject, claimed.body, claimed.message_id, claimed.queued_at,"
    " claimed.attempts, users.username, alerts.kind, digests.id, digests.message_id, digests.created_at,"
    " digests.emails"
    " FROM claimed JOIN alerts ON alerts.id = claimed.alert_id JOIN users ON users.id = alerts.user_id"
    " LEFT JOIN digests ON digests.id = claimed.digest_id ORDER BY claimed.next_attempt_at, claimed.id"
)
DUE_WEBHOOKS_SQL = (
    _claiming("webhook_outbox", "status = 'queued' AND next_attempt_at <= %(now)s", "next_attempt_at, id")
    + " SELECT claimed.id, claimed.webhook, claimed.attempts, claimed.event_id, alerts.kind, users.username,"
    " alerts.at, alerts.last_ping, claimed.title, claimed.text, claimed.logs_url, alerts.went_down_at"
    " FROM claimed JOIN alerts ON alerts.id = claimed.alert_id JOIN users ON users.id = alerts.user_id"
    " ORDER BY claimed.next_attempt_at, claimed.id"
)
# recent_pings reads each user's pings on its own, along pings_by_user_time: PostgreSQL orders a join's rows
# only by its outer table's index, so a join over a range of users (as store.RECENT_PINGS_SQL) would sort each
# user's remaining pings whole for every page.
RECENT_USERS_SQL = "SELECT id FROM users WHERE configured AND id BETWEEN %(first)s AND %(last)s ORDER BY id"
RECENT_USER_PINGS_SQL = (
    "SELECT at, id FROM pings WHERE user_id = %(user)s AND at >= %(after_at)s AND id <= %(upto)s"
    " AND (at > %(after_at)s OR id > %(after_id)s) ORDER BY at, id LIMIT %(limit)s"
)
USER_COUNTS_SQL = f"SELECT username, {_CONDITION_AT}, last_ping, pings_total, alerts_total FROM users WHERE configured"
# Retention (store.OLD_PINGS_SQL and the deletes after it), each batch one statement.
DELETE_OLD_PINGS_SQL = (
    "DELETE FROM pings WHERE id IN (SELECT pings.id FROM users JOIN pings ON pings.user_id = users.id"
    " AND pings.at < %s AND pings.id IS DISTINCT FROM users.fail_signal LIMIT %s FOR UPDATE OF pings SKIP LOCKED)"
)

# A signal in one statement (store.RECORD_SIGNAL_SQL and its trigger): the user's row is locked, the ping
# inserted with the duration of the run it closes, the user's children restarted if it was a down parent
# coming back, and the user's state and deadline moved (store._SIGNAL_EFFECTS, rules.py). Every part of
# one statement reads the rows as they were before it, as SQLite's trigger and UPDATE do; a user is never
# its own child, so no row is written twice. Its result is how many signals were recorded (0: no such
# configured user).
_SIGNAL_EFFECTS = _RULES.signal_effects("signal")
# What the signal counts as for its user (rules.counts_as): a success that closed a run too fast is a fail.
_KIND = _RULES.counts_as("signal")
RECORD_SIGNAL_SQL = (
    "WITH target AS (SELECT id, run_started FROM users WHERE username = %(username)s AND configured FOR UPDATE),"
    " signal AS (INSERT INTO pings (user_id, at, kind, exit_code, body, duration)"
    " SELECT id, %(at)s, %(kind)s, %(exit_code)s, %(body)s, CASE WHEN %(kind)s IN ('success', 'fail')"
    " AND run_started IS NOT NULL THEN GREATEST(%(at)s - run_started, 0) END FROM target"
    " RETURNING id, user_id, at, kind, duration),"
    f" children AS (UPDATE users SET silence_from = {_RULES.parent_return('signal')}, suppressed_kind = NULL,"
    f" due_at = {_RULES.due_at(silence_from=_RULES.parent_return('signal'))} FROM signal"
    " WHERE users.parent_id = signal.user_id AND signal.kind = 'success'"
    f" AND (SELECT {_RULES.counts_as('signal', 'parent.')} = 'success' AND {_RULES.down('signal.at', 'parent.')}"
    f" FROM users AS parent WHERE parent.id = signal.user_id)),"
    " moved AS (UPDATE users SET "
    + ", ".join(f"{column} = {expression}" for column, expression in _SIGNAL_EFFECTS.items())
    + ", last_duration = coalesce(signal.duration, last_duration),"
    f" suppressed_kind = CASE {_KIND} WHEN 'success' THEN NULL ELSE suppressed_kind END,"
    f" fail_signal = CASE {_KIND} WHEN 'success' THEN NULL WHEN 'fail' THEN signal.id ELSE fail_signal END,"
    f" last_signal = signal.id, due_at = {_RULES.signal_due_at(_SIGNAL_EFFECTS)}, pings_total = pings_total + 1"
    " FROM signal WHERE users.id = signal.user_id AND signal.kind <> 'log')"
    " SELECT count(*) FROM signal"
)
# The listener's outcomes, one array per column (index n: the n-th outcome), in one statement: an outcome applies
# only if its user is unchanged since it was read (StoreContract.save_check_outcomes) and no other instance has
# claimed it since; applying it ends this instance's claim. Returns the ids of the users it applied to.
_OUTCOME_COLUMNS = {
    "id": "bigint",
    "due_at": "float8",
    "last_signal": "bigint",
    "next_due_at": "float8",
    "alerting": "boolean",
    "kind": "text",
    "changes_outage": "boolean",
    "down_since": "float8",
    "ends_outage": "boolean",
    "suppressed_kind": "text",
    "run_after": "float8",
    "next_run": "float8",
    "maintenance_until": "float8",
    "maintenance_at": "float8",
    "flap_window_start": "float8",
    "flap_count": "integer",
    "last_outage_at": "float8",
    "flapping_since": "float8",
}
SAVE_OUTCOMES_SQL = POSTGRESQL.sql(
    f"UPDATE users SET {outcome_assignments('o.{}')} FROM unnest("
    + ", ".join(f":{column}::{kind}[]" for column, kind in _OUTCOME_COLUMNS.items())
    + f") AS o({', '.join(_OUTCOME_COLUMNS)})"
    " WHERE users.id = o.id AND users.due_at IS NOT DISTINCT FROM o.due_at"
    " AND users.last_signal IS NOT DISTINCT FROM o.last_signal"
    " AND (users.claimed_by IS NULL OR users.claimed_by = :me)"
    " RETURNING users.id"
)


class PgStore(SqlStore):
    """Ping Listener's database on a PostgreSQL server, given by its URL; safe to use from any number of
    threads, and from several instances of the service at once (see the module's docstring)."""

    # A restart's requeue skips rows another instance is claiming or sending now: it deals with them.
    _sql = Statements.build(
        POSTGRESQL,
        USER_COUNTS_SQL,
        _RULES,
        "UPDATE {queue} SET next_attempt_at = %(now)s WHERE id IN (SELECT id FROM {queue}"
        " WHERE status = 'queued' AND next_attempt_at > %(now)s FOR UPDATE SKIP LOCKED)",
        (DUE_USERS_SQL, DUE_EMAILS_SQL, DUE_WEBHOOKS_SQL),
    )

    def __init__(self, url: str) -> None:
        """Connect to the database at `url` (postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME), creating its
        tables if it has none, and register this instance; raise StoreOpenError (naming the database without
        its password) if it cannot be used."""
        self.url = url
        # What messages call the database: its URL without the password.
        self.name = display_name(url)
        self.upgraded_from: int | None = None
        # Whether this instance's start found no other live instance (sync_users): it then restarted monitoring.
        self.started_alone = True
        self._local = threading.local()
        # The connection holding this instance's liveness lock, for as long as the instance lives.
        self._liveness: psycopg.Connection[Any] | None = None
        try:
            self._liveness = psycopg.connect(url, **CONNECTION_SETTINGS)
            self._prepare_schema(self._liveness)
            self.instance_id: int = self._liveness.execute(
                "INSERT INTO instances (host, pid, started_at, lease_until) VALUES (%s, %s, 0, 0) RETURNING id",
                (socket.gethostname(), os.getpid()),
            ).fetchone()[0]  # type: ignore[index]
            self._liveness.execute("SELECT pg_advisory_lock(%s, %s)", (LIVENESS_LOCK, self.instance_id))
        except (psycopg.Error, StoreOpenError) as error:
            if self._liveness is not None:
                self._liveness.close()
            if isinstance(error, StoreOpenError):
                raise
            raise StoreOpenError(f"{self.name}: cannot use this database: {self._tell(error)}") from None
        self._pool = ConnectionPool(
            url,
            kwargs=CONNECTION_SETTINGS,
            min_size=1,
            max_size=POOL_SIZE,
            timeout=WAIT_TIMEOUT,
            name="ping-listener",
            # Each connection is checked (one empty round trip) as it is handed out, and replaced if the server
            # dropped it: after a restart or a failover of the server, no ping is refused for a dead connection.
            check=ConnectionPool.check_connection,
            open=True,
        )

    def close(self) -> None:
        """Leave the deployment (this instance's claims are free at once) and close every connection.

        If the database does not answer, the server frees the liveness lock once it notices the connection
        is gone, and the lease runs out by itself.
        """
        try:
            # Briefly: a shutdown must end within seconds even if the database does not answer.
            with self._faults(), self._pool.connection(timeout=HEALTH_TIMEOUT) as connection:
                connection.execute("DELETE FROM instances WHERE id = %s", (self.instance_id,))
        except StoreError:
            pass  # nothing to release that the lock and the lease do not release by themselves
        if self._liveness is not None:
            self._liveness.close()
        self._pool.close(timeout=HEALTH_TIMEOUT)

    def upkeep(self, now: float) -> None:
        """Renew this instance's lease until `now` + CLAIM_TIMEOUT, and take its liveness lock again if its
        connection was lost (the scheduler calls this every second); mark its run seen every RUN_MARK_SECONDS.

        All go through the connection that holds the liveness lock, never the pool: pings holding every
        pooled connection cannot delay the renewal. While either was lost, other instances took this
        instance for dead and could claim its rows. If another instance's start then forgot it, it
        registers again under the same id.
        """
        parameters = self._lease_parameters(now)
        with self._faults():
            if self._liveness is not None and not self._liveness.closed:
                try:
                    self._liveness.execute(RENEW_LEASE_SQL, parameters)
                    if self._run_mark_due(now):
                        self._mark_run(self._liveness, now)
                    return
                except psycopg.Error:
                    # The lock is held as long as the connection lives: keep it unless it is broken.
                    if not self._liveness.broken:
                        raise
                    self._liveness.close()
            self._liveness = self._locked_liveness(parameters)

    def _locked_liveness(self, parameters: dict[str, Any]) -> psycopg.Connection[Any]:
        """A new connection holding this instance's liveness lock, the lease renewed on it first; closed
        whenever the lock was not obtained, so that the next upkeep tries again on a new one."""
        connection = psycopg.connect(self.url, **CONNECTION_SETTINGS)
        try:
            connection.execute(RENEW_LEASE_SQL, parameters)
            # The server may not have noticed yet that the old connection is gone: try again next time.
            row = connection.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LIVENESS_LOCK, self.instance_id)
            ).fetchone()
            if row != (True,):
                raise StoreUnavailableError("storage unavailable: this instance's liveness lock is still held")
        except BaseException:
            connection.close()
            raise
        return connection

    def _lease_parameters(self, now: float) -> dict[str, Any]:
        return {
            "me": self.instance_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "now": now,
            "lease": now + CLAIM_TIMEOUT,
        }

    def record_ping(
        self,
        username: str,
        now: float,
        kind: str = SUCCESS,
        exit_code: int | None = None,
        body: str | None = None,
    ) -> None:
        """StoreContract.record_ping: committed before returning, or with the batch inside ping_batch() on this
        thread. A ping outside a batch is a batch of one (it takes the write lock as a batch does)."""
        refuse_nul(username)
        batch = getattr(self._local, "batch", None)
        if batch is None:
            with self.ping_batch():
                self.record_ping(username, now, kind, exit_code, body)
            return
        parameters = {
            "username": username,
            "at": now,
            "kind": kind,
            "exit_code": exit_code,
            "body": POSTGRESQL.text(body),
        }
        with self._faults():
            if batch.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                # A statement of the batch failed, so it will be rolled back: recording this ping alone
                # would commit a ping whose answer the batch withholds.
                raise StoreUnavailableError(_BATCH_ROLLED_BACK)
            recorded = batch.execute(RECORD_SIGNAL_SQL, parameters).fetchone()[0]
        if not recorded:
            raise UnknownUserError(f"unknown user {username}")

    @contextmanager
    def ping_batch(self) -> Iterator[None]:
        """StoreContract.ping_batch: this thread's record_ping() calls inside the block share one transaction,
        committed when the block ends; StoreUnavailableError and none recorded if it cannot commit. It holds
        the write lock (WRITE_LOCK_SQL) from its first ping to its commit."""
        with self._faults(), self._pool.connection() as connection:
            # One round trip (several statements without parameters go as one simple query).
            connection.execute(f"BEGIN; {WRITE_LOCK_SQL}")
            self._local.batch = connection
            try:
                yield
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            finally:
                self._local.batch = None
            if connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                connection.execute("ROLLBACK")
                raise StoreUnavailableError(_BATCH_ROLLED_BACK)
            connection.execute("COMMIT")

    def recent_pings(
        self, start: float, upto_id: int, user_ids: tuple[int, int], after: tuple[int, float, int] | None, limit: int
    ) -> list[tuple[int, float, int]]:
        """StoreContract.recent_pings."""
        parameters = recent_pings_parameters(start, upto_id, user_ids, after, limit)
        rows: list[tuple[int, float, int]] = []
        with self._connection() as connection:
            for (user_id,) in connection.execute(RECENT_USERS_SQL, parameters).fetchall():
                if user_id != parameters["first"]:  # a user after the one `after` is in: from `start`
                    parameters.update(after_at=start, after_id=0)
                parameters.update(user=user_id, limit=limit - len(rows))
                rows += [
                    (user_id, at, ping_id) for at, ping_id in connection.execute(RECENT_USER_PINGS_SQL, parameters)
                ]
                if len(rows) == limit:
                    break
        return rows

    def delete_pings_before(self, cutoff: float, limit: int) -> int:
        """StoreContract.delete_pings_before, in one statement (a failed user's fail signal is kept)."""
        with self._connection() as connection:
            return connection.execute(DELETE_OLD_PINGS_SQL, (cutoff, limit)).rowcount

    def use_durability(self, durability: str) -> None:
        """StoreContract.use_durability: nothing to change here. Every connection commits with synchronous_commit on
        (SERVER_SETTINGS), so a commit is on the server's disk before it returns, whatever `durability` says."""

    def check_writable(self, now: float) -> None:
        """StoreContract.check_writable: the health row set to `now` under the write lock (WRITE_LOCK_SQL), committed
        with synchronous_commit on, within HEALTH_TIMEOUT (a standby or a read-only database refuses it)."""
        timeout = f"{int(HEALTH_TIMEOUT * 1000)}ms"
        try:
            with self._faults(), self._pool.connection(timeout=HEALTH_TIMEOUT) as connection, connection.transaction():
                connection.execute(f"SET LOCAL statement_timeout = '{timeout}'; SET LOCAL lock_timeout = '{timeout}'")
                connection.execute(WRITE_LOCK_SQL)
                connection.execute(PG_HEALTH_WRITE_SQL, (now,))
        except StoreUnavailableError as error:
            if isinstance(error.__cause__, psycopg.errors.DiskFull):
                raise StoreUnavailableError(DATABASE_FULL) from error.__cause__
            raise

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._faults(), self._pool.connection() as connection:
            yield connection

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection[Any]]:
        # Inside this thread's batch of pings, its connection: what the batch wrote is seen.
        batch = getattr(self._local, "batch", None)
        if batch is not None:
            with self._faults():
                yield batch
            return
        with self._connection() as connection:
            yield connection

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        batch = getattr(self._local, "batch", None)
        if batch is not None:
            # A write asked for while this thread's batch of pings is open (a check a signal creates, or a pause
            # it ends) joins the batch through a savepoint: another connection would wait for the rows the batch
            # holds, and the batch for it.
            with self._faults(), batch.transaction():
                yield batch
            return
        with self._connection() as connection, connection.transaction():
            yield connection

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction holding the write lock (WRITE_LOCK_SQL)."""
        with self._transaction() as connection:
            connection.execute(WRITE_LOCK_SQL)
            yield connection

    @contextmanager
    def _starting(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction holding the start lock (one instance's start at a time), then the write lock."""
        with self._transaction() as connection:
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (START_LOCK,))
            connection.execute(WRITE_LOCK_SQL)
            yield connection

    def _join(self, connection: psycopg.Connection[Any], now: float) -> bool:
        """Start this instance's lease and forget the instances whose process is gone; return whether no other
        instance is alive (by its lease and its liveness lock)."""
        parameters = self._lease_parameters(now)
        connection.execute(f"DELETE FROM instances WHERE id NOT IN ({LOCKED_INSTANCES_SQL})")
        others = connection.execute(
            f"SELECT count(*) FROM ({LIVE_INSTANCES_SQL}) AS live WHERE id <> %(me)s", parameters
        ).fetchone()
        connection.execute(RENEW_LEASE_SQL, parameters)
        connection.execute("UPDATE instances SET started_at = %(now)s WHERE id = %(me)s", parameters)
        return others == (0,)

    def _alone(self, connection: psycopg.Connection[Any]) -> bool:
        """Whether no other instance holds its liveness lock (after a clock jump). Not by their leases, which are in
        the clock that just jumped: a jump forward would make every other instance look dead. If others run, their
        clocks stand, and monitoring at this instance's `now` would alert every device (a step back on another
        instance) or silence them all (a jump forward): nothing changes, and this instance's clock is as wrong as
        a skewed one (see docs/database.md)."""
        others = connection.execute(
            f"SELECT count(*) FROM ({LOCKED_INSTANCES_SQL}) AS locked WHERE objid <> %s", (self.instance_id,)
        ).fetchone()
        return others == (0,)

    def _returned_ids(self, connection: psycopg.Connection[Any], statement: str, rows: Sequence[Any]) -> list[int]:
        # All sent at once (psycopg pipelines executemany), each statement's rows read after.
        if not rows:
            return []
        ids: list[int] = []
        with connection.cursor() as cursor:
            cursor.executemany(statement, rows, returning=True)
            while True:
                ids += [row_id for (row_id,) in cursor.fetchall()]
                if not cursor.nextset():
                    return ids

    @contextmanager
    def _lazy_rows(
        self, connection: psycopg.Connection[Any], statement: str, parameters: Sequence[Any]
    ) -> Iterator[Iterable[Sequence[Any]]]:
        # A server-side cursor (which lives in a transaction), fetched a few rows at a time.
        with connection.transaction(), connection.cursor(name="lazy_rows") as cursor:
            cursor.itersize = 64
            cursor.execute(statement, parameters)
            yield cursor

    def _apply_outcomes(
        self, connection: psycopg.Connection[Any], outcomes: Sequence[dict[str, Any]], now: float
    ) -> set[int]:
        # One statement for all (SAVE_OUTCOMES_SQL, one array per column); the claims of the users it did not
        # apply to end too.
        columns = {column: [outcome[column] for outcome in outcomes] for column in _OUTCOME_COLUMNS}
        parameters = {**columns, "now": now, "me": self.instance_id}
        applied = {user_id for (user_id,) in connection.execute(SAVE_OUTCOMES_SQL, parameters).fetchall()}
        dropped = [outcome["id"] for outcome in outcomes if outcome["id"] not in applied]
        if dropped:
            connection.execute(
                "UPDATE users SET claimed_by = NULL WHERE id = ANY(%s) AND claimed_by = %s",
                (dropped, self.instance_id),
            )
        return applied

    @contextmanager
    def _faults(self) -> Iterator[None]:
        """Turn the server's or the network's refusals (connection lost, server shutting down, disk full,
        timeouts, a read-only database) into StoreUnavailableError; other errors are bugs and stay what
        they are."""
        try:
            yield
        except (
            psycopg.OperationalError,
            psycopg.errors.ReadOnlySqlTransaction,
            psycopg.errors.IdleInTransactionSessionTimeout,
        ) as error:
            raise StoreUnavailableError(f"storage unavailable: {self._tell(error)}") from error

    def _tell(self, error: BaseException) -> str:
        """`error`'s message on one line, without the URL's password."""
        return hide_password(re.sub(r"\s+", " ", str(error)).strip(), self.url)

    def _prepare_schema(self, connection: psycopg.Connection[Any]) -> None:
        with connection.transaction():
            # Two instances starting on a new database: the second waits, then finds the tables.
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            if connection.execute("SELECT to_regclass('schema_version')").fetchone() == (None,):
                tables = connection.execute(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
                ).fetchone()
                if tables != (0,):
                    raise StoreOpenError(f"{self.name}: not a Ping Listener database (it has other tables)")
                connection.execute(SCHEMA_PATH.read_text())
                connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
                return
            row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0] if row else None
            steps = range(version or 0, SCHEMA_VERSION)
            if version is not None and steps and all(step in PG_MIGRATIONS for step in steps):
                for step in steps:
                    connection.execute(PG_MIGRATIONS[step])
                connection.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
                self.upgraded_from = version
                return
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"{self.name}: database schema version {version} is newer than this Ping Listener"
                f" understands ({SCHEMA_VERSION}); upgrade Ping Listener or use another --db"
            )
        raise StoreOpenError(
            f"{self.name}: database schema version {version} is older than this Ping Listener's"
            f" ({SCHEMA_VERSION}), and PostgreSQL databases are upgraded only from version {min(PG_MIGRATIONS)} on;"
            " use a new database"
        )
