"""What the SQLite and PostgreSQL stores share: the statements both run, the rows they read turned into records,
and SqlStore, the base class whose methods are written once over the few primitives each backend provides.

A statement is written once here in SQLite's syntax (`?` and `:name` placeholders); Dialect.sql gives its text for
the other database. What truly differs (connections, claims, leases, upkeep, health checks, statements whose
text is not the same) stays in store.py and pg_store.py.
"""

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass
from typing import Any, ClassVar

from config import MaintenanceWindow, UserConfig
from records import (
    AlertHistory,
    Digest,
    EmailEvent,
    QueuedEmail,
    QueuedWebhook,
    Signal,
    StoreError,
    UnknownUserError,
    UserCounts,
    UsersChange,
    UserState,
    WebhookEvent,
    WebhookHistory,
)

# Sorts text by code point on PostgreSQL (whatever the database's collation), as SQLite always does.
BY_CODE_POINT = ' COLLATE "C"'
# Locks the rows read until the transaction ends on PostgreSQL; a SQLite write transaction holds the whole database.
LOCK_ROWS = " FOR UPDATE"
# The same, leaving the rows another transaction holds for later (another instance is deleting them).
SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one database spells what this module writes in SQLite's syntax."""

    # psycopg's placeholders (%s, %(name)s) instead of SQLite's (?, :name).
    pyformat: bool
    # A LIMIT that takes every row.
    no_limit: int | None

    def sql(self, text: str) -> str:
        """`text` (SQLite's syntax, BY_CODE_POINT where text is sorted, LOCK_ROWS or SKIP_LOCKED where rows read
        are written next) as this database takes it."""
        if not self.pyformat:
            return text.replace(BY_CODE_POINT, "").replace(SKIP_LOCKED, "").replace(LOCK_ROWS, "")
        text = text.replace("%", "%%")
        return re.sub(r"(?<![:\w]):([a-z_]+)", r"%(\1)s", text).replace("?", "%s")


SQLITE = Dialect(pyformat=False, no_limit=-1)
POSTGRESQL = Dialect(pyformat=True, no_limit=None)

# A user as UserState holds it, in its field order.
USER_COLUMNS = (
    "id, username, monitor, max_sleep, email_frequency, monitored_since, last_ping, last_alert, due_at,"
    " max_runtime, notify_recovery, run_started, last_duration, failed_at, fail_signal, last_alert_kind,"
    " down_since, back_at, last_signal, silence_from, snoozed_until, muted_outage, suppressed_kind, schedule, tz,"
    " grace, fail_threshold, min_runtime, min_interval, start_grace, fail_count, last_success, too_often_at,"
    " too_often_gap, maintenance_at, maintenance_until, flap_threshold, flap_quiet, flap_window_start, flap_count,"
    " last_outage_at, flapping_since"
)


# A user and, in the same row, the user it depends on (NULLs if none): read together, so that the
# listener decides about a child from its parent's state at the same moment.
USER_AND_PARENT = ", ".join(
    [f"child.{column}" for column in USER_COLUMNS.split(", ")] + [f"parent.{c}" for c in USER_COLUMNS.split(", ")]
)


WITH_PARENT = "users AS child LEFT JOIN users AS parent ON parent.id = child.parent_id"


_USER_FIELDS = len(USER_COLUMNS.split(", "))


def user_and_parent(row: Sequence[Any]) -> UserState:
    """The UserState of a row of USER_AND_PARENT: the user's columns, then its parent's (NULLs if none)."""
    user = UserState(*row[:_USER_FIELDS])
    return user if row[_USER_FIELDS] is None else dataclasses.replace(user, parent=UserState(*row[_USER_FIELDS:]))


def queued_email(row: Sequence[Any]) -> QueuedEmail:
    """The QueuedEmail of a row of DUE_EMAILS_SQL."""
    email_id, recipient, subject, body, message_id, queued_at, attempts, username, kind = row[:9]
    digest = None if row[9] is None else Digest(*row[9:])
    return QueuedEmail(email_id, recipient, subject, body, message_id, queued_at, attempts, username, kind, digest)


def alert_histories(user: UserState, rows: Iterable[Sequence[Any]]) -> list[AlertHistory]:
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


def bounded_encodings(
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


def counts_of_users(rows: Iterable[Sequence[Any]], scheduled: Mapping[str, UserState]) -> list[UserCounts]:
    """USER_COUNTS_SQL's rows as UserCounts, each with its UserState in `scheduled` (username -> state) if any."""
    return [
        UserCounts(name, at, last_ping, pings, alerts, scheduled.get(name))
        for name, at, last_ping, pings, alerts in rows
    ]


def queued_webhook(row: Sequence[Any]) -> QueuedWebhook:
    """The QueuedWebhook of a row of DUE_WEBHOOKS_SQL."""
    return QueuedWebhook(row[0], row[1], row[2], WebhookEvent(*row[3:]))


def webhook_history(row: Sequence[Any]) -> WebhookHistory:
    """The WebhookHistory of a row of RECENT_WEBHOOKS_SQL."""
    return WebhookHistory(row[0], row[1], f"webhook:{row[2]}", *row[3:])


# The settings a users row mirrors (depends_on aside, kept as parent_id), as columns and as user_settings
# gives them.
SETTINGS_COLUMNS = (
    "monitor",
    "max_sleep",
    "email_frequency",
    "max_runtime",
    "notify_recovery",
    "schedule",
    "tz",
    "grace",
    "fail_threshold",
    "min_runtime",
    "min_interval",
    "start_grace",
    "maintenance",
    "flap_threshold",
    "flap_quiet",
)


def maintenance_text(windows: Sequence[MaintenanceWindow]) -> str | None:
    """A user's maintenance windows as its row mirrors them (JSON, so that a reload sees a change); None if none."""
    return json.dumps([[w.schedule, w.duration, w.tz] for w in windows]) if windows else None


def user_settings(user: UserConfig) -> tuple[Any, ...]:
    """`user`'s settings as its row holds them, in SETTINGS_COLUMNS order (a scheduled user's max_sleep is 0),
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
        user.fail_threshold,
        user.min_runtime,
        user.min_interval,
        user.start_grace,
        maintenance_text(user.maintenance),
        user.flap_threshold,
        user.flap_quiet,
        user.depends_on,
    )


# The statements both databases run as written here.
USER_SQL = f"SELECT {USER_COLUMNS} FROM users WHERE username = ?"
USER_ID_SQL = "SELECT id FROM users WHERE username = ?"
PINGS_BETWEEN_SQL = "SELECT at FROM pings WHERE user_id = ? AND at >= ? AND at < ? ORDER BY at, id LIMIT ?"
SIGNALS_BETWEEN_SQL = (
    "SELECT at, kind, exit_code, duration, body FROM pings WHERE user_id = ? AND at >= ? AND at < ?"
    " ORDER BY at, id LIMIT ?"
)
SIGNAL_SQL = "SELECT at, kind, exit_code, duration, body FROM pings WHERE id = ?"
NEWEST_PING_SQL = "SELECT coalesce(max(id), 0) FROM pings"
# The testing page's queries, run about once a second while it is open. Every configured user is
# read in username order through the UNIQUE index (no sort); the newest emails are read backwards
# along the outbox's primary key and joined through primary keys, so LIMIT bounds the work.
CONFIGURED_USERS_SQL = (
    f"SELECT {USER_AND_PARENT} FROM {WITH_PARENT} WHERE child.configured ORDER BY child.username{BY_CODE_POINT}"
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
# The overview's queries. Its page refreshes every few seconds: each costs the number of configured users
# (a scan of users, per-user seeks of alerts_by_user_time) or the number of new pings (along the pings'
# primary key), never the size of the history.
OVERVIEW_USERS_SQL = f"SELECT {USER_COLUMNS}, parent_id FROM users WHERE configured ORDER BY username{BY_CODE_POINT}"
PINGS_BEFORE_SQL = (
    "SELECT id, (SELECT max(at) FROM pings WHERE pings.user_id = users.id AND pings.at < :start) FROM users"
    " WHERE configured AND id BETWEEN :first AND :last"
)
NEW_PINGS_SQL = "SELECT id, user_id, at FROM pings WHERE id > ? ORDER BY id"
RECENT_ALERTS_SQL = (
    "SELECT users.id, alerts.at FROM users JOIN alerts ON alerts.user_id = users.id"
    " WHERE users.configured AND alerts.at >= ? ORDER BY users.id, alerts.at, alerts.id"
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
# A metrics scrape: one row per configured user (its counters are kept by the signal's statement and by
# save_check_outcomes), and the outbox counted along its two partial indexes without reading a row.
SCHEDULED_USERS_SQL = f"SELECT {USER_COLUMNS} FROM users WHERE configured AND schedule IS NOT NULL"
QUEUED_COUNT_SQL = "SELECT count(*) FROM outbox WHERE status = 'queued'"
FINISHED_COUNTS_SQL = "SELECT status, count(*) FROM outbox WHERE status != 'queued' GROUP BY status"

# What an outcome of the absence listener writes of maintenance (CheckOutcome.maintenance_until and maintenance_at, as
# {until} and {next_at}, the user's columns read with the prefix {row}): the window that began snoozes the user as
# SNOOZE_SQL does (rules.in_maintenance), and the next window's start is kept while the user has windows.
MAINTENANCE_OUTCOME = (
    "snoozed_until = coalesce({until}, {row}snoozed_until),"
    " muted_outage = CASE WHEN {until} IS NOT NULL AND {row}back_at IS NULL"
    " THEN coalesce({row}down_since, {row}muted_outage) ELSE {row}muted_outage END,"
    " maintenance_until = coalesce({until}, {row}maintenance_until),"
    " maintenance_at = CASE WHEN {row}maintenance IS NOT NULL THEN coalesce({next_at}, {row}maintenance_at) END"
)
# What an outcome writes of a new outage counted for flapping (CheckOutcome.flap: {start}, {count}, {outage},
# {since}; rules.count_outage), if it counted one ({outage} not NULL).
FLAP_OUTCOME = (
    "flap_window_start = CASE WHEN {outage} IS NULL THEN {row}flap_window_start ELSE {start} END,"
    " flap_count = CASE WHEN {outage} IS NULL THEN {row}flap_count ELSE {count} END,"
    " last_outage_at = coalesce({outage}, {row}last_outage_at),"
    " flapping_since = CASE WHEN {outage} IS NULL THEN {row}flapping_since ELSE {since} END"
)

# Configuring users (SqlStore._apply_users). DUE_AT stands for the database's rules.due_at in SQL.
_COLUMNS = ", ".join(SETTINGS_COLUMNS)
CONFIGURED_SETTINGS_SQL = (
    "SELECT child.username, "
    + ", ".join(f"child.{column}" for column in SETTINGS_COLUMNS)
    + ", parent.username FROM users AS child LEFT JOIN users AS parent ON parent.id = child.parent_id"
    " WHERE child.configured"
)
REMOVE_USER_SQL = "UPDATE users SET configured = FALSE, due_at = NULL WHERE username = ?"
ADD_USER_SQL = (
    f"INSERT INTO users (username, configured, {_COLUMNS}, monitored_since)"
    f" VALUES (:name, TRUE, {', '.join(f':{column}' for column in SETTINGS_COLUMNS)}, :now)"
    " ON CONFLICT (username) DO UPDATE SET configured = TRUE, "
    + ", ".join(f"{column} = excluded.{column}" for column in SETTINGS_COLUMNS)
    + ", monitored_since = :now, maintenance_at = CASE WHEN CAST(:maintenance AS TEXT) IS NOT NULL THEN :now END"
)
# Monitoring turned on counts from now, as for a user just added: its silence while off is not a fault.
CHANGE_USER_SQL = (
    "UPDATE users SET monitored_since = CASE WHEN :monitor AND NOT monitor THEN :now ELSE monitored_since END, "
    + ", ".join(f"{column} = :{column}" for column in SETTINGS_COLUMNS)
    + ", maintenance_at = CASE WHEN CAST(:maintenance AS TEXT) IS NOT NULL THEN :now END WHERE username = :name"
)
SET_PARENT_SQL = (
    "UPDATE users SET parent_id = (SELECT id FROM users AS parent WHERE parent.username = ?) WHERE username = ?"
)
USER_DUE_AT_SQL = "UPDATE users SET due_at = DUE_AT WHERE username = ?"
# Snoozing a user (SqlStore.snooze): its snooze mutes an alerted outage it begins during; its deadline moves.
SNOOZED_USER_SQL = f"SELECT id, snoozed_until FROM users WHERE username = ? AND configured{LOCK_ROWS}"
SNOOZE_SQL = (
    "UPDATE users SET snoozed_until = :until, muted_outage = CASE WHEN :until > :now AND back_at IS NULL"
    " THEN coalesce(down_since, muted_outage) ELSE muted_outage END WHERE id = :id"
)
USER_ID_DUE_AT_SQL = "UPDATE users SET due_at = DUE_AT WHERE id = ?"
# Retention: finished emails and webhook deliveries along outbox_finished and webhook_outbox_finished; digests
# once none of their emails is left, oldest first, along digests' primary key (ids grow with time), each checked
# through outbox_by_digest; alerts along alerts_by_time, once no email or webhook delivery refers to them. In
# this order: the alerts last, once the emails and deliveries that referred to them are gone.
_DELETE_FINISHED_SQL = (
    "DELETE FROM {queue} WHERE id IN (SELECT id FROM {queue} WHERE status != 'queued' AND status IN ('sent', 'failed')"
    f" AND finished_at < ? LIMIT ?{SKIP_LOCKED})"
)
DELETE_OLD_EMAILS_SQL = _DELETE_FINISHED_SQL.format(queue="outbox")
DELETE_OLD_WEBHOOKS_SQL = _DELETE_FINISHED_SQL.format(queue="webhook_outbox")
DELETE_OLD_DIGESTS_SQL = (
    "DELETE FROM digests WHERE id IN (SELECT id FROM digests WHERE created_at < ?"
    f" AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.digest_id = digests.id) ORDER BY id LIMIT ?{SKIP_LOCKED})"
)
DELETE_OLD_ALERTS_SQL = (
    "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE at < ?"
    " AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.alert_id = alerts.id)"
    f" AND NOT EXISTS (SELECT 1 FROM webhook_outbox WHERE webhook_outbox.alert_id = alerts.id) LIMIT ?{SKIP_LOCKED})"
)
# Restarting monitoring (SqlStore._restart_monitoring). Walks the user's signals backwards from `now` to the
# latest contact: no scan of its whole history.
RESTART_LAST_PING_SQL = (
    "UPDATE users SET last_ping = (SELECT at FROM pings WHERE pings.user_id = users.id AND at <= :now"
    " AND kind IN ('success', 'fail') ORDER BY at DESC LIMIT 1) WHERE last_ping > :now"
)
RESTART_LAST_ALERT_SQL = "UPDATE users SET last_alert = :now WHERE last_alert > :now"
RESTART_FUTURE_SQL = (
    "UPDATE users SET "
    + ", ".join(
        f"{column} = CASE WHEN {column} > :now THEN :now ELSE {column} END"
        for column in ("run_started", "failed_at", "back_at", "last_success", "too_often_at")
    )
    + " WHERE run_started > :now OR failed_at > :now OR back_at > :now OR last_success > :now OR too_often_at > :now"
)
# A user with maintenance windows is looked at once after a start, when the listener stores its next window.
RESTART_MONITORED_SINCE_SQL = (
    "UPDATE users SET monitored_since = :now,"
    " maintenance_at = CASE WHEN maintenance IS NOT NULL THEN :now END WHERE configured"
)
RESTART_DUE_AT_SQL = "UPDATE users SET due_at = DUE_AT WHERE configured"


@dataclass(frozen=True, slots=True)
class Statements:
    """The statements SqlStore's methods run, as one database takes them."""

    dialect: Dialect
    user: str
    user_id: str
    pings_between: str
    signals_between: str
    signal: str
    newest_ping: str
    configured_users: str
    recent_emails: str
    recent_webhooks: str
    overview_users: str
    pings_before: str
    new_pings: str
    recent_alerts: str
    ping_before: str
    ping_from: str
    day_alerts: str
    user_counts: str
    scheduled_users: str
    queued_count: str
    finished_counts: str
    configured_settings: str
    remove_user: str
    add_user: str
    change_user: str
    set_parent: str
    user_due_at: str
    restart: tuple[str, ...]
    snoozed_user: str
    delete_history: tuple[str, ...]
    snooze: str
    user_id_due_at: str

    @classmethod
    def build(cls, dialect: Dialect, user_counts: str, due_at: str, requeue: str) -> "Statements":
        """The shared statements in `dialect`, with the database's own: `user_counts` (rules.condition_at in its
        SQL), `due_at` (rules.due_at in its SQL) and `requeue` (a restart's: each queued row of the table
        {queue} due at once)."""

        def s(text: str) -> str:
            return dialect.sql(text).replace("DUE_AT", due_at)

        return cls(
            dialect=dialect,
            user=s(USER_SQL),
            user_id=s(USER_ID_SQL),
            pings_between=s(PINGS_BETWEEN_SQL),
            signals_between=s(SIGNALS_BETWEEN_SQL),
            signal=s(SIGNAL_SQL),
            newest_ping=s(NEWEST_PING_SQL),
            configured_users=s(CONFIGURED_USERS_SQL),
            recent_emails=s(RECENT_EMAILS_SQL),
            recent_webhooks=s(RECENT_WEBHOOKS_SQL),
            overview_users=s(OVERVIEW_USERS_SQL),
            pings_before=s(PINGS_BEFORE_SQL),
            new_pings=s(NEW_PINGS_SQL),
            recent_alerts=s(RECENT_ALERTS_SQL),
            ping_before=s(PING_BEFORE_SQL),
            ping_from=s(PING_FROM_SQL),
            day_alerts=s(DAY_ALERTS_SQL),
            user_counts=user_counts,
            scheduled_users=s(SCHEDULED_USERS_SQL),
            queued_count=s(QUEUED_COUNT_SQL),
            finished_counts=s(FINISHED_COUNTS_SQL),
            configured_settings=s(CONFIGURED_SETTINGS_SQL),
            remove_user=s(REMOVE_USER_SQL),
            add_user=s(ADD_USER_SQL),
            change_user=s(CHANGE_USER_SQL),
            set_parent=s(SET_PARENT_SQL),
            user_due_at=s(USER_DUE_AT_SQL),
            snoozed_user=s(SNOOZED_USER_SQL),
            delete_history=tuple(
                map(s, (DELETE_OLD_EMAILS_SQL, DELETE_OLD_WEBHOOKS_SQL, DELETE_OLD_DIGESTS_SQL, DELETE_OLD_ALERTS_SQL))
            ),
            snooze=s(SNOOZE_SQL),
            user_id_due_at=s(USER_ID_DUE_AT_SQL),
            # Two statements for the dates: within one UPDATE, due_at would be computed from the old
            # monitored_since.
            restart=tuple(map(s, (RESTART_LAST_PING_SQL, RESTART_LAST_ALERT_SQL, RESTART_FUTURE_SQL)))
            + (s(RESTART_MONITORED_SINCE_SQL), s(RESTART_DUE_AT_SQL))
            + tuple(requeue.format(queue=queue) for queue in ("outbox", "webhook_outbox")),
        )


def refuse_nul(username: str) -> None:
    """Raise UnknownUserError for a name holding the character NUL: no configured username holds a control
    character, and PostgreSQL could not even look one up."""
    if "\x00" in username:
        raise UnknownUserError(f"unknown user {username}")


class SqlStore:
    """The store methods whose logic is the same on both databases, over what each backend provides: `_sql`
    (its Statements), `_read()` (a connection for reading, its faults as StoreUnavailableError), `_write()`
    (a transaction holding the database's write lock), `_transaction()` (one that need not: it locks the rows it
    writes) and `_finish_emails`. Promises: store_contract.StoreContract."""

    _sql: ClassVar[Statements]

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _finish_emails(self, email_ids: Iterable[int], status: str, now: float, error: str | None) -> None:
        raise NotImplementedError

    def reload_users(self, users: Mapping[str, UserConfig], now: float) -> UsersChange:
        """StoreContract.reload_users."""
        with self._write() as connection:
            return self._apply_users(connection, users, now)

    def restart_monitoring(self, now: float) -> None:
        """StoreContract.restart_monitoring."""
        with self._write() as connection:
            self._restart_monitoring(connection, now)

    def snooze(self, username: str, until: float, now: float) -> float:
        """StoreContract.snooze."""
        refuse_nul(username)
        with self._transaction() as connection:
            row = connection.execute(self._sql.snoozed_user, (username,)).fetchone()
            if row is None:
                raise UnknownUserError(f"unknown user {username}")
            user_id, snoozed_until = row
            if until <= now:
                if snoozed_until is None or snoozed_until <= now:
                    return now
                until = now
            connection.execute(self._sql.snooze, {"until": until, "now": now, "id": user_id})
            connection.execute(self._sql.user_id_due_at, (user_id,))
        return until

    def delete_history_before(self, cutoff: float, limit: int) -> int:
        """StoreContract.delete_history_before."""
        with self._transaction() as connection:
            return sum(
                connection.execute(statement, (cutoff, limit)).rowcount for statement in self._sql.delete_history
            )

    def pings_between(self, username: str, start: float, end: float, limit: int | None = None) -> list[float]:
        """StoreContract.pings_between."""
        with self._read() as connection:
            user_id = self._user_id(connection, username)
            limit = self._sql.dialect.no_limit if limit is None else limit
            rows = connection.execute(self._sql.pings_between, (user_id, start, end, limit)).fetchall()
        return [at for (at,) in rows]

    def user(self, username: str) -> UserState:
        """StoreContract.user."""
        refuse_nul(username)
        with self._read() as connection:
            row = connection.execute(self._sql.user, (username,)).fetchone()
        if row is None:
            raise UnknownUserError(f"unknown user {username}")
        return UserState(*row)

    def pings_around(self, user_id: int, start: float, end: float) -> tuple[float | None, float | None]:
        """StoreContract.pings_around."""
        with self._read() as connection:
            before = connection.execute(self._sql.ping_before, (user_id, start)).fetchone()[0]
            after = connection.execute(self._sql.ping_from, (user_id, end)).fetchone()[0]
        return before, after

    def alerts_between(self, user: UserState, start: float, end: float, limit: int) -> list[AlertHistory]:
        """StoreContract.alerts_between."""
        with self._read() as connection:
            rows = connection.execute(self._sql.day_alerts, (user.id, start, end, limit)).fetchall()
        return alert_histories(user, rows)

    def newest_ping_id(self) -> int:
        """StoreContract.newest_ping_id."""
        with self._read() as connection:
            return int(connection.execute(self._sql.newest_ping).fetchone()[0])

    def last_pings_before(self, start: float, user_ids: tuple[int, int]) -> dict[int, float | None]:
        """StoreContract.last_pings_before."""
        parameters = {"start": start, "first": user_ids[0], "last": user_ids[1]}
        with self._read() as connection:
            return dict(connection.execute(self._sql.pings_before, parameters).fetchall())

    def configured_user_rows(self) -> list[tuple[Any, ...]]:
        """StoreContract.configured_user_rows."""
        with self._read() as connection:
            return list(connection.execute(self._sql.overview_users).fetchall())

    def pings_after_id(self, after_id: int) -> list[tuple[int, int, float]]:
        """StoreContract.pings_after_id."""
        with self._read() as connection:
            return list(connection.execute(self._sql.new_pings, (after_id,)).fetchall())

    def recent_alerts(self, start: float) -> list[tuple[int, float]]:
        """StoreContract.recent_alerts."""
        with self._read() as connection:
            return list(connection.execute(self._sql.recent_alerts, (start,)).fetchall())

    def signal(self, signal_id: int) -> Signal:
        """StoreContract.signal."""
        with self._read() as connection:
            row = connection.execute(self._sql.signal, (signal_id,)).fetchone()
        if row is None:
            raise StoreError(f"no signal {signal_id}")
        return Signal(*row)

    def configured_users(self) -> list[UserState]:
        """StoreContract.configured_users."""
        with self._read() as connection:
            rows = connection.execute(self._sql.configured_users).fetchall()
        return [user_and_parent(row) for row in rows]

    def recent_emails(self, limit: int) -> list[EmailEvent]:
        """StoreContract.recent_emails."""
        with self._read() as connection:
            rows = connection.execute(self._sql.recent_emails, (limit,)).fetchall()
        return [EmailEvent(*row) for row in rows]

    def mark_sent(self, email_ids: Iterable[int], now: float) -> None:
        """StoreContract.mark_sent."""
        self._finish_emails(email_ids, "sent", now, None)

    def mark_failed(self, email_ids: Iterable[int], now: float, error: str | None) -> None:
        """StoreContract.mark_failed."""
        self._finish_emails(email_ids, "failed", now, error)

    def recent_webhooks(self, limit: int) -> list[WebhookHistory]:
        """StoreContract.recent_webhooks."""
        with self._read() as connection:
            rows = connection.execute(self._sql.recent_webhooks, (limit,)).fetchall()
        return [webhook_history(row) for row in rows]

    def user_counts(self, now: float) -> list[UserCounts]:
        """StoreContract.user_counts."""
        with self._read() as connection:
            rows = connection.execute(self._sql.user_counts, {"now": now}).fetchall()
            scheduled = {row[1]: UserState(*row) for row in connection.execute(self._sql.scheduled_users)}
        return counts_of_users(rows, scheduled)

    def outbox_counts(self) -> dict[str, int]:
        """StoreContract.outbox_counts."""
        with self._read() as connection:
            [(queued,)] = connection.execute(self._sql.queued_count).fetchall()
            finished = connection.execute(self._sql.finished_counts).fetchall()
        return {"queued": queued, "sent": 0, "failed": 0} | dict(finished)

    def _user_id(self, connection: Any, username: str) -> int:
        """The id of the user ever configured as `username`; UnknownUserError if none."""
        refuse_nul(username)
        row = connection.execute(self._sql.user_id, (username,)).fetchone()
        if row is None:
            raise UnknownUserError(f"unknown user {username}")
        return int(row[0])

    def _apply_users(self, connection: Any, users: Mapping[str, UserConfig], now: float) -> UsersChange:
        """Make the configured users exactly `users` in the transaction of `connection`, touching only those
        added, removed or changed (see StoreContract.reload_users)."""
        configured = {
            name: (bool(row[0]), *row[1:4], bool(row[4]), *row[5:])
            for name, *row in connection.execute(self._sql.configured_settings).fetchall()
        }
        wanted = {name: user_settings(user) for name, user in users.items()}
        removed = [name for name in configured if name not in wanted]
        added = [name for name in wanted if name not in configured]
        changed = [name for name in wanted if name in configured and configured[name] != wanted[name]]
        with closing(connection.cursor()) as cursor:
            cursor.executemany(self._sql.remove_user, [(name,) for name in removed])
            cursor.executemany(self._sql.add_user, [_user_parameters(name, wanted[name], now) for name in added])
            cursor.executemany(self._sql.change_user, [_user_parameters(name, wanted[name], now) for name in changed])
            # Once every user is in: a parent may be added with its children.
            cursor.executemany(self._sql.set_parent, [(users[name].depends_on, name) for name in added + changed])
            cursor.executemany(self._sql.user_due_at, [(name,) for name in added + changed])
        return UsersChange(tuple(added), tuple(removed), tuple(changed))

    def _restart_monitoring(self, connection: Any, now: float) -> None:
        """StoreContract.restart_monitoring in the transaction of `connection`."""
        for statement in self._sql.restart:
            connection.execute(statement, {"now": now})


def _user_parameters(name: str, settings: tuple[Any, ...], now: float) -> dict[str, Any]:
    """The parameters of ADD_USER_SQL and CHANGE_USER_SQL for the user `name` with `settings` (user_settings)."""
    return {**dict(zip(SETTINGS_COLUMNS, settings, strict=False)), "name": name, "now": now}
