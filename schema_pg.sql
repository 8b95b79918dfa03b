-- Ping Listener's database on PostgreSQL: the same tables, columns and meanings as schema.sql (read it for
-- what each column means; only what differs is said here). Applied by pg_store.py to a new, empty database,
-- in one transaction, with its version in schema_version. Every time is a UTC epoch number (seconds,
-- double precision); the *_readable views show them in the session's TimeZone (psql's, or PGTZ).
-- Several instances of the service may share this database: the tables instances and the claimed_by
-- columns are how they split the work (pg_store.py).

-- The schema's version: store.SCHEMA_VERSION when it was created (PostgreSQL has no PRAGMA user_version).
CREATE TABLE schema_version (
    version integer NOT NULL
);

-- The running instances of the service: each renews its lease (lease_until, by its own clock) every second
-- while it runs, and deletes its row when it stops. A row whose lease has passed is a dead instance: the
-- rows it claimed can be claimed by others.
CREATE TABLE instances (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host        text             NOT NULL,
    pid         integer          NOT NULL,
    started_at  double precision NOT NULL,
    lease_until double precision NOT NULL
);

CREATE TABLE users (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username        text             NOT NULL UNIQUE,
    configured      boolean          NOT NULL,
    monitor         boolean          NOT NULL,
    max_sleep       double precision NOT NULL,
    email_frequency double precision NOT NULL,
    monitored_since double precision,
    last_ping       double precision,
    last_alert      double precision,
    due_at          double precision,
    max_runtime     double precision,
    notify_recovery boolean          NOT NULL DEFAULT true,
    run_started     double precision,
    last_duration   double precision,
    failed_at       double precision,
    fail_signal     bigint,
    last_alert_kind text,
    down_since      double precision,
    back_at         double precision,
    last_signal     bigint,
    pings_total     bigint           NOT NULL DEFAULT 0,
    alerts_total    bigint           NOT NULL DEFAULT 0,
    parent_id       bigint REFERENCES users (id),
    silence_from    double precision,
    snoozed_until   double precision,
    muted_outage    double precision,
    suppressed_kind text,
    schedule        text,
    tz              text,
    grace           double precision,
    next_run_after  double precision,
    next_run        double precision,
    -- Detection, mirroring settings.json (rules.py): fails in a row that make a failure, the shortest run
    -- that is not one, the least time between two successes, how late a scheduled run may start.
    fail_threshold  integer NOT NULL DEFAULT 1,
    min_runtime     double precision,
    min_interval    double precision,
    start_grace     double precision,
    -- Fails in a row since the last success (a success closing a run shorter than min_runtime is one).
    fail_count      integer NOT NULL DEFAULT 0,
    last_success    double precision,
    -- A success that came sooner than min_interval after the one before (and the time between them),
    -- until the absence listener has alerted about it.
    too_often_at    double precision,
    too_often_gap   double precision,
    -- Its maintenance windows, mirroring settings.json (JSON: [[schedule, duration, tz], ...]; NULL: none);
    -- the next one's start as the absence listener last worked it out (a signal leaves it: the user is due
    -- then); and the end of the last window that snoozed it (snoozed_until), which the overview shows.
    maintenance     TEXT,
    maintenance_at  double precision,
    maintenance_until double precision,
    -- Flapping, mirroring settings.json (flap_threshold, flap_quiet); the absence listener's count of its outages
    -- (rules.count_outage): the counting window's start, the outages in it, the last one's start, and when it
    -- began flapping.
    flap_threshold  integer NOT NULL DEFAULT 10,
    flap_quiet      double precision NOT NULL DEFAULT 3600,
    flap_window_start double precision,
    flap_count      integer NOT NULL DEFAULT 0,
    last_outage_at  double precision,
    flapping_since  double precision,
    -- The instance whose absence listener is deciding about this user (NULL: none): others skip the row
    -- while that instance's lease lasts.
    claimed_by      bigint,
    uuid            text,
    program         text,
    created_by      text CHECK (created_by IN ('api', 'ping')),
    program_change  bigint
);
CREATE INDEX users_due ON users (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX users_by_parent ON users (parent_id) WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX users_by_uuid ON users (uuid);
CREATE INDEX users_by_program_change ON users (program_change) WHERE program_change IS NOT NULL;

CREATE TABLE pings (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id   bigint           NOT NULL REFERENCES users (id),
    at        double precision NOT NULL,
    kind      text             NOT NULL DEFAULT 'success' CHECK (kind IN ('success', 'start', 'fail', 'log')),
    exit_code integer,
    duration  double precision,
    body      text
);
CREATE INDEX pings_by_user_time ON pings (user_id, at);

CREATE TABLE alerts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint           NOT NULL REFERENCES users (id),
    at           double precision NOT NULL,
    last_ping    double precision,
    kind         text             NOT NULL DEFAULT 'late' CHECK (kind IN ('late', 'failed', 'run_timeout', 'back', 'start_late', 'too_often', 'flapping')),
    went_down_at double precision,
    suppressed   boolean          NOT NULL DEFAULT false
);
CREATE INDEX alerts_by_user_time ON alerts (user_id, at);
CREATE INDEX alerts_by_time ON alerts (at);

CREATE TABLE digests (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient  text             NOT NULL,
    subject    text             NOT NULL,
    message_id text             NOT NULL,
    created_at double precision NOT NULL,
    emails     integer          NOT NULL
);

CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        bigint           NOT NULL REFERENCES alerts (id),
    recipient       text             NOT NULL,
    subject         text             NOT NULL,
    body            text             NOT NULL,
    message_id      text             NOT NULL,
    queued_at       double precision NOT NULL,
    status          text             NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        integer          NOT NULL DEFAULT 0,
    next_attempt_at double precision,
    last_error      text,
    finished_at     double precision,
    digest_id       bigint REFERENCES digests (id),
    -- The instance sending it now (NULL: none): others skip the row while that instance's lease lasts.
    claimed_by      bigint
);
CREATE INDEX outbox_queue ON outbox (next_attempt_at) WHERE status = 'queued';
CREATE INDEX outbox_by_alert ON outbox (alert_id);
CREATE INDEX outbox_finished ON outbox (status, finished_at) WHERE status <> 'queued';
CREATE INDEX outbox_by_digest ON outbox (digest_id) WHERE digest_id IS NOT NULL;

CREATE TABLE webhook_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        bigint           NOT NULL REFERENCES alerts (id),
    webhook         text             NOT NULL,
    event_id        text             NOT NULL UNIQUE,
    title           text             NOT NULL,
    text            text             NOT NULL,
    logs_url        text             NOT NULL,
    queued_at       double precision NOT NULL,
    status          text             NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        integer          NOT NULL DEFAULT 0,
    next_attempt_at double precision,
    last_error      text,
    finished_at     double precision,
    -- As outbox.claimed_by.
    claimed_by      bigint
);
CREATE INDEX webhook_outbox_queue ON webhook_outbox (next_attempt_at) WHERE status = 'queued';
CREATE INDEX webhook_outbox_by_alert ON webhook_outbox (alert_id);
CREATE INDEX webhook_outbox_finished ON webhook_outbox (status, finished_at) WHERE status <> 'queued';

-- As in schema.sql: the one row each health check rewrites (all instances share it).
CREATE TABLE health (
    id         integer          PRIMARY KEY CHECK (id = 1),
    checked_at double precision NOT NULL,
    -- Left NULL here: PostgreSQL writes its own log ahead in whole segments, so a small write tells as much.
    room       bytea
);

-- As in schema.sql: each instance's runs, whose gaps are the service's downtime.
CREATE TABLE service_runs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at double precision NOT NULL,
    seen_at    double precision NOT NULL
);
CREATE INDEX service_runs_by_seen ON service_runs (seen_at);

CREATE VIEW pings_readable AS
SELECT users.username,
       to_timestamp(pings.at) AS local_time,
       pings.at AS epoch,
       pings.kind, pings.exit_code, pings.duration, pings.body
FROM pings JOIN users ON users.id = pings.user_id;

CREATE VIEW users_readable AS
SELECT username, configured, monitor, max_sleep, email_frequency,
       to_timestamp(monitored_since) AS monitored_since,
       to_timestamp(last_ping) AS last_ping,
       to_timestamp(last_alert) AS last_alert,
       to_timestamp(due_at) AS due_at,
       max_runtime, notify_recovery,
       to_timestamp(run_started) AS run_started,
       to_timestamp(failed_at) AS failed_at,
       last_alert_kind,
       to_timestamp(down_since) AS down_since,
       (SELECT parent.username FROM users AS parent WHERE parent.id = users.parent_id) AS depends_on,
       to_timestamp(silence_from) AS silence_from,
       to_timestamp(snoozed_until) AS snoozed_until,
       suppressed_kind,
       schedule, tz, grace
FROM users;

CREATE VIEW alerts_readable AS
SELECT users.username,
       to_timestamp(alerts.at) AS alerted_at,
       to_timestamp(alerts.last_ping) AS last_ping,
       alerts.kind,
       to_timestamp(alerts.went_down_at) AS went_down_at,
       alerts.suppressed
FROM alerts JOIN users ON users.id = alerts.user_id;

CREATE VIEW outbox_readable AS
SELECT outbox.id, users.username, outbox.recipient, outbox.status, outbox.attempts,
       to_timestamp(outbox.queued_at) AS queued_at,
       to_timestamp(outbox.next_attempt_at) AS next_attempt_at,
       to_timestamp(outbox.finished_at) AS finished_at,
       outbox.last_error, outbox.subject, alerts.kind, outbox.digest_id
FROM outbox
JOIN alerts ON alerts.id = outbox.alert_id
JOIN users ON users.id = alerts.user_id;

CREATE VIEW webhook_outbox_readable AS
SELECT webhook_outbox.id, users.username, 'webhook:' || webhook_outbox.webhook AS channel, webhook_outbox.status,
       webhook_outbox.attempts,
       to_timestamp(webhook_outbox.queued_at) AS queued_at,
       to_timestamp(webhook_outbox.next_attempt_at) AS next_attempt_at,
       to_timestamp(webhook_outbox.finished_at) AS finished_at,
       webhook_outbox.last_error, webhook_outbox.title, alerts.kind, webhook_outbox.event_id
FROM webhook_outbox
JOIN alerts ON alerts.id = webhook_outbox.alert_id
JOIN users ON users.id = alerts.user_id;

CREATE VIEW digests_readable AS
SELECT digests.id, digests.recipient, digests.subject, digests.emails,
       to_timestamp(digests.created_at) AS created_at,
       string_agg(users.username || ' (' || alerts.kind || ', ' || outbox.status || ')', ', ' ORDER BY outbox.id)
           AS carried
FROM digests
JOIN outbox ON outbox.digest_id = digests.id
JOIN alerts ON alerts.id = outbox.alert_id
JOIN users ON users.id = alerts.user_id
GROUP BY digests.id;
