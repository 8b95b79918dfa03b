"""Serving under a fleet's load: bursts of fresh connections, idle and non-reading clients, and the waitress
behaviour that serving.py relies on. Every server here listens on 127.0.0.1; every load is bounded."""

import contextlib
import email.utils
import gc
import http.client
import io
import json
import logging
import random
import socket
import subprocess
import threading
import time

import pytest
import webtest
from waitress.adjustments import Adjustments
from waitress.parser import HTTPRequestParser

import server
import serving
import web
from loadgen import Trickle, burst, closed_by_server, open_idle_connections, pipeline_without_reading
from records import StoreUnavailableError
from store import Store
from support import SLACK, db_of, make_settings, make_test_app, query, write_settings

DEVICE = "dev"
USERS = {DEVICE: {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}}
# 10:00 local on a day with no daylight-saving change.
BUSY_DAY = time.mktime((2026, 11, 20, 0, 0, 0, 0, 0, -1))
BUSY_DAY_LOGS = f"/logs?username={DEVICE}&year=26&month=11&day=20"


@contextlib.contextmanager
def serve_in_thread(app, limits=None, **options):
    """Serve `app` as the service does (`options` as create_http_server takes them), from a thread of this
    process; yield the port."""
    limits = limits or serving.ServingLimits()
    http_server = serving.create_http_server(
        app, "127.0.0.1", 0, server.QUICK_PATHS, web.MAX_REQUEST_BODY, limits, **options
    )
    stop = threading.Event()
    thread = threading.Thread(target=serving.serve_until_signalled, args=(http_server, stop, 1.0), daemon=True)
    thread.start()
    try:
        yield http_server.port
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive(), "the serving loop did not stop"


@pytest.fixture
def app(store):
    settings = make_settings(USERS)
    store.sync_users(settings.users, BUSY_DAY)
    return make_test_app(store, settings, time.time, None)


def get(port, path, timeout=5, source="127.0.0.1"):
    """GET `path` on a fresh connection from the local address `source`; (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def fill_busy_day(db_path):
    """Give DEVICE one ping a second all through BUSY_DAY: 86 400 pings."""
    store = Store(db_path)
    try:
        store.sync_users(make_settings(USERS).users, BUSY_DAY)
        for second in range(86_400):
            store.record_ping(DEVICE, BUSY_DAY + second + 0.5)
    finally:
        store.close()


def test_a_burst_of_2000_fresh_connections_is_answered_in_full_and_every_ping_is_kept(tmp_path, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", USERS))
    port = int(service.url.rsplit(":", 1)[1])

    result = burst("127.0.0.1", port, [f"/ping?username={DEVICE}"] * 2000, timeout=20)

    assert result.failures == []
    assert result.count(200) == 2000
    assert service.log().count("connection limit") <= 2
    today = time.localtime()
    status, body = service.get(f"/logs?username={DEVICE}&year={today.tm_year}&month={today.tm_mon}&day={today.tm_mday}")
    if time.localtime().tm_mday == today.tm_mday:  # the burst did not straddle midnight
        assert (status, len(json.loads(body))) == (200, 2000)


def test_1000_idle_connections_do_not_stop_other_clients_pings(tmp_path, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", USERS))
    port = int(service.url.rsplit(":", 1)[1])
    idle = open_idle_connections("127.0.0.1", port, 1000)
    try:
        for _ in range(20):
            assert get(port, f"/ping?username={DEVICE}")[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_client_that_pipelines_heavy_logs_and_never_reads_does_not_stop_others(tmp_path, start_server):
    db_path = tmp_path / "ping_listener.db"
    fill_busy_day(db_path)
    service = start_server(write_settings(tmp_path / "settings.json", USERS), db_path=db_path)
    port = int(service.url.rsplit(":", 1)[1])
    hog = pipeline_without_reading("127.0.0.1", port, BUSY_DAY_LOGS, 100)
    try:
        time.sleep(0.5)  # let it fill every buffer between it and the server
        for _ in range(20):
            assert get(port, f"/ping?username={DEVICE}")[0] == 200
        status, body = get(port, BUSY_DAY_LOGS, timeout=10)
        assert (status, len(json.loads(body))) == (200, 86_400)
    finally:
        hog.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout(app):
    # Cleanups more often than the timeout, so that one closing a connection too early is seen.
    limits = serving.ServingLimits(idle_timeout=2, cleanup_interval=1)
    # Closed idle_timeout to idle_timeout + cleanup_interval after its last activity (ServingLimits), and the
    # cleanup is a step of the serving loop: past that, the recv times out and the test fails.
    deadline = limits.idle_timeout + limits.cleanup_interval + SLACK
    with serve_in_thread(app, limits) as port:
        began = time.monotonic()  # before the connection's first activity, its accept
        with socket.create_connection(("127.0.0.1", port), timeout=deadline) as idle:
            assert idle.recv(1) == b""  # closed by the server
            assert time.monotonic() - began >= limits.idle_timeout  # never before


def test_a_client_that_never_reads_its_answers_is_disconnected_after_the_idle_timeout(app, store):
    for second in range(20_000):
        store.record_ping(DEVICE, BUSY_DAY + second)
    with serve_in_thread(app, serving.ServingLimits(idle_timeout=1, cleanup_interval=1)) as port:
        hog = pipeline_without_reading("127.0.0.1", port, BUSY_DAY_LOGS, 100)
        with hog:
            time.sleep(3.5)
            received, ended = b"", False
            hog.settimeout(1)
            deadline = time.monotonic() + 5
            while not ended and time.monotonic() < deadline:
                try:
                    chunk = hog.recv(1 << 20)
                except ConnectionResetError:  # closed with requests still unread
                    chunk = b""
                received += chunk
                ended = not chunk
            assert ended, "the server did not disconnect it"
        assert received.count(b"HTTP/1.1 200 OK") < 100
        assert get(port, f"/ping?username={DEVICE}")[0] == 200


@pytest.mark.parametrize(
    "settings",
    [{}, {"max_incomplete_requests_per_address": 20_000}],
    ids=["at most 1000 from one address", "a NAT's 20 000: the oldest part-way requests make room"],
)
def test_10100_trickling_connections_from_one_address_leave_every_other_addresss_pings_answered(
    tmp_path, start_server, settings
):
    # The attack of issue 22: half a request on each connection, then a byte at a time, never idle. Every
    # ping from another address must be answered before the first trickling connection could have been
    # closed by its request deadline: by the cap on connections per address, or by making room.
    service = start_server(write_settings(tmp_path / "settings.json", USERS, **settings))
    port = int(service.url.rsplit(":", 1)[1])
    began = time.monotonic()
    trickle = Trickle("127.0.0.1", port, 10_100)
    try:
        answered = 0
        for round_number in range(3):
            assert trickle.send_one_byte_each() > 0
            for other in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
                timeout = began + serving.DEFAULT_LIMITS.request_deadline - time.monotonic()
                assert timeout > 0, "the trickle took longer to set up than its requests' deadline"
                status, _ = get(port, f"/ping?username={DEVICE}", timeout=timeout, source=other)
                assert status == 200, f"round {round_number}, from {other}"
                answered += 1
            time.sleep(0.5)
    finally:
        trickle.close()
    assert query(tmp_path / "ping_listener.db", "SELECT count(*) FROM pings")[0][0] == answered


def test_one_address_holds_at_most_its_incomplete_requests_per_address_the_next_ones_are_closed_at_once(app):
    limits = serving.ServingLimits(incomplete_requests_per_address=50)
    with serve_in_thread(app, limits) as port:
        trickle = Trickle("127.0.0.1", port, 60)
        try:
            # Accepted after those 60 (the accept queue keeps its order), so answered once they have been read.
            assert get(port, f"/ping?username={DEVICE}", source="127.0.0.2")[0] == 200
            closed = [closed_by_server(sock) for sock in trickle.opened]
            assert sum(closed) == 10
            # Whole requests are not held back by the cap: a burst from that same address is served in full.
            result = burst("127.0.0.1", port, [f"/ping?username={DEVICE}"] * 200, timeout=20)
            assert (result.count(200), result.failures) == (200, [])
        finally:
            trickle.close()


def test_at_the_connection_limit_a_new_client_closes_the_oldest_part_way_request_instead_of_waiting(app):
    limits = serving.ServingLimits(connection_limit=40, request_deadline=60)
    room = limits.connection_limit - 2  # waitress counts its listening socket and its trigger among them
    began = time.monotonic()
    with serve_in_thread(app, limits) as port, contextlib.ExitStack() as held:
        older = Trickle("127.0.0.1", port, room // 2)
        held.callback(older.close)
        # Answered once the older ones have been read (the accept queue keeps its order); kept open, as
        # every client below, so that no connection closes and frees a place meanwhile.
        assert ping_kept_open(port, held, "127.0.0.2", timeout=5) == 200
        newer = Trickle("127.0.0.1", port, room - room // 2 - 1)
        held.callback(newer.close)
        for _ in range(10):  # every place is taken: each new client needs a part-way request closed
            timeout = began + limits.request_deadline - time.monotonic()
            assert ping_kept_open(port, held, "127.0.0.3", timeout) == 200
        older_closed = [closed_by_server(sock) for sock in older.opened]
        assert sum(older_closed) == 10, "not one part-way request closed per new client"
        assert not any(closed_by_server(sock) for sock in newer.opened), "a newer request closed before an older"


def ping_kept_open(port, stack, source, timeout):
    """Ping DEVICE from the local address `source` on a connection that `stack` closes; the answer's status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    stack.callback(connection.close)
    connection.request("GET", f"/ping?username={DEVICE}")
    answer = connection.getresponse()
    answer.read()
    return answer.status


@pytest.mark.parametrize(
    ("opening", "trickled"),
    [
        (b"GET /ping?username=dev HTTP/1.1\r\nX-Slow: ", b"a"),
        (b"GET /ping?username=dev HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n"),  # waitress skips blank lines
    ],
    ids=["half a request, then a header byte at a time", "a whole request, then blank lines"],
)
def test_a_request_that_does_not_arrive_whole_within_its_deadline_is_answered_408_and_closed(app, opening, trickled):
    limits = serving.ServingLimits(request_deadline=1, cleanup_interval=1, idle_timeout=60)
    with serve_in_thread(app, limits) as port, socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        reader = client.makefile("rb")
        client.sendall(opening)
        if opening.endswith(b"\r\n\r\n"):
            assert read_answer(reader)[0] == b"HTTP/1.1 200 OK\r\n"
        began = time.monotonic()
        with contextlib.suppress(OSError):  # closed by the server: nothing more can be sent
            # However long it goes on (a guard of 10 s), never idle for more than a quarter of a second.
            while not answered_or_closed(client) and time.monotonic() < began + 10:
                client.sendall(trickled)
                time.sleep(0.25)
        status_line, headers, body = read_answer(reader)
        assert reader.read() == b"", "the connection was left open after its 408"
    assert time.monotonic() - began >= limits.request_deadline
    assert status_line == b"HTTP/1.1 408 Request Timeout\r\n"
    assert body == b"request not received whole within 1 s" and b"Connection: close\r\n" in headers


def test_a_connection_kept_alive_whose_requests_each_arrive_whole_outlives_the_request_deadline(app):
    limits = serving.ServingLimits(request_deadline=1, cleanup_interval=1, idle_timeout=60)
    with serve_in_thread(app, limits) as port, socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        reader = client.makefile("rb")
        began = time.monotonic()
        while time.monotonic() < began + 3 * limits.request_deadline:
            status_line = exchange(client, reader, [b"GET /ping?username=dev HTTP/1.1\r\nHost: x\r\n\r\n"])[0]
            assert status_line == b"HTTP/1.1 200 OK\r\n"
            time.sleep(0.3)


def answered_or_closed(sock):
    """Whether the server has sent something on `sock` or closed it, as peeking without waiting shows."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        pass
    finally:
        sock.settimeout(timeout)
    return True


def test_pipelined_pings_and_reads_are_answered_in_order_on_one_connection(app):
    with serve_in_thread(app) as port, socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        requests = [f"/ping?username={DEVICE}", BUSY_DAY_LOGS, "/ping?username=nobody", "/ping"]
        client.sendall(b"".join(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for path in requests))
        reader = client.makefile("rb")
        statuses = []
        for _ in requests:
            status_line = reader.readline().split()
            length = 0
            while (header := reader.readline()) != b"\r\n":
                name, _, value = header.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            reader.read(length)
            statuses.append(int(status_line[1]))
    assert statuses == [200, 200, 404, 400]


def test_pings_are_answered_on_the_serving_thread_and_reads_on_a_worker(monkeypatch):
    threads = {}

    def app(environ, start_response):
        threads[environ["PATH_INFO"]] = threading.get_ident()
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    serving_thread = []
    original = serving._serve_one_round

    def recording_round(*args):
        serving_thread[:] = [threading.get_ident()]
        return original(*args)

    monkeypatch.setattr(serving, "_serve_one_round", recording_round)
    with serve_in_thread(app) as port:
        assert get(port, "/ping")[0] == 200
        assert get(port, "/ping/dev/fail")[0] == 200
        assert get(port, "/logs")[0] == 200
    assert threads["/ping"] == threads["/ping/dev/fail"] == serving_thread[0]
    assert threads["/logs"] != serving_thread[0]


def test_crossing_the_connection_limit_in_a_burst_logs_at_most_one_line_of_each_kind(app, caplog):
    caplog.set_level(logging.INFO, logger="waitress")
    with serve_in_thread(app, serving.ServingLimits(connection_limit=20)) as port:
        result = burst("127.0.0.1", port, [f"/ping?username={DEVICE}"] * 500, timeout=20)
    assert result.count(200) == 500
    limit_lines = [record for record in caplog.records if "connection limit" in record.getMessage()]
    assert 1 <= len(limit_lines) <= 2


def test_rate_limited_messages_pass_one_line_of_each_kind_per_interval():
    now = [0.0]
    limiter = serving.RateLimitedMessages(("reached", "dropped"), 60, clock=lambda: now[0])

    def passes(message):
        return limiter.filter(logging.LogRecord("waitress", logging.INFO, __file__, 1, message, None, None))

    assert [passes("reached the limit"), passes("dropped below"), passes("reached the limit")] == [True, True, False]
    assert passes("something else") and passes("something else")
    now[0] = 59.9
    assert not passes("reached the limit")
    now[0] = 60.0
    assert passes("reached the limit")


def test_logs_of_a_day_beyond_the_bound_answers_its_first_pings_and_says_so(app, store, monkeypatch):
    monkeypatch.setattr(web, "LOGS_MAX_PINGS", 3)
    for second in range(5):
        store.record_ping(DEVICE, BUSY_DAY + 36_000 + second)
    answer = webtest.TestApp(app).get(BUSY_DAY_LOGS)
    assert answer.json == ["10:00:00", "10:00:01", "10:00:02"]
    assert answer.headers[web.LOGS_TRUNCATED] == "first 3 pings of the day"
    monkeypatch.setattr(web, "LOGS_MAX_PINGS", 5)
    answer = webtest.TestApp(app).get(BUSY_DAY_LOGS)
    assert len(answer.json) == 5 and web.LOGS_TRUNCATED not in answer.headers


class CommitFailingStore(Store):
    """A real store whose ping batches fail at their end, as a commit on a full disk does."""

    @contextlib.contextmanager
    def ping_batch(self):
        with super().ping_batch():
            yield
            raise StoreUnavailableError("storage unavailable: the disk is full")


@pytest.mark.parametrize("http_version", ["1.1", "1.0"], ids=["plain GETs", "read by waitress"])
def test_pings_whose_batch_cannot_commit_are_answered_503_and_not_recorded(tmp_path, http_version):
    store = CommitFailingStore(tmp_path / "ping_listener.db")
    settings = make_settings(USERS)
    store.sync_users(settings.users, BUSY_DAY)
    app = make_test_app(store, settings, time.time)
    limits = serving.ServingLimits()
    http_server = serving.create_http_server(
        app, "127.0.0.1", 0, server.QUICK_PATHS, web.MAX_REQUEST_BODY, limits, batch=store.ping_batch
    )
    stop = threading.Event()
    thread = threading.Thread(target=serving.serve_until_signalled, args=(http_server, stop, 1.0), daemon=True)
    thread.start()
    try:
        result = burst("127.0.0.1", http_server.port, [f"/ping?username={DEVICE}"] * 50, 10, http_version)
        # Pings that came in alone commit on their own and are answered 200; the others came in batches
        # whose commit failed: each answered 503, none dropped, none recorded.
        assert result.failures == [], "a ping of a batch that could not commit got no answer"
        assert result.count(503) > 0, "every ping came in alone: no batch was formed, so none failed to commit"
        assert set(result.statuses) <= {200, 503}
        assert len(store.pings_between(DEVICE, BUSY_DAY, time.time() + 60)) == result.count(200)
    finally:
        stop.set()
        thread.join(5)
        store.close()


class HeldStore(Store):
    """A real store that a test holds at two points: a ping for GATE waits (on the I/O thread) until `gate` is
    set, and a batch of pings, its pings written, waits before its commit until `commit` is set."""

    GATE = "gate"

    def __init__(self, path):
        super().__init__(path)
        self.gate_reached, self.gate = threading.Event(), threading.Event()
        self.commit_reached, self.commit = threading.Event(), threading.Event()

    def record_ping(self, username, *args, **kwargs):
        if username == self.GATE:
            self.gate_reached.set()
            self.gate.wait(10)
        super().record_ping(username, *args, **kwargs)

    # Raised by a batch at its end instead of committing, if set.
    commit_error = None

    @contextlib.contextmanager
    def ping_batch(self):
        with super().ping_batch():
            yield
            self.commit_reached.set()
            self.commit.wait(10)
            if self.commit_error is not None:
                raise self.commit_error


def two_pings_in_one_batch(store, port, request, clients):
    """Send `request` on two new connections (entered into the ExitStack `clients`) so that the server at
    `port` reads both in one poll round, whichever the machine's speed: its I/O thread is held in a lone
    ping of HeldStore.GATE meanwhile. Returns the two connections."""
    gate = clients.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
    gate.sendall(f"GET /ping?username={HeldStore.GATE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert store.gate_reached.wait(10), "the gate's ping was not served"
    pair = [clients.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5)) for _ in "ab"]
    for client in pair:
        client.sendall(request)
    store.gate.set()
    return pair


def test_no_byte_of_a_batched_answer_leaves_before_its_batch_has_committed(tmp_path):
    store = HeldStore(tmp_path / "ping_listener.db")
    settings = make_settings({**USERS, HeldStore.GATE: USERS[DEVICE]})
    store.sync_users(settings.users, BUSY_DAY)
    ping = f"GET /ping?username={DEVICE} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with (
        serve_in_thread(make_test_app(store, settings, time.time), batch=store.ping_batch) as port,
        contextlib.ExitStack() as clients,
    ):
        try:
            pair = two_pings_in_one_batch(store, port, ping, clients)
            assert store.commit_reached.wait(10), "the two pings were not served in one batch"
            arrived = [answered_or_closed(client) for client in pair]
            assert arrived == [False, False], "an answer left before its batch committed"
        finally:
            store.gate.set()
            store.commit.set()
        assert [client.makefile("rb").readline() for client in pair] == [b"HTTP/1.1 200 OK\r\n"] * 2
    try:
        assert len(store.pings_between(DEVICE, BUSY_DAY, time.time() + 60)) == 2
    finally:
        store.close()


def test_a_head_ping_whose_batch_cannot_commit_gets_a_503_header_and_no_body(tmp_path):
    store = HeldStore(tmp_path / "ping_listener.db")
    store.commit_error = StoreUnavailableError("storage unavailable: the disk is full")
    store.commit.set()
    settings = make_settings({**USERS, HeldStore.GATE: USERS[DEVICE]})
    store.sync_users(settings.users, BUSY_DAY)
    head = f"HEAD /ping?username={DEVICE} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    try:
        with (
            serve_in_thread(make_test_app(store, settings, time.time), batch=store.ping_batch) as port,
            contextlib.ExitStack() as clients,
        ):
            try:
                answers = [
                    client.makefile("rb").read() for client in two_pings_in_one_batch(store, port, head, clients)
                ]
            finally:
                store.gate.set()
        message = b"storage unavailable: the disk is full; try again later"
        for answer in answers:  # read to the end: the connection is closed after it
            status_line, _, header = answer.partition(b"\r\n")
            assert status_line == b"HTTP/1.1 503 Service Unavailable"
            assert header.endswith(b"\r\n\r\n"), f"a body after a HEAD's header: {answer[-60:]!r}"
            assert f"Content-Length: {len(message)}\r\n".encode() in header and b"Connection: close\r\n" in header
        assert store.pings_between(DEVICE, BUSY_DAY, time.time() + 60) == []
    finally:
        store.close()


def test_the_service_batches_pings_and_answers_them_once_committed(tmp_path, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", USERS))
    port = int(service.url.rsplit(":", 1)[1])
    result = burst("127.0.0.1", port, [f"/ping?username={DEVICE}"] * 200, timeout=20)
    assert result.count(200) == 200, f"{result.count(200)} of 200 pings answered 200: {result.failures[:3]}"
    # Every acknowledged ping is in the database, read by a connection of its own. (That its answer left only
    # after the commit is shown by test_no_byte_of_a_batched_answer_leaves_before_…, every time.)
    recorded = query(tmp_path / "ping_listener.db", "SELECT count(*) FROM pings")[0][0]
    assert recorded == 200, f"{recorded} of 200 acknowledged pings recorded"


class RollingBackStore(Store):
    """A real store in which SQLite rolls a ping batch back before its next ping, as an I/O error does."""

    roll_back_next = False

    def before_use(self, connection):
        if self.roll_back_next and connection.in_transaction:
            self.roll_back_next = False
            connection.execute("ROLLBACK")


def test_a_ping_after_its_batch_was_rolled_back_is_refused_not_committed_alone(tmp_path):
    store = RollingBackStore(tmp_path / "ping_listener.db")
    try:
        store.sync_users(make_settings(USERS).users, BUSY_DAY)
        with pytest.raises(StoreUnavailableError), store.ping_batch():
            store.record_ping(DEVICE, BUSY_DAY + 1)
            store.roll_back_next = True
            with pytest.raises(StoreUnavailableError, match="rolled back"):
                store.record_ping(DEVICE, BUSY_DAY + 2)
        assert store.pings_between(DEVICE, BUSY_DAY, BUSY_DAY + 10) == []
        store.record_ping(DEVICE, BUSY_DAY + 3)  # out of a batch, a ping commits on its own again
        assert store.pings_between(DEVICE, BUSY_DAY, BUSY_DAY + 10) == [BUSY_DAY + 3]
    finally:
        store.close()


def parser_of_the_service():
    """A request parser of a server set up as the service's (server.py): quick paths and their bodies' bounds."""
    http_server = serving.create_http_server(
        environ_app,
        "127.0.0.1",
        0,
        server.QUICK_PATHS,
        web.MAX_REQUEST_BODY,
        quick_bodies=serving.QuickBodies(web.MAX_SIGNAL_REQUEST_BODY, web.MAX_SIGNAL_BODY),
    )
    try:
        return serving._Channel.parser_class(http_server.servers[0].adj)
    finally:
        http_server.dispatcher.shutdown(timeout=0.5)
        for listening in http_server.servers:
            listening.close()


def feed(parser, data):
    """Give `data` to `parser` as a channel does, 8 KiB a read, until it is taken or the request is complete."""
    while data and not parser.completed:
        data = data[parser.received(data[:8192]) :]


def chunked(body, size=65_536):
    """`body` in chunked transfer coding, `size` bytes a chunk."""
    return b"".join(
        b"%x\r\n%s\r\n" % (len(body[at : at + size]), body[at : at + size]) for at in range(0, len(body), size)
    )


@pytest.mark.parametrize("coding", ["Content-Length", "chunked"])
def test_a_signal_body_up_to_its_bound_is_read_whole_and_only_its_first_10000_bytes_are_kept(coding):
    body = bytes(range(256)) * (web.MAX_SIGNAL_REQUEST_BODY // 256)
    assert len(body) == web.MAX_SIGNAL_REQUEST_BODY
    framing = b"Transfer-Encoding: chunked" if coding == "chunked" else b"Content-Length: %d" % len(body)
    request = b"POST /ping/dev/fail HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n"
    request += chunked(body) + b"0\r\n\r\n" if coding == "chunked" else body
    parser = parser_of_the_service()
    feed(parser, request)
    assert parser.completed and parser.error is None
    assert parser.get_body_stream().read() == body[: web.MAX_SIGNAL_BODY], "more than its head kept in memory"
    assert int(parser.headers["CONTENT_LENGTH"]) == len(body)


@pytest.mark.parametrize(
    ("path", "bound"), [("/ping/dev/fail", web.MAX_SIGNAL_REQUEST_BODY), ("/testing/config", web.MAX_REQUEST_BODY)]
)
def test_a_chunked_body_past_its_paths_bound_is_refused_413_as_soon_as_it_is(path, bound):
    parser = parser_of_the_service()
    feed(parser, f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    feed(parser, chunked(b"x" * bound))
    assert not parser.completed, "refused at its bound, not past it"
    feed(parser, b"1\r\nx\r\n")
    assert parser.completed and (parser.error.code, parser.error.body) == (413, f"exceeds max_body of {bound}")


# A plain GET of a quick path is answered by serving.py itself, without waitress's request parser; any other
# request, or the same one sent in two pieces, by waitress. Each answer must be the one waitress would give.
PLAIN_PING = (
    b"GET /ping/dev?username=dev&x=1?2 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"
    b"X-Repeated: a\r\nx-repeated:b\r\nX-Forwarded-For: 10.0.0.9\r\nContent-Type: text/plain \r\n\r\n"
)


class CountingParser(serving._Channel.parser_class):
    """waitress's request parser, counting the requests it is made for."""

    made = 0

    def __init__(self, adj):
        super().__init__(adj)
        CountingParser.made += 1


@pytest.fixture
def counted_parsing(monkeypatch):
    """How many requests waitress's parser has been made for since the test began (a function)."""
    monkeypatch.setattr(serving._Channel, "parser_class", CountingParser)
    monkeypatch.setattr(CountingParser, "made", 0)
    return lambda: CountingParser.made


def environ_app(environ, start_response):
    """Answer with the request's WSGI environ (its text values) as JSON."""
    texts = {key: value for key, value in environ.items() if isinstance(value, str | tuple | bool)}
    body = json.dumps(texts, sort_keys=True).encode()
    start_response("200 OK", [("content-type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def read_answer(reader):
    """(status line, [header lines], body) of the next answer on `reader`."""
    status_line = reader.readline()
    headers, length = [], 0
    while (line := reader.readline()) != b"\r\n":
        headers.append(line)
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status_line, headers, reader.read(length)


def exchange(client, reader, pieces):
    """Send a request in `pieces` (a pause between them, so that the server reads each alone); its answer."""
    for number, piece in enumerate(pieces):
        if number:
            time.sleep(0.2)
        client.sendall(piece)
    return read_answer(reader)


def without_date(answer):
    """`answer` with the value of each Date header that has one left out (answers of different seconds compare)."""
    status_line, headers, body = answer
    dated = [b"Date: (a date)\r\n" if line.startswith(b"Date:") and line[5:].strip() else line for line in headers]
    return status_line, dated, body


def in_pieces_then_whole(port, request):
    """`request` sent on a fresh connection in two pieces (so waitress reads it), then on another whole: for
    each, (its answer, whether the server closed the connection after it)."""
    results = []
    for pieces in ([request[:20], request[20:]], [request]):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            reader = client.makefile("rb")
            answer = exchange(client, reader, pieces)
            client.settimeout(0.5)
            try:
                closed = reader.read() == b""
            except TimeoutError:
                closed = False
            results.append((answer, closed))
    return results


def test_a_plain_get_is_answered_without_waitress_parser_as_waitress_would_answer_it(counted_parsing):
    with serve_in_thread(environ_app) as port, socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        reader = client.makefile("rb")
        by_waitress = exchange(client, reader, [PLAIN_PING[:30], PLAIN_PING[30:]])
        assert counted_parsing() == 1
        plain = exchange(client, reader, [PLAIN_PING])
        assert counted_parsing() == 1, "waitress parsed the plain GET"
    assert without_date(plain) == without_date(by_waitress)
    assert b"Date: (a date)\r\n" in without_date(plain)[1]
    environ = json.loads(plain[2])
    assert environ["PATH_INFO"] == "/ping/dev" and environ["QUERY_STRING"] == "username=dev&x=1?2"
    assert environ["HTTP_X_REPEATED"] == "a, b" and environ["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_X_FORWARDED_FOR" not in environ  # waitress's middleware drops untrusted proxy headers


@pytest.mark.parametrize("version", ["3.0.3", "3.1.0", "2.1.4"])
def test_under_another_waitress_release_every_request_goes_through_its_parser_and_the_start_says_so(
    version, counted_parsing, caplog
):
    with serve_in_thread(environ_app, waitress_version=version) as port:
        (by_waitress, _), (whole, _) = in_pieces_then_whole(port, PLAIN_PING)
    assert counted_parsing() == 2, "a plain GET skipped the parser of a waitress it was not written for"
    assert without_date(whole)[:2] == without_date(by_waitress)[:2] and whole[0] == b"HTTP/1.1 200 OK\r\n"
    [line] = [record.getMessage() for record in caplog.records if "fast reader" in record.getMessage()]
    assert f"waitress {version} is installed, not {serving.PLAIN_GET_WAITRESS}" in line


def test_under_the_release_it_mirrors_the_fast_reader_is_used_and_nothing_is_logged(counted_parsing, caplog):
    with serve_in_thread(environ_app, waitress_version=serving.PLAIN_GET_WAITRESS) as port:
        in_pieces_then_whole(port, PLAIN_PING)
    assert counted_parsing() == 1
    assert not [record for record in caplog.records if "fast reader" in record.getMessage()]


def test_a_plain_get_asking_to_close_gets_waitress_answer_and_is_closed(counted_parsing):
    request = b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with serve_in_thread(environ_app) as port:
        (by_waitress, waitress_closed), (plain, closed) = in_pieces_then_whole(port, request)
    assert counted_parsing() == 1
    assert closed and waitress_closed
    (status_line, headers, body), (waitress_status_line, waitress_headers, waitress_body) = map(
        without_date, [plain, by_waitress]
    )
    assert (status_line, headers) == (waitress_status_line, waitress_headers)
    assert b"Connection: close\r\n" in headers
    environ, waitress_environ = json.loads(body), json.loads(waitress_body)
    assert environ.pop("REMOTE_PORT") != waitress_environ.pop("REMOTE_PORT")  # two connections
    assert environ == waitress_environ


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ping HTTP/1.0\r\nHost: x\r\n\r\n",
        b"HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET /ping/a%20b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ping#here HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: x\r\nX_Under: 1\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Latin: \xe9\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET /logs HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_a_request_that_is_not_a_plain_get_of_a_quick_path_is_left_to_waitress(request_bytes, counted_parsing):
    with serve_in_thread(environ_app) as port, socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(request_bytes)
        status_line = client.makefile("rb").readline()
    assert status_line.startswith(b"HTTP/1.")
    assert counted_parsing() == 1


@pytest.mark.parametrize("expect", [b"100-continue", b"100-Continue"])
def test_a_get_expecting_100_continue_is_answered_as_without_it_whole_or_in_pieces(expect, counted_parsing):
    # A GET has no body to wait for: "100 Continue" followed by nothing left curl waiting until its timeout.
    request = b"GET /ping HTTP/1.1\r\nHost: x\r\nExpect: " + expect + b"\r\n\r\n"
    with serve_in_thread(answering("200 OK", [("Content-Length", "4")], b"pong")) as port:
        (by_waitress, _), (plain, _) = in_pieces_then_whole(port, request)
        (without_expect, _), _ = in_pieces_then_whole(port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert counted_parsing() == 2, "the request sent whole was not read as a plain GET"
    assert without_date(by_waitress) == without_date(plain) == without_date(without_expect)
    assert by_waitress[0] == b"HTTP/1.1 200 OK\r\n" and by_waitress[2] == b"pong"


def test_a_post_expecting_100_continue_is_told_to_go_on_once_and_answered_after_its_body(counted_parsing):
    def echo(environ, start_response):
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    head = b"POST /ping HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    with serve_in_thread(echo) as port, socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        reader = client.makefile("rb")
        client.sendall(head)
        assert (reader.readline(), reader.readline()) == (b"HTTP/1.1 100 Continue\r\n", b"\r\n")
        client.sendall(b"hello")
        assert read_answer(reader)[::2] == (b"HTTP/1.1 200 OK\r\n", b"hello")


@pytest.mark.parametrize("extra_header", [[], ["-H", "X_Read_By: waitress"]], ids=["plain GET", "read by waitress"])
def test_curl_pinging_with_expect_100_continue_gets_its_answer(tmp_path, start_server, extra_header):
    service = start_server(write_settings(tmp_path / "settings.json", USERS))
    command = ["curl", "-sS", "-m", "10", "-H", "Expect: 100-continue", *extra_header]
    result = subprocess.run(
        [*command, "-w", " %{http_code}", f"{service.url}/ping?username={DEVICE}"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(" 200") and result.stdout.count("/") == 2, result.stdout  # "26/11/20 10:00:00 200"
    assert query(tmp_path / "ping_listener.db", "SELECT count(*) FROM pings")[0][0] == 1


def test_pipelined_plain_gets_are_left_to_waitress_and_answered_in_order(counted_parsing):
    requests = [b"GET /ping?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % number for number in range(3)]
    with serve_in_thread(environ_app) as port, socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"".join(requests))
        reader = client.makefile("rb")
        queries = [json.loads(read_answer(reader)[2])["QUERY_STRING"] for _ in requests]
    assert queries == ["n=0", "n=1", "n=2"]
    assert counted_parsing() == 3


def test_an_app_failing_on_a_plain_get_gets_waitress_500_and_the_connection_closed(counted_parsing, caplog):
    def failing_app(environ, start_response):
        raise RuntimeError("boom")

    with serve_in_thread(failing_app) as port:
        (by_waitress, waitress_closed), (plain, closed) = in_pieces_then_whole(
            port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    assert counted_parsing() == 2  # the request sent in pieces, and waitress's 500 made a request of its own
    assert closed and waitress_closed
    assert plain[0] == b"HTTP/1.1 500 Internal Server Error\r\n"
    assert without_date(plain) == without_date(by_waitress)
    assert any("boom" in record.exc_text for record in caplog.records if record.exc_text)


def test_an_app_answering_a_plain_get_with_a_wrong_content_length_gets_a_500_not_a_broken_answer(counted_parsing):
    def lying_app(environ, start_response):
        start_response("200 OK", [("Content-Length", "99")])
        return [b"short"]

    with serve_in_thread(lying_app) as port, socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        answer = exchange(client, client.makefile("rb"), [b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"])
    assert counted_parsing() == 0
    assert answer[0] == b"HTTP/1.1 500 Internal Server Error\r\n"


def answering(status, headers, body):
    """A WSGI app that answers every request with `status`, `headers` and `body`."""

    def app(environ, start_response):
        start_response(status, headers)
        return [body]

    return app


@pytest.mark.parametrize(
    "app",
    [
        answering("204 No Content", [], b""),
        answering("304 Not Modified", [("Content-Length", "4"), ("ETag", '"x"')], b"body"),
        answering("200 OK", [("Server", "mine"), ("content-type", "text/plain")], b"with a Server of its own"),
        answering("200 OK", [("Server", ""), ("Date", "")], b"empty Server and Date"),
        answering("200 OK", [("Date", "Thu, 01 Jan 2026 00:00:00 GMT")], b"a Date of its own"),
        answering("404 Not Found", [("X-Twice", "1"), ("x-twice", "2")], b"no Content-Length"),
    ],
    ids=["204", "304 with a body", "Server", "empty Server and Date", "Date", "no Content-Length"],
)
def test_a_plain_get_gets_the_answer_waitress_gives_whatever_the_app_answers(app, counted_parsing):
    with serve_in_thread(app) as port:
        (by_waitress, waitress_closed), (plain, closed) = in_pieces_then_whole(
            port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    assert counted_parsing() == 1
    assert without_date(plain) == without_date(by_waitress)
    assert closed == waitress_closed


def test_a_connection_kept_alive_holds_no_growing_memory_after_one_answer_was_sent_in_part(monkeypatch):
    # Once waitress had to keep part of an answer for later (a client that read slowly), that output buffer
    # lives in memory: the answers after it must not pile up in it.
    sends = []
    original_send = serving._Channel.send

    def send(channel, data, do_close=True):
        sends.append(len(data))
        return original_send(channel, data[:50] if len(sends) == 3 else data, do_close)

    monkeypatch.setattr(serving._Channel, "send", send)
    http_server = serving.create_http_server(
        answering("200 OK", [], b"x" * 200), "127.0.0.1", 0, server.QUICK_PATHS, web.MAX_REQUEST_BODY
    )
    stop = threading.Event()
    thread = threading.Thread(target=serving.serve_until_signalled, args=(http_server, stop, 1.0), daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", http_server.port), timeout=5) as client:
            reader = client.makefile("rb")
            for _ in range(2_000):
                client.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_answer(reader)[2] == b"x" * 200
            (channel,) = http_server.servers[0].active_channels.values()
            held = sum(len(outbuf.strbuf) + memory_held(outbuf.buf) for outbuf in channel.outbufs)
    finally:
        stop.set()
        thread.join(5)
    assert held < 10_000, f"{held} bytes kept for a connection with nothing to send"


def memory_held(buffer):
    """Bytes that a waitress output buffer (an OverflowableBuffer's `buf`) holds, sent or not."""
    if buffer is None:
        return 0
    assert isinstance(buffer.file, io.BytesIO), "the answers were moved to a temporary file"
    return buffer.file.getbuffer().nbytes


def test_every_request_read_plain_get_takes_is_read_alike_by_waitress_parser():
    # Random edits of a plain GET (seeded: the same every run); whatever read_plain_get accepts, waitress's
    # parser must read as one whole GET with the same path, query, URI and headers, and no body.
    pieces = [b"GET", b" ", b"/", b"/ping", b"?", b"#", b"%41", b"HTTP/1.0", b"\r\n", b"\r", b"\n", b"\t", b":",
              b"Host", b"_", b"-", b"Connection", b"close", b"Content-Length", b"0", b"\x00", b"\xe9", b"//", b"a",
              b"Transfer-Encoding", b"chunked", b"http://h", b","]  # fmt: skip
    plain = b"GET /ping?u=1 HTTP/1.1\r\nHost: x\r\nA-B: c d\r\n\r\n"
    generator = random.Random(8)
    accepted = 0
    for _ in range(20_000):
        data = bytearray(plain)
        for _ in range(generator.randint(1, 4)):
            at = generator.randint(0, len(data))
            choice = generator.random()
            if choice < 0.5:
                data[at:at] = generator.choice(pieces)
            elif choice < 0.8:
                del data[at : at + generator.randint(1, 3)]
            else:
                data[at:at] = bytes([generator.randint(0, 255)])
        request = serving.read_plain_get(bytes(data))
        if request is None:
            continue
        accepted += 1
        parser = HTTPRequestParser(Adjustments())
        assert parser.received(bytes(data)) == len(data) and parser.completed and parser.error is None, data
        assert (parser.command, parser.version, parser.fragment) == ("GET", "1.1", ""), data
        assert (parser.path, parser.query, parser.request_uri) == (request.path, request.query, request.uri), data
        assert parser.headers == request.headers and parser.body_rcv is None and not parser.expect_continue, data
    assert accepted > 1_000


@pytest.mark.parametrize(
    "target", [f"/ping?username={DEVICE}", f"/ping/{DEVICE}/fail", "/ping?username=nobody", "/ping", "/ping/a/b/c"]
)
def test_the_service_answers_a_plain_ping_as_it_answers_one_read_by_waitress(store, target, counted_parsing):
    settings = make_settings(USERS)
    store.sync_users(settings.users, BUSY_DAY)
    request = f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with (
        serve_in_thread(make_test_app(store, settings, lambda: BUSY_DAY + 30.5, None)) as port,
        socket.create_connection(("127.0.0.1", port), timeout=5) as client,
    ):
        reader = client.makefile("rb")
        by_waitress = exchange(client, reader, [request[:20], request[20:]])
        plain = exchange(client, reader, [request])
    assert counted_parsing() == 1
    assert without_date(plain) == without_date(by_waitress)
    for status_line, headers, _ in (plain, by_waitress):
        dates = [line for line in headers if line.startswith(b"Date:")]
        if status_line == b"HTTP/1.1 200 OK\r\n":  # the ping's own Date, and no second one from the server
            assert dates == [f"Date: {email.utils.formatdate(BUSY_DAY + 30, usegmt=True)}\r\n".encode()]
        assert len(dates) == 1


@pytest.mark.parametrize(
    ("target", "recorded"),
    [
        (f"/ping/{DEVICE}/", ("success", None)),
        (f"/ping/{DEVICE}/fail/", ("fail", None)),
        (f"/ping/{DEVICE}/3/", ("fail", 3)),
    ],
)
def test_a_signal_with_one_trailing_slash_is_recorded_whether_read_plain_or_by_waitress(
    store, target, recorded, counted_parsing
):
    settings = make_settings(USERS)
    store.sync_users(settings.users, BUSY_DAY)
    with serve_in_thread(make_test_app(store, settings, lambda: BUSY_DAY + 30.5, None)) as port:
        # A GET in pieces (waitress) then whole (read plain); a HEAD and a POST, which waitress reads.
        gets = in_pieces_then_whole(port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        statuses = [int(status_line.split()[1]) for (status_line, _, _), _ in gets]
        for method, body in (("HEAD", None), ("POST", b"done")):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request(method, target, body)
            statuses.append(connection.getresponse().status)
            connection.close()
        doubled = in_pieces_then_whole(port, f"GET {target}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert counted_parsing() == 4  # the whole GETs were read plain
    assert statuses == [200] * 4
    assert [status_line for (status_line, _, _), _ in doubled] == [b"HTTP/1.1 400 Bad Request\r\n"] * 2
    assert query(db_of(store), "SELECT kind, exit_code FROM pings") == [recorded] * 4


def test_the_service_collects_young_objects_after_many_allocations_not_after_700(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "stop_on_signals", threading.Event)
    monkeypatch.setattr(server, "reload_on_sighup", threading.Event)
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        # Stops at its settings (missing), after tuning the collector as the service's first step.
        assert server.main(["--settings", str(tmp_path / "missing.json")]) == 2
        assert gc.get_threshold() == (server.YOUNG_OBJECTS_BEFORE_COLLECTION, 10, 10)
    finally:
        gc.set_threshold(*before)


def test_a_start_pauses_the_garbage_collector_only_while_it_reads_the_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "stop_on_signals", threading.Event)
    monkeypatch.setattr(server, "reload_on_sighup", threading.Event)
    collecting = []

    def refused_settings(path):
        collecting.append(gc.isenabled())
        raise server.config.ConfigError(["settings: refused"])

    monkeypatch.setattr(server.config, "load_settings", refused_settings)
    assert gc.isenabled()
    assert server.main(["--settings", str(tmp_path / "settings.json")]) == 2
    assert collecting == [False]
    assert gc.isenabled()
