-- Ping Listener's database. Applied by store.py to a new database; the version it creates is
-- PRAGMA user_version (store.SCHEMA_VERSION). Every time is a UTC epoch number (seconds, REAL);
-- the *_readable views show them in the local time zone of whoever runs sqlite3.

-- One row per username ever configured. Rows are never deleted, so a user removed from
-- settings.json keeps its history; `configured` says whether it is in the running settings.
-- monitor, max_sleep, email_frequency, max_runtime, notify_recovery, schedule, tz and grace mirror
-- settings.json as of the last start or reload. The columns after due_at follow the user's signals (pings of every kind) and outages;
-- rules.py says what each state means.
CREATE TABLE users (
    id              INTEGER PRIMARY KEY,
    username        TEXT    NOT NULL UNIQUE,
    configured      INTEGER NOT NULL CHECK (configured IN (0, 1)),
    monitor         INTEGER NOT NULL CHECK (monitor IN (0, 1)),
    max_sleep       REAL    NOT NULL,  -- 0 for a scheduled user (see schedule)
    email_frequency REAL    NOT NULL,
    -- When the running server process started monitoring this user: its downtime before then
    -- never counts against the device.
    monitored_since REAL,
    last_ping       REAL,
    last_alert      REAL,
    -- The earliest time at which the absence listener must look at this user again (it is late,
    -- or its alert throttle ends); NULL when nothing can be due (not configured, or monitor off). For a
-- scheduled user, a signal sets it to the signal's time: the listener then stores the real deadline.
    -- The listener finds due users through users_due, so a tick costs the number of due users.
    due_at          REAL,
    max_runtime     REAL,
    notify_recovery INTEGER NOT NULL DEFAULT 1 CHECK (notify_recovery IN (0, 1)),
    -- The open run's start (a `start` signal not yet closed by a success or fail), else NULL.
    run_started     REAL,
    -- The duration of the last run closed by a success or fail.
    last_duration   REAL,
    -- While failed (a `fail` since the last success): the first fail's time, and the latest fail signal.
    failed_at       REAL,
    fail_signal     INTEGER,
    -- The condition of the last alert: 'late', 'failed' or 'run_timeout'.
    last_alert_kind TEXT,
    -- When the current outage went down, once it was alerted; NULL when no alerted outage is open.
    down_since      REAL,
    -- The success that ended an alerted outage, until the listener has queued its recovery.
    back_at         REAL,
    -- The newest signal that changed this row: the listener's decisions apply only if it is unchanged.
    last_signal     INTEGER,
    -- Signals (but `log`) and alerts recorded since the user was first configured, kept by the signal
    -- trigger and the absence listener, for the metrics: a scrape reads one row per user, never the
    -- pings. Retention does not lower them.
    pings_total     INTEGER NOT NULL DEFAULT 0,
    alerts_total    INTEGER NOT NULL DEFAULT 0,
    -- The user this one depends on (settings.json's depends_on): while it is down, this one's alerts
    -- are suppressed.
    parent_id       INTEGER REFERENCES users (id),
    -- When its parent last came back from an outage: its silence is measured from then at the earliest.
    silence_from    REAL,
    -- The end of its latest snooze (/snooze); snoozed while it is in the future.
    snoozed_until   REAL,
    -- The down_since of the outage its latest snooze began in, if alerted: that outage is not alerted again.
    muted_outage    REAL,
    -- The condition whose alert its parent's outage suppressed (recorded in alerts), until its next
    -- success or its parent's return.
    suppressed_kind TEXT,
    -- A user watched by a schedule instead of max_sleep (which is then 0): its 5-field cron expression,
    -- the IANA zone it is read in, and the seconds it may be late after each expected time. NULL otherwise.
    schedule        TEXT,
    tz              TEXT,
    grace           REAL,
    -- For a scheduled user, the absence listener's last look: the moment its silence was measured from,
    -- and its schedule's next run after that. SQL reads them to tell whether it was down as a parent.
    next_run_after  REAL,
    next_run        REAL,
    -- Its UUID (lowercase, hyphenated), given the first time it is configured and kept for good: /ping/<uuid>
    -- and the management API name it by it.
    uuid            TEXT,
    -- A check created by a program (the management API, or a signal with create=1) while settings.json does
    -- not list it: its definition as JSON ({"settings": {...}, "desc": ..., ...}); NULL for settings.json's.
    program         TEXT,
    -- Who created it: 'api' or 'ping' (auto_provision, counted against auto_provision_limit).
    created_by      TEXT CHECK (created_by IN ('api', 'ping')),
    -- The checks-by-program change counter when this row last changed as such (created, changed, paused,
    -- deleted, taken over): its maximum tells each instance whether to read them again.
    program_change  INTEGER,
    -- Detection, mirroring settings.json (rules.py): fails in a row that make a failure, the shortest run
    -- that is not one, the least time between two successes, how late a scheduled run may start.
    fail_threshold  INTEGER NOT NULL DEFAULT 1,
    min_runtime     REAL,
    min_interval    REAL,
    start_grace     REAL,
    -- Fails in a row since the last success (a success closing a run shorter than min_runtime is one).
    fail_count      INTEGER NOT NULL DEFAULT 0,
    last_success    REAL,
    -- A success that came sooner than min_interval after the one before (and the time between them),
    -- until the absence listener has alerted about it.
    too_often_at    REAL,
    too_often_gap   REAL,
    -- Its maintenance windows, mirroring settings.json (JSON: [[schedule, duration, tz], ...]; NULL: none);
    -- the next one's start as the absence listener last worked it out (a signal leaves it: the user is due
    -- then); and the end of the last window that snoozed it (snoozed_until), which the overview shows.
    maintenance     TEXT,
    maintenance_at  REAL,
    maintenance_until REAL,
    -- Flapping, mirroring settings.json (flap_threshold, flap_quiet); the absence listener's count of its outages
    -- (rules.count_outage): the counting window's start, the outages in it, the last one's start, and when it
    -- began flapping.
    flap_threshold  INTEGER NOT NULL DEFAULT 10,
    flap_quiet      REAL NOT NULL DEFAULT 3600,
    flap_window_start REAL,
    flap_count      INTEGER NOT NULL DEFAULT 0,
    last_outage_at  REAL,
    flapping_since  REAL
);
CREATE INDEX users_due ON users (due_at) WHERE due_at IS NOT NULL;
-- A parent's children, whose silence its return restarts.
CREATE INDEX users_by_parent ON users (parent_id) WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX users_by_uuid ON users (uuid);
CREATE INDEX users_by_program_change ON users (program_change) WHERE program_change IS NOT NULL;

-- Every signal received (a ping of any kind; within retention_days, if set). The service records one as one INSERT; a trigger
-- that exists only on its own connections (store.py) moves the user's state and due_at in the same
-- statement.
CREATE TABLE pings (
    id        INTEGER PRIMARY KEY,
    user_id   INTEGER NOT NULL REFERENCES users (id),
    at        REAL    NOT NULL,
    kind      TEXT    NOT NULL DEFAULT 'success' CHECK (kind IN ('success', 'start', 'fail', 'log')),
    -- The exit code it reported (/ping/NAME/N or exit_code=N), else NULL.
    exit_code INTEGER,
    -- Seconds since the run's start, on the success or fail that closed a run; else NULL.
    duration  REAL,
    -- The first 10 000 bytes of a POST body, decoded as UTF-8 with replacement (an email ping's: "Subject: ...",
    -- a blank line and the first 10 000 bytes of its text); NULL if none.
    body      TEXT
);
CREATE INDEX pings_by_user_time ON pings (user_id, at);

-- One row per alert or recovery decided by the absence listener; its emails are in the outbox.
CREATE TABLE alerts (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id),
    at           REAL    NOT NULL,
    -- The user's last ping when the alert was decided (NULL: none since monitoring began).
    last_ping    REAL,
    -- 'late' (silence), 'failed', 'run_timeout', 'start_late', 'too_often', or 'back' for a recovery.
    kind         TEXT    NOT NULL DEFAULT 'late' CHECK (kind IN ('late', 'failed', 'run_timeout', 'back', 'start_late', 'too_often', 'flapping')),
    -- When the outage it belongs to went down.
    went_down_at REAL,
    -- 1: not sent, because the user it depends on was down (its emails were never queued).
    suppressed   INTEGER NOT NULL DEFAULT 0 CHECK (suppressed IN (0, 1))
);
CREATE INDEX alerts_by_user_time ON alerts (user_id, at);
-- Retention deletes old alerts along this index.
CREATE INDEX alerts_by_time ON alerts (at);

-- Emails that went out as one: several outbox rows for one recipient, due at the same drain step, sent
-- as one digest email with its own subject, Date and Message-ID. Its rows (outbox.digest_id) are sent,
-- retried or failed together; tried again as they were, they keep this digest's Message-ID.
CREATE TABLE digests (
    id         INTEGER PRIMARY KEY,
    recipient  TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    -- How many outbox rows it carried.
    emails     INTEGER NOT NULL
);

-- Alert emails, one per recipient. A row leaves the queue (status 'queued') only once the SMTP
-- server accepted it ('sent') or rejected it permanently ('failed'); both stay as history.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    alert_id        INTEGER NOT NULL REFERENCES alerts (id),
    recipient       TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    -- Kept across retries so a receiving server can recognise a duplicate delivery.
    message_id      TEXT    NOT NULL,
    queued_at       REAL    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error      TEXT,
    finished_at     REAL,
    -- The latest digest that carried it, if one did.
    digest_id       INTEGER REFERENCES digests (id)
);
CREATE INDEX outbox_queue ON outbox (next_attempt_at) WHERE status = 'queued';
-- An alert's emails: for the overview's day view, and so that deleting an alert checks that no email
-- refers to it along this index, not by a scan of the outbox.
CREATE INDEX outbox_by_alert ON outbox (alert_id);
-- The metrics count sent and failed emails, and retention finds old ones, along this index (queued ones
-- along outbox_queue).
CREATE INDEX outbox_finished ON outbox (status, finished_at) WHERE status != 'queued';
-- A digest's emails.
CREATE INDEX outbox_by_digest ON outbox (digest_id) WHERE digest_id IS NOT NULL;

-- Webhook deliveries, one per "webhook:NAME" channel of an alert or recovery (a user's `notify`). As in
-- the outbox, a row leaves the queue (status 'queued') only once the webhook answered 2xx ('sent') or
-- refused it for good ('failed'); both stay as history. The URL is not kept: it is read from
-- settings.json's webhooks at each attempt, so it may hold a token and may be corrected meanwhile.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY,
    alert_id        INTEGER NOT NULL REFERENCES alerts (id),
    -- Its name in settings.json's webhooks.
    webhook         TEXT    NOT NULL,
    -- The event's id, sent as the Idempotency-Key header: kept across retries.
    event_id        TEXT    NOT NULL UNIQUE,
    -- The email's subject and plain text, and the link to the day's signals.
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
-- A delivery's alert, and finished deliveries by age: what retention deletes along.
CREATE INDEX webhook_outbox_by_alert ON webhook_outbox (alert_id);
CREATE INDEX webhook_outbox_finished ON webhook_outbox (status, finished_at) WHERE status != 'queued';

-- What GET /healthz (and the heartbeat) writes to prove that a write can commit: one row, which each check
-- rewrites whole in a transaction of its own, so that checks never make the database grow.
CREATE TABLE health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    -- When a health check last committed.
    checked_at REAL    NOT NULL,
    -- New random bytes at each check (store.HEALTH_WRITE_BYTES), so that its commit needs as much room in
    -- the write-ahead log as a batch of pings: on a disk that has less, the check fails as pings would.
    room       BLOB
);

-- One row per start of the service (of each instance, on PostgreSQL): when it started, and when it was last
-- seen running, marked every store.RUN_MARK_SECONDS. The gaps between runs are the service's own downtime, which
-- status pages count as unknown, neither up nor down (uptime.py).
CREATE TABLE service_runs (
    id         INTEGER PRIMARY KEY,
    started_at REAL    NOT NULL,
    seen_at    REAL    NOT NULL
);
CREATE INDEX service_runs_by_seen ON service_runs (seen_at);

CREATE VIEW pings_readable AS
SELECT users.username,
       datetime(pings.at, 'unixepoch', 'localtime') AS local_time,
       pings.at AS epoch,
       pings.kind, pings.exit_code, pings.duration, pings.body
FROM pings JOIN users ON users.id = pings.user_id;

CREATE VIEW users_readable AS
SELECT username, configured, monitor, max_sleep, email_frequency,
       datetime(monitored_since, 'unixepoch', 'localtime') AS monitored_since,
       datetime(last_ping, 'unixepoch', 'localtime') AS last_ping,
       datetime(last_alert, 'unixepoch', 'localtime') AS last_alert,
       datetime(due_at, 'unixepoch', 'localtime') AS due_at,
       max_runtime, notify_recovery,
       datetime(run_started, 'unixepoch', 'localtime') AS run_started,
       datetime(failed_at, 'unixepoch', 'localtime') AS failed_at,
       last_alert_kind,
       datetime(down_since, 'unixepoch', 'localtime') AS down_since,
       (SELECT parent.username FROM users AS parent WHERE parent.id = users.parent_id) AS depends_on,
       datetime(silence_from, 'unixepoch', 'localtime') AS silence_from,
       datetime(snoozed_until, 'unixepoch', 'localtime') AS snoozed_until,
       suppressed_kind,
       schedule, tz, grace
FROM users;

CREATE VIEW alerts_readable AS
SELECT users.username,
       datetime(alerts.at, 'unixepoch', 'localtime') AS alerted_at,
       datetime(alerts.last_ping, 'unixepoch', 'localtime') AS last_ping,
       alerts.kind,
       datetime(alerts.went_down_at, 'unixepoch', 'localtime') AS went_down_at,
       alerts.suppressed
FROM alerts JOIN users ON users.id = alerts.user_id;

CREATE VIEW outbox_readable AS
SELECT outbox.id, users.username, outbox.recipient, outbox.status, outbox.attempts,
       datetime(outbox.queued_at, 'unixepoch', 'localtime') AS queued_at,
       datetime(outbox.next_attempt_at, 'unixepoch', 'localtime') AS next_attempt_at,
       datetime(outbox.finished_at, 'unixepoch', 'localtime') AS finished_at,
       outbox.last_error, outbox.subject, alerts.kind, outbox.digest_id
FROM outbox
JOIN alerts ON alerts.id = outbox.alert_id
JOIN users ON users.id = alerts.user_id;

CREATE VIEW webhook_outbox_readable AS
SELECT webhook_outbox.id, users.username, 'webhook:' || webhook_outbox.webhook AS channel, webhook_outbox.status,
       webhook_outbox.attempts,
       datetime(webhook_outbox.queued_at, 'unixepoch', 'localtime') AS queued_at,
       datetime(webhook_outbox.next_attempt_at, 'unixepoch', 'localtime') AS next_attempt_at,
       datetime(webhook_outbox.finished_at, 'unixepoch', 'localtime') AS finished_at,
       webhook_outbox.last_error, webhook_outbox.title, alerts.kind, webhook_outbox.event_id
FROM webhook_outbox
JOIN alerts ON alerts.id = webhook_outbox.alert_id
JOIN users ON users.id = alerts.user_id;

CREATE VIEW digests_readable AS
SELECT digests.id, digests.recipient, digests.subject, digests.emails,
       datetime(digests.created_at, 'unixepoch', 'localtime') AS created_at,
       group_concat(users.username || ' (' || alerts.kind || ', ' || outbox.status || ')', ', ') AS carried
FROM digests
JOIN outbox ON outbox.digest_id = digests.id
JOIN alerts ON alerts.id = outbox.alert_id
JOIN users ON users.id = alerts.user_id
GROUP BY digests.id;
