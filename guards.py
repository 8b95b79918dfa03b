"""Guards for endpoints: a password in a JSON body and its limit on wrong guesses, a bearer token, ping tokens.

A guard is a decorator for a Bottle callback (or a route's `apply=[guard]`); the view under it only
does its job. A new endpoint under the same password names the guard; it never copies its code.
check_ping_token is the one check of a user's ping token, for every signal path.
"""

import collections
import hmac
import json
import logging
import math
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.types import WSGIEnvironment

import bottle

from config import UserConfig, first_text_problem, secret_digest

log = logging.getLogger("ping_listener.guards")

# After this many wrong passwords from one address within the window, refuse it for the window; after
# WRONG_PASSWORD_GLOBAL_LIMIT from all addresses together, refuse every address for the window.
WRONG_PASSWORD_LIMIT = 5
WRONG_PASSWORD_GLOBAL_LIMIT = 20
WRONG_PASSWORD_WINDOW = 60.0
# An address that gave a right password or operator's secret is not refused with everyone for this long
# after, and at most this many addresses are trusted at once: the admin's browsers, Prometheus, scripts.
TRUSTED_FOR = 86_400.0
MAX_TRUSTED = 32
# A browser that gave the right password gets this cookie; while its session lasts, the limiter does not
# refuse that browser, wherever it connects from. At most MAX_SESSIONS sessions last at once.
SESSION_COOKIE = "ping_listener_session"
MAX_SESSIONS = 64
# A request's cookies are split by hand; at most this many named SESSION_COOKIE are looked up.
MAX_SESSION_COOKIES = 4
# A time given to the limiter this much before the latest one given means that the wall clock stepped back.
_CLOCK_STEP = 1.0
_EXPECTED_BODY = 'expected a JSON body {"password": "..."}'
_EXPECTED_JSON = "expected Content-Type: application/json"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Passwords are refused until `until` (epoch seconds): from one address, or from `everyone`."""

    until: float
    everyone: bool


class WrongPasswordLimiter:
    """Refuses password attempts for a while after too many wrong ones; safe across threads.

    After `limit` wrong passwords from one address within `window` seconds, that address is
    refused for `window` seconds; after `global_limit` from all addresses together, every address
    is, but those trusted. So at most `global_limit` wrong passwords a window are ever looked at
    from addresses not trusted, however many addresses an attacker has. An address is trusted for
    `trust` seconds after it gave a right secret (record_right), so that the holder of a password is
    not refused because others guess: it stays under its own limit, and at most `max_trusted` are
    trusted at once (the least recently right forgotten first), so all of them together are looked at
    no more than `limit` × `max_trusted` times a window. Times are passed in; when they step back (the
    wall clock did), what came later counts as now, so no refusal ever lasts more than a window. Memory
    is bounded too: an address is remembered only while its last wrong password or its refusal is within
    a window, so at most 2 × `global_limit` + `max_trusted` are, and none is forgotten before its refusal
    ends.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        global_limit: int,
        trust: float = TRUSTED_FOR,
        max_trusted: int = MAX_TRUSTED,
    ) -> None:
        """Refuse an address after `limit` wrong passwords within `window` seconds, everyone after `global_limit`
        (but the at most `max_trusted` addresses that gave a right secret within `trust` seconds)."""
        self.window = window
        self._limit = limit
        self._global_limit = global_limit
        self._trust = trust
        self._max_trusted = max_trusted
        self._lock = threading.Lock()
        # address -> _WrongPasswords, least recently wrong first.
        self._clients: collections.OrderedDict[str, _WrongPasswords] = collections.OrderedDict()
        self._everyone = _WrongPasswords()
        # address -> trusted until, least recently right first.
        self._trusted: collections.OrderedDict[str, float] = collections.OrderedDict()
        # The latest `now` given: one before it means that the wall clock stepped back.
        self._now = -math.inf

    def refusal(self, client: str, now: float) -> Refusal | None:
        """The refusal in force for `client` at `now` (the one for everyone first), or None if it may try."""
        with self._lock:
            self._follow_clock(now)
            if self._everyone.refused_until > now and not self._is_trusted(client, now):
                return Refusal(self._everyone.refused_until, everyone=True)
            record = self._clients.get(client)
            if record is not None and record.refused_until > now:
                return Refusal(record.refused_until, everyone=False)
            return None

    def record_wrong(self, client: str, now: float) -> Refusal | None:
        """Count a wrong password from `client` at `now`; the refusal that this starts, if it starts one.

        Not counted from an address refused with everyone: such a password was never looked at.
        """
        with self._lock:
            self._follow_clock(now)
            everyone_refused = self._everyone.refused_until > now
            if everyone_refused and not self._is_trusted(client, now):
                return None
            self._forget_expired(now)
            record = self._clients.pop(client, None) or _WrongPasswords()
            self._clients[client] = record
            address_refused = record.count(now, self.window, self._limit)
            if not everyone_refused and self._everyone.count(now, self.window, self._global_limit):
                return Refusal(self._everyone.refused_until, everyone=True)
            return Refusal(record.refused_until, everyone=False) if address_refused else None

    def record_right(self, client: str, now: float) -> None:
        """Trust `client` from `now` for the next `trust` seconds: it gave a right secret."""
        with self._lock:
            self._follow_clock(now)
            self._trusted.pop(client, None)
            self._trusted[client] = now + self._trust
            while len(self._trusted) > self._max_trusted:
                self._trusted.popitem(last=False)

    def remembered(self) -> int:
        """How many addresses it remembers now."""
        with self._lock:
            return len(self._clients)

    def _follow_clock(self, now: float) -> None:
        # After the wall clock steps back, what was counted after `now` counts as at `now`: otherwise a refusal
        # would last a window plus the step (days, for everyone), and no address be forgotten meanwhile. Threads
        # read the clock before they take the lock, so times a little out of order are no step.
        if now < self._now - _CLOCK_STEP:
            for record in (*self._clients.values(), self._everyone):
                record.move_back(now, self.window)
            for client, until in self._trusted.items():
                self._trusted[client] = min(until, now + self._trust)
            self._now = now
        self._now = max(self._now, now)

    def _is_trusted(self, client: str, now: float) -> bool:
        until = self._trusted.get(client)
        return until is not None and until > now

    def _forget_expired(self, now: float) -> None:
        # An address last wrong a window ago has no count left and is no longer refused.
        while self._clients:
            record = next(iter(self._clients.values()))
            latest = record.times[-1] if record.times else record.refused_until - self.window
            if latest > now - self.window:
                return
            self._clients.popitem(last=False)


class Sessions:
    """Browsers that gave a right password, each known by a random id in a cookie; safe across threads.

    A session only spares its browser the limiter's refusals (the password is still checked on every
    request), lasts `lifetime` seconds from its last use, and ends at its first wrong password; at most
    `max_sessions` last at once, the least recently used ended first. Times are passed in.
    """

    def __init__(self, lifetime: float = TRUSTED_FOR, max_sessions: int = MAX_SESSIONS) -> None:
        """No session yet; each will last `lifetime` seconds after its last use."""
        self.lifetime = lifetime
        self._max_sessions = max_sessions
        self._lock = threading.Lock()
        # secret_digest(id) -> ends at, least recently used first. Only digests are kept.
        self._sessions: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def start(self, now: float) -> str:
        """A new session's id, for a browser that gave the right password at `now`."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[secret_digest(session_id)] = now + self.lifetime
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        return session_id

    def use(self, session_id: str, now: float) -> bool:
        """Whether `session_id` is a session lasting at `now`; if so it lasts `lifetime` from now on."""
        key = secret_digest(session_id)
        with self._lock:
            ends = self._sessions.get(key)
            if ends is None or ends <= now:
                return False
            self._sessions.move_to_end(key)
            self._sessions[key] = now + self.lifetime
            return True

    def end(self, session_id: str) -> None:
        """End the session `session_id`, if there is one."""
        with self._lock:
            self._sessions.pop(secret_digest(session_id), None)


@dataclass(slots=True)
class _WrongPasswords:
    times: collections.deque[float] = field(default_factory=collections.deque)
    refused_until: float = 0.0

    def move_back(self, now: float, window: float) -> None:
        """The clock stepped back to `now`: count what came after it as at `now`, and refuse a window at most."""
        self.times = collections.deque(min(at, now) for at in self.times)
        self.refused_until = min(self.refused_until, now + window)

    def count(self, now: float, window: float, limit: int) -> bool:
        """Count one at `now`; True if that makes `limit` within `window`, which starts a refusal of a window."""
        while self.times and self.times[0] <= now - window:
            self.times.popleft()
        self.times.append(now)
        if len(self.times) < limit:
            return False
        self.times.clear()
        self.refused_until = now + window
        return True


class PasswordGuard:
    """Lets a request through only with the right password in its JSON body; otherwise 415, 503, 429, 400 or 401.

    First of all, a request whose Content-Type is not application/json gets 415: a browser cannot
    send that cross-site without asking the server first (a CORS preflight, which this service never
    allows), so another site cannot make visitors' browsers guess passwords. `name` names the
    password in answers and logs ("wrong testing password"). Without a password (None) every request
    gets 503 `disabled`, marked for pages by the header `Ping-Listener-Name: disabled` (e.g.
    Ping-Listener-Testing), so that they need not read the message. A request refused by `limiter`
    (its address, or everyone) gets 429 before its password is even looked at; guards that share a
    limiter share one count. A right password starts a session in `sessions` for its browser (an
    HttpOnly, SameSite=Strict cookie, sent again in each answer): a request in a session is not refused
    by the limiter, so the page of someone who unlocked goes on whoever guesses, from wherever. At most
    `max_body` bytes of the body are read.
    """

    def __init__(
        self,
        name: str,
        password: str | None,
        disabled: str,
        limiter: WrongPasswordLimiter,
        sessions: Sessions,
        clock: Callable[[], float],
        max_body: int,
    ) -> None:
        """Guard with `password` (None: disabled, answering `disabled`); `clock()` gives epoch seconds."""
        self._name = name
        self._password_digest = None if password is None else secret_digest(password)
        self._disabled = disabled
        self._disabled_header = {f"Ping-Listener-{name.capitalize()}": "disabled"}
        self._limiter = limiter
        self._sessions = sessions
        self._clock = clock
        self._max_body = max_body

    def __call__(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """`callback` run only for requests that pass check()."""

        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.check(bottle.request)
            return callback(*args, **kwargs)

        return guarded

    def check(self, request: bottle.BaseRequest) -> None:
        """Return if `request` carries the right password; raise the bottle.HTTPError that refuses it otherwise."""
        if request.environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
            raise bottle.HTTPError(415, _EXPECTED_JSON)
        if self._password_digest is None:
            raise bottle.HTTPError(503, self._disabled, headers=self._disabled_header)
        now = self._clock()
        # Behind a reverse proxy every client shares the proxy's address, so they share one limit.
        client = request.environ.get("REMOTE_ADDR", "")
        session = next((given for given in _session_ids(request.environ) if self._sessions.use(given, now)), None)
        in_session = session is not None
        if not in_session:
            refuse_if_limited(self._limiter, client, now, f"{self._name} passwords")
        body = json_body(request, self._max_body)
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(password, str):
            raise bottle.HTTPError(400, _EXPECTED_BODY)
        if not self.accepts(password):
            if session is not None:  # a session spares one wrong password at most
                self._sessions.end(session)
            count_wrong(self._limiter, client, now, f"{self._name} passwords")
            raise bottle.HTTPError(401, f"wrong {self._name} password")
        self._limiter.record_right(client, now)
        # Sent again in every answer: a browser keeps the cookie Max-Age after the answer that set it last, and
        # the session lasts that long after its last use.
        bottle.response.set_cookie(
            SESSION_COOKIE,
            session if session is not None else self._sessions.start(now),
            path="/",
            max_age=int(self._sessions.lifetime),
            httponly=True,
            samesite="strict",
        )

    @property
    def disabled(self) -> str | None:
        """Why it lets no request through (it has no password), or None when it has one."""
        return self._disabled if self._password_digest is None else None

    def accepts(self, password: str) -> bool:
        """Whether `password` is the right one (False when disabled); constant time, counts nothing."""
        # Comparing digests takes the same time whatever the password's length and content.
        return self._password_digest is not None and hmac.compare_digest(secret_digest(password), self._password_digest)


class BearerGuard:
    """Lets a request through only with `Authorization: Bearer TOKEN`; otherwise 404 (no token set), 429 or 401.

    Without a token (None) the endpoint is disabled: 404 with `disabled`, which says how to enable it.
    Wrong tokens count in `limiter` as wrong passwords do (429 while it refuses the address, before
    the token is looked at). The token is compared in constant time and never logged.
    """

    def __init__(
        self, token: str | None, disabled: str, limiter: WrongPasswordLimiter, clock: Callable[[], float]
    ) -> None:
        """Guard with `token` (None: disabled, answering 404 `disabled`); `clock()` gives epoch seconds."""
        self._token_digest = None if token is None else secret_digest(token)
        self._disabled = disabled
        self._limiter = limiter
        self._clock = clock

    def __call__(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """`callback` run only for requests that carry the token."""

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self._token_digest is None:
                raise bottle.HTTPError(404, self._disabled)
            now = self._clock()
            client = bottle.request.environ.get("REMOTE_ADDR", "")
            refuse_if_limited(self._limiter, client, now, "bearer tokens")
            given = bearer_token(bottle.request.environ)
            if given is None or not hmac.compare_digest(secret_digest(given), self._token_digest):
                if given is not None:
                    count_wrong(self._limiter, client, now, "bearer tokens")
                raise bottle.HTTPError(
                    401, "wrong or missing bearer token", headers={"WWW-Authenticate": 'Bearer realm="ping-listener"'}
                )
            self._limiter.record_right(client, now)
            return callback(*args, **kwargs)

        return guarded


def _session_ids(environ: WSGIEnvironment) -> list[str]:
    """The values of the first MAX_SESSION_COOKIES cookies named SESSION_COOKIE in a request's Cookie header.

    Read by hand: http.cookies, which Bottle uses, gives up on the whole header (or raises, a 500) at the
    first cookie it finds invalid, such as a JSON value or an `@` in a name, and a browser sends along every
    cookie of the host, those of other apps on other ports too. More than one may carry the name (another
    site of the domain can set one), so each is tried.
    """
    values = []
    for pair in environ.get("HTTP_COOKIE", "").split(";"):
        name, equals, value = pair.partition("=")
        if equals and name.strip() == SESSION_COOKIE:
            values.append(value.strip())
            if len(values) == MAX_SESSION_COOKIES:
                break
    return values


def refuse_if_limited(limiter: WrongPasswordLimiter, client: str, now: float, what: str) -> None:
    """Return if `limiter` lets `client` try a secret at `now`; raise 429 with Retry-After otherwise.

    `what` names the secrets in the answer ("testing passwords").
    """
    refusal = limiter.refusal(client, now)
    if refusal is not None:
        seconds = math.ceil(refusal.until - now)
        source = "all addresses" if refusal.everyone else client
        raise bottle.HTTPError(
            429, f"too many wrong {what} from {source}; try again in {seconds} s", headers={"Retry-After": str(seconds)}
        )


def count_wrong(limiter: WrongPasswordLimiter, client: str, now: float, what: str) -> None:
    """Count a wrong secret from `client` at `now` in `limiter`, and log the refusal it starts, if any."""
    started = limiter.record_wrong(client, now)
    if started is not None:
        log.warning(
            "too many wrong %s from %s: refusing %s for %g s",
            what,
            "all addresses" if started.everyone else client,
            "every address" if started.everyone else "it",
            limiter.window,
        )


def json_body(request: bottle.BaseRequest, max_body: int, expected: str = _EXPECTED_BODY) -> Any:
    """`request`'s body (at most `max_body` bytes) as parsed JSON, None if empty.

    400 `expected` if it is not JSON; 400 naming the field (as settings problems do) if a key or string in
    it is not valid Unicode text: a lone surrogate, which json.loads lets through and nothing can store.
    """
    try:
        body = json.loads(request.body.read(max_body) or b"null")
        problem = first_text_problem(body) if isinstance(body, (dict, list)) else None  # else not what is expected
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        raise bottle.HTTPError(400, expected) from None
    if problem is not None:
        raise bottle.HTTPError(400, problem)
    return body


class OperatorCredentials:
    """Who may snooze a user, and read its signals' bodies: its token, an operator's password or API key.

    A user with a token is acted on only with that token, as its signals carry it (check_ping_token);
    a wrong one is counted in `limiter`, but token attempts are never refused by it, so that others'
    guesses cannot stop a device. A user without a token is snoozed with the overview password
    (`password` in a JSON body, checked by `overview`) or `api_key` (`X-Api-Key`): refused with 429
    while `limiter` refuses the address, wrong ones counted, right ones trusting the address.
    """

    def __init__(
        self,
        overview: PasswordGuard,
        api_key: str | None,
        limiter: WrongPasswordLimiter,
        clock: Callable[[], float],
    ) -> None:
        """Check passwords with `overview`, API keys against `api_key` (None: accept none); `clock()`: epoch seconds."""
        self._overview = overview
        self._api_key_digest = None if api_key is None else secret_digest(api_key)
        self._limiter = limiter
        self._clock = clock

    def snooze(
        self,
        user: UserConfig,
        username: str,
        query: Mapping[str, str],
        body: Mapping[str, Any],
        environ: WSGIEnvironment,
    ) -> str:
        """Which credential lets this request snooze `user` ("token", "overview password" or "API key"), given
        its `query`, JSON `body` ({} if none) and headers; raise 401 (none), 403 (a wrong one), 429 or 400."""
        client = environ.get("REMOTE_ADDR", "")
        if user.token_digest is not None:
            self._check_token(user, username, query, environ, client)
            return "token"
        api_key = header_text(environ, "HTTP_X_API_KEY") if "HTTP_X_API_KEY" in environ else None
        password = body.get("password")
        if api_key is not None and password is not None:
            raise bottle.HTTPError(400, "give one credential: the overview password or an API key, not both")
        if api_key is None and password is None:
            raise bottle.HTTPError(
                401,
                f"snoozing {username} needs the overview password (a JSON body with password) or an API key"
                " (X-Api-Key)",
            )
        now = self._clock()
        refuse_if_limited(self._limiter, client, now, "credentials")
        if api_key is not None:
            if self._api_key_digest is None:
                raise bottle.HTTPError(403, "API keys are disabled: API_KEY is not set")
            right = hmac.compare_digest(secret_digest(api_key), self._api_key_digest)
            kind = "API key"
        else:
            if not isinstance(password, str):
                raise bottle.HTTPError(400, "invalid password: expected a string")
            if self._overview.disabled is not None:
                raise bottle.HTTPError(403, self._overview.disabled)
            right = self._overview.accepts(password)
            kind = "overview password"
        if not right:
            count_wrong(self._limiter, client, now, "credentials")
            raise bottle.HTTPError(403, f"wrong {kind}")
        self._limiter.record_right(client, now)
        return kind

    def bodies_allowed(
        self, user: UserConfig | None, username: str, query: Mapping[str, str], environ: WSGIEnvironment
    ) -> bool:
        """Whether this request may read the bodies of `username`'s signals: only with the user's token, for a
        user with one (`user` None: no longer configured, so none). False without a token; 403 for a wrong one."""
        if user is None or user.token_digest is None or given_token(query, environ) is None:
            return False
        self._check_token(user, username, query, environ, environ.get("REMOTE_ADDR", ""))
        return True

    def _check_token(
        self, user: UserConfig, username: str, query: Mapping[str, str], environ: WSGIEnvironment, client: str
    ) -> None:
        """check_ping_token, counting a wrong token (not a missing one) in the limiter."""
        try:
            check_ping_token(user, username, query, environ)
        except bottle.HTTPError:
            if given_token(query, environ) is not None:
                count_wrong(self._limiter, client, self._clock(), "tokens")
            raise


def check_ping_token(user: UserConfig, username: str, query: Mapping[str, str], environ: WSGIEnvironment) -> None:
    """Return if a signal for `user` carries its token, or it needs none; raise 403 otherwise.

    The token is `token=...` in the query or `Authorization: Bearer ...` (the query's wins if both are
    given). Cheap enough for the I/O thread: two SHA-256 of a few bytes and a constant-time compare,
    no SQL. The 403 `wrong or missing token for NAME` is raised before anything is recorded.
    """
    if user.token_digest is None:
        return
    given = given_token(query, environ)
    if given is None or not hmac.compare_digest(secret_digest(given), user.token_digest):
        raise bottle.HTTPError(403, f"wrong or missing token for {username}")


def given_token(query: Mapping[str, str], environ: WSGIEnvironment) -> str | None:
    """The ping token a request carries: `token=...` in its query, else its bearer token; None if neither."""
    given = query.get("token")
    return bearer_token(environ) if given is None else given


def bearer_token(environ: WSGIEnvironment) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (the scheme in any case), or None."""
    scheme, _, token = header_text(environ, "HTTP_AUTHORIZATION").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def header_text(environ: WSGIEnvironment, key: str) -> str:
    """The header `key` of `environ` ("HTTP_X_API_KEY") as text: its bytes read as UTF-8, as clients write a
    secret beyond ASCII, or as the WSGI server gave them (each byte one latin-1 character) if they are not
    UTF-8; "" if there is no such header."""
    value: str = environ.get(key, "")
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value
