"""Storage faults: a full disk, a database that refuses writes, and databases unfit to start on."""

import contextlib
import http.client
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
from scheduler import Scheduler
from store import SCHEMA_VERSION, Store, StoreUnavailableError
from support import (
    ROOT,
    T0,
    SmallDiskStore,
    make_settings,
    make_test_app,
    query,
    smtp_mailer,
    wait_for_delivered,
    wait_until,
    write_settings,
)

LATE_USERS = 30


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


@pytest.mark.parametrize("http_version", ["1.1", "1.0"], ids=["plain GETs", "read by waitress"])
def test_on_a_full_disk_every_ping_of_a_burst_gets_503_and_none_a_dropped_connection(tmp_path, http_version):
    # Served as the service serves them: bursts make batches of pings, one commit each, and a batch that
    # cannot commit must answer each of its pings, not drop them.
    disk = SmallDiskStore(tmp_path / "ping_listener.db")
    settings = make_settings({"probe": {"monitor": False, "max_sleep": 0, "email_frequency": 0}})
    disk.sync_users(settings.users, time.time())
    app = make_test_app(disk, settings, time.time, None)
    http_server = serving.create_http_server(
        app, "127.0.0.1", 0, server.QUICK_PATHS, web.MAX_REQUEST_BODY, batch=disk.ping_batch
    )
    stop = threading.Event()
    thread = threading.Thread(target=serving.serve_until_signalled, args=(http_server, stop, 1.0), daemon=True)
    thread.start()
    pings = ["/ping?username=probe"] * 300
    try:
        disk.fill_up()
        # The free space left in the pages already used takes some pings: each is answered, 200 or 503.
        filling = burst("127.0.0.1", http_server.port, pings, 20, http_version)
        assert filling.failures == [], f"{len(filling.failures)} pings dropped: {filling.failures[:3]}"
        assert set(filling.statuses) <= {200, 503}
        full = burst("127.0.0.1", http_server.port, pings, 20, http_version)
        assert full.failures == [], f"{len(full.failures)} pings dropped on a full disk: {full.failures[:3]}"
        assert full.count(503) == len(pings), f"{full.count(200)} pings answered 200 on a full disk"
        recorded = query(disk.path, "SELECT count(*) FROM pings")[0][0]
        assert recorded == filling.count(200), f"{recorded} pings recorded, {filling.count(200)} answered 200"
        with contextlib.closing(http.client.HTTPConnection("127.0.0.1", http_server.port, timeout=5)) as connection:
            connection.request("GET", "/ping?username=probe")
            answer = connection.getresponse()
            assert (answer.status, answer.read()) == (503, b"storage unavailable: the disk is full; try again later")
    finally:
        stop.set()
        thread.join(5)
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
