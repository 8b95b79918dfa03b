"""Storage faults: a full disk, a database that refuses writes, and databases unfit to start on."""

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import webtest

import server
import serving
import store as store_module
import web
from config import LiveSettings
from loadgen import burst
from records import StoreUnavailableError
from scheduler import HEALTH_CHECK_REUSE, STORE_UPKEEP_INTERVAL, Scheduler
from store import SCHEMA_VERSION, Store
from support import (
    ROOT,
    SLACK,
    T0,
    SmallDiskStore,
    free_port,
    make_settings,
    make_test_app,
    outbox,
    query,
    run_server,
    server_env,
    smtp_mailer,
    wait_for_delivered,
    wait_until,
    write_settings,
)

LATE_USERS = 30
BODY = "output " * 1400
PINGS_PER_BATCH = 3


@pytest.mark.usefixtures("trust_test_ca")
def test_a_full_disk_is_a_503_the_scheduler_logs_it_and_goes_on_and_all_works_once_space_returns(
    tmp_path, smtp_server, caplog
):
    disk = SmallDiskStore(tmp_path / "ping_listener.db")
    late = {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600}
    users = {f"device-with-a-long-name-{i:03d}": late for i in range(LATE_USERS)}
    users["probe"] = {"monitor": False, "max_sleep": 0, "email_frequency": 0}
    settings = make_settings(users, base_frequency=0.02, email_processing_frequency=0.02)
    disk.sync_users(settings.users, time.time())
    client = webtest.TestApp(make_test_app(disk, settings, time.time, None))
    loops = Scheduler(disk, smtp_mailer(smtp_server.port), LiveSettings(settings), "https://example.net", time.time)
    try:
        disk.fill_up()
        accepted = 0
        answer = client.get("/ping?username=probe", status="*")
        while answer.status_int == 200 and accepted < 5000:  # the free space left in the pages already used
            accepted += 1
            answer = client.get("/ping?username=probe", status="*")
        assert (answer.status_int, answer.content_type, answer.text) == (
            503,
            "text/plain",
            "storage unavailable: the disk is full; try again later",
        ), f"after {accepted} pings answered 200 on a full disk"

        loops.start()
        # The late users' alerts need new pages: every step fails, is logged, and the next one comes.
        wait_until(lambda: caplog.text.count("absence-listener: storage unavailable: the disk is full") >= 3)
        assert query(disk.path, "SELECT count(*) FROM alerts") == [(0,)]
        assert client.get("/ping?username=probe", status="*").status_int == 503

        disk.free_up()
        assert client.get("/ping?username=probe", status="*").status_int == 200
        wait_for_delivered(smtp_server, LATE_USERS)
    finally:
        assert loops.stop(timeout=5)
        disk.close()
    alerts = query(disk.path, "SELECT count(*) FROM alerts")[0][0]
    assert alerts == LATE_USERS, f"{alerts} alerts recorded for {LATE_USERS} late users once space returned"


def pings_until_refused(ping, bound=100_000):
    """Ping until the store refuses (the room left in the pages and the log already written is used up);
    return how many pings were accepted. Fails if `bound` pings all are."""
    for accepted in range(bound):
        if not ping(accepted):
            return accepted
    raise AssertionError(f"{bound} pings accepted on a full disk")


def test_on_a_full_disk_the_health_check_fails_as_pings_do_naming_it_and_passes_once_space_returns(tmpfs):
    disk = Store(tmpfs.directory / "ping_listener.db")
    try:
        disk.sync_users(make_settings().users, T0)
        # A write-ahead log already copied into the database: new commits write over it from its start, with no
        # new room on the disk, until one reaches its end (the store-upkeep loop checkpoints every second).
        with disk.ping_batch():
            for n in range(100):
                disk.record_ping("pi", T0 - 1000 + n, "log", None, BODY)
        disk.checkpoint()
        disk.check_writable(T0)
        tmpfs.fill_up()

        def ping(n):  # batches of pings with long bodies: the one that fails may have written some of its pages
            try:
                with disk.ping_batch():
                    for each in range(PINGS_PER_BATCH):
                        disk.record_ping("pi", T0 + n + each / 10, "log", None, BODY)
            except StoreUnavailableError as error:
                assert str(error) == "storage unavailable: the disk is full"
                return False
            return True

        pings_until_refused(ping)
        for second in range(3):  # and so it stays
            with pytest.raises(StoreUnavailableError) as raised:
                disk.check_writable(T0 + second)
            assert str(raised.value) == "database is full: no space left on its disk"
        tmpfs.free_up()
        disk.check_writable(T0 + 3)
        disk.record_ping("pi", T0 + 4)
    finally:
        disk.close()


def test_the_services_healthz_answers_503_naming_a_full_disk_and_ok_once_space_returns(tmp_path, tmpfs, start_server):
    settings = write_settings(
        tmp_path / "settings.json", {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 1}}
    )
    service = start_server(settings, tmpfs.directory / "ping_listener.db")
    assert service.get("/healthz") == (200, "ok")
    tmpfs.fill_up()

    def ping(_):
        try:
            return service.get("/ping?username=pi")[0] == 200
        except OSError:  # a connection closed unanswered
            return False

    pings_until_refused(ping)
    # Within HEALTH_CHECK_REUSE, /healthz may answer what the check before found; and until the store's upkeep
    # has found that its write-ahead log cannot be checkpointed into the full disk, a write may still commit
    # into the log's room that a checkpoint freed (a ping would commit there too).
    settled = HEALTH_CHECK_REUSE + STORE_UPKEEP_INTERVAL + SLACK
    full = "the database cannot commit a write: database is full: no space left on its disk"
    wait_until(lambda: service.get("/healthz") == (503, full), timeout=settled, message="/healthz naming the full disk")
    tmpfs.free_up()
    wait_until(lambda: service.get("/healthz") == (200, "ok"), timeout=settled, message="/healthz ok again")
    assert service.get("/ping?username=pi")[0] == 200
    assert service.stop() == 0


class TracedStore(Store):
    """The real store, keeping the text of every statement its connections begin (COMMIT included)."""

    def __init__(self, path):
        self.statements = []
        super().__init__(path)

    def before_use(self, connection):
        connection.set_trace_callback(self.statements.append)


def disk_refusing_writes(tmpfs, users):
    """A TracedStore on `tmpfs` with `users`, the disk filled and no room left in its write-ahead log: the next
    commit needs a new page on the disk, which SQLite asks for only at COMMIT (a transaction's pages are kept in
    memory until then)."""
    disk = TracedStore(tmpfs.directory / "ping_listener.db")
    disk.sync_users(make_settings(users).users, T0)
    tmpfs.fill_up()
    pings_until_refused(lambda n: _pinged(disk, "probe", T0 + n / 1000))
    del disk.statements[:]
    return disk


def _pinged(disk, username, at):
    try:
        disk.record_ping(username, at)
    except StoreUnavailableError:
        return False
    return True


def failed_at_commit(disk):
    """Whether the last transaction of `disk` failed at its COMMIT: it is the last statement begun, but for the
    ROLLBACK after it if SQLite had not already rolled back."""
    return "COMMIT" in disk.statements and disk.statements[disk.statements.index("COMMIT") + 1 :] in ([], ["ROLLBACK"])


PROBE = {"probe": {"monitor": False, "max_sleep": 0, "email_frequency": 0}}


def test_a_batch_of_pings_whose_commit_fails_is_refused_whole_and_records_none(tmpfs):
    disk = disk_refusing_writes(tmpfs, {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 60}, **PROBE})
    try:
        with pytest.raises(StoreUnavailableError, match="the disk is full"), disk.ping_batch():
            for second in range(5):
                disk.record_ping("pi", T0 + 10 + second)
        assert failed_at_commit(disk), disk.statements[-3:]
        assert disk.pings_between("pi", T0, T0 + 100) == []
        assert disk.user("pi").last_ping is None
        tmpfs.free_up()
        with disk.ping_batch():
            disk.record_ping("pi", T0 + 20)
        assert disk.pings_between("pi", T0, T0 + 100) == [T0 + 20]
    finally:
        disk.close()


@pytest.mark.parametrize("http_version", ["1.1", "1.0"], ids=["plain GETs", "read by waitress"])
def test_pings_served_while_their_batches_cannot_commit_each_get_503_and_none_is_recorded(tmpfs, http_version):
    users = {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 60}, **PROBE}
    disk = disk_refusing_writes(tmpfs, users)
    app = make_test_app(disk, make_settings(users), time.time)
    http_server = serving.create_http_server(
        app, "127.0.0.1", 0, server.QUICK_PATHS, web.MAX_REQUEST_BODY, batch=disk.ping_batch
    )
    stop = threading.Event()
    thread = threading.Thread(target=serving.serve_until_signalled, args=(http_server, stop, 1.0), daemon=True)
    thread.start()
    try:
        result = burst("127.0.0.1", http_server.port, ["/ping?username=pi"] * 200, 10, http_version)
        # Every ping answered 503, not one a dropped connection (a batch that failed at its COMMIT once closed
        # its connections unanswered: about a third of the pings on a real full disk).
        assert result.failures == [], f"{len(result.failures)} pings dropped on a full disk: {result.failures[:3]}"
        assert result.count(503) == 200, f"{result.count(200)} pings answered 200 on a full disk"
        assert disk.statements.count("COMMIT"), "every ping came in alone: no batch was formed"
        assert disk.pings_between("pi", T0, time.time() + 60) == []
    finally:
        stop.set()
        thread.join(5)
        disk.close()


def test_an_alert_step_whose_commit_fails_queues_no_email_and_the_next_step_does(tmpfs):
    users = {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600}, **PROBE}
    disk = disk_refusing_writes(tmpfs, users)
    settings = LiveSettings(make_settings(users))
    steps = Scheduler(disk, smtp_mailer(free_port()), settings, "https://example.net", time.time)
    try:
        with pytest.raises(StoreUnavailableError, match="the disk is full"):
            steps.check_once(T0 + 61)
        assert failed_at_commit(disk), disk.statements[-3:]
        assert query(disk.path, "SELECT count(*) FROM alerts") == [(0,)]
        assert outbox(disk.path) == []
        tmpfs.free_up()
        assert steps.check_once(T0 + 62) == 1
        assert outbox(disk.path) == [("oncall@example.com", "queued", 0)]
    finally:
        disk.close()


@pytest.mark.usefixtures("trust_test_ca")
def test_while_the_database_refuses_writes_the_drain_sends_nothing_so_no_duplicates_pile_up(
    tmp_path, monkeypatch, smtp_server
):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "ping_listener.db"
    opened = Store(path)
    settings = make_settings()
    opened.sync_users(settings.users, T0)
    steps = Scheduler(opened, smtp_mailer(smtp_server.port), LiveSettings(settings), "https://example.net", time.time)
    steps.check_once(T0 + 61)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other_process:
        other_process.execute("BEGIN IMMEDIATE")  # e.g. someone's sqlite3 shell holding a write
        for second in range(3):
            with pytest.raises(StoreUnavailableError, match="locked"):
                steps.drain_once(T0 + 61 + second)
        other_process.execute("ROLLBACK")
    sent_while_locked = len(smtp_server.messages)
    assert sent_while_locked == 0, f"{sent_while_locked} email(s) sent while their result could not be recorded"
    assert steps.drain_once(T0 + 100) == 1
    smtp_server.wait_for_messages(1)
    assert query(path, "SELECT status, attempts FROM outbox") == [("sent", 1)]
    opened.close()


def test_with_durability_power_the_service_syncs_the_disk_at_each_pings_commit(tmp_path, start_server):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 1}
    service = start_server(write_settings(tmp_path / "settings.json", {"pi": user}, durability="power"))
    trace = tmp_path / "syncs.txt"
    # strace (Debian's strace package) records the service's syscalls that sync a file to disk, in every thread.
    tracer = subprocess.Popen(
        ["strace", "-f", "-e", "trace=fsync,fdatasync", "-o", str(trace), "-p", str(service.process.pid)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert "attached" in tracer.stderr.readline()
    pings = 100
    for _ in range(pings):  # one after the other: each commits alone
        assert service.get("/ping?username=pi")[0] == 200
    assert service.stop() == 0
    tracer.wait(10)
    syncs = sum(1 for line in trace.read_text().splitlines() if "sync(" in line)
    # With "process", only the checkpoints sync (the log and the database file, once a second).
    assert syncs >= pings, f"{syncs} syncs for {pings} pings"


def test_a_second_service_on_the_same_sqlite_file_exits_2_naming_the_holder_and_the_first_goes_on_untouched(
    tmp_path, start_server, smtp_server, ca_path
):
    users = {
        "router": {"monitor": True, "max_sleep": 0.2, "email_frequency": 3600},
        "pi": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600},
    }
    settings = write_settings(tmp_path / "settings.json", users)
    db = tmp_path / "ping_listener.db"
    first = start_server(settings, db)
    assert first.get("/ping?username=pi")[0] == 200
    smtp_server.wait_for_messages(1)  # router's alert, committed before it was sent
    state = "SELECT username, monitored_since, last_ping, last_alert, due_at, last_alert_kind, down_since FROM users"
    before = query(db, f"{state} ORDER BY username")
    assert [row[5] for row in before] == [None, "late"]  # pi pinging, router alerted

    second = run_server(
        "--settings", str(settings), "--db", str(db), "--port", "0", env=server_env(smtp_server.port, ca_path)
    )
    assert (second.returncode, second.stdout) == (2, "")
    assert second.stderr == (
        f"{db}: in use by another Ping Listener process (pid {first.process.pid}, holding {db}.lock);"
        " one process per SQLite database: stop it, or give this one another --db\n"
    )
    assert query(db, f"{state} ORDER BY username") == before
    assert first.get("/ping?username=pi")[0] == 200
    assert first.get("/healthz") == (200, "ok")
    assert first.stop() == 0
    assert query(db, "SELECT count(*) FROM pings") == [(2,)]


# --- bad databases at start: the real service, exit status 2, one line naming the file ------------


def not_sqlite(path):
    path.write_text("these are my notes, not a database\n" * 200)


def read_only_file(path):
    Store(path).close()
    path.chmod(0o444)


def read_only_directory(path):
    Store(path).close()
    path.chmod(0o666)
    path.parent.chmod(0o555)


def future_schema(path):
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


def another_applications(path):
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE recipes (name TEXT)")


def corrupt(path):
    Store(path).close()
    with contextlib.closing(sqlite3.connect(path)) as connection:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        [(users_page,)] = connection.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'users'").fetchall()
    with path.open("r+b") as file:
        file.seek((users_page - 1) * page_size)
        file.write(b"\xab" * 100)


@pytest.fixture
def database_directory(tmp_path):
    """A directory for the database, writable again once the test is over."""
    directory = tmp_path / "state"
    directory.mkdir()
    yield directory
    directory.chmod(0o755)  # after read_only_directory, so that pytest can clean up


def bound_by_file_permissions():
    """A command prefix under which the service obeys file permissions.

    Root ignores them through two capabilities; without them it is bound like any other user.
    """
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


@pytest.mark.parametrize(
    ("make_database", "problem"),
    [
        (not_sqlite, "cannot use this database: file is not a database"),
        (read_only_file, "the database file is read-only"),
        (read_only_directory, "its directory is read-only"),
        (future_schema, f"database schema version {SCHEMA_VERSION + 1} is newer than this Ping Listener understands"),
        (another_applications, "not a Ping Listener database"),
        (corrupt, "the database file is corrupt"),
    ],
)
def test_a_database_unfit_to_start_on_stops_startup_with_status_2_and_a_line_naming_it(
    database_directory, make_database, problem
):
    directory = database_directory
    settings = write_settings(
        directory / "settings.json", {"pi": {"monitor": True, "max_sleep": 1, "email_frequency": 1}}
    )
    db_path = directory / "ping_listener.db"
    make_database(db_path)
    command = [
        sys.executable,
        str(ROOT / "server.py"),
        "--settings",
        str(settings),
        "--db",
        str(db_path),
        "--port",
        "0",
    ]
    result = subprocess.run(bound_by_file_permissions() + command, capture_output=True, text=True, timeout=20)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{db_path}: ") and problem in line, line
