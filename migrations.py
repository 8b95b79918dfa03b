"""The schema's history: one list of steps, each what makes a database of one schema version the next, for
SQLite and for PostgreSQL, so that both databases are upgraded at start by the same list.

A new database gets schema.sql (SQLite) or schema_pg.sql (PostgreSQL), which are always current: a step that
changes tables changes both the same way. Append new steps; never edit old ones.
"""

from dataclasses import dataclass

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
# The same table on PostgreSQL (schema_pg.sql), whose health checks leave room NULL.
PG_HEALTH_TABLE_SQL = (
    "CREATE TABLE health (id integer PRIMARY KEY CHECK (id = 1), checked_at double precision NOT NULL, room bytea)"
)

# Checks by program (schema version 10): every check's UUID, given the first time it is configured and kept for
# good; the definition of a check a program created (JSON: its settings keys and the API's own fields) while
# settings.json does not list it, who created it ('api' or 'ping'), and the change counter that tells other
# instances to read the checks created by program again.
CHECKS_BY_PROGRAM_SQL = """
ALTER TABLE users ADD COLUMN uuid TEXT;
CREATE UNIQUE INDEX users_by_uuid ON users (uuid);
ALTER TABLE users ADD COLUMN program TEXT;
ALTER TABLE users ADD COLUMN created_by TEXT CHECK (created_by IN ('api', 'ping'));
ALTER TABLE users ADD COLUMN program_change INTEGER;
CREATE INDEX users_by_program_change ON users (program_change) WHERE program_change IS NOT NULL;
"""
PG_CHECKS_BY_PROGRAM_SQL = CHECKS_BY_PROGRAM_SQL.replace("INTEGER", "bigint")

# Service runs (schema version 11): each start of the service and when it was last seen running, so that its
# downtime is known.
SERVICE_RUNS_SQL = """
CREATE TABLE service_runs (
    id         INTEGER PRIMARY KEY,
    started_at REAL    NOT NULL,
    seen_at    REAL    NOT NULL
);
CREATE INDEX service_runs_by_seen ON service_runs (seen_at);
"""
PG_SERVICE_RUNS_SQL = """
CREATE TABLE service_runs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at double precision NOT NULL,
    seen_at    double precision NOT NULL
);
CREATE INDEX service_runs_by_seen ON service_runs (seen_at);
"""

# Detection (schema version 12): the rules' settings (fail_threshold, min_runtime, min_interval, start_grace,
# maintenance) and what the signals and the listener make of them; alerts of the new kinds. A user failed before
# the upgrade has one fail in a row.
_DETECTION_COLUMNS = """
ALTER TABLE users ADD COLUMN fail_threshold INTEGER NOT NULL DEFAULT 1;
ALTER TABLE users ADD COLUMN min_runtime {real};
ALTER TABLE users ADD COLUMN min_interval {real};
ALTER TABLE users ADD COLUMN start_grace {real};
ALTER TABLE users ADD COLUMN fail_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN last_success {real};
ALTER TABLE users ADD COLUMN too_often_at {real};
ALTER TABLE users ADD COLUMN too_often_gap {real};
ALTER TABLE users ADD COLUMN maintenance TEXT;
ALTER TABLE users ADD COLUMN maintenance_at {real};
ALTER TABLE users ADD COLUMN maintenance_until {real};
ALTER TABLE users ADD COLUMN flap_threshold INTEGER NOT NULL DEFAULT 10;
ALTER TABLE users ADD COLUMN flap_quiet {real} NOT NULL DEFAULT 3600;
ALTER TABLE users ADD COLUMN flap_window_start {real};
ALTER TABLE users ADD COLUMN flap_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN last_outage_at {real};
ALTER TABLE users ADD COLUMN flapping_since {real};
UPDATE users SET fail_count = 1 WHERE failed_at IS NOT NULL;
"""


def _quoted(text: str) -> str:
    """`text` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


_ALERT_KINDS = "'late', 'failed', 'run_timeout', 'back'"
_NEW_ALERT_KINDS = "'late', 'failed', 'run_timeout', 'back', 'start_late', 'too_often', 'flapping'"
# SQLite cannot alter a CHECK constraint: its documented way for a CHECK is to rewrite the table's text in the schema
# (https://www.sqlite.org/lang_altertable.html, "making other kinds of table schema changes"); RESET makes this
# connection read the new text. The rows already there all pass the wider CHECK.
DETECTION_UPGRADE_SQL = _DETECTION_COLUMNS.format(real="REAL") + (
    "PRAGMA writable_schema = ON;"
    f" UPDATE sqlite_schema SET sql = replace(sql, {_quoted(f'CHECK (kind IN ({_ALERT_KINDS}))')},"
    f" {_quoted(f'CHECK (kind IN ({_NEW_ALERT_KINDS}))')}) WHERE type = 'table' AND name = 'alerts';"
    " PRAGMA writable_schema = RESET"
)
PG_DETECTION_UPGRADE_SQL = _DETECTION_COLUMNS.format(real="double precision") + (
    "ALTER TABLE alerts DROP CONSTRAINT alerts_kind_check;"
    f" ALTER TABLE alerts ADD CONSTRAINT alerts_kind_check CHECK (kind IN ({_NEW_ALERT_KINDS}))"
)


@dataclass(frozen=True, slots=True)
class Step:
    """What upgrades a database of one schema version to the next: SQLite's SQL, and PostgreSQL's (None for the
    versions no PostgreSQL database ever had: PostgreSQL came with version 8)."""

    sqlite: str
    postgresql: str | None = None


# STEPS[n - 1] upgrades version n to n + 1. All the steps a database needs run in one transaction at start, so
# it is either wholly upgraded or left as it was.
STEPS: tuple[Step, ...] = (
    # 1 -> 2: authentication answers (530 authentication required, 534, 535 credentials invalid, 538)
    # are the setup's fault and no longer fail an email; those they failed are queued again, due at once.
    Step(
        "UPDATE outbox SET status = 'queued', next_attempt_at = finished_at, finished_at = NULL"
        " WHERE status = 'failed' AND substr(last_error, 1, 4) IN ('530 ', '534 ', '535 ', '538 ')"
    ),
    # 2 -> 3: the overview's day view lists an alert's emails through it.
    Step("CREATE INDEX outbox_by_alert ON outbox (alert_id)"),
    # 3 -> 4: signals.
    Step(SIGNALS_UPGRADE_SQL),
    # 4 -> 5: operations: counters for the metrics, so that a scrape never counts pings (a `log` signal
    # and a recovery are not counted); indexes for retention and for the outbox's counts by status.
    Step(
        "ALTER TABLE users ADD COLUMN pings_total INTEGER NOT NULL DEFAULT 0;"
        " ALTER TABLE users ADD COLUMN alerts_total INTEGER NOT NULL DEFAULT 0;"
        " UPDATE users SET pings_total = (SELECT count(*) FROM pings WHERE user_id = users.id AND kind <> 'log'),"
        " alerts_total = (SELECT count(*) FROM alerts WHERE user_id = users.id AND kind <> 'back');"
        " CREATE INDEX alerts_by_time ON alerts (at);"
        " CREATE INDEX outbox_finished ON outbox (status, finished_at) WHERE status != 'queued'"
    ),
    # 5 -> 6: channels: the queue of webhook deliveries.
    Step(WEBHOOK_OUTBOX_SQL),
    # 6 -> 7: storm control.
    Step(STORM_CONTROL_UPGRADE_SQL),
    # 7 -> 8: schedules.
    Step(SCHEDULES_UPGRADE_SQL),
    # 8 -> 9: health.
    Step(HEALTH_TABLE_SQL, PG_HEALTH_TABLE_SQL),
    # 9 -> 10: checks by program.
    Step(CHECKS_BY_PROGRAM_SQL, PG_CHECKS_BY_PROGRAM_SQL),
    # 10 -> 11: service runs.
    Step(SERVICE_RUNS_SQL, PG_SERVICE_RUNS_SQL),
    # 11 -> 12: detection.
    Step(DETECTION_UPGRADE_SQL, PG_DETECTION_UPGRADE_SQL),
)
SCHEMA_VERSION = 1 + len(STEPS)


def postgresql_steps() -> dict[int, str]:
    """Schema version -> the PostgreSQL SQL that makes it the next, for each step PostgreSQL has."""
    return {version: step.postgresql for version, step in enumerate(STEPS, start=1) if step.postgresql is not None}
