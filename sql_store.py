"""What the SQLite and PostgreSQL stores share: the statements both run, the rows they read turned into records,
and SqlStore, the base class whose methods are written once over the few primitives each backend provides.

A statement is written once here in SQLite's syntax (`?` and `:name` placeholders); Dialect.sql gives its text for
the other database. What truly differs (connections, claims, leases, upkeep, health checks, statements whose
text is not the same) stays in store.py and pg_store.py.
"""

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

from config import MaintenanceWindow, UserConfig
from records import (
    LISTED_FIELDS,
    PAUSED_UNTIL,
    AlertHistory,
    CheckExistsError,
    CheckId,
    CheckLimitError,
    CheckOutcome,
    DeclaredCheckError,
    Digest,
    EmailEvent,
    NewDigest,
    NewEmail,
    NewWebhook,
    Outage,
    ProgramCheck,
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
from rules import BACK, TOO_OFTEN
from rules_sql import RulesSql

# How often the store's upkeep marks the service's run as seen: its downtime is known to within this much.
RUN_MARK_SECONDS = 60.0
# Sorts text by code point on PostgreSQL (whatever the database's collation), as SQLite always does.
BY_CODE_POINT = ' COLLATE "C"'
# Locks the rows read until the transaction ends on PostgreSQL; a SQLite write transaction holds the whole database.
LOCK_ROWS = " FOR UPDATE"
# The same, leaving the rows another transaction holds for later (another instance is deleting them).
SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
# On PostgreSQL, where several instances may share the database, a row of the outbox or the webhook outbox is
# claimed by the instance sending it (claimed_by): only a row claimed by this instance (:me) is changed, and
# recording its result ends the claim. SQLite has no claims: one instance owns the database.
MINE = " AND claimed_by = :me"
RELEASE = ", claimed_by = NULL"


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one database spells what this module writes in SQLite's syntax."""

    # psycopg's placeholders (%s, %(name)s) instead of SQLite's (?, :name).
    pyformat: bool
    # A LIMIT that takes every row.
    no_limit: int | None

    def sql(self, text: str) -> str:
        """`text` (SQLite's syntax, BY_CODE_POINT where text is sorted, LOCK_ROWS or SKIP_LOCKED where rows read
        are written next, MINE and RELEASE where a claimed row is changed) as this database takes it."""
        if not self.pyformat:
            for postgresql_only in (BY_CODE_POINT, SKIP_LOCKED, LOCK_ROWS, MINE, RELEASE):
                text = text.replace(postgresql_only, "")
            return text
        text = text.replace("%", "%%")
        return re.sub(r"(?<![:\w]):([a-z_]+)", r"%(\1)s", text).replace("?", "%s")

    def text(self, value: str | None) -> str | None:
        """`value` as this database can keep it: PostgreSQL's text cannot hold the character NUL, which becomes
        U+FFFD (as bytes that are not UTF-8 do when a body is decoded). Bodies and error messages come from
        outside."""
        if value is None or not self.pyformat:
            return value
        return value.replace("\x00", "\ufffd")


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
    # Each built once: a frozen dataclass's construction (and replace()'s, a second one) costs a call for each field.
    parent = None if row[_USER_FIELDS] is None else UserState(*row[_USER_FIELDS:])
    return UserState(*row[:_USER_FIELDS], parent)  # type: ignore[call-arg]  # (mypy cannot count a slice)


def queued_email(row: Sequence[Any]) -> QueuedEmail:
    """The QueuedEmail of a row of DUE_EMAILS_SQL."""
    email_id, recipient, subject, body, message_id, queued_at, attempts, username, kind = row[:9]
    digest = None if row[9] is None else Digest(*row[9:])
    return QueuedEmail(email_id, recipient, subject, body, message_id, queued_at, attempts, username, kind, digest)


def alert_histories(
    user: UserState, rows: Iterable[Sequence[Any]], delivery_rows: Iterable[Sequence[Any]] = ()
) -> list[AlertHistory]:
    """DAY_ALERTS_SQL's rows for `user` (an alert with each of its emails) as AlertHistory, in their order, each
    with its webhook deliveries among DAY_DELIVERIES_SQL's `delivery_rows`."""
    alerts: dict[int, tuple[float, float | None, str, list[EmailEvent]]] = {}
    for alert_id, at, last_ping, kind, email_id, recipient, status, attempts, queued_at, finished_at in rows:
        emails = alerts.setdefault(alert_id, (at, last_ping, kind, []))[3]
        if email_id is not None:
            emails.append(
                EmailEvent(email_id, user.username, recipient, status, attempts, last_ping, queued_at, finished_at)
            )
    deliveries: dict[int, list[WebhookHistory]] = {}
    for alert_id, delivery_id, webhook, status, attempts, last_ping, queued_at, finished_at, kind in delivery_rows:
        history = WebhookHistory(
            delivery_id, user.username, f"webhook:{webhook}", status, attempts, last_ping, queued_at, finished_at, kind
        )
        deliveries.setdefault(alert_id, []).append(history)
    return [
        AlertHistory(at, last_ping, tuple(emails), tuple(deliveries.get(alert_id, ())), kind)
        for alert_id, (at, last_ping, kind, emails) in alerts.items()
    ]


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


def counts_of_users(rows: Sequence[Sequence[Any]], scheduled: Mapping[str, UserState]) -> UserCounts:
    """USER_COUNTS_SQL's rows as the columns of UserCounts, with `scheduled` (username -> state)."""
    usernames, condition_at, last_ping, pings, alerts = zip(*rows, strict=True) if rows else ((),) * 5
    return UserCounts(usernames, condition_at, last_ping, pings, alerts, scheduled)


def queued_webhook(row: Sequence[Any]) -> QueuedWebhook:
    """The QueuedWebhook of a row of DUE_WEBHOOKS_SQL."""
    return QueuedWebhook(row[0], row[1], row[2], WebhookEvent(*row[3:]))


def outcome_assignments(value: str) -> str:
    """The SET clause of an UPDATE of users applying an outcome_row whose field F is `value`.format(F) (a
    parameter, or a column of a table of outcomes), and :now; the outcome's claim ends."""
    v = value.format
    return (
        f"due_at = {v('next_due_at')}, last_alert = CASE WHEN {v('alerting')} THEN :now ELSE users.last_alert END,"
        f" last_alert_kind = CASE WHEN {v('alerting')} THEN {v('kind')} ELSE users.last_alert_kind END,"
        f" down_since = CASE WHEN {v('changes_outage')} THEN {v('down_since')} ELSE users.down_since END,"
        f" back_at = CASE WHEN {v('ends_outage')} THEN NULL ELSE users.back_at END,"
        f" suppressed_kind = coalesce({v('suppressed_kind')}, users.suppressed_kind),"
        f" next_run = CASE WHEN {v('run_after')} IS NULL THEN users.next_run ELSE {v('next_run')} END,"
        f" next_run_after = coalesce({v('run_after')}, users.next_run_after),"
        # A TOO_OFTEN notice is sent once: its event is forgotten once alerted.
        f" too_often_at = CASE WHEN {v('alerting')} AND {v('kind')} = '{TOO_OFTEN}' THEN NULL"
        " ELSE users.too_often_at END,"
        # A maintenance window that began snoozes the user as /snooze does (rules.in_maintenance).
        f" {MAINTENANCE_OUTCOME.format(until=v('maintenance_until'), next_at=v('maintenance_at'), row='users.')},"
        f" {FLAP_OUTCOME.format(**dict(zip(FLAP_FIELDS, map(v, FLAP_COLUMNS), strict=True)), row='users.')},"
        f" alerts_total = users.alerts_total + CASE WHEN {v('alerting')} THEN 1 ELSE 0 END{RELEASE}"
    )


def outcome_row(outcome: CheckOutcome) -> dict[str, Any]:
    """What SqlStore._apply_outcomes needs of `outcome`: its user as read (id, due_at, last_signal), what its
    row becomes, and whether it alerts."""
    alerting = bool(outcome.emails or outcome.webhooks)
    run_after, next_run = outcome.next_run or (None, None)
    return {
        "id": outcome.user.id,
        "due_at": outcome.user.due_at,
        "last_signal": outcome.user.last_signal,
        "next_due_at": outcome.next_due_at,
        "alerting": alerting,
        "kind": outcome.kind,
        "changes_outage": alerting or outcome.ends_outage,
        "down_since": outcome.down_since,
        "ends_outage": outcome.ends_outage,
        "suppressed_kind": outcome.suppressed[0] if outcome.suppressed else None,
        "run_after": run_after,
        "next_run": next_run,
        "maintenance_until": outcome.maintenance_until,
        "maintenance_at": outcome.maintenance_at,
        **dict(zip(FLAP_COLUMNS, outcome.flap or (None, None, None, None), strict=True)),
    }


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


def new_uuids(count: int) -> Iterator[str]:
    """`count` random UUIDs (version 4, as uuid.uuid4() makes them), lowercase and hyphenated, from one read of
    os.urandom: a first start gives one to each of 100 000 checks, and uuid.UUID costs microseconds each."""
    digits = os.urandom(16 * count).hex()
    for start in range(0, 32 * count, 32):
        hexa = digits[start : start + 32]
        # The version (4) and the variant (binary 10) overwrite 4 and 2 of the random bits, as RFC 4122 says.
        yield f"{hexa[:8]}-{hexa[8:12]}-4{hexa[13:16]}-{_VARIANT_DIGITS[hexa[16]]}{hexa[17:20]}-{hexa[20:]}"


# A random hex digit with its two high bits set to the RFC 4122 variant, 10.
_VARIANT_DIGITS = {f"{value:x}": f"{8 | value & 3:x}" for value in range(16)}


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
    "SELECT users.id, alerts.at, alerts.kind FROM users CROSS JOIN alerts"
    " WHERE alerts.user_id = users.id AND users.configured AND alerts.at >= ? ORDER BY users.id, alerts.at, alerts.id"
)
# One user's day for the overview's day view: the pings around it and its alerts with their emails.
PING_BEFORE_SQL = "SELECT max(at) FROM pings WHERE user_id = ? AND at < ?"
PING_FROM_SQL = "SELECT min(at) FROM pings WHERE user_id = ? AND at >= ?"
# A day's failures, the latest first: along pings_by_user_time, reading no body but theirs.
DAY_FAILURES_SQL = (
    "SELECT at, kind, exit_code, duration, body FROM pings WHERE user_id = ? AND at >= ? AND at < ? AND kind = 'fail'"
    " ORDER BY at DESC, id DESC LIMIT ?"
)
DAY_ALERTS_SQL = (
    "SELECT alerts.id, alerts.at, alerts.last_ping, alerts.kind, outbox.id, outbox.recipient, outbox.status,"
    " outbox.attempts, outbox.queued_at, outbox.finished_at"
    " FROM alerts LEFT JOIN outbox ON outbox.alert_id = alerts.id"
    " WHERE alerts.user_id = ? AND alerts.at >= ? AND alerts.at < ? ORDER BY alerts.at, alerts.id, outbox.id LIMIT ?"
)
# The webhook deliveries of the alerts of DAY_ALERTS_SQL (along alerts_by_user_time, then webhook_outbox_by_alert).
DAY_DELIVERIES_SQL = (
    "SELECT alerts.id, webhook_outbox.id, webhook_outbox.webhook, webhook_outbox.status, webhook_outbox.attempts,"
    " alerts.last_ping, webhook_outbox.queued_at, webhook_outbox.finished_at, alerts.kind"
    " FROM alerts JOIN webhook_outbox ON webhook_outbox.alert_id = alerts.id"
    " WHERE alerts.user_id = ? AND alerts.at >= ? AND alerts.at < ? ORDER BY alerts.at, alerts.id, webhook_outbox.id"
    " LIMIT ?"
)
# Status pages and badges (uptime.py). An outage is known by its alerts, each naming when it went down: those
# decided from `start` on (read along alerts_by_time), grouped, each with the first success after it (one seek of
# pings_by_user_time). So the cost grows with the outages, not with the pings. Each configured user's first ping
# (a seek each) says from when on its uptime is known.
OUTAGES_SQL = (
    "SELECT alerts.user_id, alerts.went_down_at,"
    " (SELECT min(pings.at) FROM pings WHERE pings.user_id = alerts.user_id AND pings.at > alerts.went_down_at"
    " AND pings.kind = 'success')"
    " FROM alerts WHERE alerts.at >= ? AND NOT alerts.suppressed AND alerts.went_down_at IS NOT NULL"
    # Grouped by time first: by user first, SQLite would rather scan alerts_by_user_time, all alerts ever.
    " GROUP BY alerts.went_down_at, alerts.user_id"
)
FIRST_PINGS_SQL = "SELECT id, (SELECT min(at) FROM pings WHERE pings.user_id = users.id) FROM users WHERE configured"
# The service's runs (service_runs): one begun at each start, marked seen every RUN_MARK_SECONDS; those seen from
# `start` on, and the last one before, whose end a gap may begin with.
START_RUN_SQL = "INSERT INTO service_runs (started_at, seen_at) VALUES (?, ?) RETURNING id"
MARK_RUN_SQL = "UPDATE service_runs SET seen_at = ? WHERE id = ? AND seen_at < ?"
SERVICE_RUNS_SQL = (
    "SELECT started_at, seen_at FROM service_runs WHERE seen_at >= :start"
    " UNION ALL SELECT started_at, seen_at FROM (SELECT started_at, seen_at FROM service_runs"
    " WHERE seen_at < :start ORDER BY seen_at DESC LIMIT 1) AS previous"
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
# CheckOutcome.flap's fields, as outcome_row names them.
FLAP_COLUMNS = ("flap_window_start", "flap_count", "last_outage_at", "flapping_since")
# FLAP_OUTCOME's names for them.
FLAP_FIELDS = ("start", "count", "outage", "since")
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
    " WHERE child.configured AND child.program IS NULL"
)
REMOVE_USER_SQL = "UPDATE users SET configured = FALSE, due_at = NULL WHERE username = ?"
# A user gets its UUID the first time it is configured, and keeps it: a row configured again keeps its own.
# Positional parameters (_new_user_row): binding them costs a fraction of named ones, for 100 000 rows at a first start.
ADD_USER_SQL = (
    f"INSERT INTO users (username, configured, {_COLUMNS}, monitored_since, uuid)"
    f" VALUES (?, TRUE, {', '.join('?' for _ in SETTINGS_COLUMNS)}, ?, ?)"
    " ON CONFLICT (username) DO UPDATE SET configured = TRUE, "
    + ", ".join(f"{column} = excluded.{column}" for column in SETTINGS_COLUMNS)
    + ", monitored_since = excluded.monitored_since, parent_id = NULL, program = NULL, created_by = NULL,"
    " maintenance_at = CASE WHEN excluded.maintenance IS NOT NULL THEN excluded.monitored_since END,"
    " uuid = coalesce(users.uuid, excluded.uuid)"
)
# Checks by program. The configured rows from before UUIDs get theirs here, and keep them.
MISSING_UUIDS_SQL = "SELECT username FROM users WHERE configured AND uuid IS NULL"
SET_UUID_SQL = "UPDATE users SET uuid = ? WHERE username = ? AND uuid IS NULL"
PROGRAM_USERS_SQL = "SELECT username FROM users WHERE configured AND program IS NOT NULL"
# One more than the greatest change counter, read along users_by_program_change.
_NEXT_CHANGE = "(SELECT coalesce(max(program_change), 0) + 1 FROM users WHERE program_change IS NOT NULL)"
PROGRAM_CHANGE_SQL = "SELECT coalesce(max(program_change), 0) FROM users WHERE program_change IS NOT NULL"
CHANGED_SQL = f"UPDATE users SET program_change = {_NEXT_CHANGE} WHERE username = ?"
CHECK_IDS_SQL = f"SELECT username, uuid, snoozed_until >= {PAUSED_UNTIL} FROM users WHERE configured"
PROGRAM_CHECKS_SQL = (
    "SELECT username, uuid, program, created_by FROM users WHERE configured AND program IS NOT NULL"
    f" ORDER BY username{BY_CODE_POINT}"
)
CHECK_ROW_SQL = f"SELECT configured, program FROM users WHERE username = ?{LOCK_ROWS}"
CREATED_BY_PINGS_SQL = "SELECT count(*) FROM users WHERE configured AND created_by = 'ping'"
SET_PROGRAM_SQL = (
    f"UPDATE users SET program = ?, created_by = coalesce(?, created_by), program_change = {_NEXT_CHANGE}"
    " WHERE username = ?"
)
DELETE_PROGRAM_SQL = (
    "UPDATE users SET configured = FALSE, due_at = NULL, program = NULL, created_by = NULL,"
    f" program_change = {_NEXT_CHANGE} WHERE username = ?"
)
UUID_SQL = "SELECT uuid FROM users WHERE username = ?"
# Signals counted (as metrics count them) for the management API's n_pings: of every configured user, or of one.
PINGS_TOTAL_SQL = "SELECT pings_total FROM users WHERE username = ? AND configured"
# The management API's listing: of each configured user only what its JSON shows, in username order through the
# UNIQUE index (no sort).
LISTED_CHECKS_SQL = (
    f"SELECT username, pings_total, {', '.join(LISTED_FIELDS)} FROM users WHERE configured"
    f" ORDER BY username{BY_CODE_POINT}"
)
# A user's alerts and recoveries with start <= at < end along alerts_by_user_time, for its flips.
ALERT_KINDS_SQL = (
    "SELECT at, kind, went_down_at FROM alerts WHERE user_id = ? AND at >= ? AND at < ? ORDER BY at, id LIMIT ?"
)
RECENT_SIGNALS_SQL = (
    "SELECT at, kind, exit_code, duration, body FROM pings WHERE user_id = ? ORDER BY at DESC, id DESC LIMIT ?"
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
# Before RESTART_DATES_SQL, whose due_at reads maintenance_at; only the rows it changes are written.
RESTART_MAINTENANCE_SQL = (
    "UPDATE users SET maintenance_at = CASE WHEN maintenance IS NOT NULL THEN :now END"
    " WHERE configured AND (maintenance IS NOT NULL OR maintenance_at IS NOT NULL)"
)
# RESTARTED_DUE_AT: the database's rules.due_at with :now for monitored_since (the new value, where the UPDATE
# reads the old one), so that one pass over the users restarts both.
RESTART_DATES_SQL = "UPDATE users SET monitored_since = :now, due_at = RESTARTED_DUE_AT WHERE configured"
# Saving the absence listener's outcomes (SqlStore.save_check_outcomes): each alert's row, then its emails and
# webhook deliveries, all queued at once.
INSERT_ALERT_SQL = (
    "INSERT INTO alerts (user_id, at, last_ping, kind, went_down_at, suppressed) VALUES (?, ?, ?, ?, ?, ?) RETURNING id"
)
INSERT_EMAIL_SQL = (
    "INSERT INTO outbox (alert_id, recipient, subject, body, message_id, queued_at, next_attempt_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
INSERT_WEBHOOK_SQL = (
    "INSERT INTO webhook_outbox (alert_id, webhook, event_id, title, text, logs_url, queued_at, next_attempt_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# Before sending (SqlStore.claim_emails, claim_webhooks): a row's next attempt, if it is still queued (and this
# instance's); the digest that carries emails.
PUSH_BACK_SQL = "UPDATE {queue} SET next_attempt_at = :at WHERE id = :id AND status = 'queued'" + MINE + " RETURNING id"
INSERT_DIGEST_SQL = (
    "INSERT INTO digests (recipient, subject, message_id, created_at, emails) VALUES (?, ?, ?, ?, ?) RETURNING id"
)
# A digest is recorded only if every email it carries is still queued (and this instance's).
DIGEST_EMAIL_SQL = "SELECT id FROM outbox WHERE id = :id AND status = 'queued'" + MINE + LOCK_ROWS
SET_DIGEST_SQL = "UPDATE outbox SET digest_id = ? WHERE id = ?"
# After sending (SqlStore.mark_sent, mark_failed, schedule_retry, finish_webhook, retry_webhook): only a row still
# queued (and this instance's) changes; its claim ends.
FINISH_SQL = (
    "UPDATE {queue} SET status = :status, attempts = attempts + 1, last_error = :error, finished_at = :now,"
    " next_attempt_at = NULL" + RELEASE + " WHERE id = :id AND status = 'queued'" + MINE
)
RETRY_SQL = (
    "UPDATE {queue} SET attempts = attempts + 1, last_error = :error, next_attempt_at = :at"
    + RELEASE
    + " WHERE id = :id AND status = 'queued'"
    + MINE
)


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
    day_deliveries: str
    day_failures: str
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
    outages: str
    first_pings: str
    start_run: str
    mark_run: str
    service_runs: str
    due_users: str
    due_emails: str
    due_webhooks: str
    insert_alert: str
    insert_email: str
    insert_webhook: str
    push_back_emails: str
    push_back_webhooks: str
    insert_digest: str
    digest_email: str
    set_digest: str
    finish_email: str
    finish_webhook: str
    retry_email: str
    retry_webhook: str
    missing_uuids: str
    set_uuid: str
    program_users: str
    program_change: str
    changed: str
    check_ids: str
    program_checks: str
    check_row: str
    created_by_pings: str
    set_program: str
    delete_program: str
    uuid: str
    recent_signals: str
    alert_kinds: str
    pings_total: str
    listed_checks: str

    @classmethod
    def build(
        cls, dialect: Dialect, user_counts: str, rules: RulesSql, requeue: str, due: tuple[str, str, str]
    ) -> "Statements":
        """The shared statements in `dialect`, with the database's own: `user_counts` (rules.condition_at in its
        SQL), `rules` (its rules' SQL), `requeue` (a restart's: each queued row of the table {queue} due at once)
        and `due`, the due users, emails and webhook deliveries (taking :me, :now and :limit)."""
        due_at = rules.due_at()
        restarted_due_at = rules.due_at(monitored_since=dialect.sql(":now"))

        def s(text: str) -> str:
            return dialect.sql(text).replace("RESTARTED_DUE_AT", restarted_due_at).replace("DUE_AT", due_at)

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
            day_deliveries=s(DAY_DELIVERIES_SQL),
            day_failures=s(DAY_FAILURES_SQL),
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
            outages=s(OUTAGES_SQL),
            first_pings=s(FIRST_PINGS_SQL),
            start_run=s(START_RUN_SQL),
            mark_run=s(MARK_RUN_SQL),
            service_runs=s(SERVICE_RUNS_SQL),
            due_users=due[0],
            due_emails=due[1],
            due_webhooks=due[2],
            insert_alert=s(INSERT_ALERT_SQL),
            insert_email=s(INSERT_EMAIL_SQL),
            insert_webhook=s(INSERT_WEBHOOK_SQL),
            push_back_emails=s(PUSH_BACK_SQL.format(queue="outbox")),
            push_back_webhooks=s(PUSH_BACK_SQL.format(queue="webhook_outbox")),
            insert_digest=s(INSERT_DIGEST_SQL),
            digest_email=s(DIGEST_EMAIL_SQL),
            set_digest=s(SET_DIGEST_SQL),
            finish_email=s(FINISH_SQL.format(queue="outbox")),
            finish_webhook=s(FINISH_SQL.format(queue="webhook_outbox")),
            retry_email=s(RETRY_SQL.format(queue="outbox")),
            retry_webhook=s(RETRY_SQL.format(queue="webhook_outbox")),
            missing_uuids=s(MISSING_UUIDS_SQL),
            set_uuid=s(SET_UUID_SQL),
            program_users=s(PROGRAM_USERS_SQL),
            program_change=s(PROGRAM_CHANGE_SQL),
            changed=s(CHANGED_SQL),
            check_ids=s(CHECK_IDS_SQL),
            program_checks=s(PROGRAM_CHECKS_SQL),
            check_row=s(CHECK_ROW_SQL),
            created_by_pings=s(CREATED_BY_PINGS_SQL),
            set_program=s(SET_PROGRAM_SQL),
            delete_program=s(DELETE_PROGRAM_SQL),
            uuid=s(UUID_SQL),
            recent_signals=s(RECENT_SIGNALS_SQL),
            alert_kinds=s(ALERT_KINDS_SQL),
            pings_total=s(PINGS_TOTAL_SQL),
            listed_checks=s(LISTED_CHECKS_SQL),
            restart=tuple(
                map(
                    s,
                    (
                        RESTART_LAST_PING_SQL,
                        RESTART_LAST_ALERT_SQL,
                        RESTART_FUTURE_SQL,
                        RESTART_MAINTENANCE_SQL,
                        RESTART_DATES_SQL,
                    ),
                )
            )
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
    writes), `_starting()` (the transaction of a start), `_join`, `_alone`, `_returned_ids`, `_lazy_rows` and
    `_apply_outcomes` (and `_inserted_ids`, where a backend has a cheaper way than `_returned_ids`). Promises:
    store_contract.StoreContract."""

    _sql: ClassVar[Statements]
    # This instance's row of service_runs once sync_users began it, and when it was last marked seen.
    _run_id: int | None = None
    _run_marked: float = 0.0
    # This instance's id in the database's instances (PostgreSQL, where the rows an instance sends are claimed
    # for it); None where one instance owns the database (SQLite).
    instance_id: int | None = None
    started_alone: bool

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _starting(self) -> AbstractContextManager[Any]:
        """The transaction of a start (sync_users) or of a restart after a clock jump: `_write()`'s, after any
        lock that keeps two instances' starts apart."""
        raise NotImplementedError

    def _join(self, connection: Any, now: float) -> bool:
        """Register this instance as started at `now` in the transaction of `connection` (`_starting()`'s); return
        whether no other instance is alive."""
        raise NotImplementedError

    def _alone(self, connection: Any) -> bool:
        """Whether no other instance runs on the database, in the transaction of `connection` (`_starting()`'s)."""
        raise NotImplementedError

    def _returned_ids(self, connection: Any, statement: str, rows: Sequence[Any]) -> list[int]:
        """Run `statement` (a SELECT of ids, or ending in RETURNING id) once with each of `rows` in turn; return the
        ids it returned, in that order: an INSERT's new rows, the rows an UPDATE changed, the rows found."""
        raise NotImplementedError

    def _inserted_ids(self, connection: Any, statement: str, rows: Sequence[Any]) -> list[int]:
        """Run `statement` (an INSERT of one row, VALUES (...) RETURNING id) once with each of `rows` in turn; return
        the new rows' ids, in that order."""
        return self._returned_ids(connection, statement, rows)

    def _lazy_rows(
        self, connection: Any, statement: str, parameters: Sequence[Any]
    ) -> AbstractContextManager[Iterable[Sequence[Any]]]:
        """The rows of `statement`, fetched a few at a time as they are iterated: a bound on what is read stops
        the reading, not only the answer."""
        raise NotImplementedError

    def _apply_outcomes(self, connection: Any, outcomes: Sequence[dict[str, Any]], now: float) -> set[int]:
        """Apply each of `outcomes` (outcome_row's) whose user is unchanged (see save_check_outcomes), in the
        transaction of `connection`; return the ids of the users it applied to."""
        raise NotImplementedError

    def sync_users(self, users: Mapping[str, UserConfig], now: float) -> None:
        """StoreContract.sync_users: here monitoring restarts only if no other instance is alive, so that an
        instance joining running ones changes no deadline; sets started_alone."""
        with self._starting() as connection:
            alone = self._join(connection, now)
            self._apply_users(connection, users, now, restarting=alone)
            if alone:
                self._restart_monitoring(connection, now)
            self._start_run(connection, now)
        self.started_alone = alone

    def restart_monitoring_after_clock_jump(self, now: float) -> bool:
        """StoreContract.restart_monitoring_after_clock_jump."""
        with self._starting() as connection:
            alone = self._alone(connection)
            if alone:
                self._restart_monitoring(connection, now)
        return alone

    def reload_users(self, users: Mapping[str, UserConfig], now: float) -> UsersChange:
        """StoreContract.reload_users."""
        with self._write() as connection:
            return self._apply_users(connection, users, now, restarting=False)

    def restart_monitoring(self, now: float) -> None:
        """StoreContract.restart_monitoring."""
        with self._write() as connection:
            self._restart_monitoring(connection, now)

    def snooze(self, username: str, until: float, now: float) -> float:
        """StoreContract.snooze."""
        refuse_nul(username)
        with self._transaction() as connection:
            return self._snooze(connection, username, until, now)

    def pause(self, username: str, paused: bool, now: float) -> None:
        """StoreContract.pause."""
        refuse_nul(username)
        with self._transaction() as connection:
            self._snooze(connection, username, PAUSED_UNTIL if paused else now, now)
            connection.execute(self._sql.changed, (username,))

    def program_change(self) -> int:
        """StoreContract.program_change."""
        with self._read() as connection:
            return int(connection.execute(self._sql.program_change).fetchone()[0])

    def check_ids(self) -> list[CheckId]:
        """StoreContract.check_ids."""
        with self._read() as connection:
            rows = connection.execute(self._sql.check_ids).fetchall()
        return [CheckId(name, check_uuid, bool(paused)) for name, check_uuid, paused in rows]

    def program_checks(self) -> list[ProgramCheck]:
        """StoreContract.program_checks."""
        with self._read() as connection:
            return [ProgramCheck(*row) for row in connection.execute(self._sql.program_checks).fetchall()]

    def create_check(
        self, username: str, user: UserConfig, program: str, created_by: str, limit: int | None, now: float
    ) -> str:
        """StoreContract.create_check."""
        refuse_nul(username)
        with self._transaction() as connection:
            row = connection.execute(self._sql.check_row, (username,)).fetchone()
            if row is not None and row[0]:
                raise CheckExistsError(f"a check named {username} exists already")
            if limit is not None and connection.execute(self._sql.created_by_pings).fetchone()[0] >= limit:
                raise CheckLimitError(f"auto_provision_limit reached: {limit} checks were created by signals")
            settings = user_settings(user)
            [new_uuid] = new_uuids(1)
            connection.execute(self._sql.add_user, _new_user_row(username, settings, now, new_uuid))
            connection.execute(self._sql.set_program, (program, created_by, username))
            connection.execute(self._sql.set_parent, (user.depends_on, username))
            connection.execute(self._sql.user_due_at, (username,))
            return str(connection.execute(self._sql.uuid, (username,)).fetchone()[0])

    def change_check(self, username: str, user: UserConfig, program: str, now: float) -> None:
        """StoreContract.change_check."""
        refuse_nul(username)
        with self._transaction() as connection:
            self._program_row(connection, username)
            connection.execute(self._sql.change_user, _user_parameters(username, user_settings(user), now))
            connection.execute(self._sql.set_program, (program, None, username))
            connection.execute(self._sql.set_parent, (user.depends_on, username))
            connection.execute(self._sql.user_due_at, (username,))

    def delete_check(self, username: str) -> None:
        """StoreContract.delete_check."""
        refuse_nul(username)
        with self._transaction() as connection:
            self._program_row(connection, username)
            connection.execute(self._sql.delete_program, (username,))

    def recent_signals(self, username: str, limit: int) -> list[Signal]:
        """StoreContract.recent_signals."""
        with self._read() as connection:
            user_id = self._user_id(connection, username)
            rows = connection.execute(self._sql.recent_signals, (user_id, limit)).fetchall()
        return [Signal(*row) for row in rows]

    def alert_kinds(self, username: str, start: float, end: float, limit: int) -> list[tuple[float, str, float | None]]:
        """StoreContract.alert_kinds."""
        with self._read() as connection:
            user_id = self._user_id(connection, username)
            return [tuple(row) for row in connection.execute(self._sql.alert_kinds, (user_id, start, end, limit))]

    def pings_total(self, username: str) -> int | None:
        """StoreContract.pings_total."""
        with self._read() as connection:
            row = connection.execute(self._sql.pings_total, (username,)).fetchone()
        return None if row is None else row[0]

    def _program_row(self, connection: Any, username: str) -> None:
        """Lock the configured check `username` for a change by program; UnknownUserError if there is none,
        DeclaredCheckError if settings.json declares it."""
        row = connection.execute(self._sql.check_row, (username,)).fetchone()
        if row is None or not row[0]:
            raise UnknownUserError(f"unknown check {username}")
        if row[1] is None:
            raise DeclaredCheckError(f"{username} is declared in the settings file: change it there")

    def _snooze(self, connection: Any, username: str, until: float, now: float) -> float:
        """snooze() in the transaction of `connection`."""
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
            deliveries = connection.execute(self._sql.day_deliveries, (user.id, start, end, limit)).fetchall()
        return alert_histories(user, rows, deliveries)

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

    def listed_check_rows(self) -> list[tuple[Any, ...]]:
        """StoreContract.listed_check_rows."""
        with self._read() as connection:
            return list(connection.execute(self._sql.listed_checks).fetchall())

    def pings_after_id(self, after_id: int) -> list[tuple[int, int, float]]:
        """StoreContract.pings_after_id."""
        with self._read() as connection:
            return list(connection.execute(self._sql.new_pings, (after_id,)).fetchall())

    def failures_between(self, user_id: int, start: float, end: float, limit: int) -> list[Signal]:
        """StoreContract.failures_between."""
        with self._read() as connection:
            rows = connection.execute(self._sql.day_failures, (user_id, start, end, limit)).fetchall()
        return [Signal(*row) for row in reversed(rows)]

    def recent_alerts(self, start: float) -> list[tuple[int, float, str]]:
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

    def outages_since(self, start: float) -> list[Outage]:
        """StoreContract.outages_since."""
        with self._read() as connection:
            rows = connection.execute(self._sql.outages, (start,)).fetchall()
        return sorted(Outage(*row) for row in rows)

    def first_pings(self) -> dict[int, float | None]:
        """StoreContract.first_pings."""
        with self._read() as connection:
            return dict(connection.execute(self._sql.first_pings).fetchall())

    def service_runs(self, start: float) -> list[tuple[float, float]]:
        """StoreContract.service_runs."""
        with self._read() as connection:
            return sorted(connection.execute(self._sql.service_runs, {"start": start}).fetchall())

    def _start_run(self, connection: Any, now: float) -> None:
        """Record that the service starts running at `now` (in sync_users' transaction)."""
        self._run_id = connection.execute(self._sql.start_run, (now, now)).fetchone()[0]
        self._run_marked = now

    def _run_mark_due(self, now: float) -> bool:
        """Whether the service's run is to be marked seen at `now`: RUN_MARK_SECONDS after it last was."""
        return self._run_id is not None and now >= self._run_marked + RUN_MARK_SECONDS

    def _mark_run(self, connection: Any, now: float) -> None:
        """Record that the service still runs at `now` (the store's upkeep, when _run_mark_due)."""
        # Marked before the write: one that fails (a full disk) is tried again a minute later, not every second.
        self._run_marked = now
        connection.execute(self._sql.mark_run, (now, self._run_id, now))

    def recent_emails(self, limit: int) -> list[EmailEvent]:
        """StoreContract.recent_emails."""
        with self._read() as connection:
            rows = connection.execute(self._sql.recent_emails, (limit,)).fetchall()
        return [EmailEvent(*row) for row in rows]

    def signals_between(
        self, username: str, start: float, end: float, limit: int, max_size: int, encode: Callable[[Signal], bytes]
    ) -> tuple[list[bytes], bool]:
        """StoreContract.signals_between."""
        with self._read() as connection:
            user_id = self._user_id(connection, username)
            parameters = (user_id, start, end, limit + 1)
            with self._lazy_rows(connection, self._sql.signals_between, parameters) as rows:
                return bounded_encodings(rows, limit, max_size, encode)

    def due_users(self, now: float, limit: int) -> list[UserState]:
        """StoreContract.due_users (on PostgreSQL, each claimed for this instance: see pg_store)."""
        with self._read() as connection:
            rows = connection.execute(self._sql.due_users, self._due_parameters(now, limit)).fetchall()
        return [user_and_parent(row) for row in rows]

    def save_check_outcomes(self, outcomes: Iterable[CheckOutcome], now: float) -> int:
        """StoreContract.save_check_outcomes, in a few statements for the whole batch."""
        outcomes = list(outcomes)
        alerts = 0
        # Each alerts row to insert, and the emails and webhooks to queue for it.
        new_alerts: list[tuple[Any, ...]] = []
        notices: list[tuple[tuple[NewEmail, ...], tuple[NewWebhook, ...]]] = []
        with self._write() as connection:
            applied = self._apply_outcomes(connection, [outcome_row(outcome) for outcome in outcomes], now)
            for outcome in outcomes:
                user = outcome.user
                if user.id not in applied:
                    continue
                if outcome.suppressed is not None:
                    new_alerts.append((user.id, now, user.last_ping, *outcome.suppressed, True))
                    notices.append(((), ()))
                # The recovery first: it closes the outage that an alert in the same step may follow.
                for kind, went_down_at, queued, hooks in (
                    (BACK, user.down_since, outcome.recovery, outcome.recovery_webhooks),
                    (outcome.kind, outcome.down_since, outcome.emails, outcome.webhooks),
                ):
                    if queued or hooks:
                        new_alerts.append((user.id, now, user.last_ping, kind, went_down_at, False))
                        notices.append((queued, hooks))
                alerts += bool(outcome.emails or outcome.webhooks)
            alert_ids = self._inserted_ids(connection, self._sql.insert_alert, new_alerts)
            emails = [
                (alert_id, e.recipient, e.subject, e.body, e.message_id, now, now)
                for alert_id, (queued, _) in zip(alert_ids, notices, strict=True)
                for e in queued
            ]
            webhooks = [
                (alert_id, hook.webhook, hook.event_id, hook.title, hook.text, hook.logs_url, now, now)
                for alert_id, (_, hooks) in zip(alert_ids, notices, strict=True)
                for hook in hooks
            ]
            # One statement for the whole batch's emails: a step may alert hundreds of users.
            with closing(connection.cursor()) as cursor:
                cursor.executemany(self._sql.insert_email, emails)
                cursor.executemany(self._sql.insert_webhook, webhooks)
        return alerts

    def due_emails(self, now: float, limit: int) -> list[QueuedEmail]:
        """StoreContract.due_emails (on PostgreSQL, each claimed for this instance: see pg_store)."""
        with self._read() as connection:
            rows = connection.execute(self._sql.due_emails, self._due_parameters(now, limit)).fetchall()
        return [queued_email(row) for row in rows]

    def claim_emails(self, retry_times: Mapping[int, float], now: float, digests: Sequence[NewDigest] = ()) -> set[int]:
        """StoreContract.claim_emails: the emails still queued (and, on PostgreSQL, still claimed by this instance:
        another takes over the claims of one whose lease lapsed) may be sent, and a digest is recorded only if
        all of its emails still are."""
        with self._transaction() as connection:
            mine = set(self._returned_ids(connection, self._sql.push_back_emails, self._retry_rows(retry_times)))
            for digest in digests:
                rows = [{"id": email_id, "me": self.instance_id} for email_id in digest.email_ids]
                if len(self._returned_ids(connection, self._sql.digest_email, rows)) != len(rows):
                    continue
                [digest_id] = self._inserted_ids(
                    connection,
                    self._sql.insert_digest,
                    [(digest.recipient, digest.subject, digest.message_id, now, len(digest.email_ids))],
                )
                with closing(connection.cursor()) as cursor:
                    cursor.executemany(self._sql.set_digest, [(digest_id, email_id) for email_id in digest.email_ids])
        return mine

    def mark_sent(self, email_ids: Iterable[int], now: float) -> None:
        """StoreContract.mark_sent; ends the emails' claims."""
        self._finish_emails(email_ids, "sent", now, None)

    def mark_failed(self, email_ids: Iterable[int], now: float, error: str | None) -> None:
        """StoreContract.mark_failed; ends the emails' claims."""
        self._finish_emails(email_ids, "failed", now, error)

    def schedule_retry(self, email_ids: Iterable[int], next_attempt_at: float, error: str | None) -> None:
        """StoreContract.schedule_retry; ends the emails' claims."""
        error = self._sql.dialect.text(error)
        rows = [
            {"error": error, "at": next_attempt_at, "id": email_id, "me": self.instance_id} for email_id in email_ids
        ]
        with self._transaction() as connection, closing(connection.cursor()) as cursor:
            cursor.executemany(self._sql.retry_email, rows)

    def due_webhooks(self, now: float, limit: int) -> list[QueuedWebhook]:
        """StoreContract.due_webhooks (on PostgreSQL, each claimed for this instance, as due_emails)."""
        with self._read() as connection:
            rows = connection.execute(self._sql.due_webhooks, self._due_parameters(now, limit)).fetchall()
        return [queued_webhook(row) for row in rows]

    def claim_webhooks(self, retry_times: Mapping[int, float]) -> set[int]:
        """StoreContract.claim_webhooks: the deliveries still queued (and this instance's, as claim_emails)."""
        with self._transaction() as connection:
            return set(self._returned_ids(connection, self._sql.push_back_webhooks, self._retry_rows(retry_times)))

    def finish_webhook(self, delivery_id: int, status: str, now: float, error: str | None) -> None:
        """StoreContract.finish_webhook; ends the delivery's claim."""
        parameters = {"status": status, "error": self._sql.dialect.text(error), "now": now, "id": delivery_id}
        with self._transaction() as connection:
            connection.execute(self._sql.finish_webhook, {**parameters, "me": self.instance_id})

    def retry_webhook(self, delivery_id: int, next_attempt_at: float, error: str | None) -> None:
        """StoreContract.retry_webhook; ends the delivery's claim."""
        parameters = {"error": self._sql.dialect.text(error), "at": next_attempt_at, "id": delivery_id}
        with self._transaction() as connection:
            connection.execute(self._sql.retry_webhook, {**parameters, "me": self.instance_id})

    def recent_webhooks(self, limit: int) -> list[WebhookHistory]:
        """StoreContract.recent_webhooks."""
        with self._read() as connection:
            rows = connection.execute(self._sql.recent_webhooks, (limit,)).fetchall()
        return [webhook_history(row) for row in rows]

    def user_counts(self, now: float) -> UserCounts:
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

    def _finish_emails(self, email_ids: Iterable[int], status: str, now: float, error: str | None) -> None:
        """Record that the emails left the queue at `now` with `status`, ending their claims."""
        error = self._sql.dialect.text(error)
        rows = [
            {"status": status, "error": error, "now": now, "id": email_id, "me": self.instance_id}
            for email_id in email_ids
        ]
        with self._transaction() as connection, closing(connection.cursor()) as cursor:
            cursor.executemany(self._sql.finish_email, rows)

    def _due_parameters(self, now: float, limit: int) -> dict[str, Any]:
        """The parameters of the due users', emails' and webhook deliveries' statements."""
        return {"me": self.instance_id, "now": now, "limit": limit}

    def _retry_rows(self, retry_times: Mapping[int, float]) -> list[dict[str, Any]]:
        """PUSH_BACK_SQL's parameters for each row of `retry_times` (id -> its next attempt)."""
        return [{"at": at, "id": row_id, "me": self.instance_id} for row_id, at in retry_times.items()]

    def _user_id(self, connection: Any, username: str) -> int:
        """The id of the user ever configured as `username`; UnknownUserError if none."""
        refuse_nul(username)
        row = connection.execute(self._sql.user_id, (username,)).fetchone()
        if row is None:
            raise UnknownUserError(f"unknown user {username}")
        return int(row[0])

    def _apply_users(
        self, connection: Any, users: Mapping[str, UserConfig], now: float, restarting: bool
    ) -> UsersChange:
        """Make the configured users exactly `users` in the transaction of `connection`, touching only those
        added, removed or changed (see StoreContract.reload_users); their deadlines are left to the restart of
        monitoring that follows if `restarting`."""
        # Compared as the rows hold them: 1 == True, so SQLite's integers equal PostgreSQL's booleans.
        configured = {row[0]: row[1:] for row in connection.execute(self._sql.configured_settings).fetchall()}
        # A fleet's users that share their settings share one UserConfig (config.py): each is turned into row
        # values once, and those users share them.
        settings_of: dict[int, tuple[Any, ...]] = {}
        wanted = {}
        for name, user in users.items():
            settings = settings_of.get(id(user))
            if settings is None:
                settings = settings_of[id(user)] = user_settings(user)
            wanted[name] = settings
        removed = [name for name in configured if name not in wanted]
        added = [name for name in wanted if name not in configured]
        changed = [name for name in wanted if name in configured and configured[name] != wanted[name]]
        by_program = {name for (name,) in connection.execute(self._sql.program_users).fetchall()}
        taken_over = [name for name in added if name in by_program]
        with closing(connection.cursor()) as cursor:
            # Before ADD_USER_SQL forgets that a program created them, so that other instances read them again.
            cursor.executemany(self._sql.changed, [(name,) for name in taken_over])
            cursor.executemany(self._sql.remove_user, [(name,) for name in removed])
            # Generators: each row's parameters are made as the statement runs, never all at once.
            with self._adding_users(connection):
                cursor.executemany(
                    self._sql.add_user,
                    (
                        _new_user_row(name, wanted[name], now, new_uuid)
                        for name, new_uuid in zip(added, new_uuids(len(added)), strict=True)
                    ),
                )
            cursor.executemany(self._sql.change_user, (_user_parameters(name, wanted[name], now) for name in changed))
            # Once every user is in: a parent may be added with its children. A user added has none until then.
            parents = [name for name in added if users[name].depends_on is not None] + changed
            cursor.executemany(self._sql.set_parent, [(users[name].depends_on, name) for name in parents])
            if not restarting:
                cursor.executemany(self._sql.user_due_at, [(name,) for name in added + changed])
        # Only rows configured before UUIDs can have none now (a seek in users_by_uuid finds them).
        missing = connection.execute(self._sql.missing_uuids).fetchall()
        with closing(connection.cursor()) as cursor:
            rows = [(new_uuid, name) for new_uuid, (name,) in zip(new_uuids(len(missing)), missing, strict=True)]
            cursor.executemany(self._sql.set_uuid, rows)
        return UsersChange(tuple(added), tuple(removed), tuple(changed), tuple(taken_over))

    def _adding_users(self, connection: Any) -> AbstractContextManager[None]:
        """Around the INSERT of the users added in the transaction of `connection`: the indexes the database
        has when it ends are those it had before. Here it does nothing."""
        return nullcontext()

    def _restart_monitoring(self, connection: Any, now: float) -> None:
        """StoreContract.restart_monitoring in the transaction of `connection`."""
        for statement in self._sql.restart:
            connection.execute(statement, {"now": now})


def _user_parameters(name: str, settings: tuple[Any, ...], now: float) -> dict[str, Any]:
    """The parameters of CHANGE_USER_SQL for the user `name` with `settings` (user_settings)."""
    return {**dict(zip(SETTINGS_COLUMNS, settings, strict=False)), "name": name, "now": now}


def _new_user_row(name: str, settings: tuple[Any, ...], now: float, new_uuid: str) -> tuple[Any, ...]:
    """The parameters of ADD_USER_SQL for the user `name` with `settings` (user_settings), monitored from `now`,
    whose UUID is `new_uuid` unless it has one."""
    return (name, *settings[: len(SETTINGS_COLUMNS)], now, new_uuid)
