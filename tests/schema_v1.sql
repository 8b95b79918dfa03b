-- The schema of version 1, as released: tests/test_store.py migrates a database made with it.
-- Ping Listener's database. Applied by store.py to a new database; the version it creates is
-- PRAGMA user_version (store.SCHEMA_VERSION). Every time is a UTC epoch number (seconds, REAL);
-- the *_readable views show them in the local time zone of whoever runs sqlite3.

-- One row per username ever configured. Rows are never deleted, so a user removed from
-- settings.json keeps its history; `configured` says whether it is in the running settings.
-- monitor, max_sleep and email_frequency mirror settings.json as of the last start.
CREATE TABLE users (
    id              INTEGER PRIMARY KEY,
    username        TEXT    NOT NULL UNIQUE,
    configured      INTEGER NOT NULL CHECK (configured IN (0, 1)),
    monitor         INTEGER NOT NULL CHECK (monitor IN (0, 1)),
    max_sleep       REAL    NOT NULL,
    email_frequency REAL    NOT NULL,
    -- When the running server process started monitoring this user: its downtime before then
    -- never counts against the device.
    monitored_since REAL,
    last_ping       REAL,
    last_alert      REAL,
    -- The earliest time at which the absence listener must look at this user again (it is late,
    -- or its alert throttle ends); NULL when nothing can be due (not configured, or monitor off).
    -- The listener finds due users through users_due, so a tick costs the number of due users.
    due_at          REAL
);
CREATE INDEX users_due ON users (due_at) WHERE due_at IS NOT NULL;

-- Every ping ever received. The service records a ping as one INSERT; a trigger that exists only on
-- its own connections (store.py) moves the user's last_ping and due_at in the same statement.
CREATE TABLE pings (
    id      INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    at      REAL    NOT NULL
);
CREATE INDEX pings_by_user_time ON pings (user_id, at);

-- One row per alert decided by the absence listener; its emails are in the outbox.
CREATE TABLE alerts (
    id        INTEGER PRIMARY KEY,
    user_id   INTEGER NOT NULL REFERENCES users (id),
    at        REAL    NOT NULL,
    -- The user's last ping when the alert was decided (NULL: none since monitoring began).
    last_ping REAL
);
CREATE INDEX alerts_by_user_time ON alerts (user_id, at);

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
    finished_at     REAL
);
CREATE INDEX outbox_queue ON outbox (next_attempt_at) WHERE status = 'queued';

CREATE VIEW pings_readable AS
SELECT users.username,
       datetime(pings.at, 'unixepoch', 'localtime') AS local_time,
       pings.at AS epoch
FROM pings JOIN users ON users.id = pings.user_id;

CREATE VIEW users_readable AS
SELECT username, configured, monitor, max_sleep, email_frequency,
       datetime(monitored_since, 'unixepoch', 'localtime') AS monitored_since,
       datetime(last_ping, 'unixepoch', 'localtime') AS last_ping,
       datetime(last_alert, 'unixepoch', 'localtime') AS last_alert,
       datetime(due_at, 'unixepoch', 'localtime') AS due_at
FROM users;

CREATE VIEW alerts_readable AS
SELECT users.username,
       datetime(alerts.at, 'unixepoch', 'localtime') AS alerted_at,
       datetime(alerts.last_ping, 'unixepoch', 'localtime') AS last_ping
FROM alerts JOIN users ON users.id = alerts.user_id;

CREATE VIEW outbox_readable AS
SELECT outbox.id, users.username, outbox.recipient, outbox.status, outbox.attempts,
       datetime(outbox.queued_at, 'unixepoch', 'localtime') AS queued_at,
       datetime(outbox.next_attempt_at, 'unixepoch', 'localtime') AS next_attempt_at,
       datetime(outbox.finished_at, 'unixepoch', 'localtime') AS finished_at,
       outbox.last_error, outbox.subject
FROM outbox
JOIN alerts ON alerts.id = outbox.alert_id
JOIN users ON users.id = alerts.user_id;
