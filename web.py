"""Ping Listener's HTTP answers: the WSGI app, its routes, the fast /ping path and its error answers.

Routes only do their job: guards.py checks passwords, localtime.py parses queries and writes times,
rules.py says what a user's state is, and store.py holds the data. The command that serves this
app is server.py.
"""

import hmac
import json
import logging
import math
import threading
import wsgiref.handlers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import bottle

import api
import logs_page
import metrics
import pages
from checks import Checks, Definition
from config import EMAIL_CHANNEL, ConfigError, LiveSettings, UserConfig, secret_digest
from guards import (
    WRONG_PASSWORD_GLOBAL_LIMIT,
    WRONG_PASSWORD_LIMIT,
    WRONG_PASSWORD_WINDOW,
    BearerGuard,
    OperatorCredentials,
    PasswordGuard,
    Sessions,
    WrongPasswordLimiter,
    check_ping_token,
    json_body,
)
from localtime import (
    QueryError,
    format_local_time,
    format_ping_time,
    local_clock_times,
    local_clock_writer,
    local_day_bounds,
    query_fields,
)
from mailer import SENT, TestEmailSender
from overview import Overview, overview_day
from records import (
    CheckExistsError,
    CheckLimitError,
    EmailEvent,
    Signal,
    StoreUnavailableError,
    UnknownUserError,
    UserState,
    WebhookHistory,
)
from rules import (
    FAIL,
    LOG,
    MAX_EXIT_CODE,
    SIGNAL_KINDS,
    START,
    SUCCESS,
    expected_at,
    held_back_until,
    late_at,
    live_state,
    run_deadline,
    signal_kind,
    snoozed,
)
from status import CACHE_SECONDS, Answer, StatusPages, split_badge_name
from store_contract import StoreContract

log = logging.getLogger("ping_listener.web")

# A larger request body, but to /ping, is refused with 413 before it is read (by waitress, see serving.py),
# and no handler reads more of one.
MAX_REQUEST_BODY = 64 * 1024
# Error messages may quote what the client sent (a username); a long one is cut to this length.
MAX_ERROR_MESSAGE = 200
TESTING_DISABLED = "testing mode is disabled: TESTING_PASSWORD is not set"
OVERVIEW_DISABLED = "the overview is disabled: neither OVERVIEW_PASSWORD nor TESTING_PASSWORD is set"
METRICS_DISABLED = "metrics are disabled: METRICS_TOKEN is not set"
PING_METHODS = ("GET", "POST", "HEAD")
PLAIN_TEXT = "text/plain; charset=utf-8"
# The most times one /logs answer lists (about 1.2 MB and 60 ms of CPU): more than one ping a second
# all day long. A day with more is answered with its first LOGS_MAX_PINGS and the LOGS_TRUNCATED header.
LOGS_MAX_PINGS = 100_000
LOGS_TRUNCATED = "Ping-Listener-Truncated"
# With details=1, bodies of up to 10 000 bytes each, and JSON's escapes six times longer than a control
# character, could make a day's answer gigabytes: it holds the signals that fit in this many bytes (and
# says so with the LOGS_TRUNCATED header).
LOGS_MAX_DETAILS_BYTES = 4_000_000
# Such an answer goes to waitress in pieces of about this size: each write to a connection costs a hand-off to
# the I/O thread, and a block of megabytes costs page faults, both while a worker holds the interpreter.
LOGS_PIECE_BYTES = 64 * 1024
# The first this many bytes of a POST body to /ping are kept with the signal.
MAX_SIGNAL_BODY = 10_000
# The largest body a signal may carry, 2.5 MiB as the reference monitor (Healthchecks) takes: the server
# keeps its first MAX_SIGNAL_BODY bytes and reads the rest only to drop it (serving.QuickBodies); a larger
# body gets 413 before it is read, and nothing is recorded.
MAX_SIGNAL_REQUEST_BODY = 2_621_440
PING_PATH = "/ping"
# The last segment of /ping/NAME/SEGMENT, for each kind of signal it can name besides exit codes.
PATH_SIGNALS = {START: START, FAIL: FAIL, LOG: LOG}
# How many of the newest alert emails the testing page shows.
RECENT_EMAILS = 50
# The longest snooze, in minutes: a week.
MAX_SNOOZE_MINUTES = 10_080
STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".ico": "image/x-icon"}
# On every answer: the page loads scripts, styles and data from this origin only (no inline
# script can run, so an escaping mistake cannot become script), and no other site may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

# Every answer of the fast /ping path carries these, then its Content-Length.
_PING_HEADERS = (("Content-Type", PLAIN_TEXT), *SECURITY_HEADERS.items())


@dataclass(frozen=True)
class Operations:
    """What the operators' endpoints answer from: /healthz, /metrics, and the API key /snooze accepts."""

    # Why the service is unhealthy (a loop stopped, the database not answering), or None.
    health_problem: Callable[[], str | None]
    metrics: metrics.Exporter
    # Unlocks /metrics as a bearer token; None disables it.
    metrics_token: str | None
    # Lets a program snooze a user without a token (X-Api-Key), and use the management API; None: no API key
    # is accepted.
    api_key: str | None = None
    # Lets a program read through the management API, not write; None: no such key.
    api_key_readonly: str | None = None
    # The environment's PING_KEY: the key of the slug URLs /ping/<ping_key>/<name> unless settings.json sets one.
    ping_key: str | None = None


def make_app(
    store: StoreContract,
    settings: LiveSettings,
    clock: Callable[[], float],
    testing_password: str | None,
    mail_sender: TestEmailSender,
    operations: Operations,
    overview: Overview,
    overview_password: str | None = None,
    checks: Checks | None = None,
) -> WSGIApplication:
    """The WSGI app over `store` and the settings in force; `clock()` gives epoch seconds for each ping.

    /ping is answered before Bottle (see _with_fast_ping); every other path is a Bottle route.
    `testing_password` unlocks the testing page's endpoints; None disables them. The testing
    page's test emails go through `mail_sender`. The overview's answers come from `overview` (its
    upkeep is the caller's to run); `overview_password` unlocks the overview's endpoints, or
    `testing_password` when it is None; with neither they are disabled. Both share one limit on
    wrong passwords, with wrong metrics tokens and wrong credentials given to /snooze and /logs.
    `checks` puts the checks created by program in force with settings.json's (made over `store` and
    `settings` if not given).
    """
    if checks is None:
        checks = Checks(store, settings)
    app = bottle.Bottle()
    app.default_error_handler = _plain_error
    # Put together once: they change only with the code.
    html_pages = {
        name: pages.page(STATIC_DIR, name)
        for name in ("index.html", "disabled.html", "overview.html", "overview-disabled.html")
    }

    def page_answer(name: str) -> bytes:
        bottle.response.content_type = "text/html; charset=utf-8"
        bottle.response.set_header("Cache-Control", "no-cache")
        return html_pages[name]

    app.install(_domain_errors)
    wrong_passwords = WrongPasswordLimiter(WRONG_PASSWORD_LIMIT, WRONG_PASSWORD_WINDOW, WRONG_PASSWORD_GLOBAL_LIMIT)
    sessions = Sessions()
    testing_only = PasswordGuard(
        "testing", testing_password, TESTING_DISABLED, wrong_passwords, sessions, clock, MAX_REQUEST_BODY
    )
    if overview_password is None:
        overview_password = testing_password
    overview_only = PasswordGuard(
        "overview", overview_password, OVERVIEW_DISABLED, wrong_passwords, sessions, clock, MAX_REQUEST_BODY
    )

    # One test email at a time: each holds a worker thread for its SMTP conversation.
    sending_test_email = threading.Lock()
    metrics_only = BearerGuard(operations.metrics_token, METRICS_DISABLED, wrong_passwords, clock)
    operators = OperatorCredentials(overview_only, operations.api_key, wrong_passwords, clock)
    public = StatusPages(store, settings)

    @app.hook("after_request")
    def security_headers():
        bottle.response.headers.update(SECURITY_HEADERS)

    @app.get("/logs")
    def logs():
        query = query_fields(bottle.request.environ.get("QUERY_STRING", ""))
        username = query.get("username")
        if not username:
            raise bottle.HTTPError(400, "missing username")
        details = query.get("details")
        if details is not None and details != "1":
            raise bottle.HTTPError(400, f"invalid details {details[:20]!r}: expected 1")
        start, end = local_day_bounds(query)
        # The answer depends on Accept: a cache must not hand a browser's page to a script, or the reverse.
        bottle.response.set_header("Vary", "Accept")
        if not details and logs_page.wants_html(bottle.request.environ.get("HTTP_ACCEPT")):
            rows, cut = store.signals_between(
                username, start, end, LOGS_MAX_PINGS, LOGS_MAX_DETAILS_BYTES, logs_page.row_writer()
            )
            pieces = _in_pieces(logs_page.page(username, start, rows, cut))
            bottle.response.content_type = "text/html; charset=utf-8"
            bottle.response.set_header("Content-Length", str(sum(map(len, pieces))))
            return iter(pieces)
        bottle.response.content_type = "application/json"
        if details:
            user = settings.current.users.get(username)
            with_bodies = operators.bodies_allowed(user, username, query, bottle.request.environ)
            items, cut = store.signals_between(
                username, start, end, LOGS_MAX_PINGS, LOGS_MAX_DETAILS_BYTES, _signal_details_writer(with_bodies)
            )
            if cut:
                bottle.response.set_header(LOGS_TRUNCATED, f"first {len(items)} signals of the day")
            pieces = _signal_details(items)
            bottle.response.set_header("Content-Length", str(sum(map(len, pieces))))
            return iter(pieces)  # an iterator, which bottle passes on piece by piece (a list it would join)
        times = store.pings_between(username, start, end, LOGS_MAX_PINGS + 1)
        if len(times) > LOGS_MAX_PINGS:
            del times[LOGS_MAX_PINGS:]
            bottle.response.set_header(LOGS_TRUNCATED, f"first {LOGS_MAX_PINGS} pings of the day")
        return json.dumps(local_clock_times(times))

    # POST only: a link or an image tag in another site's page cannot snooze anyone.
    @app.post("/snooze")
    def snooze():
        environ = bottle.request.environ
        query = query_fields(environ.get("QUERY_STRING", ""))
        body = _snooze_body(bottle.request)
        username = query.get("username", body.get("username"))
        if not isinstance(username, str) or not username:
            raise bottle.HTTPError(400, "missing username")
        minutes = _snooze_minutes(query.get("minutes", body.get("minutes")))
        user = settings.current.users.get(username)
        if user is None:
            raise bottle.HTTPError(404, f"unknown user {username}")
        who = operators.snooze(user, username, query, body, environ)
        now = clock()
        until = store.snooze(username, now + minutes * 60, now)
        log.info(
            "%s snoozed until %s (minutes=%d) by its %s from %s",
            username,
            format_local_time(until),
            minutes,
            who,
            environ.get("REMOTE_ADDR", ""),
        )
        bottle.response.content_type = PLAIN_TEXT
        return format_ping_time(until)

    @app.get("/")
    def testing_page():
        return page_answer("index.html" if testing_password is not None else "disabled.html")

    # Browsers ask for it on every page: a small icon, not a 404 in their console.
    @app.get("/favicon.ico")
    def favicon():
        return _static_file("favicon.ico")

    @app.get(r"/static/<filename:re:[a-z][a-z-]*\.(?:css|js)>")
    def static_asset(filename):
        return _static_file(filename)

    @app.post("/testing/config")
    @testing_only
    def testing_config():
        current = settings.current
        return {
            "recipient": current.recipient,
            "users": {
                name: {
                    "monitor": user.monitor,
                    "max_sleep": user.max_sleep,
                    "schedule": user.schedule,
                    "tz": user.tz,
                    "grace": user.grace,
                    "email_frequency": user.email_frequency,
                }
                for name, user in current.users.items()
            },
        }

    @app.post("/testing/state")
    @testing_only
    def testing_state():
        now = clock()
        return {
            "now": now,
            "now_local": format_local_time(now),
            "users": {user.username: _live_user(user, now) for user in store.configured_users()},
            "emails": [_email_event(email) for email in reversed(store.recent_emails(RECENT_EMAILS))],
            "webhooks": [_webhook_event(delivery) for delivery in reversed(store.recent_webhooks(RECENT_EMAILS))],
        }

    @app.post("/testing/test-email")
    @testing_only
    def testing_test_email():
        recipient = settings.current.recipient
        if recipient is None:
            raise bottle.HTTPError(409, "settings.json has no recipient to send a test email to")
        if not sending_test_email.acquire(blocking=False):
            raise bottle.HTTPError(409, "a test email is being sent already; wait for its answer")
        try:
            result = mail_sender.send_test(recipient, clock())
        finally:
            sending_test_email.release()
        if result.status == SENT:
            log.info("test email from the testing page sent to %s", recipient)
        else:
            log.error("test email from the testing page to %s not sent: %s", recipient, result.error)
        # The SMTP server's own words stay in the log: the page gets its answer's code at most.
        return {"recipient": recipient, "sent": result.status == SENT, "result": result.brief()}

    @app.get("/overview")
    def overview_page():
        return page_answer("overview.html" if overview_password is not None else "overview-disabled.html")

    @app.post("/overview/state")
    @overview_only
    def overview_now():
        # The guard has checked that the body is a JSON object of Unicode text with the password.
        since = json.loads(bottle.request.body.read(MAX_REQUEST_BODY)).get("since")
        if since is not None and not isinstance(since, str):
            raise bottle.HTTPError(400, "invalid since: expected the version of an earlier answer, or null")
        bottle.response.content_type = "application/json"
        return overview.state(clock(), since)

    @app.post("/overview/day")
    @overview_only
    def overview_of_a_day():
        # The guard has checked that the body is a JSON object of Unicode text with the password.
        body = json.loads(bottle.request.body.read(MAX_REQUEST_BODY))
        username = body.get("username")
        if not isinstance(username, str) or not username:
            raise bottle.HTTPError(400, "missing username")
        start, end = local_day_bounds({name: _date_field(body, name) for name in ("year", "month", "day")})
        return _json(overview_day(store, username, start, end, clock()))

    @app.get(r"/status/<slug:re:[A-Za-z0-9_-]+>")
    def status_page(slug):
        return _public_answer(public.page(slug, "html", clock()), f"no status page {slug}")

    @app.get(r"/status/<slug:re:[A-Za-z0-9_-]+>.json")
    def status_page_data(slug):
        return _public_answer(public.page(slug, "json", clock()), f"no status page {slug}")

    # A wrong key and an unknown name or tag get the same answer: the key is not guessed a part at a time.
    @app.get("/badge/<key>/<name:path>")
    def badge(key, name):
        parts = split_badge_name(name)
        answer = None if parts is None else public.badge(key, parts[0], parts[1], clock())
        return _public_answer(answer, "no such badge")

    @app.get("/healthz")
    def healthz():
        problem = operations.health_problem()
        if problem is not None:
            raise bottle.HTTPError(503, problem)
        bottle.response.content_type = PLAIN_TEXT
        return "ok"

    @app.get("/metrics")
    @metrics_only
    def prometheus_metrics():
        bottle.response.content_type = metrics.CONTENT_TYPE
        return operations.metrics.scrape()

    keys = api.ApiKeys(operations.api_key, operations.api_key_readonly)
    api.mount(app, store, settings, checks, clock, keys, wrong_passwords)
    env_ping_key = None if operations.ping_key is None else secret_digest(operations.ping_key)
    return _with_fast_ping(app, store, settings, clock, checks, env_ping_key)


def _with_fast_ping(
    app: WSGIApplication,
    store: StoreContract,
    settings: LiveSettings,
    clock: Callable[[], float],
    checks: Checks,
    env_ping_key: bytes | None,
) -> WSGIApplication:
    """`app` behind a WSGI function that answers /ping and /ping/... itself, with the same answers Bottle would give
    (`env_ping_key`: the secret_digest of the environment's PING_KEY, or None).

    Every device's heartbeat is a ping: Bottle's routing and request and response objects would
    cost it about as much CPU as its SQLite transaction, and with the GIL every microsecond spent
    here is one the server's I/O loop waits for.
    """

    answer_times = _PingAnswerTimes()

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != PING_PATH and not path.startswith("/ping/"):
            return app(environ, start_response)
        method = environ.get("REQUEST_METHOD")
        headers = [*_PING_HEADERS]
        try:
            if method not in PING_METHODS:
                headers.append(("Allow", ", ".join(PING_METHODS)))
                raise bottle.HTTPError(405, "Method not allowed.")
            now, created = _record_signal(environ, store, settings, clock, checks, env_ping_key)
            body, date = answer_times.at(now)
            headers.append(("Date", date))
            status = "201 Created" if created else "200 OK"
        except bottle.HTTPError as error:
            status, body = error.status_line, _error_text(error).encode()
        except Exception:
            log.exception("%s /ping failed", method)
            status, body = "500 Internal Server Error", b"internal server error"
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [b"" if method == "HEAD" else body]

    return wsgi


class _PingAnswerTimes:
    """A ping's answer body (format_ping_time) and its HTTP Date header for the second it was recorded in.

    Both change once a second and pings come by the thousand: the latest second's are kept, which
    saves formatting them (about 3.5 µs of a ping's CPU, Date otherwise written by waitress).
    """

    def __init__(self) -> None:
        """Nothing kept yet."""
        # (second, body, date), replaced whole so that a reader on another thread sees one second's.
        self._latest: tuple[int | None, bytes, str] = (None, b"", "")

    def at(self, now: float) -> tuple[bytes, str]:
        """(answer body, Date header) of a ping recorded at `now` (epoch seconds)."""
        second = math.floor(now)
        latest = self._latest
        if latest[0] != second:
            latest = (second, format_ping_time(second).encode(), wsgiref.handlers.format_date_time(second))
            self._latest = latest
        return latest[1], latest[2]


def _record_signal(
    environ: WSGIEnvironment,
    store: StoreContract,
    settings: LiveSettings,
    clock: Callable[[], float],
    checks: Checks,
    env_ping_key: bytes | None,
) -> tuple[float, bool]:
    """Record the signal that `environ` asks for (query or path form, by name, UUID or ping_key and name) if its
    user's token allows it, creating its check first if it asks to (create=1 with auto_provision); the time it
    was recorded at and whether the check was created, or a bottle.HTTPError. `env_ping_key`: the secret_digest
    of the environment's PING_KEY, or None."""
    try:
        query = query_fields(environ.get("QUERY_STRING", ""))
        if environ.get("PATH_INFO") == PING_PATH:
            username, kind, exit_code = _query_signal(query)
        else:
            username, kind, exit_code = _path_signal(_without_ping_key(environ["PATH_INFO"], settings, env_ping_key))
    except QueryError as error:
        raise bottle.HTTPError(400, str(error)) from None
    user = settings.current.users.get(username)
    created = False
    if user is None:
        name = checks.name_of(username)
        if name is not None:
            username, user = name, settings.current.users.get(name)
    if user is None and query.get("create") == "1" and settings.current.auto_provision:
        user, created = _provision(username, settings, checks, clock)
    if user is None:
        raise bottle.HTTPError(404, f"unknown user {username}")
    check_ping_token(user, username, query, environ)
    body = _signal_body(environ) if environ.get("REQUEST_METHOD") == "POST" else None
    now = clock()
    try:
        store.record_ping(username, now, kind, exit_code, body)
        checks.after_signal(username, kind, now)
    except (UnknownUserError, StoreUnavailableError) as error:
        raise _http_error(error, environ) from None
    return now, created


def _without_ping_key(path: str, settings: LiveSettings, env_ping_key: bytes | None) -> str:
    """`path` (/ping/...) as /ping/<name>... if it is /ping/<ping_key>/<name>... (Healthchecks' slug URLs),
    else as it is; the ping_key is settings.json's, or else `env_ping_key` (the digest of PING_KEY). Only with
    a ping_key set, and then a SHA-256 of the first segment: no more on other pings."""
    key_digest = settings.current.ping_key_digest or env_ping_key
    if key_digest is None:
        return path
    first, slash, rest = path[len("/ping/") :].partition("/")
    if not slash or not hmac.compare_digest(secret_digest(first), key_digest):
        return path
    return "/ping/" + rest


def _provision(
    username: str, settings: LiveSettings, checks: Checks, clock: Callable[[], float]
) -> tuple[UserConfig, bool]:
    """Create the check `username` from `defaults`, as a signal with create=1 asks (auto_provision); its config
    and whether this request created it.

    400 naming the problem if `defaults` cannot make it (the name, require_tokens); 403 past
    auto_provision_limit. A check another request or instance created meanwhile is taken as it is.
    """
    limit = settings.current.auto_provision_limit
    created = True
    try:
        checks.create(username, Definition(settings={}, created_by="ping"), limit, clock())
    except ConfigError as error:
        raise bottle.HTTPError(400, f"cannot create {username}: {'; '.join(error.problems)}") from None
    except CheckLimitError:
        raise bottle.HTTPError(
            403, f"cannot create {username}: auto_provision_limit ({limit} checks created by signals) reached"
        ) from None
    except CheckExistsError:
        checks.refresh(force=True)
        created = False
    except StoreUnavailableError as error:
        raise bottle.HTTPError(503, f"{error}; try again later") from None
    user = settings.current.users.get(username)
    if user is None:
        raise bottle.HTTPError(404, f"unknown user {username}")
    return user, created


def _query_signal(query: Mapping[str, str]) -> tuple[str, str, int | None]:
    """(username, kind, exit code) of /ping?username=NAME[&status=KIND][&exit_code=N], given its query's
    fields; QueryError if invalid."""
    username = query.get("username")
    if not username:
        raise QueryError("missing username")
    status, code = query.get("status"), query.get("exit_code")
    if code is not None:
        if status is not None:
            raise QueryError("status and exit_code cannot be used together")
        exit_code = _exit_code(code)
        if exit_code is None:
            raise QueryError(f"invalid exit_code {code[:20]!r}: expected 0 to {MAX_EXIT_CODE}")
        return username, signal_kind(exit_code), exit_code
    if status is None:
        return username, SUCCESS, None
    if status not in SIGNAL_KINDS:
        raise QueryError(f"unknown status {status[:20]!r}: expected {', '.join(SIGNAL_KINDS)}")
    return username, status, None


def _path_signal(path: str) -> tuple[str, str, int | None]:
    """(username, kind, exit code) of /ping/NAME[/start|/fail|/log|/N][/]; QueryError if invalid.

    PATH_INFO is already percent-decoded (a %2F is a separator like /), as a WSGI string: its characters
    are the path's bytes, read here as UTF-8. One trailing slash is ignored, as the reference monitor
    does and as clients that build URLs by joining segments send it; a second one is an empty signal.
    """
    try:
        segments = path.encode("latin-1").decode("utf-8").split("/")[2:]
    except UnicodeError:
        raise QueryError("path is not valid UTF-8") from None
    if len(segments) > 1 and not segments[-1]:
        segments.pop()
    username = segments[0]
    if not username:
        raise QueryError("missing username")
    if len(segments) == 1:
        return username, SUCCESS, None
    last = segments[-1]
    if len(segments) == 2 and last in PATH_SIGNALS:
        return username, PATH_SIGNALS[last], None
    exit_code = _exit_code(last) if len(segments) == 2 else None
    if exit_code is None:
        raise QueryError(
            f"unknown signal {'/'.join(segments[1:])[:40]!r}: expected start, fail, log or an exit code"
            f" 0 to {MAX_EXIT_CODE} (a name containing / needs /ping?username=NAME)"
        )
    return username, signal_kind(exit_code), exit_code


def _exit_code(text: str) -> int | None:
    """`text` as an exit code: 1 to 3 decimal digits, 0 to MAX_EXIT_CODE; None if it is not one."""
    if not (0 < len(text) <= 3 and text.isascii() and text.isdigit()) or int(text) > MAX_EXIT_CODE:
        return None
    return int(text)


def _signal_body(environ: WSGIEnvironment) -> str | None:
    """The first MAX_SIGNAL_BODY bytes of a POST body, decoded as UTF-8 with replacement; None if empty.

    The server has read the whole body by now, chunked or not, but kept only its first MAX_SIGNAL_BODY
    bytes (serving.QuickBodies): CONTENT_LENGTH may be larger than what wsgi.input holds.
    """
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    data = environ["wsgi.input"].read(min(length, MAX_SIGNAL_BODY)) if length > 0 else b""
    return data.decode("utf-8", errors="replace") if data else None


def _snooze_body(request: bottle.BaseRequest) -> dict[str, Any]:
    """The JSON object a /snooze request carries ({} if none, or if its Content-Type is not application/json);
    400 if it is not one."""
    if request.environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
        return {}
    expected = 'expected a JSON object such as {"username": "...", "minutes": 10, "password": "..."}'
    body = json_body(request, MAX_REQUEST_BODY, expected)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise bottle.HTTPError(400, expected)
    return body


def _snooze_minutes(value: object) -> int:
    """The `minutes` of /snooze: a whole number from 0 to MAX_SNOOZE_MINUTES, in decimal digits or (from a JSON
    body) a JSON integer; QueryError if not."""
    if value is None:
        raise QueryError("missing minutes")
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise QueryError(f"invalid minutes: expected a whole number from 0 to {MAX_SNOOZE_MINUTES}")
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()) or int(text) > MAX_SNOOZE_MINUTES:
        raise QueryError(f"invalid minutes {text[:20]!r}: expected a whole number from 0 to {MAX_SNOOZE_MINUTES}")
    return int(text)


def _signal_details_writer(with_bodies: bool) -> Callable[[Signal], bytes]:
    """A function that writes a signal as /logs?details=1 lists it (local time, kind, exit code, duration and
    body, null for every signal unless `with_bodies`) in JSON as json.dumps writes it, followed by ", ": exactly
    what it adds to the answer's length (see _signal_details)."""
    clock_time = local_clock_writer()

    def write(signal: Signal) -> bytes:
        # A signal at a time, never json.dumps of the whole answer: a C call keeps the interpreter until it
        # returns, and between two signals the I/O thread gets it back to answer pings. Written by hand as
        # json.dumps would (its string escaping, repr for numbers), at a fraction of its cost per object.
        exit_code = "null" if signal.exit_code is None else repr(signal.exit_code)
        duration = "null" if signal.duration is None else repr(round(signal.duration, 3))
        body = "null" if signal.body is None or not with_bodies else encode_basestring_ascii(signal.body)
        return (
            f'{{"time": "{clock_time(signal.at)}", "kind": {encode_basestring_ascii(signal.kind)},'
            f' "exit_code": {exit_code}, "duration": {duration}, "body": {body}}}, '
        ).encode("ascii")

    return write


def _signal_details(items: list[bytes]) -> list[bytes]:
    """The /logs?details=1 answer of `items` from _signal_details_writer(), written as json.dumps writes a list, in
    pieces of about LOGS_PIECE_BYTES (or one longer item): as long as the items together (their last ", " makes
    room for the brackets), or "[]"."""
    if items:
        items[-1] = items[-1][:-2]
    return _in_pieces([b"[", *items, b"]"])


def _in_pieces(parts: list[bytes]) -> list[bytes]:
    """`parts` joined into pieces of about LOGS_PIECE_BYTES each (or one longer part), in order."""
    pieces: list[bytes] = []
    piece: list[bytes] = []
    size = 0
    for part in parts:
        if piece and size + len(part) > LOGS_PIECE_BYTES:
            pieces.append(b"".join(piece))
            piece, size = [], 0
        piece.append(part)
        size += len(part)
    pieces.append(b"".join(piece))
    return pieces


def _live_user(user: UserState, now: float) -> dict[str, Any]:
    """A user's live state for the testing page, each time as epoch seconds and as local time.

    `late_at` is the real deadline (rules.late_at), even for a scheduled user whose stored due_at is
    provisional; `expected_at` is when it is next expected (before its grace), and for a scheduled user
    its schedule and zone come along.
    """
    deadlines = [t for t in (late_at(user), run_deadline(user)) if t is not None]
    held_back = held_back_until(user, now, user.parent)
    held_back_by = None
    if held_back is not None:
        # Without its parent, only email_frequency or a snooze can hold an alert back.
        waits_for_parent = held_back != held_back_until(user, now)
        held_back_by = "snooze" if snoozed(user, now) else "parent" if waits_for_parent else "email_frequency"
    return {
        "state": live_state(user, now, user.parent),
        "last_duration": user.last_duration,
        "depends_on": None if user.parent is None else user.parent.username,
        "held_back_by": held_back_by,
        # Its settings too, so that the page follows a reload (a scheduled user has no max_sleep).
        "monitor": bool(user.monitor),
        "max_sleep": None if user.schedule is not None else user.max_sleep,
        "schedule": user.schedule,
        "tz": user.tz,
        "grace": user.grace,
        "email_frequency": user.email_frequency,
        **_times(
            last_ping=user.last_ping,
            expected_at=expected_at(user),
            late_at=min(deadlines) if deadlines else None,
            last_alert=user.last_alert,
            held_back_until=held_back,
            run_started=user.run_started,
            failed_at=user.failed_at,
            snoozed_until=user.snoozed_until if snoozed(user, now) else None,
        ),
    }


def _email_event(email: EmailEvent) -> dict[str, Any]:
    """An alert or recovery email's history for the testing page; never its body or the SMTP server's words."""
    return {
        "id": email.id,
        "channel": EMAIL_CHANNEL,
        "kind": email.kind,
        "username": email.username,
        "recipient": email.recipient,
        "status": email.status,
        "attempts": email.attempts,
        "digest_id": email.digest_id,
        "digest_subject": email.digest_subject,
        **_times(last_ping=email.last_ping, queued_at=email.queued_at, finished_at=email.finished_at),
    }


def _webhook_event(delivery: WebhookHistory) -> dict[str, Any]:
    """A webhook delivery's history for the testing page, its channel "webhook:NAME"; never its URL or answer."""
    return {
        "id": delivery.id,
        "channel": delivery.channel,
        "kind": delivery.kind,
        "username": delivery.username,
        "status": delivery.status,
        "attempts": delivery.attempts,
        **_times(last_ping=delivery.last_ping, queued_at=delivery.queued_at, finished_at=delivery.finished_at),
    }


def _times(**epochs: float | None) -> dict[str, float | str | None]:
    """Each `name=epoch` as `name` (epoch or None) and `name_local` (the server's local time, or None)."""
    fields: dict[str, float | str | None] = {}
    for name, epoch in epochs.items():
        fields[name] = epoch
        fields[name + "_local"] = None if epoch is None else format_local_time(epoch)
    return fields


def _date_field(body: dict[str, Any], name: str) -> str:
    """A date field of a JSON body as local_day_bounds reads it: a whole number or its digits; QueryError if neither."""
    value = body.get(name)
    if value is None:
        raise QueryError(f"missing {name}")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str):
        return value
    raise QueryError(f"invalid {name}: expected a whole number")


def _json(data: Any) -> str:
    """`data` as a JSON answer, written compactly: an overview of thousands of users is mostly this text."""
    bottle.response.content_type = "application/json"
    return json.dumps(data, separators=(",", ":"))


def _static_file(filename: str) -> bottle.HTTPResponse:
    """A file of static/, with its content type; browsers check with the server before reusing it."""
    return bottle.static_file(
        filename,
        root=STATIC_DIR,
        mimetype=STATIC_TYPES[Path(filename).suffix],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def _public_answer(answer: Answer | None, missing: str) -> bytes:
    """A status page's or badge's answer, which browsers and proxies may keep CACHE_SECONDS and then check by its
    ETag (304, no body, when If-None-Match names it); 404 with `missing` if there is none."""
    if answer is None:
        raise bottle.HTTPError(404, missing)
    bottle.response.set_header("Cache-Control", f"public, max-age={CACHE_SECONDS:.0f}")
    bottle.response.set_header("ETag", answer.etag)
    bottle.response.content_type = answer.content_type
    # Read as sent (latin-1, as WSGI gives it): bottle's get_header fails on bytes that are not UTF-8, and an
    # ETag is ASCII.
    wanted = bottle.request.environ.get("HTTP_IF_NONE_MATCH", "")
    if answer.etag in (tag.strip().removeprefix("W/") for tag in wanted.split(",")) or wanted.strip() == "*":
        bottle.response.status = 304
        return b""
    return answer.body


def _plain_error(error: bottle.HTTPError) -> str:
    """Bottle's error handler: every error answer is a short plain-text message, never a traceback."""
    bottle.response.content_type = PLAIN_TEXT
    return _error_text(error)


def _error_text(error: bottle.HTTPError) -> str:
    """A bottle.HTTPError's message as people see it: cut to MAX_ERROR_MESSAGE; a 5xx but 503 says no more."""
    if error.status_code >= 500 and error.status_code != 503:
        return "internal server error"
    message = error.body if isinstance(error.body, str) and error.body else error.status_line
    return message if len(message) <= MAX_ERROR_MESSAGE else message[: MAX_ERROR_MESSAGE - 3] + "..."


def _domain_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Turn named errors into HTTP answers, in this one place: a query's 400, the store's 404 and 503."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except QueryError as error:
            raise bottle.HTTPError(400, str(error)) from None
        except (UnknownUserError, StoreUnavailableError) as error:
            raise _http_error(error, bottle.request.environ) from None

    return wrapper


def _http_error(error: Exception, environ: WSGIEnvironment) -> bottle.HTTPError:
    """The answer to a store error: 404 for an unknown user, 503 (and a log line) if storage is unavailable."""
    if isinstance(error, UnknownUserError):
        return bottle.HTTPError(404, str(error))
    log.error("%s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), error)
    return bottle.HTTPError(503, f"{error}; try again later")
