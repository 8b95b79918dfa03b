"""Connections the service opens to others (webhooks, the heartbeat URL, the SMTP server), bounded in time and
in what they read, so that no other party can hold a loop for ever or fill the memory.

A socket timeout bounds one operation (a read, a write), not a conversation: a party that trickles its
answer, a byte every few seconds, would hold a conversation for as long as it likes. Here each
conversation has a Deadline, and every socket operation's timeout is the smaller of its own and the
time left before that deadline, so the conversation ends by the deadline whatever the other side does
(DeadlineExceeded). And at most ANSWER_LIMIT bytes of one answer (what arrives between two sends) are
read: a read past that raises AnswerTooLarge, and the rest is dropped when the socket is closed.

This module imports nothing else of the project: webhooks.py, mailer.py and scheduler.py use it.
"""

import functools
import http.client
import socket
import ssl
import time
import urllib.request
from typing import Any

# The most of one answer (an HTTP answer's status line, headers and body; an SMTP reply) that is ever read.
ANSWER_LIMIT = 64 * 1024


class DeadlineExceeded(TimeoutError):
    """A conversation's deadline passed before it ended."""


class AnswerTooLarge(OSError):
    """An answer went on past ANSWER_LIMIT bytes; the rest of it is not read."""


class Deadline:
    """The moment by which a conversation must end: `seconds` after this object is made (monotonic clock)."""

    def __init__(self, seconds: float) -> None:
        """Start counting `seconds` now."""
        self.seconds = seconds
        self._at = time.monotonic() + seconds

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() >= self._at

    def timeout(self, per_operation: float) -> float:
        """The timeout for the next socket operation: `per_operation`, or the time left if that is shorter.

        Raises DeadlineExceeded once no time is left.
        """
        left = self._at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"not done within its deadline of {self.seconds:g} s")
        return min(per_operation, left)


class BoundedSocket(socket.socket):
    """A TCP socket whose operations end by its Deadline and whose reads stop at ANSWER_LIMIT bytes per answer.

    Made by `connect`; until `limit` is called it behaves as a plain socket.
    """

    _deadline: Deadline | None = None
    _per_operation = 0.0
    _answer_left = ANSWER_LIMIT

    def limit(self, deadline: Deadline, per_operation: float) -> None:
        """Bound every later operation by `deadline` and `per_operation` seconds; set the timeout now, so that
        a TLS handshake started next (which takes this socket's timeout) ends by the deadline too."""
        self._deadline = deadline
        self._per_operation = per_operation
        self._arm()

    def recv(self, bufsize: int = 1024, flags: int = 0) -> bytes:
        """socket.recv, within the deadline and the answer's limit."""
        data = super().recv(self._readable(bufsize), flags)
        self._answer_left -= len(data)
        return data

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        """socket.recv_into, within the deadline and the answer's limit."""
        with memoryview(buffer) as view:
            size = nbytes or view.nbytes
        received = super().recv_into(buffer, self._readable(size), flags)
        self._answer_left -= received
        return received

    def send(self, data: Any, flags: int = 0) -> int:
        """socket.send within the deadline; what is read next is a new answer."""
        self._arm()
        self._answer_left = ANSWER_LIMIT
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        """socket.sendall within the deadline (its timeout bounds the whole call); what is read next is a new
        answer."""
        self._arm()
        self._answer_left = ANSWER_LIMIT
        super().sendall(data, flags)

    def _readable(self, size: int) -> int:
        """How many of `size` bytes the next read may take; arms the timeout."""
        if self._answer_left <= 0:
            raise AnswerTooLarge(f"the answer went on past {ANSWER_LIMIT} bytes")
        self._arm()
        return min(size, self._answer_left)

    def _arm(self) -> None:
        if self._deadline is not None:
            self.settimeout(self._deadline.timeout(self._per_operation))


class BoundedSslSocket(BoundedSocket, ssl.SSLSocket):
    """BoundedSocket over TLS: what a context from `tls_context` wraps a BoundedSocket in.

    ssl.SSLSocket's reads and writes go through recv_into, send and sendall (its sendall calls send for each
    piece), which BoundedSocket bounds; each takes the socket's timeout as its own deadline.
    """


def tls_context() -> ssl.SSLContext:
    """A client TLS context as ssl.create_default_context() makes it (system CAs, SSL_CERT_FILE, host names
    checked) whose sockets are BoundedSslSockets."""
    context = ssl.create_default_context()
    context.sslsocket_class = BoundedSslSocket
    return context


def connect(address: tuple[str, int], per_operation: float, deadline: Deadline) -> BoundedSocket:
    """A TCP connection to `address` (host, port), made within `per_operation` seconds and `deadline`, and
    bounded by them from then on (BoundedSocket.limit)."""
    plain = socket.create_connection(address, deadline.timeout(per_operation))
    bounded = BoundedSocket(plain.family, plain.type, plain.proto, plain.detach())
    bounded.limit(deadline, per_operation)
    return bounded


def adopt(wrapped: socket.socket, plain: socket.socket) -> None:
    """Bound `wrapped`, a BoundedSslSocket just made from the BoundedSocket `plain` (by STARTTLS, say), as
    `plain` was."""
    if isinstance(wrapped, BoundedSslSocket) and isinstance(plain, BoundedSocket) and plain._deadline:
        wrapped.limit(plain._deadline, plain._per_operation)


class _HttpConnection(http.client.HTTPConnection):
    """http.client's connection, over a BoundedSocket ending by `deadline`."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # http.client's hook for making the socket; it passes the timeout the connection was given.
        self._create_connection = lambda address, timeout, *_: connect(address, timeout, deadline)


class _HttpsConnection(http.client.HTTPSConnection):
    """http.client's TLS connection (its context from tls_context), over a BoundedSocket ending by `deadline`."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plain: BoundedSocket | None = None
        self._create_connection = self._connect_plain
        self._deadline = deadline

    def connect(self) -> None:
        """Connect as http.client does, then bound the TLS socket as its plain one was."""
        super().connect()
        if self._plain is not None and self.sock is not None:
            adopt(self.sock, self._plain)

    def _connect_plain(self, address: tuple[str, int], timeout: float, *_: Any) -> BoundedSocket:
        self._plain = connect(address, timeout, self._deadline)
        return self._plain


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HttpConnection, deadline=self._deadline), req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._deadline = deadline
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HttpsConnection, deadline=self._deadline), req, context=self._tls)


def opener(
    deadline: Deadline, context: ssl.SSLContext, *handlers: urllib.request.BaseHandler
) -> urllib.request.OpenerDirector:
    """A urllib opener (as build_opener makes, with `handlers` added) whose requests, redirects included, end by
    `deadline` and read at most ANSWER_LIMIT bytes of each answer; the `timeout` given to its open() bounds
    each operation. HTTPS checks certificates with `context`, which must come from tls_context()."""
    return urllib.request.build_opener(_HttpHandler(deadline), _HttpsHandler(deadline, context), *handlers)
