"""Ping Listener's HTTP answers: the WSGI app, its routes, the fast /ping path and its error answers.

Routes only do their job: guards.py checks passwords, localtime.py parses queries and writes times,
rules.py says what a user's state is, and store.py holds the data. The command that serves this
app is server.py.
"""

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import bottle

import metrics
from config import LiveSettings
from guards import (
    WRONG_PASSWORD_GLOBAL_LIMIT,
    WRONG_PASSWORD_LIMIT,
    WRONG_PASSWORD_WINDOW,
    BearerGuard,
    PasswordGuard,
    WrongPasswordLimiter,
    check_ping_token,
)
from localtime import (
    QueryError,
    format_local_time,
    format_ping_time,
    local_clock_times,
    local_day_bounds,
    query_fields,
)
from rules import late_at, live_state
from store import EmailEvent, Store, StoreUnavailableError, UnknownUserError, UserState

log = logging.getLogger("ping_listener.web")

# A larger request body is refused with 413 before it is read (by waitress, see serving.py), and no
# handler reads more of one.
MAX_REQUEST_BODY = 64 * 1024
# Error messages may quote what the client sent (a username); a long one is cut to this length.
MAX_ERROR_MESSAGE = 200
TESTING_DISABLED = "testing mode is disabled: TESTING_PASSWORD is not set"
METRICS_DISABLED = "metrics are disabled: METRICS_TOKEN is not set"
PING_METHODS = ("GET", "POST", "HEAD")
PLAIN_TEXT = "text/plain; charset=utf-8"
# The most times one /logs answer lists (about 1.2 MB and 60 ms of CPU): more than one ping a second
# all day long. A day with more is answered with its first LOGS_MAX_PINGS and the LOGS_TRUNCATED header.
LOGS_MAX_PINGS = 100_000
LOGS_TRUNCATED = "Ping-Listener-Truncated"
# How many of the newest alert emails the testing page shows.
RECENT_EMAILS = 50
STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
# On every answer: the page loads scripts, styles and data from this origin only (no inline
# script can run, so an escaping mistake cannot become script), and no other site may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Operations:
    """What the operators' endpoints answer from: /healthz and /metrics."""

    # Why the service is unhealthy (a loop stopped, the database not answering), or None.
    health_problem: Callable[[], str | None]
    metrics: metrics.Exporter
    # Unlocks /metrics as a bearer token; None disables it.
    metrics_token: str | None


def make_app(
    store: Store,
    settings: LiveSettings,
    clock: Callable[[], float],
    testing_password: str | None,
    operations: Operations,
) -> WSGIApplication:
    """The WSGI app over `store` and the settings in force; `clock()` gives epoch seconds for each ping.

    /ping is answered before Bottle (see _with_fast_ping); every other path is a Bottle route.
    `testing_password` unlocks the testing page's endpoints; None disables them.
    """
    app = bottle.Bottle()
    app.default_error_handler = _plain_error
    app.install(_domain_errors)
    wrong_passwords = WrongPasswordLimiter(WRONG_PASSWORD_LIMIT, WRONG_PASSWORD_WINDOW, WRONG_PASSWORD_GLOBAL_LIMIT)
    testing_only = PasswordGuard(
        "testing", testing_password, TESTING_DISABLED, wrong_passwords, clock, MAX_REQUEST_BODY
    )
    metrics_only = BearerGuard(operations.metrics_token, METRICS_DISABLED)

    @app.hook("after_request")
    def security_headers():
        bottle.response.headers.update(SECURITY_HEADERS)

    @app.get("/logs")
    def logs():
        query = query_fields(bottle.request.environ.get("QUERY_STRING", ""))
        username = query.get("username")
        if not username:
            raise bottle.HTTPError(400, "missing username")
        start, end = local_day_bounds(query)
        times = store.pings_between(username, start, end, LOGS_MAX_PINGS + 1)
        if len(times) > LOGS_MAX_PINGS:
            del times[LOGS_MAX_PINGS:]
            bottle.response.set_header(LOGS_TRUNCATED, f"first {LOGS_MAX_PINGS} pings of the day")
        bottle.response.content_type = "application/json"
        return json.dumps(local_clock_times(times))

    @app.get("/")
    def testing_page():
        return _static_file("index.html" if testing_password is not None else "disabled.html")

    @app.get(r"/static/<filename:re:[a-z][a-z-]*\.(?:css|js)>")
    def static_asset(filename):
        return _static_file(filename)

    @app.post("/testing/config")
    @testing_only
    def testing_config():
        return {
            "users": {
                name: {"monitor": user.monitor, "max_sleep": user.max_sleep, "email_frequency": user.email_frequency}
                for name, user in settings.current.users.items()
            }
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
        }

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

    return _with_fast_ping(app, store, settings, clock)


def _with_fast_ping(
    app: WSGIApplication, store: Store, settings: LiveSettings, clock: Callable[[], float]
) -> WSGIApplication:
    """`app` behind a WSGI function that answers /ping itself, with the same answers Bottle would give.

    Every device's heartbeat is a ping: Bottle's routing and request and response objects would
    cost it about as much CPU as its SQLite transaction, and with the GIL every microsecond spent
    here is one the server's I/O loop waits for.
    """

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/ping":
            return app(environ, start_response)
        method = environ.get("REQUEST_METHOD")
        headers = [("Content-Type", PLAIN_TEXT), *SECURITY_HEADERS.items()]
        try:
            if method not in PING_METHODS:
                headers.append(("Allow", ", ".join(PING_METHODS)))
                raise bottle.HTTPError(405, "Method not allowed.")
            text = _record_ping(environ, store, settings, clock)
            status = "200 OK"
        except bottle.HTTPError as error:
            status, text = error.status_line, _error_text(error)
        except Exception:
            log.exception("%s /ping failed", method)
            status, text = "500 Internal Server Error", "internal server error"
        body = text.encode()
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [b"" if method == "HEAD" else body]

    return wsgi


def _record_ping(environ: WSGIEnvironment, store: Store, settings: LiveSettings, clock: Callable[[], float]) -> str:
    """Record the ping that `environ` asks for; its answer text, or a bottle.HTTPError."""
    try:
        query = query_fields(environ.get("QUERY_STRING", ""))
    except QueryError as error:
        raise bottle.HTTPError(400, str(error)) from None
    username = query.get("username")
    if not username:
        raise bottle.HTTPError(400, "missing username")
    # The settings in force say who may ping, and with which token; the store follows them on a reload.
    user = settings.current.users.get(username)
    if user is None:
        raise bottle.HTTPError(404, f"unknown user {username}")
    check_ping_token(user, username, query, environ)
    now = clock()
    try:
        store.record_ping(username, now)
    except (UnknownUserError, StoreUnavailableError) as error:
        raise _http_error(error, environ) from None
    return format_ping_time(now)


def _live_user(user: UserState, now: float) -> dict[str, Any]:
    """A user's live state for the testing page, each time as epoch seconds and as local time."""
    return {
        "state": live_state(user, now),
        # Its settings too, so that the page follows a reload.
        "monitor": bool(user.monitor),
        "max_sleep": user.max_sleep,
        "email_frequency": user.email_frequency,
        **_times(last_ping=user.last_ping, late_at=late_at(user), last_alert=user.last_alert),
    }


def _email_event(email: EmailEvent) -> dict[str, Any]:
    """An alert email's history for the testing page; never its body or the SMTP server's words."""
    return {
        "id": email.id,
        "username": email.username,
        "recipient": email.recipient,
        "status": email.status,
        "attempts": email.attempts,
        **_times(last_ping=email.last_ping, queued_at=email.queued_at, finished_at=email.finished_at),
    }


def _times(**epochs: float | None) -> dict[str, float | str | None]:
    """Each `name=epoch` as `name` (epoch or None) and `name_local` (the server's local time, or None)."""
    fields: dict[str, float | str | None] = {}
    for name, epoch in epochs.items():
        fields[name] = epoch
        fields[name + "_local"] = None if epoch is None else format_local_time(epoch)
    return fields


def _static_file(filename: str) -> bottle.HTTPResponse:
    """A file of static/, with its content type; browsers check with the server before reusing it."""
    return bottle.static_file(
        filename,
        root=STATIC_DIR,
        mimetype=STATIC_TYPES[Path(filename).suffix],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


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
