"""Guards for endpoints that people unlock with a password: the check, and the limit on wrong guesses.

A guard is a decorator for a Bottle callback (or a route's `apply=[guard]`); the view under it only
does its job. A new endpoint under the same password names the guard; it never copies its code.
"""

import collections
import hashlib
import hmac
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bottle

log = logging.getLogger("ping_listener.guards")

# After this many wrong passwords from one address within the window, refuse it for the window.
WRONG_PASSWORD_LIMIT = 5
WRONG_PASSWORD_WINDOW = 60.0
WRONG_PASSWORD_CLIENTS = 10_000
_EXPECTED_BODY = 'expected a JSON body {"password": "..."}'


class WrongPasswordLimiter:
    """Refuses a client address for a while after too many wrong passwords; safe across threads.

    After `limit` wrong passwords from one address within `window` seconds, that address is
    refused for `window` seconds. Times are passed in. Memory is bounded: an address is forgotten
    once its window has passed, and beyond `max_clients` addresses the one least recently wrong
    is forgotten first.
    """

    def __init__(self, limit: int, window: float, max_clients: int) -> None:
        """Refuse after `limit` wrong passwords within `window` seconds; remember up to `max_clients`."""
        self.window = window
        self._limit = limit
        self._max_clients = max_clients
        self._lock = threading.Lock()
        # address -> _WrongPasswords, least recently wrong first.
        self._clients: collections.OrderedDict[str, _WrongPasswords] = collections.OrderedDict()

    def retry_after(self, client: str, now: float) -> float:
        """Seconds until `client` may try a password again at `now`; 0 if it may now."""
        with self._lock:
            record = self._clients.get(client)
            return max(record.refused_until - now, 0.0) if record is not None else 0.0

    def record_wrong(self, client: str, now: float) -> bool:
        """Count a wrong password from `client` at `now`; True if that starts refusing it."""
        with self._lock:
            self._forget_expired(now)
            record = self._clients.pop(client, None) or _WrongPasswords()
            while record.times and record.times[0] <= now - self.window:
                record.times.popleft()
            record.times.append(now)
            refused = len(record.times) >= self._limit
            if refused:
                record.times.clear()
                record.refused_until = now + self.window
            self._clients[client] = record
            if len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
            return refused

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


class PasswordGuard:
    """Lets a request through only with the right password in its JSON body; otherwise 503, 429, 400 or 401.

    `name` names the password in answers and logs ("wrong testing password"). Without a password
    (None) every request gets 503 `disabled`, marked for pages by the header `Ping-Listener-Name:
    disabled` (e.g. Ping-Listener-Testing), so that they need not read the message. An address refused
    by `limiter` gets 429 before its password is even looked at; guards that share a limiter share
    one count. At most `max_body` bytes of the body are read.
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
        self._password_digest = None if password is None else _digest(password)
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
        if self._password_digest is None:
            raise bottle.HTTPError(503, self._disabled, headers=self._disabled_header)
        now = self._clock()
        # Behind a reverse proxy every client shares the proxy's address, so they share one limit.
        client = request.environ.get("REMOTE_ADDR", "")
        retry_after = self._limiter.retry_after(client, now)
        if retry_after:
            seconds = math.ceil(retry_after)
            raise bottle.HTTPError(
                429,
                f"too many wrong {self._name} passwords from {client}; try again in {seconds} s",
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
        if not hmac.compare_digest(_digest(password), self._password_digest):
            if self._limiter.record_wrong(client, now):
                log.warning(
                    "too many wrong %s passwords from %s: refusing it for %g s",
                    self._name,
                    client,
                    self._limiter.window,
                )
            raise bottle.HTTPError(401, f"wrong {self._name} password")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
