import contextlib
import os
import sqlite3
import threading
from pathlib import Path

import hypothesis
import hypothesis.strategies
import psycopg
import pytest

import rules
import server
import sql_store
import store as store_module
from config import LiveSettings
from database import open_store
from pg_store import PgStore
from records import (
    CheckOutcome,
    EmailEvent,
    NewDigest,
    NewEmail,
    NewWebhook,
    Outage,
    Signal,
    StoreOpenError,
    UnknownUserError,
    UserState,
    WebhookEvent,
)
from store import SCHEMA_VERSION, Store
from support import BACKENDS, T0, make_settings, query, write_settings

# The store contract's tests run on both backends (support.BACKENDS); the others are SQLite's own (pragmas, WAL,
# query plans, files, upgrades) and tests/test_pg_store.py has PostgreSQL's.


class _PgConnection:
    """A psycopg connection that takes SQLite's ? placeholders, as sqlite3 connections do."""

    def __init__(self, url):
        self._connection = psycopg.connect(url, autocommit=True)

    def execute(self, sql, parameters=()):
        return self._connection.execute(sql.replace("?", "%s"), parameters)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._connection.close()


def second_connection(store):
    """A connection of its own, to check what was really committed."""
    return _PgConnection(store.url) if isinstance(store, PgStore) else sqlite3.connect(store.path)


# Children before their parents (foreign keys).
EMPTIED_EACH_EXAMPLE = ("outbox", "webhook_outbox", "digests", "pings", "alerts", "service_runs", "users")
EMPTYING = (
    "BEGIN;"
    + "".join(
        f"DELETE FROM {table}; SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1, false);"
        for table in EMPTIED_EACH_EXAMPLE
    )
    + "COMMIT"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store(request, tmp_path_factory):
    """A function giving a new, empty store of the backend at each call (one per hypothesis example). On
    PostgreSQL, one database and store serve every call, emptied each time (a new database each would take
    longer than the example)."""
    if request.param == "sqlite":
        opened = []

        def new_sqlite_store():
            opened.append(Store(tmp_path_factory.mktemp("db") / "db"))
            return opened[-1]

        yield new_sqlite_store
        for each in opened:
            each.close()
        return
    pg = PgStore(request.getfixturevalue("postgres_url"))
    # One connection empties the store at every call (a new one each time would log in again); DELETE and
    # setval, not TRUNCATE, which makes new files for every table and index: the same empty state, sooner.
    with second_connection(pg) as emptier:

        def emptied_pg_store():
            emptier.execute(EMPTYING)
            return pg

        yield emptied_pg_store
    pg.close()


# new_store is function-scoped on purpose: each example asks it for a store of its own.
ONE_STORE_PER_EXAMPLE = [hypothesis.HealthCheck.function_scoped_fixture]


def rows(store, sql, parameters=()):
    """The rows `sql` (with ? placeholders) selects from `store`'s database, through a connection of its own."""
    with second_connection(store) as connection:
        return [tuple(row) for row in connection.execute(sql, parameters).fetchall()]


def synced(store, users=None, now=T0):
    store.sync_users(make_settings(users).users, now)
    return store


def test_a_new_database_is_in_wal_mode_with_the_current_schema(store):
    with second_connection(store) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert tables == {"users", "pings", "alerts", "outbox", "digests", "webhook_outbox", "health", "service_runs"}


def test_its_connections_use_normal_sync_and_a_busy_timeout(store):
    assert store.pragma("synchronous") == 1  # NORMAL
    assert store.pragma("busy_timeout") == 5000


def pragma_in_a_new_thread(store, name):
    """PRAGMA `name` as a connection of another thread (the pings', a scheduler loop's) has it."""
    found = []
    thread = threading.Thread(target=lambda: found.append(store.pragma(name)))
    thread.start()
    thread.join()
    return found[0]


def test_with_durability_power_every_connection_syncs_each_commit_and_a_reload_switches_them_all(tmp_path):
    powered = open_store(str(tmp_path / "ping_listener.db"), "power")  # as the service opens it
    try:
        assert (powered.pragma("synchronous"), pragma_in_a_new_thread(powered, "synchronous")) == (2, 2)  # FULL
        with powered.ping_batch():
            powered.use_durability("process")
            assert powered.pragma("synchronous") == 2  # a batch ends as it began
        assert powered.pragma("synchronous") == 1
        assert pragma_in_a_new_thread(powered, "synchronous") == 1
        powered.use_durability("power")
        assert powered.pragma("synchronous") == 2
    finally:
        powered.close()


def test_the_services_store_holds_the_files_lock_and_a_second_one_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "ping_listener.db"
    first = synced(open_store(str(path)))
    try:
        assert (tmp_path / "ping_listener.db.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(StoreOpenError) as raised:
            open_store(str(path))
        assert str(raised.value) == (
            f"{path}: in use by another Ping Listener process (pid {os.getpid()}, holding {path}.lock);"
            " one process per SQLite database: stop it, or give this one another --db"
        )
        # A reader that does not ask for the lock (a tool, a person's sqlite3) is not stopped.
        reader = Store(path)
        assert reader.pings_between("pi", T0, T0 + 1) == []
        reader.close()
    finally:
        first.close()
    assert (tmp_path / "ping_listener.db.lock").read_text() == ""
    open_store(str(path)).close()


def test_a_reload_of_the_settings_applies_a_new_durability(tmp_path):
    path = tmp_path / "settings.json"
    opened = Store(tmp_path / "ping_listener.db")
    try:
        live = LiveSettings(make_settings())
        opened.sync_users(live.current.users, T0)
        write_settings(path, {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600}}, durability="power")
        assert server.reload_settings(path, live, opened, lambda: T0)
        assert (live.current.durability, opened.pragma("synchronous")) == ("power", 2)
    finally:
        opened.close()


@BACKENDS
def test_a_ping_is_committed_before_record_ping_returns(store):
    synced(store)
    store.record_ping("pi", T0 + 5)
    with second_connection(store) as connection:
        assert connection.execute("SELECT username, epoch FROM pings_readable").fetchall() == [("pi", T0 + 5)]
        assert connection.execute("SELECT last_ping, due_at FROM users").fetchone() == (T0 + 5, T0 + 65)


@BACKENDS
def test_a_ping_from_an_unconfigured_user_is_refused_and_not_recorded(store):
    synced(store)
    with pytest.raises(UnknownUserError):
        store.record_ping("ghost", T0)
    with second_connection(store) as connection:
        assert connection.execute("SELECT count(*) FROM pings").fetchone()[0] == 0


@BACKENDS
def test_last_ping_never_moves_backwards_when_pings_commit_out_of_order(store):
    synced(store)
    store.record_ping("pi", T0 + 10)
    store.record_ping("pi", T0 + 9)
    assert store.pings_between("pi", T0, T0 + 20) == [T0 + 9, T0 + 10]
    [user] = store.due_users(T0 + 100, 10)
    assert (user.last_ping, user.due_at) == (T0 + 10, T0 + 70)


@BACKENDS
def test_pings_between_is_half_open_and_ascending(store):
    synced(store)
    for at in (T0 + 3, T0 + 1, T0 + 2, T0 + 4):
        store.record_ping("pi", at)
    assert store.pings_between("pi", T0 + 1, T0 + 4) == [T0 + 1, T0 + 2, T0 + 3]


@BACKENDS
def test_pings_between_refuses_a_user_never_known(store):
    synced(store)
    assert store.pings_between("pi", T0, T0 + 1) == []
    with pytest.raises(UnknownUserError):
        store.pings_between("ghost", T0, T0 + 1)


@BACKENDS
def test_a_user_removed_from_the_settings_keeps_its_history_but_cannot_ping(store):
    synced(store)
    store.record_ping("pi", T0 + 1)
    synced(store, users={}, now=T0 + 10)
    with pytest.raises(UnknownUserError):
        store.record_ping("pi", T0 + 11)
    assert store.pings_between("pi", T0, T0 + 20) == [T0 + 1]
    assert store.due_users(T0 + 10_000, 10) == []


@BACKENDS
def test_sync_restarts_monitoring_so_downtime_does_not_count(store):
    synced(store)
    store.record_ping("pi", T0)
    synced(store, now=T0 + 1000)  # the service was down for 1000 s
    assert store.due_users(T0 + 1000 + 60, 10) == []
    [user] = store.due_users(T0 + 1000 + 61, 10)
    assert (user.monitored_since, user.last_ping, user.due_at) == (T0 + 1000, T0, T0 + 1060)


@BACKENDS
def test_an_unmonitored_user_is_never_due(store):
    synced(store, users={"pi": {"monitor": False, "max_sleep": 1, "email_frequency": 1}})
    store.record_ping("pi", T0)
    assert store.due_users(T0 + 1e9, 10) == []


@BACKENDS
def test_sync_updates_changed_settings(store):
    synced(store)
    synced(store, users={"pi": {"monitor": True, "max_sleep": 5, "email_frequency": 7}}, now=T0 + 1)
    [user] = store.due_users(T0 + 100, 10)
    assert (user.max_sleep, user.email_frequency, user.due_at) == (5, 7, T0 + 6)


@pytest.mark.parametrize(
    ("query", "parameters", "index"),
    [
        (store_module.PINGS_BETWEEN_SQL, (1, T0, T0, 10), "INDEX pings_by_user_time (user_id=? AND at>? AND at<?)"),
    ],
)
def test_every_tick_and_logs_query_is_answered_through_an_index(store, query, parameters, index):
    plan = store.query_plan(query, parameters)
    assert [detail.split(" USING ")[0] for detail in plan] == ["SEARCH " + query.split(" FROM ")[1].split()[0]]
    assert index in plan[0]


@pytest.mark.parametrize(
    ("query", "parameters", "expected_plan"),
    [
        # The due users with their parents, and the due emails with their users, kinds and digests: each
        # through its index, then one primary-key seek per row found.
        (
            store_module.DUE_USERS_SQL,
            {"now": T0, "limit": 10},
            [
                "SEARCH child USING INDEX users_due (due_at<?)",
                "SEARCH parent USING INTEGER PRIMARY KEY (rowid=?) LEFT-JOIN",
            ],
        ),
        (
            store_module.DUE_EMAILS_SQL,
            {"now": T0, "limit": 10},
            [
                "SEARCH outbox USING INDEX outbox_queue (next_attempt_at<?)",
                "SEARCH alerts USING INTEGER PRIMARY KEY (rowid=?)",
                "SEARCH users USING INTEGER PRIMARY KEY (rowid=?)",
                "SEARCH digests USING INTEGER PRIMARY KEY (rowid=?) LEFT-JOIN",
            ],
        ),
    ],
)
def test_the_listener_and_the_drain_find_their_work_through_an_index_and_never_sort(
    store, query, parameters, expected_plan
):
    assert store.query_plan(query, parameters) == expected_plan


@pytest.mark.parametrize(
    ("query", "parameters", "expected_plan"),
    [
        (
            store_module.CONFIGURED_USERS_SQL,
            (),
            [
                "SCAN child USING INDEX sqlite_autoindex_users_1",
                "SEARCH parent USING INTEGER PRIMARY KEY (rowid=?) LEFT-JOIN",
            ],
        ),
        (
            store_module.RECENT_EMAILS_SQL,
            (10,),
            [
                "SCAN outbox",
                "SEARCH alerts USING INTEGER PRIMARY KEY (rowid=?)",
                "SEARCH users USING INTEGER PRIMARY KEY (rowid=?)",
                "SEARCH digests USING INTEGER PRIMARY KEY (rowid=?) LEFT-JOIN",
            ],
        ),
        (
            store_module.RECENT_WEBHOOKS_SQL,
            (10,),
            [
                "SCAN webhook_outbox",
                "SEARCH alerts USING INTEGER PRIMARY KEY (rowid=?)",
                "SEARCH users USING INTEGER PRIMARY KEY (rowid=?)",
            ],
        ),
    ],
)
def test_the_testing_page_queries_follow_an_index_and_never_sort(store, query, parameters, expected_plan):
    assert store.query_plan(query, parameters) == expected_plan


@pytest.mark.parametrize(
    ("query", "parameters", "expected_plan"),
    [
        (
            store_module.RECENT_PINGS_SQL,
            store_module.recent_pings_parameters(T0, 10, (1, 200), (1, T0 + 5, 7), 1000),
            [
                "SEARCH users USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
                "SEARCH pings USING COVERING INDEX pings_by_user_time (user_id=? AND at>?)",
            ],
        ),
        (
            store_module.PINGS_BEFORE_SQL,
            {"start": T0, "first": 1, "last": 200},
            [
                "SEARCH users USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
                "CORRELATED SCALAR SUBQUERY 1",
                "SEARCH pings USING COVERING INDEX pings_by_user_time (user_id=? AND at<?)",
            ],
        ),
        (store_module.OVERVIEW_USERS_SQL, (), ["SCAN users USING INDEX sqlite_autoindex_users_1"]),
        (store_module.NEW_PINGS_SQL, (10,), ["SEARCH pings USING INTEGER PRIMARY KEY (rowid>?)"]),
        (
            store_module.RECENT_ALERTS_SQL,
            (T0,),
            ["SCAN users", "SEARCH alerts USING INDEX alerts_by_user_time (user_id=? AND at>?)"],
        ),
        (
            store_module.PING_BEFORE_SQL,
            (1, T0),
            ["SEARCH pings USING COVERING INDEX pings_by_user_time (user_id=? AND at<?)"],
        ),
        (
            store_module.PING_FROM_SQL,
            (1, T0),
            ["SEARCH pings USING COVERING INDEX pings_by_user_time (user_id=? AND at>?)"],
        ),
        (
            store_module.DAY_FAILURES_SQL,
            (1, T0, T0, 10),
            ["SEARCH pings USING INDEX pings_by_user_time (user_id=? AND at>? AND at<?)"],
        ),
        (
            store_module.DAY_ALERTS_SQL,
            (1, T0, T0, 10),
            [
                "SEARCH alerts USING INDEX alerts_by_user_time (user_id=? AND at>? AND at<?)",
                "SEARCH outbox USING INDEX outbox_by_alert (alert_id=?) LEFT-JOIN",
            ],
        ),
    ],
)
def test_the_overview_queries_seek_per_user_or_read_new_pings_by_id_and_never_sort(
    store, query, parameters, expected_plan
):
    # users is scanned once per answer: the overview costs the number of users, not of pings.
    assert store.query_plan(query, parameters) == expected_plan


@BACKENDS
def test_configured_users_are_listed_by_name_without_removed_ones(store):
    def users(*names, monitored=("a", "b", "old")):
        return {name: {"monitor": name in monitored, "max_sleep": 60, "email_frequency": 600} for name in names}

    synced(store, users=users("b", "old", "a"))
    store.record_ping("b", T0 + 5)
    synced(store, users=users("b", "a", monitored=("a",)), now=T0 + 10)
    a, b = store.configured_users()
    assert (a.username, a.monitor, a.last_ping, a.monitored_since) == ("a", True, None, T0 + 10)
    assert (b.username, b.monitor, b.last_ping) == ("b", False, T0 + 5)


def alert_outcome(user, next_due_at, *recipients, down_since=None):
    emails = tuple(NewEmail(to, "pi disconnection detected", "body", f"<{to}>") for to in recipients)
    return CheckOutcome(user, next_due_at, emails, down_since=down_since)


@BACKENDS
def test_an_alert_records_its_time_and_queues_its_emails_together(store):
    synced(store)
    [user] = store.due_users(T0 + 61, 10)
    assert store.save_check_outcomes([alert_outcome(user, T0 + 661, "a@example.com", "b@example.com")], T0 + 61) == 1
    with second_connection(store) as connection:
        assert connection.execute("SELECT last_alert, due_at FROM users").fetchone() == (T0 + 61, T0 + 661)
        assert connection.execute("SELECT user_id, at, last_ping FROM alerts").fetchall() == [(1, T0 + 61, None)]
        assert connection.execute("SELECT recipient, status, next_attempt_at FROM outbox").fetchall() == [
            ("a@example.com", "queued", T0 + 61),
            ("b@example.com", "queued", T0 + 61),
        ]


@BACKENDS
def test_an_outcome_decided_before_a_ping_arrived_is_dropped(store):
    synced(store)
    [user] = store.due_users(T0 + 61, 10)
    store.record_ping("pi", T0 + 61)  # the device came back while the listener was deciding
    assert store.save_check_outcomes([alert_outcome(user, T0 + 661, "a@example.com")], T0 + 61) == 0
    assert store.due_emails(T0 + 100, 10) == []
    [user] = store.due_users(T0 + 122, 10)
    assert (user.last_alert, user.due_at) == (None, T0 + 121)


@BACKENDS
def test_the_outbox_keeps_an_email_until_it_is_sent_or_failed(store):
    synced(store)
    [user] = store.due_users(T0 + 61, 10)
    store.save_check_outcomes(
        [alert_outcome(user, T0 + 661, "a@example.com", "b@example.com", "c@example.com")], T0 + 61
    )
    first, second, third = store.due_emails(T0 + 61, 10)
    store.mark_sent([first.id], T0 + 62)
    store.schedule_retry([second.id], T0 + 70, "451 try later")
    store.mark_failed([third.id], T0 + 62, "550 no such user")
    assert store.due_emails(T0 + 69, 10) == []
    [retried] = store.due_emails(T0 + 70, 10)
    assert (retried.id, retried.attempts) == (second.id, 1)
    with second_connection(store) as connection:
        rows = connection.execute("SELECT recipient, status, attempts, last_error FROM outbox ORDER BY id").fetchall()
    assert rows == [
        ("a@example.com", "sent", 1, None),
        ("b@example.com", "queued", 1, "451 try later"),
        ("c@example.com", "failed", 1, "550 no such user"),
    ]


@BACKENDS
def test_recent_emails_show_the_newest_first_with_their_fate_and_the_alerts_last_ping(store):
    synced(store)
    store.record_ping("pi", T0 + 1)
    [user] = store.due_users(T0 + 62, 10)
    store.save_check_outcomes([alert_outcome(user, T0 + 662, "a@example.com", "b@example.com")], T0 + 62)
    first, second = store.due_emails(T0 + 62, 10)
    store.mark_sent([first.id], T0 + 63)
    store.schedule_retry([second.id], T0 + 70, "451 try later")
    assert store.recent_emails(10) == [
        EmailEvent(second.id, "pi", "b@example.com", "queued", 1, T0 + 1, T0 + 62, None),
        EmailEvent(first.id, "pi", "a@example.com", "sent", 1, T0 + 1, T0 + 62, T0 + 63),
    ]
    assert [email.id for email in store.recent_emails(1)] == [second.id]


def test_the_state_survives_reopening_the_database(tmp_path):
    path = tmp_path / "ping_listener.db"
    first = synced(Store(path))
    first.record_ping("pi", T0)
    [user] = first.due_users(T0 + 61, 10)
    first.save_check_outcomes([alert_outcome(user, T0 + 661, "a@example.com")], T0 + 61)
    first.close()
    reopened = Store(path)
    assert reopened.pings_between("pi", T0, T0 + 1) == [T0]
    assert [email.recipient for email in reopened.due_emails(T0 + 61, 10)] == ["a@example.com"]
    reopened.close()


def test_the_readable_views_show_local_times(store):
    synced(store)
    store.record_ping("pi", 1_790_000_000)  # 2026-09-21 14:13:20 UTC, 16:13:20 in Paris
    with second_connection(store) as connection:
        assert connection.execute("SELECT username, local_time FROM pings_readable").fetchall() == [
            ("pi", "2026-09-21 16:13:20")
        ]
        assert connection.execute("SELECT last_ping FROM users_readable").fetchone() == ("2026-09-21 16:13:20",)


@BACKENDS
def test_pings_from_many_threads_are_all_recorded(store):
    synced(store)
    errors = []

    def ping(index):
        try:
            for n in range(50):
                store.record_ping("pi", T0 + index * 100 + n)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=ping, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.pings_between("pi", T0, T0 + 10_000)) == 16 * 50


def test_a_file_that_is_not_sqlite_stops_with_a_message_naming_it(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database" * 100)
    with pytest.raises(StoreOpenError, match=f"^{path}: .*not a database"):
        Store(path)


V1_SCHEMA = Path(__file__).with_name("data") / "schema_v1.sql"


def version_1_database(path):
    """A database as Ping Listener left it at schema version 1: pi's alert emails in every state."""
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(V1_SCHEMA.read_text())
        connection.execute("PRAGMA user_version = 1")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(
            "INSERT INTO users (id, username, configured, monitor, max_sleep, email_frequency)"
            " VALUES (1, 'pi', 1, 1, 60, 600)"
        )
        connection.execute("INSERT INTO alerts (id, user_id, at, last_ping) VALUES (1, 1, ?, ?)", (T0, T0 - 61))
        emails = [
            ("no-login@example.com", "failed", "530 5.7.0 Authentication required"),
            ("wrong-password@example.com", "failed", "535 5.7.8 Authentication credentials invalid"),
            ("no-such-user@example.com", "failed", "550 5.1.1 no such user"),
            ("spam@example.com", "failed", "554 5.7.1 message refused"),
            ("sent@example.com", "sent", None),
        ]
        connection.executemany(
            "INSERT INTO outbox (alert_id, recipient, subject, body, message_id, queued_at, status, attempts,"
            " next_attempt_at, last_error, finished_at) VALUES (1, ?, 'pi disconnection detected', 'body', ?, ?, ?, 1,"
            " NULL, ?, ?)",
            [(to, f"<{to}>", T0, status, error, T0 + 1) for to, status, error in emails],
        )
    return path


def test_a_version_1_database_is_migrated_and_keeps_its_history(tmp_path):
    path = tmp_path / "v1.db"
    version_1_database(path)
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("INSERT INTO pings (user_id, at) VALUES (1, ?)", (T0,))
    migrated = Store(path)
    try:
        assert migrated.pragma("user_version") == SCHEMA_VERSION
        assert migrated.pings_between("pi", T0, T0 + 1) == [T0]
        assert "outbox_by_alert" in " ".join(migrated.query_plan(store_module.DAY_ALERTS_SQL, (1, T0, T0, 1)))
        migrated.check_writable(T0)
    finally:
        migrated.close()


def test_a_version_1_database_is_upgraded_and_emails_failed_by_an_authentication_answer_are_queued_again(tmp_path):
    upgraded = Store(version_1_database(tmp_path / "v1.db"))
    try:
        assert upgraded.upgraded_from == 1
        assert upgraded.pragma("user_version") == SCHEMA_VERSION
        due = upgraded.due_emails(T0 + 1, 10)
        assert [(email.recipient, email.attempts) for email in due] == [
            ("no-login@example.com", 1),
            ("wrong-password@example.com", 1),
        ]
        history = {(event.recipient, event.status) for event in upgraded.recent_emails(10)}
        assert history == {
            ("no-login@example.com", "queued"),
            ("wrong-password@example.com", "queued"),
            ("no-such-user@example.com", "failed"),
            ("spam@example.com", "failed"),
            ("sent@example.com", "sent"),
        }
        assert upgraded.pings_between("pi", T0 - 100, T0) == []
    finally:
        upgraded.close()
    # Once only: the next start finds the current version and changes nothing.
    reopened = Store(tmp_path / "v1.db")
    assert reopened.upgraded_from is None
    reopened.close()


def test_an_upgrade_that_fails_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    path = version_1_database(tmp_path / "v1.db")
    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS, "UPDATE no_such_table SET x = 1"))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", store_module.SCHEMA_VERSION + 1)
    with pytest.raises(StoreOpenError, match="no such table: no_such_table"):
        Store(path)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 1
        assert connection.execute("SELECT count(*) FROM outbox WHERE status = 'queued'").fetchone()[0] == 0


def test_a_database_in_a_missing_directory_is_refused_naming_the_directory(tmp_path):
    path = tmp_path / "no" / "such" / "ping_listener.db"
    with pytest.raises(StoreOpenError) as raised:
        Store(path)
    assert str(raised.value) == (
        f"{path}: the directory {tmp_path / 'no' / 'such'} does not exist; create it or choose another --db"
    )
    assert not (tmp_path / "no").exists()


def test_another_applications_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE recipes (name TEXT)")
    with pytest.raises(StoreOpenError, match="not a Ping Listener database"):
        Store(path)


@hypothesis.settings(max_examples=200, deadline=None, suppress_health_check=ONE_STORE_PER_EXAMPLE)
@hypothesis.given(
    events=hypothesis.strategies.lists(
        hypothesis.strategies.tuples(
            hypothesis.strategies.sampled_from(["ping", "restart"]),
            hypothesis.strategies.floats(min_value=-1000, max_value=1000),
        ),
        max_size=12,
    )
)
def test_the_stored_due_time_is_always_the_rules_late_at(new_store, events):
    # The deadline rule is written in SQL (on every ping and restart) and in rules.late_at:
    # whatever happens, they must agree, or the index would hide late users.
    store = synced(new_store())
    for kind, offset in events:
        if kind == "ping":
            store.record_ping("pi", T0 + offset)
        else:
            store.restart_monitoring(T0 + offset)
        [user] = store.configured_users()
        assert user.due_at == rules.late_at(user)


def user_row(store, *columns):
    with second_connection(store) as connection:
        return connection.execute(f"SELECT {', '.join(columns)} FROM users WHERE username = 'pi'").fetchone()


def signal_rows(store):
    with second_connection(store) as connection:
        return connection.execute("SELECT at, kind, exit_code, duration, body FROM pings ORDER BY id").fetchall()


RUNNER = {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600, "max_runtime": 30}}


@BACKENDS
def test_each_kind_of_signal_is_committed_with_its_exit_code_body_and_the_duration_of_the_run_it_closes(store):
    synced(store, RUNNER)
    store.record_ping("pi", T0 + 1, "start")
    store.record_ping("pi", T0 + 2, "log", body="50 %")
    store.record_ping("pi", T0 + 11, "fail", exit_code=3, body="disk full")
    store.record_ping("pi", T0 + 12, "start")
    store.record_ping("pi", T0 + 14, "start")  # a new run: the one before gets no duration
    store.record_ping("pi", T0 + 20.5, "success", exit_code=0)
    store.record_ping("pi", T0 + 21)
    assert signal_rows(store) == [
        (T0 + 1, "start", None, None, None),
        (T0 + 2, "log", None, None, "50 %"),
        (T0 + 11, "fail", 3, 10.0, "disk full"),
        (T0 + 12, "start", None, None, None),
        (T0 + 14, "start", None, None, None),
        (T0 + 20.5, "success", 0, 6.5, None),
        (T0 + 21, "success", None, None, None),
    ]
    assert user_row(store, "last_duration", "run_started", "failed_at") == (6.5, None, None)


@BACKENDS
def test_a_start_opens_a_run_but_is_no_sign_of_life_and_a_log_changes_nothing(store):
    synced(store, RUNNER)
    store.record_ping("pi", T0 + 5)
    store.record_ping("pi", T0 + 10, "start")
    assert user_row(store, "last_ping", "run_started", "due_at") == (T0 + 5, T0 + 10, T0 + 40)
    before = user_row(store, "*")
    store.record_ping("pi", T0 + 20, "log")
    assert user_row(store, "*") == before


@BACKENDS
def test_a_fail_is_contact_and_makes_the_user_failed_until_the_next_success(store):
    synced(store)
    store.record_ping("pi", T0 + 5, "fail", exit_code=1)
    store.record_ping("pi", T0 + 7, "fail", exit_code=2)
    [fail, again] = [row[0] for row in rows(store, "SELECT id FROM pings ORDER BY id")]
    # Failed since the first fail, due at once; the latest fail is the one its alert quotes.
    assert user_row(store, "last_ping", "failed_at", "fail_signal", "due_at") == (T0 + 7, T0 + 5, again, T0 + 5)
    assert store.signal(again) == Signal(T0 + 7, "fail", 2, None, None)
    store.record_ping("pi", T0 + 9)
    assert user_row(store, "failed_at", "fail_signal", "due_at") == (None, None, T0 + 69)
    assert fail != again


@BACKENDS
def test_a_success_ends_only_an_alerted_outage_and_makes_its_recovery_due_at_once(store):
    synced(store)
    store.record_ping("pi", T0 + 1)
    assert user_row(store, "back_at") == (None,)  # no alerted outage
    [user] = store.due_users(T0 + 62, 10)
    store.save_check_outcomes([alert_outcome(user, T0 + 662, "a@example.com", down_since=T0 + 61)], T0 + 62)
    assert user_row(store, "down_since", "last_alert_kind") == (T0 + 61, "late")
    store.record_ping("pi", T0 + 100)
    store.record_ping("pi", T0 + 101)
    assert user_row(store, "back_at", "due_at") == (T0 + 100, T0 + 100)


@BACKENDS
def test_a_recovery_is_queued_and_the_outage_closed_in_the_same_transaction(store):
    synced(store)
    [user] = store.due_users(T0 + 61, 10)
    store.save_check_outcomes([alert_outcome(user, T0 + 661, "a@example.com", down_since=T0 + 60)], T0 + 61)
    store.record_ping("pi", T0 + 100)
    [user] = store.due_users(T0 + 101, 10)
    back = (NewEmail("a@example.com", "pi is back", "body", "<back>"),)
    outcome = CheckOutcome(user, T0 + 160, ends_outage=True, recovery=back)
    assert store.save_check_outcomes([outcome], T0 + 101) == 0  # a recovery is not an alert
    assert user_row(store, "down_since", "back_at", "due_at") == (None, None, T0 + 160)
    assert rows(store, "SELECT kind, went_down_at, at FROM alerts ORDER BY id") == [
        ("late", T0 + 60, T0 + 61),
        ("back", T0 + 60, T0 + 101),
    ]
    assert [(e.kind, e.recipient) for e in store.recent_emails(10)] == [
        ("back", "a@example.com"),
        ("late", "a@example.com"),
    ]
    # Once only: the same decision applied again finds the user changed.
    assert store.save_check_outcomes([outcome], T0 + 102) == 0
    assert len(store.recent_emails(10)) == 2


@BACKENDS
def test_an_outcome_decided_before_any_signal_arrived_is_dropped_even_if_the_deadline_stayed(store):
    synced(store)
    store.record_ping("pi", T0, "fail")
    [user] = store.due_users(T0 + 1, 10)
    store.record_ping("pi", T0 + 0.5, "start")  # moves no deadline: the failure is still due at T0
    assert user_row(store, "due_at") == (user.due_at,)
    assert store.save_check_outcomes([alert_outcome(user, T0 + 601, "a@example.com", down_since=T0)], T0 + 1) == 0


@BACKENDS
def test_signals_between_encodes_each_and_stops_at_its_limit_or_before_the_size_bound(store):
    synced(store)
    for n in range(5):
        store.record_ping("pi", T0 + n, "log", body="x" * 10)
    encoded = []

    def encode(signal):
        encoded.append(signal)
        return signal.body.encode() + b"|"

    encodings, more = store.signals_between("pi", T0, T0 + 10, limit=10, max_size=1000, encode=encode)
    assert (encodings, more, encoded[0]) == ([b"x" * 10 + b"|"] * 5, False, Signal(T0, "log", None, None, "x" * 10))
    assert store.signals_between("pi", T0, T0 + 10, 3, 1000, encode) == ([b"x" * 10 + b"|"] * 3, True)
    # 11 bytes each: three fit in 33 or 43, a fourth would not.
    for max_size in (33, 43):
        encoded.clear()
        assert store.signals_between("pi", T0, T0 + 10, 10, max_size, encode) == ([b"x" * 10 + b"|"] * 3, True)
        assert len(encoded) == 4  # reading stops there
    assert store.signals_between("pi", T0, T0 + 10, 10, 44, encode) == ([b"x" * 10 + b"|"] * 4, True)
    with pytest.raises(UnknownUserError):
        store.signals_between("ghost", T0, T0 + 1, 10, 10, encode)


@BACKENDS
def test_a_restart_after_the_clock_went_back_moves_future_runs_failures_and_recoveries_to_now(store):
    synced(store, RUNNER)
    store.record_ping("pi", T0 + 100, "start")
    store.record_ping("pi", T0 + 200, "fail")
    store.restart_monitoring(T0)
    assert user_row(store, "last_ping", "run_started", "failed_at", "due_at") == (None, None, T0, T0)
    [user] = store.due_users(T0 + 1, 10)
    store.save_check_outcomes([alert_outcome(user, T0 + 601, "a@example.com", down_since=T0)], T0 + 1)
    store.record_ping("pi", T0 + 300, "start")
    store.record_ping("pi", T0 + 400)  # back, by a clock that then goes back again
    store.restart_monitoring(T0 + 2)
    assert user_row(store, "run_started", "back_at", "due_at") == (None, T0 + 2, T0 + 2)


def create_version_1_database(path):
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(f"{V1_SCHEMA.read_text()}; PRAGMA user_version = 1;")
        connection.executescript(
            f"""
            PRAGMA journal_mode = WAL;
            INSERT INTO users VALUES (1, 'pi', 1, 1, 60, 600, {T0}, {T0 + 5}, {T0 + 70}, {T0 + 670});
            INSERT INTO users VALUES (2, 'nas', 1, 1, 60, 600, {T0}, {T0 + 5}, {T0 + 1}, {T0 + 65});
            INSERT INTO pings (user_id, at) VALUES (1, {T0 + 5}), (2, {T0 + 5});
            INSERT INTO alerts (user_id, at, last_ping) VALUES (1, {T0 + 70}, {T0 + 5}), (2, {T0 + 1}, NULL);
            INSERT INTO outbox (alert_id, recipient, subject, body, message_id, queued_at, next_attempt_at)
            VALUES (1, 'oncall@example.com', 'pi disconnection detected', 'body', '<1@x>', {T0 + 70}, {T0 + 70});
            """
        )


def schema_of(path):
    with contextlib.closing(sqlite3.connect(path)) as connection:
        objects = connection.execute("SELECT type, name FROM sqlite_schema ORDER BY type, name").fetchall()
        columns = {
            name: connection.execute(f"PRAGMA table_xinfo({name})").fetchall()
            for kind, name in objects
            if kind == "table"
        }
        views = connection.execute("SELECT name, sql FROM sqlite_schema WHERE type IN ('view', 'index')").fetchall()
    return objects, columns, sorted(views, key=lambda row: row[0])


def test_a_version_1_database_is_upgraded_keeping_its_history_and_its_alerted_outage(tmp_path):
    old = tmp_path / "old.db"
    create_version_1_database(old)
    upgraded = Store(old)
    upgraded.close()
    fresh = Store(tmp_path / "new.db")
    fresh.close()
    assert query(old, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert schema_of(old) == schema_of(tmp_path / "new.db")
    assert query(old, "SELECT kind, exit_code, body FROM pings") == [("success", None, None)] * 2
    assert query(old, "SELECT kind FROM alerts") == [("late",), ("late",)]
    # pi was alerted during its current silence (late at T0 + 65); nas's alert was before it.
    assert query(old, "SELECT username, down_since, last_alert_kind FROM users ORDER BY id") == [
        ("pi", T0 + 65, "late"),
        ("nas", None, "late"),
    ]
    reopened = synced(Store(old), users={"pi": RUNNER["pi"]}, now=T0 + 1000)
    try:
        reopened.record_ping("pi", T0 + 1001)
        [pi] = reopened.due_users(T0 + 1002, 10)
        assert (pi.back_at, pi.down_since, pi.max_runtime) == (T0 + 1001, T0 + 65, 30)
        assert [email.recipient for email in reopened.due_emails(T0 + 1000, 10)] == ["oncall@example.com"]
    finally:
        reopened.close()


def outcome_of(user, decision):
    """What the absence listener would save for `decision` about `user`, with stand-in emails."""
    suppressed = decision.suppressed
    return CheckOutcome(
        user,
        decision.next_due_at,
        (NewEmail("a@example.com", "s", "b", "<m>"),) if decision.alert else (),
        kind=decision.alert.kind if decision.alert else rules.SILENCE,
        down_since=decision.down_since,
        ends_outage=user.back_at is not None,
        recovery=(NewEmail("a@example.com", "s", "b", "<r>"),) if decision.recovery else (),
        suppressed=None if suppressed is None else (suppressed.kind, suppressed.down_at),
        next_run=decision.next_run,
    )


SIGNAL_EVENTS = hypothesis.strategies.lists(
    hypothesis.strategies.tuples(
        hypothesis.strategies.sampled_from(["success", "start", "fail", "log", "restart", "check"]),
        hypothesis.strategies.floats(min_value=-1000, max_value=1000),
    ),
    max_size=14,
)


# How a user is watched: by max_sleep, or by a schedule every 5 minutes (with or without grace), whose
# stored deadline is provisional until the listener's next step.
WATCHES = [
    {"max_sleep": 60},
    {"schedule": "*/5 * * * *", "tz": "Europe/Paris", "grace": 30},
    {"schedule": "*/5 * * * *", "tz": "Australia/Sydney", "grace": 0},
]


# Detection's settings (SPEC "Detection"), alone and together; start_grace only for a scheduled user.
DETECTIONS = [
    {},
    {"fail_threshold": 2, "min_runtime": 5},
    {"min_interval": 50},
    {"fail_threshold": 3, "min_runtime": 5, "min_interval": 50},
    {"maintenance": [{"schedule": "*/7 * * * *", "duration": 60, "tz": "UTC"}]},
]


def with_detection(watch, detection, start_grace):
    """A user's settings: how it is watched, detection's settings, and start_grace if scheduled."""
    grace = {} if start_grace is None or "schedule" not in watch else {"start_grace": start_grace}
    return {**watch, **detection, **grace}


def expected_signal_effects(before, kind, now):
    """What rules.py says a signal of `kind` at `now` makes of `before`'s detection columns (fail_count,
    last_success, too_often_at), for comparison with what the store's SQL made of them."""
    duration = max(now - before.run_started, 0) if kind in ("success", "fail") and before.run_started else None
    counted = rules.counts_as(kind, duration, before.min_runtime)
    fail_count = {"success": 0, "fail": before.fail_count + 1}.get(counted, before.fail_count)
    last_success, too_often_at = before.last_success, before.too_often_at
    if counted == "success":
        if rules.too_often(before.last_success, now, before.min_interval):
            too_often_at = now
        last_success = now if last_success is None else max(last_success, now)
    return fail_count, last_success, too_often_at


@hypothesis.settings(max_examples=200, deadline=None, suppress_health_check=ONE_STORE_PER_EXAMPLE)
@hypothesis.given(
    events=SIGNAL_EVENTS,
    max_runtime=hypothesis.strategies.sampled_from([None, 0.5, 30]),
    watch=hypothesis.strategies.sampled_from(WATCHES),
    detection=hypothesis.strategies.sampled_from(DETECTIONS),
    start_grace=hypothesis.strategies.sampled_from([None, 0, 100]),
)
def test_the_stored_due_time_is_always_the_rules_due_at_or_the_listeners_choice(
    new_store, events, max_runtime, watch, detection, start_grace
):
    # The deadline rule is written in SQL (on every signal and restart) and in rules.due_at: whatever
    # happens, they must agree, or the index would hide due users. After a listener step it is
    # what rules.decide chose. What a signal counts as (rules.counts_as: a run too fast is a fail) and
    # whether it came too often (rules.too_often) are SQL too: the columns they move are rules.py's.
    users = {
        "pi": {
            "monitor": True,
            "email_frequency": 100,
            "max_runtime": max_runtime,
            **with_detection(watch, detection, start_grace),
        }
    }
    store = synced(new_store(), users)
    for kind, offset in events:
        now = T0 + offset
        if kind == "check":
            [before] = store.configured_users()
            decision = rules.decide(before, now)
            store.save_check_outcomes([outcome_of(before, decision)], now)
            [user] = store.configured_users()
            assert user.due_at == decision.next_due_at
            continue
        [before] = store.configured_users()
        if kind == "restart":
            store.restart_monitoring(now)
        else:
            store.record_ping("pi", now, kind)
        [user] = store.configured_users()
        # A log changes nothing, not even a deadline the listener chose.
        assert user.due_at == (before.due_at if kind == "log" else rules.due_at(user))
        if kind != "restart":
            assert (user.fail_count, user.last_success, user.too_often_at) == expected_signal_effects(before, kind, now)


STORM_EVENTS = hypothesis.strategies.lists(
    hypothesis.strategies.tuples(
        hypothesis.strategies.sampled_from(
            ["router success", "router fail", "router start", "cam success", "cam fail", "cam start"]
            + ["snooze router", "snooze cam", "unsnooze cam", "restart", "check"]
        ),
        hypothesis.strategies.floats(min_value=-1000, max_value=1000),
    ),
    max_size=16,
)


@hypothesis.settings(max_examples=300, deadline=None, suppress_health_check=ONE_STORE_PER_EXAMPLE)
@hypothesis.given(
    events=STORM_EVENTS,
    max_runtime=hypothesis.strategies.sampled_from([None, 30]),
    watch=hypothesis.strategies.sampled_from([{"max_sleep": 60}, *WATCHES[1:]]),
    detection=hypothesis.strategies.sampled_from(DETECTIONS),
    start_grace=hypothesis.strategies.sampled_from([None, 10]),
)
def test_with_dependencies_and_snoozes_the_stored_due_time_is_the_rules_and_a_return_is_the_rules(
    new_store, events, max_runtime, watch, detection, start_grace
):
    # Each user's deadline, as SQL stores it after every signal, snooze and restart, is rules.due_at (or
    # what rules.decide chose, after a listener step). A success of the router restarts cam's silence
    # exactly when rules.condition said that the router was down at that moment; for a scheduled router,
    # when the listener has looked at it since its silence was last restarted (SQL then knows its next run).
    user = {
        "monitor": True,
        "email_frequency": 100,
        "max_runtime": max_runtime,
        **with_detection(watch, detection, start_grace),
    }
    users = {"router": user, "cam": {**user, "depends_on": "router"}}
    store = synced(new_store(), users)
    for event, offset in events:
        now = T0 + offset
        before = {user.username: user for user in store.configured_users()}
        chosen = {}
        if event == "check":
            outcomes = []
            for user in before.values():
                decision = rules.decide(user, now, user.parent)
                outcomes.append(outcome_of(user, decision))
                chosen[user.username] = decision.next_due_at
            store.save_check_outcomes(outcomes, now)
        elif event == "restart":
            store.restart_monitoring(now)
        elif event.startswith("snooze"):
            store.snooze(event.split()[1], now + 300, now)
        elif event == "unsnooze cam":
            store.snooze("cam", now, now)
        else:
            username, kind = event.split()
            store.record_ping(username, now, kind)
        after = {user.username: user for user in store.configured_users()}
        router = before["router"]
        down = rules.condition(router, now)
        # A success that closed a run too fast is a fail (rules.counts_as): no return.
        duration = None if router.run_started is None else max(now - router.run_started, 0)
        success = rules.counts_as("success", duration, router.min_runtime) == rules.SUCCESS
        returned = event == "router success" and success and down is not None
        if router.schedule is not None and returned and down.kind in (rules.SILENCE, rules.START_LATE):
            # Only if the listener's stored next run is for the moment the router's silence is measured from.
            returned = next_run_after_of(store, "router") == rules.silence_start(router, now)
        if returned:
            assert after["cam"].silence_from == max(before["cam"].silence_from or now, now)
            assert after["cam"].suppressed_kind is None
        else:
            assert after["cam"].silence_from == before["cam"].silence_from
        for name, user in after.items():
            touched = event in ("check", "restart") or name in event.split() or (name == "cam" and returned)
            if event == "unsnooze cam":  # minutes=0 changes nothing for a user not snoozed
                touched = name == "cam" and rules.snoozed(before["cam"], now)
            expected = chosen.get(name, rules.due_at(user)) if touched else before[name].due_at
            assert user.due_at == expected, (name, event)


def next_run_after_of(store, username):
    """The next_run_after the listener last stored for `username` (a signal leaves it as it was)."""
    with second_connection(store) as connection:
        rows = connection.execute("SELECT next_run_after FROM users WHERE username = ?", (username,)).fetchone()
    return rows[0]


def reload_row(store, username):
    with second_connection(store) as connection:
        return connection.execute(
            "SELECT configured, monitor, max_sleep, email_frequency, monitored_since, last_ping, last_alert, due_at"
            " FROM users WHERE username = ?",
            (username,),
        ).fetchone()


def reloaded(store, users, now):
    return store.reload_users(make_settings(users).users, now)


def config_of(max_sleep=60, monitor=True, email_frequency=600):
    return {"monitor": monitor, "max_sleep": max_sleep, "email_frequency": email_frequency}


@BACKENDS
def test_a_reload_leaves_unchanged_users_exactly_as_they_were(store):
    synced(store, users={"pi": config_of(), "nas": config_of()})
    store.record_ping("pi", T0 + 30)
    [nas] = store.due_users(T0 + 61, 10)
    store.save_check_outcomes([alert_outcome(nas, T0 + 661, "a@example.com")], T0 + 61)
    before = {name: reload_row(store, name) for name in ("pi", "nas")}
    change = reloaded(store, {"pi": config_of(), "nas": config_of()}, T0 + 100)
    assert change == store_module.UsersChange((), (), ())
    assert {name: reload_row(store, name) for name in ("pi", "nas")} == before


@BACKENDS
def test_a_reload_monitors_added_users_from_then_and_forgets_removed_ones_but_not_their_history(store):
    synced(store, users={"pi": config_of(), "old": config_of()})
    store.record_ping("old", T0 + 10)
    change = reloaded(store, {"pi": config_of(), "new": config_of(max_sleep=30)}, T0 + 100)
    assert change == store_module.UsersChange(("new",), ("old",), ())
    assert reload_row(store, "new") == (1, 1, 30.0, 600.0, T0 + 100, None, None, T0 + 130)
    assert reload_row(store, "old")[0] == 0 and reload_row(store, "old")[-1] is None
    with pytest.raises(UnknownUserError):
        store.record_ping("old", T0 + 101)
    assert store.pings_between("old", T0, T0 + 200) == [T0 + 10]
    # Configured again: monitored afresh from that moment, its history still there.
    reloaded(store, {"pi": config_of(), "old": config_of()}, T0 + 200)
    assert reload_row(store, "old")[4:] == (T0 + 200, T0 + 10, None, T0 + 260)


@BACKENDS
def test_a_reload_moves_a_changed_users_deadline_at_once_either_way(store):
    synced(store)
    store.record_ping("pi", T0 + 10)
    assert reloaded(store, {"pi": config_of(max_sleep=20)}, T0 + 40).changed == ("pi",)
    [late] = store.due_users(T0 + 40, 10)  # a shorter max_sleep: late at once
    assert (late.max_sleep, late.due_at, late.monitored_since) == (20.0, T0 + 30, T0)
    reloaded(store, {"pi": config_of(max_sleep=3600)}, T0 + 41)
    assert store.due_users(T0 + 41, 10) == []  # a longer one ends the lateness
    assert reload_row(store, "pi")[-1] == T0 + 3610


@BACKENDS
def test_turning_monitor_on_by_reload_monitors_from_then(store):
    synced(store, users={"pi": config_of(monitor=False)})
    reloaded(store, {"pi": config_of(monitor=True)}, T0 + 1000)
    assert reload_row(store, "pi")[4:] == (T0 + 1000, None, None, T0 + 1060)


@BACKENDS
def test_pings_and_alerts_are_counted_per_user_for_the_metrics(store):
    synced(store, users={"pi": config_of(), "nas": config_of(monitor=False)})
    for at in (1, 2, 3):
        store.record_ping("pi", T0 + at)
    [pi] = store.due_users(T0 + 100, 10)
    store.save_check_outcomes([alert_outcome(pi, T0 + 700, "a@example.com", "b@example.com")], T0 + 100)
    counts = store.user_counts(T0)
    assert dict(zip(counts.usernames, zip(counts.pings, counts.alerts, strict=True), strict=True)) == {
        "pi": (3, 1),
        "nas": (0, 0),
    }
    first, second = store.due_emails(T0 + 100, 10)
    store.mark_sent([first.id], T0 + 101)
    assert store.outbox_counts() == {"queued": 1, "sent": 1, "failed": 0}


def test_a_version_1_database_is_migrated_with_its_counters_filled_in(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(V1_SCHEMA.read_text())
        connection.execute("PRAGMA user_version = 1")
        connection.execute(
            "INSERT INTO users (username, configured, monitor, max_sleep, email_frequency) VALUES ('pi', 1, 1, 60, 600)"
        )
        connection.executemany("INSERT INTO pings (user_id, at) VALUES (1, ?)", [(T0 + 1,), (T0 + 2,)])
    migrated = Store(path)
    try:
        assert migrated.pragma("user_version") == SCHEMA_VERSION
        counts = migrated.user_counts(T0)
        assert (counts.usernames, counts.pings) == (("pi",), (2,))
        migrated.record_ping("pi", T0 + 3)
        assert migrated.user_counts(T0).pings == (3,)
    finally:
        migrated.close()


@pytest.mark.parametrize(
    ("query", "parameters", "expected_plan"),
    [
        (store_module.USER_COUNTS_SQL, {"now": T0}, ["SCAN users"]),
        (store_module.QUEUED_COUNT_SQL, (), ["SCAN outbox USING INDEX outbox_queue"]),
        (store_module.FINISHED_COUNTS_SQL, (), ["SCAN outbox USING COVERING INDEX outbox_finished"]),
        (
            store_module.OLD_PINGS_SQL,
            (T0, 10),
            [
                "SCAN users",
                "SEARCH pings USING COVERING INDEX pings_by_user_time (user_id=? AND at<?)",
                "SCALAR SUBQUERY 1",
                "SEARCH pings",  # max(id): the last entry of its primary key
            ],
        ),
    ],
)
def test_metrics_and_retention_queries_never_read_the_pings_or_the_outbox_rows(store, query, parameters, expected_plan):
    assert store.query_plan(query, parameters) == expected_plan


def test_old_history_deletes_follow_their_indexes(store):
    assert "SEARCH outbox USING COVERING INDEX outbox_finished (status=? AND finished_at<?)" in store.query_plan(
        store_module.DELETE_OLD_EMAILS_SQL, (T0, 10)
    )
    plan = store.query_plan(store_module.DELETE_OLD_ALERTS_SQL, (T0, 10))
    assert "SEARCH alerts USING COVERING INDEX alerts_by_time (at<?)" in plan
    assert "SEARCH outbox USING COVERING INDEX outbox_by_alert (alert_id=?)" in plan
    plan = store.query_plan(store_module.DELETE_OLD_DIGESTS_SQL, (T0, 10))
    assert "SCAN digests" in plan  # along its primary key, oldest first, up to the batch's end
    assert "SEARCH outbox USING COVERING INDEX outbox_by_digest (digest_id=?)" in plan


@BACKENDS
def test_old_pings_are_deleted_in_batches_oldest_users_first_and_newer_ones_kept(store):
    synced(store, users={"pi": config_of(), "nas": config_of()})
    for at in range(10):
        store.record_ping("pi", T0 + at)
        store.record_ping("nas", T0 + at)
    assert store.delete_pings_before(T0 + 5, 4) == 4
    assert store.delete_pings_before(T0 + 5, 4) == 4
    assert store.delete_pings_before(T0 + 5, 4) == 2
    assert store.delete_pings_before(T0 + 5, 4) == 0
    assert store.pings_between("pi", T0 - 10, T0 + 20) == [T0 + at for at in range(5, 10)]
    assert store.pings_between("nas", T0 - 10, T0 + 20) == [T0 + at for at in range(5, 10)]
    # The counters are totals received, not what is kept.
    assert store.user_counts(T0).pings == (10, 10)


def test_deleted_pings_leave_space_that_new_pings_reuse(store):
    synced(store)
    for at in range(5000):
        store.record_ping("pi", T0 + at)
    pages = store.pragma("page_count")
    while store.delete_pings_before(T0 + 5000, 1000):
        pass
    assert store.pragma("freelist_count") > 0
    for at in range(5000, 10000):
        store.record_ping("pi", T0 + at)
    assert store.pragma("page_count") <= pages


@BACKENDS
def test_old_finished_emails_and_their_alerts_go_but_queued_ones_stay(store):
    synced(store, users={"pi": config_of(), "nas": config_of()})
    users = store.due_users(T0 + 61, 10)
    store.save_check_outcomes(
        [
            alert_outcome(users[0], T0 + 700, "a@example.com", "b@example.com"),
            alert_outcome(users[1], T0 + 700, "c@example.com"),
        ],
        T0 + 61,
    )
    a, b, c = store.due_emails(T0 + 61, 10)
    store.claim_emails({}, T0 + 61, [NewDigest((a.id, b.id), "a@example.com", "2 devices", "<d>")])
    store.mark_sent([a.id], T0 + 62)
    store.mark_failed([b.id], T0 + 62, "550")
    # c stays queued: its alert stays too, however old.
    assert store.delete_history_before(T0 + 1000, 1) == 1
    # The other email, then the digest and the alert it freed.
    assert store.delete_history_before(T0 + 1000, 10) == 3
    assert store.delete_history_before(T0 + 1000, 10) == 0
    assert rows(store, "SELECT count(*) FROM digests") == [(0,)]
    assert store.outbox_counts() == {"queued": 1, "sent": 0, "failed": 0}
    with second_connection(store) as connection:
        assert connection.execute("SELECT count(*) FROM alerts").fetchone() == (1,)
    [left] = store.due_emails(T0 + 61, 10)
    assert left.id == c.id


def test_check_writable_passes_and_reports_a_database_locked_by_another_process(store):
    store.check_writable(T0)
    with second_connection(store) as connection:
        connection.execute("PRAGMA busy_timeout = 0")
        connection.execute("BEGIN IMMEDIATE")
        with pytest.raises(store_module.StoreUnavailableError, match="locked"):
            store.check_writable(T0 + 1)
        connection.execute("ROLLBACK")
    store.check_writable(T0 + 2)
    assert store.pragma("busy_timeout") == 5000  # pings still wait as long as before


@BACKENDS
def test_a_health_check_commits_a_write_that_rewrites_one_row(store):
    for second in range(3):
        store.check_writable(T0 + second)
        assert rows(store, "SELECT id, checked_at FROM health") == [(1, T0 + second)]


@BACKENDS
def test_a_reload_can_give_a_user_a_schedule_and_its_deadline_is_then_the_listeners_to_store(store):
    synced(store)
    store.record_ping("pi", T0 + 10)
    nightly = {"monitor": True, "schedule": "30 2 * * *", "tz": "Europe/Paris", "grace": 60, "email_frequency": 600}
    assert reloaded(store, {"pi": nightly}, T0 + 40).changed == ("pi",)
    pi = store.user("pi")
    assert (pi.schedule, pi.tz, pi.grace, pi.max_sleep, pi.due_at) == ("30 2 * * *", "Europe/Paris", 60.0, 0.0, T0 + 10)
    assert reloaded(store, {"pi": nightly}, T0 + 50).changed == ()
    assert reloaded(store, {"pi": {**nightly, "tz": "UTC"}}, T0 + 60).changed == ("pi",)
    assert reloaded(store, {"pi": config_of()}, T0 + 70).changed == ("pi",)
    assert (store.user("pi").schedule, store.user("pi").due_at) == (None, T0 + 70)


@BACKENDS
def test_a_reload_follows_a_changed_depends_on_and_adds_a_parent_with_its_child(store):
    synced(store, users={"pi": config_of()})
    change = reloaded(
        store, {"pi": config_of(), "cam": {**config_of(), "depends_on": "router"}, "router": config_of()}, T0 + 10
    )
    assert change == store_module.UsersChange(("cam", "router"), (), ())
    parents = {user.username: user.parent and user.parent.username for user in store.configured_users()}
    assert parents == {"cam": "router", "pi": None, "router": None}
    change = reloaded(
        store, {"pi": config_of(), "cam": {**config_of(), "depends_on": "pi"}, "router": config_of()}, T0 + 20
    )
    assert change.changed == ("cam",)
    assert {user.username: user.parent and user.parent.username for user in store.configured_users()}["cam"] == "pi"


@BACKENDS
def test_a_user_configured_again_without_depends_on_has_no_parent_after_a_reload_or_a_start(store):
    family = {"router": config_of(), "cam": {**config_of(), "depends_on": "router"}}
    synced(store, users=family)
    reloaded(store, {"router": config_of()}, T0 + 10)
    reloaded(store, {"router": config_of(), "cam": config_of()}, T0 + 20)
    assert store.user("cam").parent is None
    assert {user.username: user.parent for user in store.configured_users()} == {"cam": None, "router": None}
    synced(store, users={"router": config_of()}, now=T0 + 30)
    synced(store, users=family, now=T0 + 40)
    synced(store, users={"router": config_of()}, now=T0 + 50)
    synced(store, users={"router": config_of(), "cam": config_of()}, now=T0 + 60)
    assert {user.username: user.parent for user in store.configured_users()} == {"cam": None, "router": None}
    # Its deadline is its own again, from the start that configured it.
    assert store.user("cam").due_at == T0 + 60 + 60


@BACKENDS
def test_the_metrics_condition_time_is_the_rules_with_a_snooze_and_a_parents_return(store):
    synced(store, users={"router": config_of(), "cam": {**config_of(), "depends_on": "router"}})
    store.snooze("router", T0 + 600, T0)
    store.record_ping("router", T0 + 100)  # back from its silence (late at T0 + 60): cam's silence restarts
    for now in (T0 + 100, T0 + 150, T0 + 600, T0 + 700):
        users = {user.username: user for user in store.configured_users()}
        expected = {name: rules.condition(user, now) for name, user in users.items()}
        columns = store.user_counts(now)
        counts = dict(zip(columns.usernames, columns.condition_at, strict=True))
        assert counts == {name: rules.late_at(user, now) for name, user in users.items()}
        # Down for the metrics exactly when the rules say it is in a condition, snoozed or not.
        assert {name: not rules.is_up(at, now) for name, at in counts.items()} == {
            name: condition is not None for name, condition in expected.items()
        }


@BACKENDS
def test_a_parent_back_after_a_silence_of_exactly_max_sleep_was_not_down_and_restarts_nothing(store):
    synced(store, users={"router": config_of(), "cam": {**config_of(), "depends_on": "router"}})
    store.record_ping("router", T0 + 60)  # exactly max_sleep after the start of monitoring: not late
    assert store.user("cam").silence_from is None
    store.record_ping("router", T0 + 120.5)  # just over: it was late, so it came back
    assert store.user("cam").silence_from == T0 + 120.5


# Webhook deliveries (webhook_outbox).


def webhook_outcome(user, *webhooks):
    hooks = tuple(
        NewWebhook(name, f"id-{name}", "pi disconnection detected", "body", "https://x/logs") for name in webhooks
    )
    return CheckOutcome(user, T0 + 700, webhooks=hooks)


@BACKENDS
def test_an_alert_told_only_by_webhook_is_recorded_with_its_deliveries_and_no_email(store):
    synced(store)
    [user] = store.due_users(T0 + 61, 10)
    assert store.save_check_outcomes([webhook_outcome(user, "phone", "team")], T0 + 61) == 1
    assert store.user("pi").last_alert == T0 + 61
    assert store.outbox_counts()["queued"] == 0
    [phone, team] = store.due_webhooks(T0 + 61, 10)
    assert (phone.webhook, phone.attempts, team.webhook) == ("phone", 0, "team")
    assert phone.event == WebhookEvent(
        "id-phone", "late", "pi", T0 + 61, None, "pi disconnection detected", "body", "https://x/logs"
    )


@BACKENDS
def test_a_delivery_is_claimed_retried_and_finished_like_an_email(store):
    synced(store)
    [user] = store.due_users(T0 + 61, 10)
    store.save_check_outcomes([webhook_outcome(user, "phone", "team")], T0 + 61)
    phone, team = store.due_webhooks(T0 + 61, 10)
    store.claim_webhooks({phone.id: T0 + 66, team.id: T0 + 66})
    assert store.due_webhooks(T0 + 65, 10) == []
    store.retry_webhook(phone.id, T0 + 70, "HTTP 503")
    store.finish_webhook(team.id, "sent", T0 + 62, None)
    [again] = store.due_webhooks(T0 + 70, 10)
    assert (again.id, again.attempts, again.event.id) == (phone.id, 1, "id-phone")
    history = store.recent_webhooks(10)
    assert [(h.channel, h.status, h.attempts, h.finished_at) for h in history] == [
        ("webhook:team", "sent", 1, T0 + 62),
        ("webhook:phone", "queued", 1, None),
    ]
    # A restart makes a claimed or backed-off delivery due at once.
    store.restart_monitoring(T0 + 63)
    assert [d.id for d in store.due_webhooks(T0 + 63, 10)] == [phone.id]


@BACKENDS
def test_old_finished_deliveries_go_and_their_alert_only_once_no_email_or_delivery_refers_to_it(store):
    synced(store)
    [user] = store.due_users(T0 + 61, 10)
    hooks = webhook_outcome(user, "phone", "team").webhooks
    emails = alert_outcome(user, T0 + 700, "a@example.com").emails
    store.save_check_outcomes([CheckOutcome(user, T0 + 700, emails, webhooks=hooks)], T0 + 61)
    phone, team = store.due_webhooks(T0 + 61, 10)
    store.finish_webhook(phone.id, "sent", T0 + 62, None)
    [email] = store.due_emails(T0 + 61, 10)
    store.mark_sent([email.id], T0 + 62)
    assert store.delete_history_before(T0 + 1000, 10) == 2  # the email and the sent delivery; team is queued
    store.finish_webhook(team.id, "failed", T0 + 63, "HTTP 404")
    assert store.delete_history_before(T0 + 1000, 10) == 2  # the failed delivery, then the alert it freed
    assert rows(store, "SELECT count(*) FROM alerts") == [(0,)]


def test_the_webhook_delivery_finds_due_deliveries_through_its_index_and_joins_by_primary_key(store):
    assert store.query_plan(store_module.DUE_WEBHOOKS_SQL, {"now": T0, "limit": 10}) == [
        "SEARCH webhook_outbox USING INDEX webhook_outbox_queue (next_attempt_at<?)",
        "SEARCH alerts USING INTEGER PRIMARY KEY (rowid=?)",
        "SEARCH users USING INTEGER PRIMARY KEY (rowid=?)",
    ]


def test_old_deliveries_are_deleted_along_their_indexes(store):
    assert "SEARCH webhook_outbox USING COVERING INDEX webhook_outbox_finished (status=? AND finished_at<?)" in (
        store.query_plan(store_module.DELETE_OLD_WEBHOOKS_SQL, (T0, 10))
    )
    assert "SEARCH webhook_outbox USING COVERING INDEX webhook_outbox_by_alert (alert_id=?)" in store.query_plan(
        store_module.DELETE_OLD_ALERTS_SQL, (T0, 10)
    )


def test_no_ping_copies_the_wal_into_the_database_file_and_a_checkpoint_does(store):
    synced(store)
    for second in range(1500):
        store.record_ping("pi", T0 + second)
    # Without a checkpoint in any commit, the WAL holds every ping's pages (SQLite's own default would
    # have copied them back every 1 000 pages, inside whichever commit crossed that mark).
    frames, copied = store.checkpoint()
    assert frames >= 1500
    assert copied == frames
    store.record_ping("pi", T0 + 2000)  # the WAL starts again from its beginning
    assert store.checkpoint()[0] < 10


@BACKENDS
def test_retention_keeps_the_fail_signal_a_failed_users_alerts_quote(store):
    synced(store)
    store.record_ping("pi", T0 + 1)
    store.record_ping("pi", T0 + 10, "fail", exit_code=1, body="disk full")
    [user] = store.due_users(T0 + 11, 10)
    while store.delete_pings_before(T0 + 86_400 * 30, 10):
        pass
    assert store.signal(user.fail_signal) == Signal(T0 + 10, "fail", 1, None, "disk full")
    assert store.pings_between("pi", T0, T0 + 100) == [T0 + 10]


@BACKENDS
def test_pings_recorded_after_retention_deleted_every_old_one_still_follow_by_id(store):
    synced(store)
    for at in range(5):
        store.record_ping("pi", T0 + at)
    newest = store.newest_ping_id()
    while store.delete_pings_before(T0 + 86_400, 10):
        pass
    store.record_ping("pi", T0 + 86_401)
    [(new_id, _, at)] = store.pings_after_id(newest)
    assert at == T0 + 86_401 and new_id > newest
    assert store.newest_ping_id() == new_id


@BACKENDS
def test_recent_pings_read_in_pages_give_every_ping_once_even_among_pings_of_one_time(store):
    synced(store, users={"pi": config_of(), "nas": config_of()})
    for name, at in [("pi", T0 + 1)] * 3 + [("nas", T0 + 1), ("pi", T0 + 2), ("nas", T0 + 1), ("pi", T0 + 1)]:
        store.record_ping(name, at)
    ids = sorted((store.user("pi").id, store.user("nas").id))
    newest = store.newest_ping_id()
    whole = store.recent_pings(T0, newest, (ids[0], ids[1]), None, 100)
    assert len(whole) == 7
    for size in (1, 2, 3):
        pages, after = [], None
        while True:
            page = store.recent_pings(T0, newest, (ids[0], ids[1]), after, size)
            assert len(page) <= size
            pages += page
            if len(page) < size:
                break
            after = page[-1]
        assert pages == whole


@BACKENDS
def test_the_overviews_reads_give_pings_and_alerts_by_user_time_and_id(store):
    synced(store, users={"pi": config_of(), "nas": config_of()})
    assert store.newest_ping_id() == 0
    for name, at in (("pi", T0 + 1), ("nas", T0 + 2), ("pi", T0 + 3), ("nas", T0 + 50)):
        store.record_ping(name, at)
    pi, nas = store.user("pi"), store.user("nas")
    newest = store.newest_ping_id()
    everyone = (pi.id, nas.id)
    pi_1, nas_2, pi_3, nas_50 = (pi.id, T0 + 1, 1), (nas.id, T0 + 2, 2), (pi.id, T0 + 3, 3), (nas.id, T0 + 50, 4)
    assert store.recent_pings(T0 + 2, newest, everyone, None, 10) == [pi_3, nas_2, nas_50]
    assert store.recent_pings(T0, newest - 1, everyone, None, 10) == [pi_1, pi_3, nas_2]
    assert store.recent_pings(T0, newest, (nas.id, nas.id), None, 10) == [nas_2, nas_50]
    # In pages, each after the previous one's last row.
    assert store.recent_pings(T0, newest, everyone, None, 2) == [pi_1, pi_3]
    assert store.recent_pings(T0, newest, everyone, pi_3, 2) == [nas_2, nas_50]
    assert store.recent_pings(T0, newest, everyone, nas_2, 2) == [nas_50]
    assert store.recent_pings(T0, newest, everyone, nas_50, 2) == []
    assert store.last_pings_before(T0 + 3, everyone) == {pi.id: T0 + 1, nas.id: T0 + 2}
    assert store.last_pings_before(T0 + 3, (pi.id, pi.id)) == {pi.id: T0 + 1}
    rows = store.configured_user_rows()
    assert [(row[1], row[-1]) for row in rows] == [("nas", None), ("pi", None)]
    assert UserState(*rows[1][:-1]) == store.user("pi")
    assert store.pings_after_id(newest - 2) == [(newest - 1, pi.id, T0 + 3), (newest, nas.id, T0 + 50)]
    assert store.pings_around(pi.id, T0 + 2, T0 + 3) == (T0 + 1, T0 + 3)
    assert store.pings_around(nas.id, T0, T0 + 100) == (None, None)
    [late] = store.due_users(T0 + 64, 10)
    store.save_check_outcomes([alert_outcome(late, T0 + 700, "a@example.com", "b@example.com")], T0 + 64)
    assert store.recent_alerts(T0 + 64) == [(pi.id, T0 + 64, "late")] and store.recent_alerts(T0 + 65) == []
    [alert] = store.alerts_between(late, T0, T0 + 100, 10)
    assert (alert.at, alert.last_ping, [e.recipient for e in alert.emails]) == (
        T0 + 64,
        T0 + 3,
        ["a@example.com", "b@example.com"],
    )
    [cut] = store.alerts_between(late, T0, T0 + 100, 1)
    assert len(cut.emails) == 1
    assert store.alerts_between(late, T0 + 65, T0 + 100, 10) == []
    assert alert.kind == "late"
    for at, code, body in ((T0 + 70, 23, "disk full"), (T0 + 80, 1, None), (T0 + 90, 2, "again")):
        store.record_ping("nas", at, "fail", code, body)
    failures = store.failures_between(nas.id, T0, T0 + 90, 5)
    assert [(signal.at, signal.exit_code, signal.body) for signal in failures] == [
        (T0 + 70, 23, "disk full"),
        (T0 + 80, 1, None),
    ]
    assert [signal.at for signal in store.failures_between(nas.id, T0, T0 + 100, 2)] == [T0 + 80, T0 + 90]  # the latest


@BACKENDS
def test_outages_since_are_the_alerted_outages_each_until_its_first_success(store):
    users = {name: {"monitor": True, "max_sleep": 60, "email_frequency": 30} for name in ("pi", "nas", "cam")}
    synced(store, users)
    for name in users:
        store.record_ping(name, T0 + 1)
    pi, nas, cam = (next(u for u in store.configured_users() if u.username == name) for name in ("pi", "nas", "cam"))
    # pi: alerted twice in one outage (down at T0 + 61), then a fail and a success end it; nas: alerted, still down;
    # cam: suppressed only (its parent was down), which no alert called down.
    store.save_check_outcomes([alert_outcome(pi, T0 + 200, "a@example.com", down_since=T0 + 61)], T0 + 70)
    store.save_check_outcomes([alert_outcome(nas, T0 + 200, "a@example.com", down_since=T0 + 61)], T0 + 70)
    store.save_check_outcomes([CheckOutcome(cam, T0 + 200, suppressed=(rules.SILENCE, T0 + 61))], T0 + 70)
    [pi] = [u for u in store.configured_users() if u.username == "pi"]
    store.save_check_outcomes([alert_outcome(pi, T0 + 300, "a@example.com", down_since=T0 + 61)], T0 + 110)
    store.record_ping("pi", T0 + 120, "fail")
    store.record_ping("pi", T0 + 130)
    store.record_ping("pi", T0 + 140)
    ids = {user.username: user.id for user in store.configured_users()}
    assert store.outages_since(T0) == sorted(
        [Outage(ids["pi"], T0 + 61, T0 + 130), Outage(ids["nas"], T0 + 61, None)], key=lambda o: o.user_id
    )
    # Alerts decided before `start` are not read: pi's outage is known from its alert at T0 + 110.
    assert store.outages_since(T0 + 100) == [Outage(ids["pi"], T0 + 61, T0 + 130)]
    assert store.outages_since(T0 + 111) == []
    assert store.first_pings() == {ids["pi"]: T0 + 1, ids["nas"]: T0 + 1, ids["cam"]: T0 + 1}


def test_outages_and_first_pings_are_read_along_indexes_whatever_the_number_of_pings(store):
    assert store.query_plan(sql_store.OUTAGES_SQL, (T0,)) == [
        "SEARCH alerts USING INDEX alerts_by_time (at>?)",
        "USE TEMP B-TREE FOR GROUP BY",
        "CORRELATED SCALAR SUBQUERY 1",
        "SEARCH pings USING INDEX pings_by_user_time (user_id=? AND at>?)",
    ]
    assert store.query_plan(sql_store.FIRST_PINGS_SQL, ()) == [
        "SCAN users",
        "CORRELATED SCALAR SUBQUERY 1",
        "SEARCH pings USING COVERING INDEX pings_by_user_time (user_id=?)",
    ]


@hypothesis.settings(max_examples=60, deadline=None, suppress_health_check=ONE_STORE_PER_EXAMPLE)
@hypothesis.given(events=SIGNAL_EVENTS, watch=hypothesis.strategies.sampled_from(WATCHES[:2]))
def test_a_devices_outages_are_what_its_alerts_called_down(new_store, events, watch):
    # Whatever the signals, restarts and listener steps, the outages read back are those the listener
    # opened (the condition's start, when it first alerted) each until the first success after it.
    store = synced(new_store(), {"pi": {"monitor": True, "email_frequency": 100, **watch}})
    expected = []
    for kind, offset in sorted(events, key=lambda event: event[1]):
        now = T0 + offset
        if kind == "check":
            [user] = store.configured_users()
            decision = rules.decide(user, now)
            store.save_check_outcomes([outcome_of(user, decision)], now)
            if decision.alert is not None and decision.down_since not in [start for start, _ in expected]:
                expected.append((decision.down_since, None))
        elif kind == "restart":
            store.restart_monitoring(now)
        else:
            store.record_ping("pi", now, kind)
            if kind == "success":
                expected = [(start, now if end is None and now > start else end) for start, end in expected]
    assert [(o.down_at, o.up_at) for o in store.outages_since(T0 - 2000)] == sorted(expected)


@BACKENDS
def test_each_start_begins_a_run_that_upkeep_marks_seen_every_minute_and_its_gaps_are_downtime(store):
    synced(store)
    store.upkeep(T0 + 30)  # less than RUN_MARK_SECONDS since the start: not marked
    store.upkeep(T0 + 61)
    store.upkeep(T0 + 100)
    assert store.service_runs(T0) == [(T0, T0 + 61)]
    # A restart, as server.py starts: the time between the last mark and the start is the service's downtime.
    synced(store, now=T0 + 1000)
    store.upkeep(T0 + 1070)
    assert store.service_runs(T0) == [(T0, T0 + 61), (T0 + 1000, T0 + 1070)]
    # From a later start, the last run seen before it too: a gap may begin in it.
    assert store.service_runs(T0 + 500) == [(T0, T0 + 61), (T0 + 1000, T0 + 1070)]
    assert store.service_runs(T0 + 1071) == [(T0 + 1000, T0 + 1070)]


def test_none_and_booleans_are_bound_as_sqlite3_binds_them_without_the_stores_adapters():
    # store.py registers adapters for None and bool (for every sqlite3 connection of the process), for speed:
    # they must bind NULL, 1 and 0 exactly as sqlite3 does without them.
    assert sqlite3.adapters[type(None), sqlite3.PrepareProtocol] is not None
    with contextlib.closing(sqlite3.connect(":memory:")) as connection:
        row = connection.execute("SELECT typeof(?), typeof(?), ?, typeof(?), ?", (None, True, True, False, False))
        assert row.fetchone() == ("null", "integer", 1, "integer", 0)


USER = {"monitor": True, "max_sleep": 60, "email_frequency": 60}


def users_indexes(db):
    return sorted(query(db, "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'users'"))


def test_a_first_start_leaves_the_users_indexes_as_the_schema_defines_them(tmp_path):
    # Store._adding_users drops users_by_uuid while a first start fills the empty table, then builds it again.
    Store(tmp_path / "empty.db").close()
    started = synced(Store(tmp_path / "db"), users={name: USER for name in ("a", "b", "c")})
    started.close()
    assert users_indexes(tmp_path / "db") == users_indexes(tmp_path / "empty.db")
    [(check_uuid,)] = query(tmp_path / "db", "SELECT uuid FROM users WHERE username = 'a'")
    with pytest.raises(sqlite3.IntegrityError), contextlib.closing(sqlite3.connect(tmp_path / "db")) as connection:
        connection.execute("UPDATE users SET uuid = ? WHERE username = 'b'", (check_uuid,))


def test_a_first_start_that_fails_keeps_users_by_uuid(tmp_path, monkeypatch):
    # Two users given one UUID: building users_by_uuid again refuses them, and the start's rollback brings
    # the index back with the table empty.
    Store(tmp_path / "empty.db").close()
    monkeypatch.setattr(sql_store, "new_uuids", lambda count: ["00000000-0000-4000-8000-000000000000"] * count)
    failed = Store(tmp_path / "db")
    with pytest.raises(sqlite3.IntegrityError):
        synced(failed, users={"a": USER, "b": USER})
    failed.close()
    assert users_indexes(tmp_path / "db") == users_indexes(tmp_path / "empty.db")
    assert query(tmp_path / "db", "SELECT count(*) FROM users") == [(0,)]
