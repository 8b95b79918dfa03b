"""Hostile input: whatever a client sends, the answer is never a 5xx nor a traceback, always a short plain message.

Property-based tests drive the WSGI app in-process with any method, path, query string, headers
and body, then send raw bytes to the real service behind waitress.
"""

import contextlib
import http.client
import io
import json
import socket
import subprocess
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import web
from store import Store
from support import SLACK, make_settings, make_test_app, query, write_settings

# Deterministic: the same examples on every run, and no example database left in the worktree.
PROPERTY = settings(max_examples=1000, deadline=None, derandomize=True, database=None)
TESTING_PASSWORD = "let me in"
BADGE_KEY = "hostile-badge-key-0123"
USERS = {
    "pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600},
    "café/2": {"monitor": False, "max_sleep": 1, "email_frequency": 1},
}

METHODS = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]) | st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1, max_size=12
)
PATHS = (
    st.sampled_from(["/ping", "/logs", "/", "/testing/config", "/ping/", "//logs", "/testing", "/ping/pi/fail"])
    | st.binary(max_size=40).map(lambda raw: "/" + raw.decode("latin-1"))
    | st.binary(max_size=40).map(lambda raw: "/ping/pi/" + raw.decode("latin-1"))
    | st.sampled_from(["/status/home", "/status/home.json", f"/badge/{BADGE_KEY}/pi.svg", f"/badge/{BADGE_KEY}/"])
    | st.binary(max_size=40).map(lambda raw: "/status/" + raw.decode("latin-1"))
    | st.binary(max_size=40).map(lambda raw: f"/badge/{BADGE_KEY}/" + raw.decode("latin-1"))
)
FIELDS = st.sampled_from(
    ["username", "year", "month", "day", "password", "status", "exit_code", "details", ""]
) | st.text(max_size=10)
VALUES = (
    st.sampled_from(["pi", "café/2", "ghost", "26", "2026", "9", "09", "31", "-1", "0000", "٣", "\x00", "fail", "1"])
    | st.text(max_size=30)
    | st.text(min_size=150, max_size=300)  # longer than any message should be
    | st.integers().map(str)
)
QUERIES = (
    st.fixed_dictionaries({"username": VALUES}, optional={"year": VALUES, "month": VALUES, "day": VALUES}).map(
        urllib.parse.urlencode
    )
    | st.lists(st.tuples(FIELDS, VALUES), max_size=25).map(urllib.parse.urlencode)
    | st.binary(max_size=100).map(lambda raw: raw.decode("latin-1"))
    | st.text(alphabet="%0123456789abcdefABCDEFgz=&+;", max_size=60)
)
HEADER_NAMES = st.sampled_from(
    ["Content-Type", "Accept", "Cookie", "Authorization", "Range", "Expect", "If-None-Match", "X-Forwarded-For"]
) | st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)
HEADER_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)
JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
BODIES = st.binary(max_size=300) | JSON.map(lambda value: json.dumps(value).encode()) | st.just(b'{"password": 1e999}')


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    """The app with testing mode enabled and disabled, over one store."""
    opened = Store(tmp_path_factory.mktemp("hostile") / "ping_listener.db")
    user_settings = make_settings(
        USERS, status_pages={"home": {"title": "Home", "users": ["pi", "café/2"]}}, badge_key=BADGE_KEY
    )
    opened.sync_users(user_settings.users, time.time())
    yield {password: make_test_app(opened, user_settings, time.time, password) for password in (TESTING_PASSWORD, None)}
    opened.close()


def call(app, method, path, query, headers, body):
    """Run one request through the WSGI app as a server would; return (status, headers, body bytes)."""
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else "HTTP_" + key] = value
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer.update(status=int(status.split()[0]), headers=dict(response_headers))

    chunks = app(environ, start_response)
    try:
        content = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    return answer["status"], answer["headers"], content


def assert_short_plain_answer(status, content_type, content, request):
    """The properties every answer has, whatever the request."""
    text = content.decode("utf-8", errors="replace")
    assert status < 500, f"{status} for {request}: {text[:200]!r}"
    assert "Traceback" not in text and 'File "' not in text, f"a traceback for {request}"
    if status >= 400:
        assert content_type.startswith("text/plain"), f"{status} as {content_type} for {request}"
        assert len(text) <= web.MAX_ERROR_MESSAGE, f"a {len(text)}-character error message for {request}"


@PROPERTY
@given(
    method=METHODS,
    path=PATHS,
    query=QUERIES,
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
    body=BODIES,
)
def test_any_request_gets_a_short_plain_answer_and_never_a_5xx(apps, method, path, query, headers, body):
    status, response_headers, content = call(apps[TESTING_PASSWORD], method, path, query, headers, body)
    assert_short_plain_answer(status, response_headers.get("Content-Type", ""), content, (method, path, query, headers))
    if method == "HEAD":
        assert content == b""


@PROPERTY
@given(method=METHODS, path=PATHS, query=QUERIES, body=BODIES)
def test_without_testing_mode_only_the_testing_endpoints_answer_503_as_documented(apps, method, path, query, body):
    status, response_headers, content = call(apps[None], method, path, query, {}, body)
    if status == 503:
        assert path.startswith("/testing/") and content.decode().startswith("testing mode is disabled")
    else:
        assert_short_plain_answer(status, response_headers.get("Content-Type", ""), content, (method, path, query))


# --- the real service behind waitress ------------------------------------------------------------


def raw_request(url, data, method="GET", timeout=5):
    """Send `data` as is to the service at `url`; return (status, content type, body) of its answer."""
    address = urllib.parse.urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as connection:
        # A request refused before all of it was read: the answer is waiting all the same.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.sendall(data)
        answer = http.client.HTTPResponse(connection, method=method)
        answer.begin()
        return answer.status, answer.getheader("Content-Type", ""), answer.read()


@pytest.fixture
def service(tmp_path, start_server):
    """The real service, as a subprocess behind waitress."""
    return start_server(write_settings(tmp_path / "settings.json", USERS))


TOKENS = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=12
)
TARGET_BYTES = st.binary(max_size=60).filter(lambda raw: not set(raw) & set(b" \r\n"))


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one service serves every example
)
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"]) | TOKENS,
    target=st.sampled_from(
        [b"/ping?username=", b"/ping/pi/", b"/logs?username=pi&year=", b"/", b"/testing/config?"]
    ).flatmap(lambda start: TARGET_BYTES.map(lambda rest: start + rest)),
    headers=st.lists(
        st.tuples(
            TOKENS.filter(lambda name: name.lower() not in ("transfer-encoding", "content-length", "host")),
            HEADER_VALUES,
        ),
        max_size=4,
    ),
    body=BODIES,
)
def test_the_real_service_gives_any_raw_request_a_short_plain_answer(service, method, target, headers, body):
    lines = [f"{method} ".encode() + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{name}: ".encode() + value.encode("latin-1") for name, value in headers]
    lines.append(f"Content-Length: {len(body)}".encode())
    status, content_type, content = raw_request(service.url, b"\r\n".join(lines) + b"\r\n\r\n" + body, method=method)
    assert_short_plain_answer(status, content_type, content, (method, target, headers))


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",  # a TLS hello on the HTTP port
        b"GET /ping?username=pi HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /ping?username=pi HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n",
        b"POST /ping?username=pi HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET /ping?username=pi\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ping?username=pi HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n",
        b"POST /ping?username=pi HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ],
    ids=[
        "tls-hello",
        "header-without-colon",
        "bad-length",
        "two-lengths",
        "nul",
        "huge-header",
        "bad-chunk",
    ],
)
def test_malformed_http_is_refused_with_a_short_plain_4xx(service, data):
    status, content_type, content = raw_request(service.url, data)
    assert 400 <= status < 500
    assert_short_plain_answer(status, content_type, content, data[:60])
    assert service.get("/ping?username=pi")[0] == 200


def test_a_10_mb_body_is_refused_with_413_before_it_is_sent(service):
    headers = b"POST /ping?username=pi HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (10 * 1024 * 1024)
    status, content_type, content = raw_request(service.url, headers)  # not one byte of the body sent
    assert status == 413
    assert_short_plain_answer(status, content_type, content, "a 10 MB body")
    assert service.get("/ping?username=pi")[0] == 200


def job_output(size):
    """`size` bytes of a job's output: numbered lines of ASCII, so that any cut shows where it was made."""
    lines = b"".join(b"line %07d of the job's output\n" % number for number in range(size // 30 + 1))
    return lines[:size]


def curl(*arguments):
    """Run curl with `arguments` (a 10 s limit); (HTTP status, answer body)."""
    result = subprocess.run(
        ["curl", "-sS", "-m", "10", "-w", "\n%{http_code}", *arguments], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def signals_recorded(directory):
    """(kind, length of its kept body, that body) of each signal the service fixture's database in `directory`
    holds, oldest first."""
    return query(directory / "ping_listener.db", "SELECT kind, length(body), body FROM pings ORDER BY id")


@pytest.mark.parametrize(
    ("size", "chunked"),
    [(90_000, False), (90_000, True), (web.MAX_SIGNAL_REQUEST_BODY, False), (web.MAX_SIGNAL_REQUEST_BODY, True)],
    ids=["90 KB", "90 KB chunked", "2.5 MiB, the bound", "2.5 MiB chunked"],
)
def test_a_jobs_output_up_to_the_bound_is_recorded_with_its_first_10000_bytes(service, tmp_path, size, chunked):
    log = tmp_path / "job.log"
    log.write_bytes(job_output(size))
    headers = ["-H", "Transfer-Encoding: chunked"] if chunked else []
    status, answer = curl(*headers, "--data-binary", f"@{log}", f"{service.url}/ping/pi/fail")
    assert status == 200, answer
    assert signals_recorded(tmp_path) == [("fail", web.MAX_SIGNAL_BODY, job_output(web.MAX_SIGNAL_BODY).decode())]


def test_a_jobs_output_past_the_bound_is_a_413_that_records_nothing(service, tmp_path):
    log = tmp_path / "job.log"
    log.write_bytes(job_output(web.MAX_SIGNAL_REQUEST_BODY + 1))
    status, answer = curl("--data-binary", f"@{log}", f"{service.url}/ping/pi/fail")
    assert status == 413 and "exceeds max_body of 2621440" in answer, answer
    assert_short_plain_answer(status, "text/plain", answer.encode(), "a body past the bound")
    assert signals_recorded(tmp_path) == []


def test_a_body_over_64_kib_to_any_other_path_is_still_refused_with_413(service):
    headers = b"POST /testing/config HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (web.MAX_REQUEST_BODY + 1)
    status, content_type, content = raw_request(service.url, headers)
    assert status == 413
    assert_short_plain_answer(status, content_type, content, "a body past 64 KiB")


def test_a_10000_character_username_is_a_quick_404_with_a_short_message(service):
    # How quick: `make bench` (bench/ping_cost.py) measures its cost. Here only a guard against a hang: the
    # answer is immediate, and get() fails if a read waits longer than a loaded machine may add.
    username = "x" * 10_000
    for path in (f"/ping?username={username}", f"/logs?username={username}&year=26&month=1&day=1"):
        status, answer = service.get(path, timeout=SLACK)
        assert status == 404
        assert answer.startswith("unknown user xxx") and len(answer) <= web.MAX_ERROR_MESSAGE, len(answer)
