"""The PostgreSQL store's own promises (the store contract itself runs on both backends in test_store.py):
its schema and version, its refusals, and several instances on one database — claims that split the work and
never hand a row to two live instances, a dead instance's claims taken over, and monitoring restarted only by
an instance that starts alone."""

import contextlib
import inspect
import sqlite3
import threading
from pathlib import Path

import psycopg
import psycopg.errors
import pytest

import pg_store
from database import chosen_database, display_name, is_postgresql, open_store
from pg_store import CLAIM_TIMEOUT, PgStore
from pgcluster import PASSWORD
from records import (
    CheckOutcome,
    NewDigest,
    NewEmail,
    NewWebhook,
    StoreOpenError,
    StoreUnavailableError,
    UnknownUserError,
)
from store import SCHEMA_VERSION, Store
from support import T0, free_port, make_settings, wait_until

USERS = {f"dev{n:02}": {"monitor": True, "max_sleep": 60, "email_frequency": 600} for n in range(20)}


def sql(url, text, parameters=()):
    """The rows `text` selects, through a connection of its own to the database at `url`."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(text, parameters)
        return cursor.fetchall() if cursor.description else None


@pytest.fixture
def instances(postgres_url):
    """instances(n): n stores on one new database, as n instances of the service; all closed at the end."""
    opened = []

    def open_instances(count):
        opened.extend(PgStore(postgres_url) for _ in range(count))
        return opened[-count:]

    yield open_instances
    for each in opened:
        each.close()


def started(instance, now=T0, users=USERS):
    """`instance` started at `now` with `users`, as server.py starts one; its lease runs from `now`."""
    instance.sync_users(make_settings(users).users, now)
    return instance


def renewed(now, *instances):
    """Each instance's lease renewed at `now`, as its store-upkeep loop does every second."""
    for instance in instances:
        instance.upkeep(now)


def killed(instance):
    """What kill -9 does to an instance: its connections close, its row stays."""
    instance._pool.close()
    lost_liveness(instance)


def lost_liveness(instance):
    """Close the connection holding `instance`'s liveness lock; return once the server has freed the lock (a
    backend exits a moment after its client is gone)."""
    instance._liveness.close()
    held = f"SELECT count(*) FROM ({pg_store.LOCKED_INSTANCES_SQL}) AS locked WHERE objid = %s"
    wait_until(lambda: sql(instance.url, held, (instance.instance_id,)) == [(0,)], message="the lock freed")


def queued_emails(instance, now, count):
    """Alert `count` late users at `now`, one email each, as one instance's listener would."""
    users = instance.due_users(now, count)
    outcomes = [
        CheckOutcome(user, now + 600, (NewEmail("oncall@example.com", f"{user.username} down", "b", f"<{n}>"),))
        for n, user in enumerate(users)
    ]
    instance.save_check_outcomes(outcomes, now)
    return [user.username for user in users]


def test_a_new_database_gets_the_current_version_and_the_sqlite_schemas_tables_and_columns(store, tmp_path, request):
    pg = PgStore(request.getfixturevalue("postgres_url"))
    try:
        assert sql(pg.url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
        columns = sql(
            pg.url,
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()",
        )
    finally:
        pg.close()
    with sqlite3.connect(store.path) as connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
        sqlite_columns = {
            (table, column)
            for table in tables
            for (column,) in connection.execute(f"SELECT name FROM pragma_table_info('{table}')")
        }
    # The same tables and columns, and those that let instances share the database.
    claims = {("users", "claimed_by"), ("outbox", "claimed_by"), ("webhook_outbox", "claimed_by")}
    own = {(table, column) for table, column in columns if table in ("schema_version", "instances")}
    readable = {(table, column) for table, column in columns if table.endswith("_readable")}
    assert set(columns) - own - readable == sqlite_columns | claims


@pytest.mark.parametrize(("version", "problem"), [(SCHEMA_VERSION + 1, "is newer than"), (7, "older")])
def test_a_database_of_another_schema_version_is_refused_in_one_line(postgres_url, version, problem):
    PgStore(postgres_url).close()
    sql(postgres_url, "UPDATE schema_version SET version = %s", (version,))
    with pytest.raises(StoreOpenError) as raised:
        PgStore(postgres_url)
    message = str(raised.value)
    assert problem in message and f"version {version}" in message
    assert "\n" not in message and PASSWORD not in message
    assert message.startswith(display_name(postgres_url))


def test_a_version_8_database_is_upgraded_at_start_and_then_takes_the_health_checks_write(postgres_url):
    # A database as version 8 made it (every step since upgrades it).
    sql(postgres_url, (Path(__file__).with_name("data") / "schema_pg_v8.sql").read_text())
    sql(postgres_url, "INSERT INTO schema_version (version) VALUES (8)")
    upgraded = PgStore(postgres_url)
    try:
        assert upgraded.upgraded_from == 8
        upgraded.check_writable(T0)
        assert sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
        assert sql(postgres_url, "SELECT checked_at FROM health") == [(T0,)]
    finally:
        upgraded.close()
    again = PgStore(postgres_url)
    assert again.upgraded_from is None
    again.close()


def test_another_applications_database_is_refused(postgres_url):
    sql(postgres_url, "CREATE TABLE recipes (name text)")
    with pytest.raises(StoreOpenError, match="not a Ping Listener database"):
        PgStore(postgres_url)
    assert sql(postgres_url, "SELECT to_regclass('users')") == [(None,)]


@pytest.mark.parametrize("fault", ["wrong password", "no server", "bad port", "no database", "password in the query"])
def test_a_database_that_cannot_be_reached_is_refused_in_one_line_without_the_password(postgres_server, fault):
    url = {
        "wrong password": postgres_server.url("postgres", password="not-" + PASSWORD),
        "no server": f"postgresql://ping_listener:{PASSWORD}@127.0.0.1:{free_port()}/db",
        "bad port": f"postgresql://ping_listener:{PASSWORD}@127.0.0.1:port/db",
        "no database": postgres_server.url("no_such_database"),
        "password in the query": f"postgresql://ping_listener@127.0.0.1:{free_port()}/db?password={PASSWORD}",
    }[fault]
    with pytest.raises(StoreOpenError) as raised:
        open_store(url)
    message = str(raised.value)
    assert PASSWORD not in message and "\n" not in message
    assert message.startswith(f"{display_name(url)}: cannot use this database: ")
    assert "***" in message


def test_the_store_sets_the_server_side_timeouts_that_release_a_dead_instances_locks(store_pg):
    with store_pg._connection() as connection:
        settings = dict(connection.execute("SELECT name, setting FROM pg_settings WHERE source = 'client'").fetchall())
    assert {name: settings[name] for name in pg_store.SERVER_SETTINGS} == {
        "idle_in_transaction_session_timeout": "5000",
        "statement_timeout": "60000",
        "lock_timeout": "5000",
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "25000",
        "synchronous_commit": "on",
    }
    # The client's side of the connection.
    with store_pg._connection() as connection:
        assert connection.info.get_parameters()["tcp_user_timeout"] == "25000"


@pytest.fixture
def store_pg(instances):
    [only] = instances(1)
    return started(only, users={"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600}})


def test_a_batch_commits_its_pings_together_and_none_once_a_statement_failed(store_pg):
    with store_pg.ping_batch():
        store_pg.record_ping("pi", T0 + 1)
        store_pg.record_ping("pi", T0 + 2)
        assert sql(store_pg.url, "SELECT count(*) FROM pings") == [(0,)]  # not committed yet
    assert store_pg.pings_between("pi", T0, T0 + 10) == [T0 + 1, T0 + 2]
    with pytest.raises(StoreUnavailableError, match="rolled back"), store_pg.ping_batch():
        store_pg.record_ping("pi", T0 + 3)
        with pytest.raises(psycopg.errors.CheckViolation):
            store_pg.record_ping("pi", T0 + 4, "no such kind")
        with pytest.raises(StoreUnavailableError, match="rolled back"):
            store_pg.record_ping("pi", T0 + 5)
    assert store_pg.pings_between("pi", T0, T0 + 10) == [T0 + 1, T0 + 2]


def test_the_readable_views_show_times_in_the_sessions_zone(store_pg):
    store_pg.record_ping("pi", 1_790_000_000)  # 2026-09-21 14:13:20 UTC
    with psycopg.connect(store_pg.url, options="-c TimeZone=Europe/Paris") as connection:
        [(username, local)] = connection.execute("SELECT username, local_time::text FROM pings_readable").fetchall()
    assert (username, local) == ("pi", "2026-09-21 16:13:20+02")


def test_the_postgresql_store_offers_every_public_method_of_the_sqlite_store_with_its_signature():
    sqlite_only = {"checkpoint", "pragma", "query_plan", "before_use"}
    public = {name for name, _ in inspect.getmembers(Store, inspect.isfunction) if not name.startswith("_")}
    for name in public - sqlite_only:
        assert inspect.signature(getattr(PgStore, name)) == inspect.signature(getattr(Store, name)), name
    assert not sqlite_only & set(dir(PgStore))


# Several instances on one database.


def test_two_instances_split_the_due_users_and_never_claim_one_twice(instances):
    a, b = (started(instance) for instance in instances(2))
    renewed(T0 + 61, a, b)
    first = a.due_users(T0 + 61, 8)
    second = b.due_users(T0 + 61, 100)
    assert len(first) == 8 and len(second) == 12
    assert not {user.id for user in first} & {user.id for user in second}
    # Claimed rows stay their claimer's until it is done with them.
    assert b.due_users(T0 + 61, 100) == second
    assert a.save_check_outcomes([CheckOutcome(user, T0 + 661) for user in first], T0 + 61) == 0
    assert b.save_check_outcomes([CheckOutcome(user, T0 + 661) for user in first], T0 + 61) == 0
    assert sql(a.url, "SELECT count(*) FROM users WHERE due_at = %s", (T0 + 661,)) == [(8,)]


def test_instances_claiming_emails_at_once_never_hand_one_to_two_of_them(instances):
    stores = [started(instance) for instance in instances(3)]
    renewed(T0 + 61, *stores)
    queued_emails(stores[0], T0 + 61, 20)
    got = {instance.instance_id: [] for instance in stores}
    errors = []

    def drain(instance):
        try:
            while emails := instance.due_emails(T0 + 61, 3):
                got[instance.instance_id] += [email.id for email in emails]
                instance.mark_sent([email.id for email in emails], T0 + 62)
        except Exception as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    threads = [threading.Thread(target=drain, args=(instance,)) for instance in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    everything = [email for emails in got.values() for email in emails]
    assert sorted(everything) == sorted(set(everything)) and len(everything) == 20
    assert sql(stores[0].url, "SELECT status, attempts, count(*) FROM outbox GROUP BY 1, 2") == [("sent", 1, 20)]


def test_a_killed_instances_claims_are_taken_over_at_once_and_a_cut_off_ones_after_its_lease(instances):
    a, b, c = (started(instance) for instance in instances(3))
    queued_emails(a, T0 + 61, 6)
    hooks = (NewWebhook("phone", "id-1", "t", "x", "https://x/logs"),)
    [late] = b.due_users(T0 + 700, 1)
    b.save_check_outcomes([CheckOutcome(late, T0 + 1300, webhooks=hooks)], T0 + 700)
    renewed(T0 + 700, a, b, c)
    claimed_by_a = a.due_emails(T0 + 700, 3)
    claimed_by_b = b.due_emails(T0 + 700, 3) + b.due_webhooks(T0 + 700, 1)
    [user] = b.due_users(T0 + 1261, 1)
    assert c.due_emails(T0 + 700, 10) == [] and c.due_webhooks(T0 + 700, 10) == []
    killed(a)
    # a's process is gone: the server freed its liveness lock, so its claims are free though its lease runs.
    assert [email.id for email in c.due_emails(T0 + 701, 10)] == [email.id for email in claimed_by_a]
    # b is cut off: its lease passes CLAIM_TIMEOUT after its last renewal.
    renewed(T0 + 700 + CLAIM_TIMEOUT, c)
    assert c.due_emails(T0 + 700 + CLAIM_TIMEOUT, 10) == claimed_by_a  # b's not yet
    renewed(T0 + 701 + CLAIM_TIMEOUT, c)
    taken = c.due_emails(T0 + 701 + CLAIM_TIMEOUT, 10)
    assert {email.id for email in taken} == {email.id for email in [*claimed_by_a, *claimed_by_b[:3]]}
    assert [hook.id for hook in c.due_webhooks(T0 + 701 + CLAIM_TIMEOUT, 10)] == [claimed_by_b[3].id]
    [retaken] = c.due_users(T0 + 1261 + CLAIM_TIMEOUT, 1)
    assert retaken.id == user.id
    # Back from its partition, b's decision about a user c has claimed since is dropped.
    alert = (NewEmail("oncall@example.com", "down", "b", "<late>"),)
    assert b.save_check_outcomes([CheckOutcome(user, T0 + 2000, alert)], T0 + 1261) == 0
    assert c.save_check_outcomes([CheckOutcome(retaken, T0 + 2000)], T0 + 1261 + CLAIM_TIMEOUT) == 0
    assert sql(c.url, "SELECT due_at, claimed_by FROM users WHERE id = %s", (user.id,)) == [(T0 + 2000, None)]


def test_an_instance_that_stops_frees_its_claims_at_once(instances):
    a, b = (started(instance) for instance in instances(2))
    queued_emails(a, T0 + 61, 2)
    renewed(T0 + 100, a, b)
    claimed = a.due_emails(T0 + 100, 10)
    a.close()
    assert b.due_emails(T0 + 100, 10) == claimed


def test_an_instance_joining_running_ones_changes_no_deadline_and_one_starting_alone_restarts_monitoring(instances):
    a, b, c = instances(3)
    started(a, T0)
    a.record_ping("dev00", T0 + 10)
    before = sql(a.url, "SELECT username, monitored_since, due_at FROM users ORDER BY id")
    renewed(T0 + 500, a)
    started(b, T0 + 500)
    assert (a.started_alone, b.started_alone) == (True, False)
    assert sql(a.url, "SELECT username, monitored_since, due_at FROM users ORDER BY id") == before
    # Every instance gone (one stopped, one killed): the next one starts alone and restarts monitoring.
    a.close()
    killed(b)
    started(c, T0 + 520)
    assert c.started_alone
    assert sql(c.url, "SELECT DISTINCT monitored_since FROM users") == [(T0 + 520,)]
    assert sql(c.url, "SELECT due_at FROM users WHERE username = 'dev00'") == [(T0 + 580,)]
    assert sql(c.url, "SELECT id FROM instances") == [(c.instance_id,)]  # the dead ones are forgotten


def test_an_instance_whose_liveness_connection_was_lost_is_dead_until_its_upkeep_takes_the_lock_again(instances):
    a, b = (started(instance) for instance in instances(2))
    queued_emails(a, T0 + 61, 2)
    renewed(T0 + 100, a, b)
    [first] = a.due_emails(T0 + 100, 1)
    lost_liveness(a)  # e.g. the network dropped that connection
    assert b.due_emails(T0 + 100, 1) == [first]
    renewed(T0 + 101, a, b)
    [second] = a.due_emails(T0 + 101, 1)
    assert b.due_emails(T0 + 101, 10) == [first]  # its own claim; a's is a's again
    assert second != first


def test_ping_batches_and_the_listeners_of_two_instances_never_deadlock(instances):
    a, b = (started(instance) for instance in instances(2))
    names = sorted(USERS)
    errors = []

    def pinging(instance, order):
        try:
            for n in range(30):
                with instance.ping_batch():
                    for name in order:
                        instance.record_ping(name, T0 + n)
        except Exception as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    def listening(instance):
        try:
            for n in range(30):
                renewed(T0 + 100 + n, instance)
                users = instance.due_users(T0 + 100 + n, 20)
                instance.save_check_outcomes([CheckOutcome(user, T0 + 101 + n) for user in users], T0 + 100 + n)
        except Exception as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    # Batches lock their users in opposite orders, while both listeners write every user.
    threads = [
        threading.Thread(target=pinging, args=(a, names)),
        threading.Thread(target=pinging, args=(b, names[::-1])),
        threading.Thread(target=listening, args=(a,)),
        threading.Thread(target=listening, args=(b,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sql(a.url, "SELECT count(*) FROM pings") == [(2 * 30 * len(names),)]


@pytest.mark.parametrize(
    ("db", "shown"),
    [
        ("postgresql://app:s3cret@db.example.net:5432/pings", "postgresql://app:***@db.example.net:5432/pings"),
        ("postgres://app:p%40ss@db/pings", "postgres://app:***@db/pings"),
        ("POSTGRESQL://app:a:b@c@db/pings", "POSTGRESQL://app:***@db/pings"),
        ("postgresql://app@db/pings", "postgresql://app@db/pings"),
        ("postgresql://app:s3cret@db:port/pings", "postgresql://app:***@db:port/pings"),
        (
            "postgresql://app@db/pings?sslmode=require&password=s3cret",
            "postgresql://app@db/pings?sslmode=require&password=***",
        ),
        ("postgresql://app@db?PASSWORD=p%40ss&x=p@ss", "postgresql://app@db?PASSWORD=***&x=***"),
        ("postgresql://app:one@db/pings?password=two", "postgresql://app:***@db/pings?password=***"),
        ("state/ping_listener.db", "state/ping_listener.db"),
        ("mysql://app:s3cret@db/pings", "mysql://app:s3cret@db/pings"),  # not a URL of ours: a SQLite path
    ],
)
def test_a_database_is_shown_without_its_password(db, shown):
    assert display_name(db) == shown
    assert is_postgresql(db) == db.lower().startswith(("postgresql://", "postgres://"))


def test_the_database_is_the_command_lines_else_database_url_else_the_default_file():
    url = "postgresql://app@db/pings"
    assert chosen_database("mine.db", {"DATABASE_URL": url}) == "mine.db"
    assert chosen_database(None, {"DATABASE_URL": url}) == url
    assert chosen_database(None, {"DATABASE_URL": ""}) == "ping_listener.db"
    assert chosen_database(None, {}) == "ping_listener.db"


def test_the_server_ends_a_cut_off_instances_open_write_and_the_others_write_again(instances):
    # A real 5 s wait: idle_in_transaction_session_timeout is the server's own clock.
    idle_limit = float(pg_store.SERVER_SETTINGS["idle_in_transaction_session_timeout"].removesuffix("s"))
    # A write waits for the lock up to WAIT_TIMEOUT: one that began once the cut-off write was idle is
    # either let through when the server ends that write, or gives up just before and gets through at once.
    assert idle_limit <= pg_store.WAIT_TIMEOUT
    a, b = (started(instance, users={"pi": USERS["dev00"]}) for instance in instances(2))
    holding, released = threading.Event(), threading.Event()
    outcome = []

    def cut_off_in_a_batch():
        try:
            with a.ping_batch():
                a.record_ping("pi", T0 + 1)
                holding.set()
                # As if its network went silent here, the write lock held longer than two waits of b's.
                released.wait(3 * pg_store.WAIT_TIMEOUT)
        except StoreUnavailableError as error:
            outcome.append(error)

    thread = threading.Thread(target=cut_off_in_a_batch)
    thread.start()
    assert holding.wait(5)
    refused = []
    while len(refused) < 2:
        try:
            b.record_ping("pi", T0 + 2)
            break
        except StoreUnavailableError as error:  # lock_timeout: still held
            refused.append(error)
    released.set()
    thread.join()
    assert len(refused) < 2, f"the cut-off write still held the lock after two waits of b's: {refused}"
    assert len(outcome) == 1  # the cut-off batch is refused, not committed
    assert b.pings_between("pi", T0, T0 + 10) == [T0 + 2]


def test_check_writable_passes_and_reports_a_write_lock_held_too_long(store_pg):
    store_pg.check_writable(T0)
    with psycopg.connect(store_pg.url) as other:  # a transaction holding the write lock until it ends
        other.execute(pg_store.WRITE_LOCK_SQL)
        # The lock is let go halfway between HEALTH_TIMEOUT and a write's own WAIT_TIMEOUT: a check that waited
        # for it longer than HEALTH_TIMEOUT, as a write does, would take it and pass.
        letting_go = threading.Timer((pg_store.HEALTH_TIMEOUT + pg_store.WAIT_TIMEOUT) / 2, other.rollback)
        letting_go.start()
        try:
            with pytest.raises(StoreUnavailableError, match="timeout"):
                store_pg.check_writable(T0)
        finally:
            letting_go.cancel()
            letting_go.join()
    store_pg.check_writable(T0)


def test_a_nul_character_from_outside_is_no_user_and_is_kept_as_a_replacement_character(store_pg):
    # PostgreSQL's text cannot hold NUL; SQLite's can. Names and bodies come from requests, errors from servers.
    for lookup in (
        lambda: store_pg.record_ping("pi\x00", T0),
        lambda: store_pg.pings_between("pi\x00", T0, T0 + 1),
        lambda: store_pg.user("pi\x00"),
        lambda: store_pg.snooze("pi\x00", T0 + 60, T0),
    ):
        with pytest.raises(UnknownUserError):
            lookup()
    store_pg.record_ping("pi", T0 + 1, "fail", 1, "disk\x00full")
    [body] = store_pg.signals_between("pi", T0, T0 + 2, 10, 1000, lambda signal: signal.body.encode())[0]
    assert body == "disk\ufffdfull".encode()
    [late] = store_pg.due_users(T0 + 2, 1)
    store_pg.save_check_outcomes([CheckOutcome(late, T0 + 600, (NewEmail("a@example.com", "s", "b", "<m>"),))], T0 + 2)
    [email] = store_pg.due_emails(T0 + 2, 1)
    store_pg.schedule_retry([email.id], T0 + 10, "451 \x00 later")
    assert sql(store_pg.url, "SELECT last_error FROM outbox") == [("451 \ufffd later",)]


def test_after_the_server_dropped_every_connection_the_store_goes_on_at_once(store_pg, postgres_server):
    # What a restart or a failover of the server does to an instance: every connection of it is gone.
    store_pg.record_ping("pi", T0 + 1)
    store_pg.check_writable(T0)
    with postgres_server.connect() as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (store_pg.url.rsplit("/", 1)[1],),
        )
    for n in range(2, 2 + pg_store.POOL_SIZE + 1):  # more than the pool holds: each connection is checked
        store_pg.record_ping("pi", T0 + n)
    store_pg.check_writable(T0)
    store_pg.upkeep(T0 + 20)  # takes the liveness lock again
    held = f"SELECT count(*) FROM ({pg_store.LOCKED_INSTANCES_SQL}) AS locked WHERE objid = %s"
    assert sql(store_pg.url, held, (store_pg.instance_id,)) == [(1,)]
    assert len(store_pg.pings_between("pi", T0, T0 + 100)) == pg_store.POOL_SIZE + 2


def test_an_instance_frozen_past_its_lease_can_neither_send_nor_finish_what_another_took_over(instances):
    frozen, other = (started(instance) for instance in instances(2))
    queued_emails(frozen, T0 + 61, 2)
    hooks = (NewWebhook("phone", "id-1", "t", "x", "https://x/logs"),)
    [late] = other.due_users(T0 + 700, 1)
    other.save_check_outcomes([CheckOutcome(late, T0 + 1300, webhooks=hooks)], T0 + 700)
    renewed(T0 + 700, frozen, other)
    emails = frozen.due_emails(T0 + 700, 10)
    [delivery] = frozen.due_webhooks(T0 + 700, 10)
    ids = [email.id for email in emails]
    assert frozen.claim_emails({ids[0]: T0 + 760}, T0 + 700) == {ids[0]}
    # Frozen past its lease: the other instance takes everything over.
    renewed(T0 + 701 + CLAIM_TIMEOUT, other)
    assert sorted(email.id for email in other.due_emails(T0 + 800, 10)) == ids
    assert [hook.id for hook in other.due_webhooks(T0 + 800, 10)] == [delivery.id]
    # Back, the frozen one may send none of them, and records no result for them.
    digest = NewDigest(tuple(ids), "oncall@example.com", "2 devices", "<digest>")
    assert frozen.claim_emails({email_id: T0 + 760 for email_id in ids}, T0 + 700, [digest]) == set()
    assert sql(other.url, "SELECT count(*) FROM digests") == [(0,)]
    assert frozen.claim_webhooks({delivery.id: T0 + 760}) == set()
    frozen.mark_sent(ids[:1], T0 + 702)
    frozen.mark_failed(ids[1:], T0 + 702, "no")
    frozen.schedule_retry(ids, T0 + 999, "later")
    frozen.finish_webhook(delivery.id, "sent", T0 + 702, None)
    frozen.retry_webhook(delivery.id, T0 + 999, "later")
    claims = "SELECT status, attempts, claimed_by FROM {} ORDER BY id"
    mine = ("queued", 0, other.instance_id)
    assert sql(other.url, claims.format("outbox")) == [mine, mine]
    assert sql(other.url, claims.format("webhook_outbox")) == [mine]
    assert other.claim_emails({email_id: T0 + 860 for email_id in ids}, T0 + 800) == set(ids)
    assert other.claim_webhooks({delivery.id: T0 + 860}) == {delivery.id}
    other.mark_sent(ids, T0 + 801)
    other.finish_webhook(delivery.id, "sent", T0 + 801, None)
    assert sql(other.url, claims.format("outbox")) == [("sent", 1, None)] * 2
    assert sql(other.url, claims.format("webhook_outbox")) == [("sent", 1, None)]


def test_the_lease_is_renewed_while_pings_hold_every_pooled_connection(store_pg):
    with contextlib.ExitStack() as held:
        for _ in range(pg_store.POOL_SIZE):
            held.enter_context(store_pg._pool.connection())
        store_pg.upkeep(T0 + 100)
    lease = "SELECT lease_until FROM instances WHERE id = %s"
    assert sql(store_pg.url, lease, (store_pg.instance_id,)) == [(T0 + 100 + CLAIM_TIMEOUT,)]


def test_a_liveness_connection_that_failed_before_taking_the_lock_is_closed_and_the_next_upkeep_takes_it(
    store_pg, monkeypatch
):
    options = pg_store.CONNECTION_SETTINGS["options"].replace("lock_timeout=5000ms", "lock_timeout=100ms")
    monkeypatch.setitem(pg_store.CONNECTION_SETTINGS, "options", options)
    lost_liveness(store_pg)
    connections = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ping-listener'"
    before = sql(store_pg.url, connections)
    live = f"SELECT id FROM ({pg_store.LIVE_INSTANCES_SQL}) AS live"
    with psycopg.connect(store_pg.url, autocommit=True) as other, other.transaction():
        # The instance's row locked a while (another instance's start, say): the renewal waits, then fails.
        other.execute("SELECT 1 FROM instances WHERE id = %s FOR UPDATE", (store_pg.instance_id,))
        with pytest.raises(StoreUnavailableError) as refused:
            store_pg.upkeep(T0 + 100)
    assert sql(store_pg.url, connections) == before  # closed, though the refusal's traceback still refers to it
    assert "lock timeout" in str(refused.value)
    assert sql(store_pg.url, live, {"now": T0 + 100}) == []
    store_pg.upkeep(T0 + 101)
    assert sql(store_pg.url, live, {"now": T0 + 101}) == [(store_pg.instance_id,)]
