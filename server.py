"""Ping Listener's HTTP service: the Bottle app, and the command that serves it with waitress.

python server.py [--settings PATH] [--db PATH] [--host HOST] [--port PORT]
"""

import argparse
import collections
import datetime
import hashlib
import hmac
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import bottle
import waitress
from waitress import wasyncore

import config
from mailer import SmtpMailer, format_local_time
from rules import late_at, live_state
from scheduler import Scheduler
from store import Store, StoreError, StoreOpenError, StoreUnavailableError, UnknownUserError

log = logging.getLogger("ping_listener.server")

MAX_QUERY_FIELDS = 20
MAX_REQUEST_BODY = 64 * 1024
# Error messages may quote what the client sent (a username); a long one is cut to this length.
MAX_ERROR_MESSAGE = 200
# One worker thread and a short GIL switch interval: with more workers, or the default 5 ms, the
# workers and waitress's I/O thread spend more time handing the GIL to each other than serving
# (bench/results.md; measured with the bare app interleaved). The cost: a slow request, such as
# /logs of a very busy day, delays the requests queued behind it.
HTTP_THREADS = 1
SWITCH_INTERVAL = 0.001
# On SIGTERM: how long requests in flight may take to be answered, and the scheduler to stop.
SHUTDOWN_GRACE = 2.0
SCHEDULER_STOP_TIMEOUT = 1.5
TESTING_DISABLED = "testing mode is disabled: TESTING_PASSWORD is not set"
PING_METHODS = ("GET", "POST", "HEAD")
PLAIN_TEXT = "text/plain; charset=utf-8"
_TWO_DIGITS = tuple(f"{number:02d}" for number in range(60))
# After this many wrong testing passwords from one address within the window, refuse it for the window.
WRONG_PASSWORD_LIMIT = 5
WRONG_PASSWORD_WINDOW = 60.0
WRONG_PASSWORD_CLIENTS = 10_000
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


class WrongPasswordLimiter:
    """Refuses a client address for a while after too many wrong passwords; safe across threads.

    After `limit` wrong passwords from one address within `window` seconds, that address is
    refused for `window` seconds. Times are passed in. Memory is bounded: an address is forgotten
    once its window has passed, and beyond `max_clients` addresses the one least recently wrong
    is forgotten first.
    """

    def __init__(self, limit, window, max_clients):
        """Refuse after `limit` wrong passwords within `window` seconds; remember up to `max_clients`."""
        self._limit = limit
        self._window = window
        self._max_clients = max_clients
        self._lock = threading.Lock()
        # address -> _WrongPasswords, least recently wrong first.
        self._clients = collections.OrderedDict()

    def retry_after(self, client, now):
        """Seconds until `client` may try a password again at `now`; 0 if it may now."""
        with self._lock:
            record = self._clients.get(client)
            return max(record.refused_until - now, 0.0) if record is not None else 0.0

    def record_wrong(self, client, now):
        """Count a wrong password from `client` at `now`; True if that starts refusing it."""
        with self._lock:
            self._forget_expired(now)
            record = self._clients.pop(client, None) or _WrongPasswords(collections.deque())
            while record.times and record.times[0] <= now - self._window:
                record.times.popleft()
            record.times.append(now)
            refused = len(record.times) >= self._limit
            if refused:
                record.times.clear()
                record.refused_until = now + self._window
            self._clients[client] = record
            if len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
            return refused

    def _forget_expired(self, now):
        # An address last wrong a window ago has no count left and is no longer refused.
        while self._clients:
            record = next(iter(self._clients.values()))
            latest = record.times[-1] if record.times else record.refused_until - self._window
            if latest > now - self._window:
                return
            self._clients.popitem(last=False)


@dataclass(slots=True)
class _WrongPasswords:
    times: collections.deque
    refused_until: float = 0.0


def make_app(store, settings, clock, testing_password):
    """The WSGI app over `store` and `settings`; `clock()` gives epoch seconds for each ping.

    /ping is answered before Bottle (see _with_fast_ping); every other path is a Bottle route.
    `testing_password` unlocks the testing page's endpoints; None disables them.
    """
    app = bottle.Bottle()
    app.default_error_handler = _plain_error
    app.install(_domain_errors)
    wrong_passwords = WrongPasswordLimiter(WRONG_PASSWORD_LIMIT, WRONG_PASSWORD_WINDOW, WRONG_PASSWORD_CLIENTS)

    @app.hook("after_request")
    def security_headers():
        bottle.response.headers.update(SECURITY_HEADERS)

    def check_testing_password():
        _check_testing_password(bottle.request, testing_password, wrong_passwords, clock())

    @app.get("/logs")
    def logs():
        query = _query_fields(bottle.request.environ.get("QUERY_STRING", ""))
        username = query.get("username")
        if not username:
            raise bottle.HTTPError(400, "missing username")
        start, end = _local_day_bounds(query)
        times = store.pings_between(username, start, end)
        bottle.response.content_type = "application/json"
        return json.dumps(_local_clock_times(times))

    @app.get("/")
    def testing_page():
        return _static_file("index.html" if testing_password is not None else "disabled.html")

    @app.get(r"/static/<filename:re:[a-z][a-z-]*\.(?:css|js)>")
    def static_asset(filename):
        return _static_file(filename)

    @app.post("/testing/config")
    def testing_config():
        check_testing_password()
        return {
            "users": {
                name: {"monitor": user.monitor, "max_sleep": user.max_sleep, "email_frequency": user.email_frequency}
                for name, user in settings.users.items()
            }
        }

    @app.post("/testing/state")
    def testing_state():
        check_testing_password()
        now = clock()
        return {
            "now": now,
            "now_local": format_local_time(now),
            "users": {user.username: _live_user(user, now) for user in store.configured_users()},
            "emails": [_email_event(email) for email in reversed(store.recent_emails(RECENT_EMAILS))],
        }

    return _with_fast_ping(app, store, clock)


def _with_fast_ping(app, store, clock):
    """`app` behind a WSGI function that answers /ping itself, with the same answers Bottle would give.

    Every device's heartbeat is a ping: Bottle's routing and request and response objects would
    cost it about as much CPU as its SQLite transaction, and with the GIL every microsecond spent
    here is one the server's I/O loop waits for.
    """

    def wsgi(environ, start_response):
        if environ.get("PATH_INFO") != "/ping":
            return app(environ, start_response)
        method = environ.get("REQUEST_METHOD")
        headers = [("Content-Type", PLAIN_TEXT), *SECURITY_HEADERS.items()]
        try:
            if method not in PING_METHODS:
                headers.append(("Allow", ", ".join(PING_METHODS)))
                raise bottle.HTTPError(405, "Method not allowed.")
            text = _record_ping(environ, store, clock)
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


def _record_ping(environ, store, clock):
    """Record the ping that `environ` asks for; its answer text, or a bottle.HTTPError."""
    username = _query_fields(environ.get("QUERY_STRING", "")).get("username")
    if not username:
        raise bottle.HTTPError(400, "missing username")
    now = clock()
    try:
        store.record_ping(username, now)
    except (UnknownUserError, StoreUnavailableError) as error:
        raise _http_error(error, environ) from None
    return time.strftime("%y/%m/%d %H:%M:%S", time.localtime(now))


def main(argv=None):
    """Run the service until SIGTERM or SIGINT; return the process exit status."""
    args = _parse_args(argv)
    # First of all, so that a signal during startup stops the service cleanly once it is up.
    stop_requested = stop_on_signals()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = config.load_settings(args.settings)
        smtp = config.load_smtp_settings(os.environ)
    except config.ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2
    clock = time.time
    try:
        store = Store(args.db)
    except StoreOpenError as error:
        print(error, file=sys.stderr)
        return 2
    try:
        store.sync_users(settings.users, clock())
    except StoreError as error:
        store.close()
        print(f"{args.db}: {error}", file=sys.stderr)
        return 2
    app = make_app(store, settings, clock, os.environ.get("TESTING_PASSWORD") or None)
    try:
        server, socket_map = create_http_server(app, args.host, args.port)
    except (OSError, ValueError) as error:  # ValueError: waitress cannot resolve the host
        store.close()
        print(f"cannot listen on {args.host}:{args.port}: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
        return 2
    bound_url = _url(server.effective_host, server.effective_port)
    mail_sender = SmtpMailer(smtp)
    if smtp.sender is None:
        log.warning("neither SMTP_FROM nor SMTP_LOGIN is set; alerts are sent from %s", mail_sender.sender)
    scheduler = Scheduler(store, mail_sender, settings, settings.server_root or bound_url, clock)
    scheduler.start()
    print(f"listening on {bound_url}", flush=True)
    serve_until_signalled(server, socket_map, stop_requested)
    if not scheduler.stop(SCHEDULER_STOP_TIMEOUT):
        log.warning("a scheduler step is still running; what it has not committed is retried at next start")
    store.close()
    log.info("stopped")
    return 0


def stop_on_signals():
    """An event that SIGTERM and SIGINT set from now on, instead of killing the process."""
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    return stop_requested


def create_http_server(app, host, port):
    """A bound waitress server for the WSGI `app` with this service's settings, and its socket map.

    It also sets the process's GIL switch interval, part of how this service is served.
    """
    # Once every worker is busy waitress warns on nearly every request; queueing is expected here.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    sys.setswitchinterval(SWITCH_INTERVAL)
    socket_map = {}
    server = waitress.create_server(
        app,
        host=host,
        port=port,
        threads=HTTP_THREADS,
        map=socket_map,
        max_request_body_size=MAX_REQUEST_BODY,
        ident="ping-listener",
    )
    return server, socket_map


def serve_until_signalled(server, socket_map, stop_requested):
    """Serve until `stop_requested` is set, then answer the requests in flight (up to SHUTDOWN_GRACE) and close."""
    while not stop_requested.is_set():
        wasyncore.loop(timeout=0.5, map=socket_map, use_poll=True, count=1)
    log.info("stopping: no new connections; answering requests in flight")
    server.accepting = False
    deadline = time.monotonic() + SHUTDOWN_GRACE
    while _requests_in_flight(server) and time.monotonic() < deadline:
        wasyncore.loop(timeout=0.05, map=socket_map, use_poll=True, count=1)
    server.task_dispatcher.shutdown(timeout=0.5)
    wasyncore.close_all(socket_map)


def _requests_in_flight(server):
    return any(channel.requests or channel.total_outbufs_len for channel in list(server.active_channels.values()))


def _parse_args(argv):
    parser = argparse.ArgumentParser(description="Ping Listener: a dead man's switch for devices that ping it.")
    parser.add_argument("--settings", default="settings.json", help="settings file (default: settings.json)")
    parser.add_argument("--db", default="ping_listener.db", help="SQLite database (default: ping_listener.db)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8080, help="port to listen on; 0 lets the OS choose")
    return parser.parse_args(argv)


def _port(text):
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 65535, got {text!r}")
    return int(text)


def _url(host, port):
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _query_fields(query_string):
    """The query string's fields (first value of each), decoded as UTF-8; 400 if it is not."""
    try:
        pairs = urllib.parse.parse_qsl(
            query_string,
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except UnicodeDecodeError:
        raise bottle.HTTPError(400, "query string is not valid UTF-8") from None
    except ValueError:
        raise bottle.HTTPError(400, f"too many query parameters (at most {MAX_QUERY_FIELDS})") from None
    fields = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


def _local_day_bounds(query):
    """Epoch bounds [start, end) of the local date named by year, month and day; 400 if invalid."""
    parts = {}
    for name, lengths in (("year", (2, 4)), ("month", (1, 2)), ("day", (1, 2))):
        value = query.get(name)
        if not value:
            raise bottle.HTTPError(400, f"missing {name}")
        if not (value.isascii() and value.isdigit() and len(value) in lengths):
            expected = " or ".join(map(str, lengths)) + " digits"
            raise bottle.HTTPError(400, f"invalid {name} {value[:20]!r}: expected {expected}")
        parts[name] = int(value)
    year = parts["year"] + 2000 if len(query["year"]) == 2 else parts["year"]
    try:
        day = datetime.date(year, parts["month"], parts["day"])
        start = time.mktime((day.year, day.month, day.day, 0, 0, 0, 0, 0, -1))
        following = day + datetime.timedelta(days=1)
        end = time.mktime((following.year, following.month, following.day, 0, 0, 0, 0, 0, -1))
    except (ValueError, OverflowError):
        raise bottle.HTTPError(400, f"invalid date {year:04d}-{parts['month']:02d}-{parts['day']:02d}") from None
    return start, end


def _local_clock_times(times):
    """Each epoch time in `times` as a local "%H:%M:%S".

    A busy day holds 86 400 pings, and strftime(localtime()) for each would be most of the cost
    of /logs: the "%H:%M:" part is computed once a minute instead. UTC offsets have been whole
    minutes everywhere since 1972; where one is not, each time is formatted on its own.
    """
    clock_times = []
    minute = prefix = None
    for at in times:
        second = math.floor(at)
        if second // 60 != minute:
            minute = second // 60
            minute_start = time.localtime(minute * 60)
            prefix = time.strftime("%H:%M:", minute_start) if minute_start.tm_sec == 0 else None
        if prefix is None:
            clock_times.append(time.strftime("%H:%M:%S", time.localtime(at)))
        else:
            clock_times.append(prefix + _TWO_DIGITS[second % 60])
    return clock_times


def _check_testing_password(request, testing_password, wrong_passwords, now):
    """Let the request through only with the right password in its JSON body; otherwise 503, 429, 400 or 401.

    An address refused by `wrong_passwords` gets 429 before its password is even looked at.
    """
    if testing_password is None:
        raise bottle.HTTPError(503, TESTING_DISABLED)
    # Behind a reverse proxy every client shares the proxy's address, so they share one limit.
    client = request.environ.get("REMOTE_ADDR", "")
    retry_after = wrong_passwords.retry_after(client, now)
    if retry_after:
        seconds = math.ceil(retry_after)
        raise bottle.HTTPError(
            429,
            f"too many wrong testing passwords from {client}; try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
    try:
        body = json.loads(request.body.read(MAX_REQUEST_BODY) or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        raise bottle.HTTPError(400, 'expected a JSON body {"password": "..."}') from None
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(password, str):
        raise bottle.HTTPError(400, 'expected a JSON body {"password": "..."}')
    # Comparing digests takes the same time whatever the password's length and content.
    if not hmac.compare_digest(_digest(password), _digest(testing_password)):
        if wrong_passwords.record_wrong(client, now):
            log.warning("too many wrong testing passwords from %s: refusing it for %g s", client, WRONG_PASSWORD_WINDOW)
        raise bottle.HTTPError(401, "wrong testing password")


def _digest(text):
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _live_user(user, now):
    """A user's live state for the testing page, each time as epoch seconds and as local time."""
    return {
        "state": live_state(user, now),
        **_times(last_ping=user.last_ping, late_at=late_at(user), last_alert=user.last_alert),
    }


def _email_event(email):
    """An alert email's history for the testing page; never its body or the SMTP server's words."""
    return {
        "id": email.id,
        "username": email.username,
        "recipient": email.recipient,
        "status": email.status,
        "attempts": email.attempts,
        **_times(last_ping=email.last_ping, queued_at=email.queued_at, finished_at=email.finished_at),
    }


def _times(**epochs):
    """Each `name=epoch` as `name` (epoch or None) and `name_local` (the server's local time, or None)."""
    fields = {}
    for name, epoch in epochs.items():
        fields[name] = epoch
        fields[name + "_local"] = None if epoch is None else format_local_time(epoch)
    return fields


def _static_file(filename):
    """A file of static/, with its content type; browsers check with the server before reusing it."""
    return bottle.static_file(
        filename,
        root=STATIC_DIR,
        mimetype=STATIC_TYPES[Path(filename).suffix],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def _plain_error(error):
    """Bottle's error handler: every error answer is a short plain-text message, never a traceback."""
    bottle.response.content_type = PLAIN_TEXT
    return _error_text(error)


def _error_text(error):
    """A bottle.HTTPError's message as people see it: cut to MAX_ERROR_MESSAGE; a 5xx but 503 says no more."""
    if error.status_code >= 500 and error.status_code != 503:
        return "internal server error"
    message = error.body if isinstance(error.body, str) and error.body else error.status_line
    return message if len(message) <= MAX_ERROR_MESSAGE else message[: MAX_ERROR_MESSAGE - 3] + "..."


def _domain_errors(callback):
    """Turn the store's named errors into HTTP answers, in this one place."""

    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except (UnknownUserError, StoreUnavailableError) as error:
            raise _http_error(error, bottle.request.environ) from None

    return wrapper


def _http_error(error, environ):
    """The answer to a store error: 404 for an unknown user, 503 (and a log line) if storage is unavailable."""
    if isinstance(error, UnknownUserError):
        return bottle.HTTPError(404, str(error))
    log.error("%s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), error)
    return bottle.HTTPError(503, f"{error}; try again later")


if __name__ == "__main__":
    sys.exit(main())
