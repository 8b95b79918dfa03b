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
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.types import WSGIEnvironment

import bottle

from config import UserConfig, secret_digest

log = logging.getLogger("ping_listener.guards")

# After this many wrong passwords from one address within the window, refuse it for the window; after
# WRONG_PASSWORD_GLOBAL_LIMIT from all addresses together, refuse every address for the window.
WRONG_PASSWORD_LIMIT = 5
WRONG_PASSWORD_GLOBAL_LIMIT = 20
WRONG_PASSWORD_WINDOW = 60.0
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
    is. So at most `global_limit` wrong passwords a window are ever looked at, however many
    addresses an attacker has. Times are passed in. Memory is bounded by that too: an address is
    remembered only while its last wrong password or its refusal is within a window, so at most
    2 × `global_limit` are, and none is forgotten before its refusal ends.
    """

    def __init__(self, limit: int, window: float, global_limit: int) -> None:
        """Refuse an address after `limit` wrong passwords within `window` seconds, everyone after `global_limit`."""
        self.window = window
        self._limit = limit
        self._global_limit = global_limit
        self._lock = threading.Lock()
        # address -> _WrongPasswords, least recently wrong first.
        self._clients: collections.OrderedDict[str, _WrongPasswords] = collections.OrderedDict()
        self._everyone = _WrongPasswords()

    def refusal(self, client: str, now: float) -> Refusal | None:
        """The refusal in force for `client` at `now` (the one for everyone first), or None if it may try."""
        with self._lock:
            if self._everyone.refused_until > now:
                return Refusal(self._everyone.refused_until, everyone=True)
            record = self._clients.get(client)
            if record is not None and record.refused_until > now:
                return Refusal(record.refused_until, everyone=False)
            return None

    def record_wrong(self, client: str, now: float) -> Refusal | None:
        """Count a wrong password from `client` at `now`; the refusal that this starts, if it starts one.

        Not counted while everyone is refused: such a password was never looked at.
        """
        with self._lock:
            if self._everyone.refused_until > now:
                return None
            self._forget_expired(now)
            record = self._clients.pop(client, None) or _WrongPasswords()
            self._clients[client] = record
            address_refused = record.count(now, self.window, self._limit)
            if self._everyone.count(now, self.window, self._global_limit):
                return Refusal(self._everyone.refused_until, everyone=True)
            return Refusal(record.refused_until, everyone=False) if address_refused else None

    def remembered(self) -> int:
        """How many addresses it remembers now."""
        with self._lock:
            return len(self._clients)

    def _forget_expired(self, now: float) -> None:
        # An address last wrong a window ago has no count left and is no longer refused.
        while self._clients:
            record = next(iter(self._clients.values()))
            latest = record.times[-1] if record.times else record.refused_until - self.window
            if latest > now - self.window:
                return
            self._clients.popitem(last=False)


@dataclass(slots=True)
class _WrongPasswords:
    times: collections.deque[float] = field(default_factory=collections.deque)
    refused_until: float = 0.0

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
    limiter share one count. At most `max_body` bytes of the body are read.
    """

    def __init__(
        self,
        name: str,
        password: str | None,
        disabled: str,
        limiter: WrongPasswordLimiter,
        clock: Callable[[], float],
        max_body: int,
    ) -> None:
        """Guard with `password` (None: disabled, answering `disabled`); `clock()` gives epoch seconds."""
        self._name = name
        self._password_digest = None if password is None else secret_digest(password)
        self._disabled = disabled
        self._disabled_header = {f"Ping-Listener-{name.capitalize()}": "disabled"}
        self._limiter = limiter
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
        refusal = self._limiter.refusal(client, now)
        if refusal is not None:
            seconds = math.ceil(refusal.until - now)
            source = "all addresses" if refusal.everyone else client
            raise bottle.HTTPError(
                429,
                f"too many wrong {self._name} passwords from {source}; try again in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
        try:
            body = json.loads(request.body.read(self._max_body) or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            raise bottle.HTTPError(400, _EXPECTED_BODY) from None
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(password, str):
            raise bottle.HTTPError(400, _EXPECTED_BODY)
        # Comparing digests takes the same time whatever the password's length and content.
        if not hmac.compare_digest(secret_digest(password), self._password_digest):
            started = self._limiter.record_wrong(client, now)
            if started is not None:
                log.warning(
                    "too many wrong %s passwords from %s: refusing %s for %g s",
                    self._name,
                    "all addresses" if started.everyone else client,
                    "every address" if started.everyone else "it",
                    self._limiter.window,
                )
            raise bottle.HTTPError(401, f"wrong {self._name} password")


class BearerGuard:
    """Lets a request through only with `Authorization: Bearer TOKEN`; otherwise 404 (no token set) or 401.

    Without a token (None) the endpoint is disabled: 404 with `disabled`, which says how to enable it.
    The token is compared in constant time and never logged.
    """

    def __init__(self, token: str | None, disabled: str) -> None:
        """Guard with `token` (None: disabled, answering 404 `disabled`)."""
        self._token_digest = None if token is None else secret_digest(token)
        self._disabled = disabled

    def __call__(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """`callback` run only for requests that carry the token."""

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self._token_digest is None:
                raise bottle.HTTPError(404, self._disabled)
            given = bearer_token(bottle.request.environ)
            if given is None or not hmac.compare_digest(secret_digest(given), self._token_digest):
                raise bottle.HTTPError(
                    401, "wrong or missing bearer token", headers={"WWW-Authenticate": 'Bearer realm="ping-listener"'}
                )
            return callback(*args, **kwargs)

        return guarded


def check_ping_token(user: UserConfig, username: str, query: Mapping[str, str], environ: WSGIEnvironment) -> None:
    """Return if a signal for `user` carries its token, or it needs none; raise 403 otherwise.

    The token is `token=...` in the query or `Authorization: Bearer ...` (the query's wins if both are
    given). Cheap enough for the I/O thread: two SHA-256 of a few bytes and a constant-time compare,
    no SQL. The 403 `wrong or missing token for NAME` is raised before anything is recorded.
    """
    if user.token_digest is None:
        return
    given = query.get("token")
    if given is None:
        given = bearer_token(environ)
    if given is None or not hmac.compare_digest(secret_digest(given), user.token_digest):
        raise bottle.HTTPError(403, f"wrong or missing token for {username}")


def bearer_token(environ: WSGIEnvironment) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (the scheme in any case), or None."""
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
