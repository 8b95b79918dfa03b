"""How Ping Listener is served: waitress, with pings answered on its I/O thread and a bounded cost per client.

Cron jobs fire on the same second, so a fleet's pings arrive as a burst of fresh connections. With
waitress's usual shape (an I/O thread that parses, worker threads that answer) each ping costs two GIL
hand-offs between those threads, and under load they convoy: at 64 connections the service fell to a
tenth of a bare app (../shared/PERFORMANCE.md). Here a request for a quick path (a ping: one short
SQLite statement) is answered by the I/O thread itself right after the poll round that completed it,
all of that round's pings in one batch (one commit; the answers leave only once it is committed);
every other request (/logs, the pages) goes to a few worker threads, so a heavy read never holds a
ping back. A connection that has more unsent output than PARKED_OUTPUT gets no further request served
until its client reads (and is closed if it never does), so no client can make a thread wait for it.
No client can hold a connection without sending a request either (ServingLimits): a request must arrive
whole within a deadline, one address holds a bounded number of requests part way, and at the connection
limit the request part way longest is closed to take a new connection. A signal's body (a job's output)
is taken up to a large bound but kept only up to its first bytes (QuickBodies).

A ping as devices send it (one `GET` of a quick path, HTTP/1.1, plain headers, read whole in one piece)
skips waitress's request parser and task: the I/O thread reads it (read_plain_get), builds the WSGI
environ waitress would, and writes the answer's header as waitress would (_Channel). That work was
most of a served ping's CPU, more than its SQLite commit. Every other request, or a ping sent in
pieces, with a body, pipelined or with unusual headers, goes through waitress as before.

This relies on waitress internals, pinned by `waitress==3.0.2` in requirements.txt; tests/test_serving.py
checks each behaviour relied on. read_plain_get mirrors that release's parser: under any other release (a
parser fix would not reach it) every request goes through waitress's parser, and the start says so.
The internals relied on:
- a channel calls `server.add_task(channel)` once per complete request, and `channel.service()` answers
  exactly one request (`channel.requests[0]`, whose `.path` and `.error` the parser sets) and adds the
  channel again if another request is queued;
- `channel.total_outbufs_len`, `channel.last_activity` (set by `handle_read()` just before `received()`),
  `channel.connected`, `channel.handle_close()` closing a channel from the I/O thread (and calling
  `del_channel()`), and `channel.handle_write()` sending what it can;
- every byte of an answer leaves through `HTTPChannel._flush_some()` (withheld there until a batch commits),
  from `channel.outbufs`, whose last buffer is the one written to (`current_outbuf_count` its bytes);
- `server.maintenance(now)` runs every `cleanup_interval` from the server's `readable()`, which also logs
  the crossings of the connection limit, and `server.accept()` returns one connection or None;
- the parser's `parse_header()` sets `path`, `content_length` and `body_rcv`, whose receiver writes the
  body to its `buf` (`append()`, `__len__()`, `getfile()`, `close()`; a chunked body's Content-Length
  is that length), and `received()` keeps `headers_finished`, `completed` and `error`;
- `channel.send_continue()` is called once the header of a request that expects "100 Continue" has arrived,
  with that request as `channel.request` (already `completed` if it has no body to wait for);
- `TcpWSGIServer` takes a `dispatcher` and a `sockinfo`, `handle_accept` accepts one connection, and
  `pull_trigger()` is only needed to wake the poll from another thread;
- waitress logs two lines each time open connections cross `connection_limit`;
- an answer that carries its own Date header gets no second one from waitress (web.py's /ping answers
  bring theirs, formatted once a second);
- for a plain GET, the environ that `WSGITask.get_environment()` builds and the answer header that
  `WSGITask.build_response_header()` writes, which _Channel builds alike; the channel's `request`
  (the request being parsed), `requests`, `write_soon()`, `close_when_flushed` and `readable()`;
  `server.application` (the app behind waitress's proxy-header middleware) and `server.task_dispatcher`.
"""

import collections
import contextlib
import functools
import importlib.metadata
import io
import logging
import math
import re
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.buffers import OverflowableBuffer, ReadOnlyFileBasedBuffer
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher, hop_by_hop
from waitress.utilities import InternalServerError, RequestEntityTooLarge, build_http_date

log = logging.getLogger("ping_listener.serving")

# Threads for requests that are not quick (/logs, the pages). Two: one heavy read does not queue
# another behind it, and few threads keep the GIL free for the I/O thread.
WORKER_THREADS = 2
# The GIL switch interval: while a worker builds a big /logs answer, the I/O thread gets the GIL back
# within about this long to answer pings (the default 5 ms would add up to 5 ms to each).
SWITCH_INTERVAL = 0.001
# That queue's length, for connections not yet accepted (Linux caps it at net.core.somaxconn).
LISTEN_BACKLOG = 4096
# File descriptors kept for the database, SMTP and the like when the connection limit is fitted to
# the process's limit on open files.
RESERVED_FILES = 64
# Connections accepted per poll round: a burst is taken in quickly, without one round per connection.
ACCEPTS_PER_ROUND = 128
# A connection with more unsent answer bytes than this is served no further request until its client
# reads: what one connection can hold in memory is this plus one answer.
PARKED_OUTPUT = 256 * 1024
# How long one poll round waits for activity when nothing is to be served.
POLL_TIMEOUT = 0.5
# The waitress release whose request parser read_plain_get mirrors.
PLAIN_GET_WAITRESS = "3.0.2"
# waitress's lines when open connections cross the connection limit: at most one of each per interval.
CONNECTION_LIMIT_MESSAGES = ("total open connections reached the connection limit", "total open connections dropped")
CONNECTION_LIMIT_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class ServingLimits:
    """What one server allows: open connections at once and from one address, and when a connection is closed.

    A connection idle (no request, nothing sent or received) for `idle_timeout` seconds is closed;
    idle connections are looked for every `cleanup_interval` seconds, so with the defaults one is
    closed 20 to 30 s after its last activity. A connection whose client stops reading its answers
    is closed the same way. A request must arrive whole (header and body) within `request_deadline`
    seconds of its first byte, however slowly its bytes trickle: else it is answered 408 and its
    connection closed, looked for at the same times (with the defaults, 30 to 40 s after its first byte).

    A connection is part way through a request once some of its bytes have been read but not all. One
    client address holds at most `incomplete_requests_per_address` connections part way: a further one
    is closed as soon as it is (its bytes are read). A burst's requests arrive whole, so any number of
    one address's connections may be open and served at once. With `connection_limit` connections
    open, a new one is still accepted if some open connection is part way: the one that began its
    request longest ago is closed for it. Otherwise new connections wait in the kernel's accept queue
    until one closes.
    """

    connection_limit: int = 10_000
    idle_timeout: int = 20
    cleanup_interval: int = 10
    request_deadline: float = 30
    # settings.json's max_incomplete_requests_per_address, whose default this is (a NAT's devices share one
    # address).
    incomplete_requests_per_address: int = 1_000


DEFAULT_LIMITS = ServingLimits()


@dataclass(frozen=True)
class QuickBodies:
    """How a request to a quick path (a signal, whose body is a job's output) takes its body: up to `largest`
    bytes, of which only the first `kept` are kept for the app; the rest is read and dropped, never held.
    A larger body gets 413 as soon as its length is known, and the app never sees the request."""

    largest: int
    kept: int


class RequestDispatcher:
    """waitress's task dispatcher for this service: quick requests on the I/O thread, the rest on workers.

    waitress calls `add_task(channel)` from any of its threads when a channel has a request to answer;
    the serving loop calls `serve_arrived()` on the I/O thread after each poll round, which answers the
    quick requests there and hands the others to worker threads.
    """

    def __init__(
        self,
        quick_paths: Iterable[str],
        idle_timeout: float,
        batch: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
        worker_threads: int = WORKER_THREADS,
    ) -> None:
        """Answer requests for `quick_paths` (each path and those below it) on the I/O thread, those of
        one poll round inside one `batch()` block; close a connection whose client has read nothing
        for `idle_timeout` seconds while answers wait."""
        self._quick_paths = tuple(quick_paths)
        self._below_quick_paths = tuple(path + "/" for path in self._quick_paths)
        self._idle_timeout = idle_timeout
        self._batch = batch
        # waitress HTTPChannels: appended from any thread, drained by the I/O thread.
        self._arrived: collections.deque[Any] = collections.deque()
        # I/O thread only: channels waiting for their client to read.
        self._parked: list[Any] = []
        self._workers = ThreadedTaskDispatcher()
        self._workers.set_thread_count(worker_threads)

    def add_task(self, channel: Any) -> None:
        """waitress's hook: `channel` has a request to answer. Called with the channel's requests_lock held."""
        self._arrived.append(channel)

    def has_arrived(self) -> bool:
        """Whether a request waits for serve_arrived()."""
        return bool(self._arrived)

    def serve_arrived(self, now: float) -> None:
        """Answer or hand out every request that arrived before this call; park clients that do not read.

        Runs on the I/O thread. A pipelining client gets one request answered per call, so it cannot
        hold the loop; the next is served after the next poll round.
        """
        parked, self._parked = self._parked, []
        quick: list[Any] = []
        for channel in parked:
            self._dispatch(channel, now, quick)
        for _ in range(len(self._arrived)):
            self._dispatch(self._arrived.popleft(), now, quick)
        if quick:
            self._serve_batch(quick)

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        """Stop the worker threads (waitress's dispatcher interface)."""
        return bool(self._workers.shutdown(cancel_pending=cancel_pending, timeout=timeout))

    def _serve_batch(self, channels: list[Any]) -> None:
        """Answer one request of each channel inside one batch; send the answers only once it has ended.

        If the batch fails (the store could not commit), the answers written inside it would claim
        what is not so: each is replaced by a 503 with the batch's error as its message, after which
        its connection closes (with any request pipelined behind it unanswered, as after any 503).
        """
        # A lone request commits its own write before answering, in one statement instead of three.
        batch = self._batch if len(channels) > 1 else contextlib.nullcontext
        for channel in channels:
            channel.withhold()
        try:
            with batch():
                for channel in channels:
                    channel.service()
        except Exception as error:
            log.error("answering %d request(s) 503: their batch could not be committed: %s", len(channels), error)
            for channel in channels:
                channel.replace_withheld(f"{error}; try again later")
        finally:
            for channel in channels:
                channel.withhold_output = False
        for channel in channels:
            if channel.connected and channel.writable():
                channel.handle_write()

    def _dispatch(self, channel: Any, now: float, quick: list[Any]) -> None:
        if channel.plain_get is not None:
            quick.append(channel)  # read whole with nothing unsent before it: never to be parked
            return
        if not channel.requests:
            return  # cancelled
        if channel.connected and channel.total_outbufs_len > PARKED_OUTPUT:
            if channel.last_activity >= now - self._idle_timeout:
                self._parked.append(channel)
                return
            # Its client stopped reading. Its socket is not writable, so waitress's own will_close
            # would never be acted on: close it here; service() below then drops its requests.
            channel.handle_close()
        request = channel.requests[0]
        # A request waitress could not parse may have no path: its error answer is quick.
        if request.error is not None or not channel.connected or self.is_quick(request.path):
            quick.append(channel)
        else:
            self._workers.add_task(channel)

    def is_quick(self, path: str) -> bool:
        """Whether a request for `path` is answered on the I/O thread."""
        # Run for every request: one tuple lookup and one startswith() instead of a loop over the paths.
        return path in self._quick_paths or path.startswith(self._below_quick_paths)


@dataclass(frozen=True, slots=True)
class PlainGet:
    """A plain GET request as waitress's parser would have read it: path (PATH_INFO), query, request URI, and
    headers keyed as waitress keys them (`USER_AGENT` for User-Agent), repeated ones joined by ", "."""

    path: str
    query: str
    uri: str
    headers: dict[str, str]


# A plain GET's request line: a path with no percent-escape (so PATH_INFO is the path as sent) and no
# fragment, an optional query, HTTP/1.1.
_PLAIN_GET_LINE = re.compile(rb"GET (/[!\"$&-/0-9:->@-~]*)(?:\?([!\"$-~]*))? HTTP/1\.1\Z")
# A plain header line: a name of letters, digits and dashes (waitress drops names with underscores), a
# value of printable ASCII, spaces and tabs, whose leading and trailing blanks waitress strips.
_PLAIN_HEADER = re.compile(rb"([0-9A-Za-z-]+):[ \t]*([\t -~]*?)[ \t]*\Z")
# Headers that make a request not plain: waitress reads a body for these. (An `Expect: 100-continue` on a
# GET is answered as if it were not there: a GET has no body to wait for.)
_NOT_PLAIN_HEADERS = frozenset({"CONTENT_LENGTH", "TRANSFER_ENCODING"})
# Header keys that waitress puts in the environ without the HTTP_ prefix.
_UNPREFIXED_HEADERS = frozenset({"CONTENT_TYPE"})
_INTERNAL_ERROR = "The server encountered an unexpected internal server error"
_PLAIN_TEXT = (("Content-Type", "text/plain; charset=utf-8"),)


def read_plain_get(data: bytes) -> PlainGet | None:
    """The request in `data` if `data` is exactly one whole plain GET: HTTP/1.1, a request line and headers
    as _PLAIN_GET_LINE and _PLAIN_HEADER allow, no body, nothing after it; else None (waitress parses it)."""
    if not data.endswith(b"\r\n\r\n"):
        return None
    lines = data[:-4].split(b"\r\n")
    line = _PLAIN_GET_LINE.match(lines[0])
    if line is None:
        return None
    headers: dict[str, str] = {}
    for header_line in lines[1:]:
        header = _PLAIN_HEADER.match(header_line)
        if header is None:  # an empty line too: a second request follows
            return None
        name = header[1].upper().replace(b"-", b"_").decode("ascii")
        if name in _NOT_PLAIN_HEADERS:
            return None
        value = header[2].decode("ascii")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    query = line[2]
    return PlainGet(
        line[1].decode("ascii"), "" if query is None else query.decode("ascii"), lines[0][4:-9].decode("ascii"), headers
    )


class _Adjustments(Adjustments):
    """waitress's settings, and how this server takes bodies (set by create_http_server)."""

    # The largest body of a request to a path that is not quick, the rule for quick paths' bodies, and
    # which paths are quick (RequestDispatcher.is_quick).
    body_limit = 0
    quick_bodies: QuickBodies | None = None
    is_quick: Callable[[str], bool]


class _BodyHead:
    """A body buffer for waitress's body receivers that keeps the first `kept` bytes and only counts the rest."""

    def __init__(self, kept: int) -> None:
        """Keep up to `kept` bytes."""
        self._kept = kept
        self._head = bytearray()
        self._length = 0

    def append(self, data: bytes) -> None:
        """Take `data`, the next bytes of the body."""
        room = self._kept - len(self._head)
        if room > 0:
            self._head += data[:room]
        self._length += len(data)

    def __len__(self) -> int:
        """Bytes taken in all, kept or not (waitress makes a chunked body's Content-Length of it)."""
        return self._length

    def getfile(self) -> io.BytesIO:
        """The kept bytes, as the app reads them from wsgi.input."""
        return io.BytesIO(self._head)

    def close(self) -> None:
        """Nothing to let go of but memory."""


class _RequestParser(HTTPRequestParser):
    """waitress's request parser, taking a body within its path's bound: up to QuickBodies.largest bytes for a
    quick path, of which it keeps QuickBodies.kept; up to body_limit for any other path. Past it, 413."""

    adj: _Adjustments
    error: Any  # waitress's: the error answer the request gets, if any
    _largest_body = 0

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        quick = self.adj.quick_bodies if self.adj.is_quick(self.path) else None
        self._largest_body = self.adj.body_limit if quick is None else quick.largest
        if quick is not None and self.body_rcv is not None:
            self.body_rcv.buf = _BodyHead(quick.kept)

    def received(self, data: bytes) -> int:
        taken = int(super().received(data))
        # body_bytes_received counts a chunked body's framing; the body itself is what its buffer took in.
        received = max(self.content_length, len(self.body_rcv) if self.body_rcv is not None else 0)
        if self.headers_finished and self.error is None and received > self._largest_body:
            self.error = RequestEntityTooLarge(f"exceeds max_body of {self._largest_body}")
            self.completed = True
        return taken


class _Channel(HTTPChannel):
    """waitress's connection, whose answers can be withheld while the batch that made them is not committed,
    and which answers a plain GET of a quick path itself, without waitress's request parser and task."""

    parser_class = _RequestParser
    withhold_output = False
    current_outbuf_count: int  # waitress's: bytes in the newest output buffer
    will_close: bool  # waitress's: close at the next write round
    requests: list[Any]  # waitress's: the whole requests waiting to be answered, the first being answered
    server: "_Server"
    # When the first byte of the request being received arrived (time.time()); None while no request is
    # being received. Set by received(), cleared by _Server.add_task() once a request is whole.
    request_begun: float | None = None
    # Set by withhold(): where what is withheld begins (outbufs index, total_outbufs_len), and whether it
    # answers a HEAD.
    _withheld_from: tuple[int, int] = (0, 0)
    _withheld_head = False
    # A plain GET of a quick path read whole, with no other request or answer in progress: the next
    # service() answers it.
    plain_get: PlainGet | None = None

    def received(self, data: bytes) -> bool:
        if self.request_begun is None:
            self.request_begun = self.last_activity  # handle_read() has just set it
        if self.request is None and not self.total_outbufs_len and self.server.plain_gets:
            plain_get = read_plain_get(data)
            if plain_get is not None and self.server.task_dispatcher.is_quick(plain_get.path):
                with self.requests_lock:
                    # As waitress's received(): nothing more is taken in once the connection is to close.
                    if not (self.requests or self.will_close or self.close_when_flushed):
                        self.plain_get = plain_get
                        self.server.add_task(self)
                        return True
        taken = bool(super().received(data))
        if self.request is not None and not self.requests:  # waitress's parser holds part of the next request
            self.server.part_way(self)
        return taken

    def readable(self) -> bool:
        return self.plain_get is None and bool(super().readable())

    def send_continue(self) -> None:
        # waitress sends "100 Continue" to a request that expects it even once it has arrived whole (a GET,
        # which has no body), then marks it incomplete: it would never be answered. Only a request still
        # waiting for its body is told to go on; any other is answered as if it had not asked.
        if self.request.completed:
            self.request.expect_continue = False
            return
        super().send_continue()

    def service(self) -> None:
        plain_get = self.plain_get
        if plain_get is None:
            super().service()
            return
        self.plain_get = None
        if not self.connected:
            return
        answer, close = self._answer(plain_get)
        try:
            self.write_soon(answer)
        except ClientDisconnected:
            return
        # As waitress's service(): the next answer goes to a new output buffer, so that this one, if the
        # client took it only in part (and it was moved to memory meanwhile), is let go once sent.
        if self.current_outbuf_count > 0:
            self.current_outbuf_count = self.adj.outbuf_high_watermark
        if close:
            with self.requests_lock:
                self.close_when_flushed = True
        self.last_activity = time.time()

    def _answer(self, request: PlainGet) -> tuple[bytes, bool]:
        """The app's answer to `request` as waitress's WSGITask would send it (its 500 if the app fails), and
        whether the connection closes after it."""
        started = time.time()
        close = request.headers.get("CONNECTION", "").lower() == "close"
        second = math.floor(started)
        ident = self.server.adj.ident
        try:
            status, headers, body = self._call_app(request)
            if not _has_body(status):
                # waitress sends such an answer without a body or a length, and closes the connection after it.
                body, close = b"", True
                head = _answer_head(status, tuple(headers), None, close, ident, second)
            else:
                head = _answer_head(status, tuple(headers), len(body), close, ident, second)
        except Exception:
            log.exception("Exception while serving %s", request.path)
            status, headers, body = InternalServerError(_INTERNAL_ERROR).to_response(ident)
            close = True
            head = _answer_head(status, tuple(headers), len(body), close, ident, second)
        return head + body, close

    def _call_app(self, request: PlainGet) -> tuple[str, list[tuple[str, str]], bytes]:
        """(status, headers, body) of the server's app (behind waitress's middleware) for `request`, with the
        environ waitress's WSGITask.get_environment() would give it."""
        environ = {
            **self.server.plain_get_environ,
            "REMOTE_ADDR": self.addr[0],
            "REMOTE_HOST": self.addr[0],
            "REMOTE_PORT": str(self.addr[1]),
            "PATH_INFO": request.path,
            "REQUEST_URI": request.uri,
            "QUERY_STRING": request.query,
            "wsgi.errors": sys.stderr,
            "wsgi.input": io.BytesIO(),
            "waitress.client_disconnected": self.check_client_disconnected,
        }
        for name, value in request.headers.items():
            environ.setdefault(name if name in _UNPREFIXED_HEADERS else "HTTP_" + name, value)
        written: list[bytes] = []
        response: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            response[:] = [status, headers]
            return written.append

        result = self.server.application(environ, start_response)
        try:
            written.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        status, headers = response
        return status, headers, b"".join(written)

    def _flush_some(self, do_close: bool = True) -> bool:
        if self.withhold_output:
            return False
        return bool(super()._flush_some(do_close))

    def withhold(self) -> None:
        """Send nothing until withhold_output is cleared, and keep what is written from now on apart, for
        replace_withheld(). Only on the I/O thread, before service() answers the request that is next."""
        self.withhold_output = True
        # A request waitress could not parse may have no command.
        self._withheld_head = (
            self.plain_get is None and bool(self.requests) and getattr(self.requests[0], "command", None) == "HEAD"
        )
        # No lock: a quick request's channel has no task on a worker thread, the only other writer.
        if self.outbufs[-1].__len__():  # __len__(): as waitress, for buffers past 2 GiB on 32-bit builds
            self.outbufs.append(OverflowableBuffer(self.adj.outbuf_overflow))
            self.current_outbuf_count = 0
        self._withheld_from = (len(self.outbufs) - 1, self.total_outbufs_len)

    def replace_withheld(self, message: str) -> None:
        """Replace what was written since withhold() by a 503 with `message` (its header only for a HEAD),
        then close the connection, dropping any request that waits behind it."""
        if not self.connected:
            return
        first, total = self._withheld_from
        with self.outbuf_lock:
            for outbuf in self.outbufs[first:]:
                outbuf.close()
            del self.outbufs[first:]
            self.outbufs.append(OverflowableBuffer(self.adj.outbuf_overflow))
            self.current_outbuf_count = 0
            self.total_outbufs_len = total
        body = message.encode()
        head = _answer_head(
            "503 Service Unavailable", _PLAIN_TEXT, len(body), True, self.server.adj.ident, math.floor(time.time())
        )
        self.plain_get = None
        with self.requests_lock:
            self.close_when_flushed = True
            for request in self.requests:
                request.close()
            self.requests = []
        self.write_soon(head if self._withheld_head else head + body)

    def del_channel(self, map: Any = None) -> None:
        super().del_channel(map)
        self.server.forget(self)

    def time_out(self, deadline: float) -> None:
        """Answer 408 and close once it is sent: the request being received did not arrive whole within
        `deadline` seconds. A connection with answers still unsent is closed at once instead."""
        self.request_begun = None
        if not self.connected or self.total_outbufs_len or self.will_close or self.close_when_flushed:
            self.will_close = True
            return
        body = f"request not received whole within {deadline:g} s".encode()
        head = _answer_head(
            "408 Request Timeout", _PLAIN_TEXT, len(body), True, self.server.adj.ident, math.floor(time.time())
        )
        with self.requests_lock:
            self.close_when_flushed = True
        try:
            self.write_soon(head + body)
        except ClientDisconnected:
            self.will_close = True


def _has_body(status: str) -> bool:
    """Whether an answer of `status` has a body (not 1xx, 204 or 304), as waitress's Task.has_body says."""
    return not status.startswith(("1", "204", "304"))


# Answers to pings differ in their header once a second at most (their Date): the latest are kept.
@functools.lru_cache(maxsize=64)
def _answer_head(
    status: str, headers: tuple[tuple[str, str], ...], body_length: int | None, close: bool, ident: str, second: int
) -> bytes:
    """The status line and header of an answer to a plain GET begun in the epoch `second`, as
    WSGITask.build_response_header() writes them for a body of `body_length` bytes (None: an answer without a
    body, whose Content-Length waitress leaves out). Raises ValueError for what waitress's start_response
    refuses, or for a Content-Length that is not the body's (waitress would cut the answer or close early)."""
    answer_headers = []
    content_length = date = server = None
    for name, value in headers:
        if not (isinstance(name, str) and isinstance(value, str)) or any(c in name + value + status for c in "\r\n"):
            raise ValueError(f"header {name!r}: {value!r} cannot be sent")
        if name.lower() in hop_by_hop:  # Connection among them: only the server sets it
            raise ValueError(f"{name} is a hop-by-hop header; a WSGI application cannot set it")
        name = "-".join(part.capitalize() for part in name.split("-"))
        if name == "Content-Length":
            if body_length is None:
                continue
            content_length = value
        elif name == "Date":
            date = value
        elif name == "Server":
            server = value
        answer_headers.append((name, value))
    if body_length is not None:
        if content_length is None:
            answer_headers.append(("Content-Length", str(body_length)))
        elif content_length != str(body_length):
            raise ValueError("the Content-Length header is not the body's length")
    if close:
        answer_headers.append(("Connection", "close"))
    if server:
        answer_headers.append(("Via", ident or "waitress"))
    elif ident:
        answer_headers.append(("Server", ident))
    if not date:
        answer_headers.append(("Date", build_http_date(second)))
    # Sorted by name as waitress sorts them; stable, so headers of one name keep their order.
    answer_headers.sort(key=lambda header: header[0])
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in answer_headers) + "\r\n"
    return head.encode("latin-1")


class _Server(TcpWSGIServer):
    """waitress's TCP server, accepting up to ACCEPTS_PER_ROUND connections per poll round instead of one,
    woken by its trigger only from other threads, and holding its connections to `limits`."""

    channel_class = _Channel
    io_thread: int | None = None  # the serving loop's thread, set when it starts

    def __init__(self, *args: Any, limits: ServingLimits, plain_gets: bool, **kwargs: Any) -> None:
        """waitress's server (its arguments), holding connections to `limits`; `plain_gets`: whether a plain
        GET skips waitress's parser (see plain_gets_fit)."""
        self.limits = limits
        self.plain_gets = plain_gets
        # Connections part way through a request, in the order they began it: those closed to make room.
        self._part_way: collections.OrderedDict[_Channel, None] = collections.OrderedDict()
        # How many of those each client address holds.
        self._part_way_from: collections.Counter[str] = collections.Counter()
        self._refusals = _Tally(
            "closed %d connection(s) part way through a request from %s, which holds"
            " max_incomplete_requests_per_address (%d)"
        )
        self._evictions = _Tally(
            "%d connection(s) part way through a request closed to make room at the connection limit (%d)"
        )
        super().__init__(*args, **kwargs)

    @functools.cached_property
    def plain_get_environ(self) -> dict[str, Any]:
        """What the WSGI environ of every plain GET to this server holds alike, as WSGITask's."""
        return {
            "REQUEST_METHOD": "GET",
            "SERVER_PORT": str(self.effective_port),
            "SERVER_NAME": self.server_name,
            "SERVER_SOFTWARE": self.adj.ident,
            "SERVER_PROTOCOL": "HTTP/1.1",
            # The service sets no url_prefix: PATH_INFO is the whole path, as read_plain_get gives it.
            "SCRIPT_NAME": self.adj.url_prefix,
            "wsgi.url_scheme": self.adj.url_scheme,
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": ReadOnlyFileBasedBuffer,
            "wsgi.input_terminated": True,
        }

    def pull_trigger(self) -> None:
        # service() pulls the trigger to wake the poll after each answer; on the I/O thread itself
        # that is a wasted write and an extra poll round per ping.
        if threading.get_ident() != self.io_thread:
            super().pull_trigger()

    def readable(self) -> bool:
        # waitress's runs maintenance() when due and logs crossings of the connection limit; at the limit,
        # a connection is still taken if one part way through a request can be closed for it.
        return bool(super().readable()) or (self.accepting and bool(self._part_way))

    def handle_accept(self) -> None:
        for _ in range(ACCEPTS_PER_ROUND):
            at_limit = len(self._map) >= self.adj.connection_limit
            if at_limit and not self._part_way:
                return
            # As waitress's handle_accept(), which takes one connection and tells nothing of it.
            try:
                accepted = self.accept()
            except OSError:
                log.warning("accepting a connection failed", exc_info=True)
                return
            if accepted is None:
                return  # nothing more to accept now
            connection, address = accepted
            if at_limit:
                self._close_longest_part_way()
            try:
                self.set_socket_options(connection)
                self.channel_class(self, connection, address, self.adj, map=self._map)
            except OSError:  # the client has already gone
                connection.close()

    def add_task(self, channel: Any) -> None:
        # The channel has a whole request.
        channel.request_begun = None
        self._no_longer_part_way(channel)
        super().add_task(channel)

    def part_way(self, channel: _Channel) -> None:
        """`channel` is part way through a request: kept in the order it became so, or closed if its address
        holds incomplete_requests_per_address such connections already."""
        if channel in self._part_way:
            return
        host = channel.addr[0]
        cap = self.limits.incomplete_requests_per_address
        if self._part_way_from[host] >= cap:
            channel.handle_close()
            self._refusals.add(time.monotonic(), host, cap)
            return
        self._part_way_from[host] += 1
        self._part_way[channel] = None

    def maintenance(self, now: float) -> None:
        """waitress's (close idle connections), and answer 408 to requests past their deadline."""
        super().maintenance(now)
        deadline = self.limits.request_deadline
        for channel in list(self.active_channels.values()):
            begun = channel.request_begun
            if begun is not None and begun < now - deadline and not channel.requests:
                channel.time_out(deadline)

    def forget(self, channel: _Channel) -> None:
        """Stop counting `channel`, just closed, among the connections part way through a request."""
        self._no_longer_part_way(channel)

    def _no_longer_part_way(self, channel: _Channel) -> None:
        if channel in self._part_way:
            del self._part_way[channel]
            host = channel.addr[0]
            self._part_way_from[host] -= 1
            if not self._part_way_from[host]:
                del self._part_way_from[host]

    def _close_longest_part_way(self) -> None:
        """Close the connection that began the request it is part way through longest ago (there is one)."""
        channel = next(iter(self._part_way))
        channel.handle_close()  # which forgets it
        self._evictions.add(time.monotonic(), self.adj.connection_limit)


class _Tally:
    """Log lines of one kind at most once per CONNECTION_LIMIT_LOG_INTERVAL, each with how many events it stands for."""

    def __init__(self, message: str) -> None:
        """Log `message`, whose first placeholder is the count, as a warning."""
        self._message = message
        self._count = 0
        self._next_line = -math.inf

    def add(self, now: float, *args: Any) -> None:
        """Count one event at `now` (monotonic seconds); log if the last line is old enough (with `args`)."""
        self._count += 1
        if now >= self._next_line:
            log.warning(self._message, self._count, *args)
            self._count = 0
            self._next_line = now + CONNECTION_LIMIT_LOG_INTERVAL


@dataclass
class HttpServer:
    """The listening sockets (one per address the host resolves to), their socket map and dispatcher."""

    servers: list[Any]  # waitress TcpWSGIServers
    socket_map: dict[int, Any]
    dispatcher: RequestDispatcher
    stopping: bool = field(default=False)

    @property
    def host(self) -> str:
        """The address actually bound (the first, if the host resolved to several)."""
        return str(self.servers[0].effective_host)

    @property
    def port(self) -> int:
        """The port actually bound (chosen by the OS for port 0)."""
        return int(self.servers[0].effective_port)


class RateLimitedMessages(logging.Filter):
    """Lets a record whose message starts with one of `prefixes` through at most once per `interval` each."""

    def __init__(self, prefixes: Iterable[str], interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Keep one line of each kind per `interval` seconds of `clock()`; other records pass."""
        super().__init__()
        self._prefixes = tuple(prefixes)
        self._interval = interval
        self._clock = clock
        self._last_passed: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """True to log `record`."""
        message = record.getMessage()
        prefix = next((prefix for prefix in self._prefixes if message.startswith(prefix)), None)
        if prefix is None:
            return True
        now = self._clock()
        last = self._last_passed.get(prefix)
        if last is not None and now - last < self._interval:
            return False
        self._last_passed[prefix] = now
        return True


def create_http_server(
    app: Callable[..., Any],
    host: str,
    port: int,
    quick_paths: Iterable[str],
    max_request_body: int,
    limits: ServingLimits = DEFAULT_LIMITS,
    batch: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    waitress_version: str | None = None,
    quick_bodies: QuickBodies | None = None,
    trusted_proxy: str | None = None,
) -> HttpServer:
    """A bound HttpServer for the WSGI `app`; requests for `quick_paths` are answered on the I/O thread,
    those of one poll round inside one `batch()` block (e.g. Store.ping_batch), their answers sent only
    once the block has ended without an error (else each is answered 503 with the block's error as its
    message). Plain GETs skip waitress's parser only if `waitress_version` (by default the installed
    waitress's) is the one read_plain_get mirrors. A body larger than `max_request_body` bytes gets 413,
    except that requests for quick paths take theirs as `quick_bodies` says, if given.

    Also sets what serving this way needs process-wide: the GIL switch interval, the limit on open
    files raised towards the connection limit, and waitress's connection-limit lines rate-limited.
    Raises OSError if the address cannot be bound, ValueError if the host does not resolve.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    _quiet_waitress_logs()
    largest_body = max(max_request_body, quick_bodies.largest if quick_bodies else 0)
    adjustments = _Adjustments(
        host=host,
        port=port,
        connection_limit=_connection_limit(limits.connection_limit),
        backlog=LISTEN_BACKLOG,
        channel_timeout=limits.idle_timeout,
        cleanup_interval=limits.cleanup_interval,
        # _RequestParser holds each body to its path's bound; waitress's own bound, counting a chunked body's
        # framing too (unbounded lines of it included), is left twice as large.
        max_request_body_size=2 * largest_body + 1,
        ident="ping-listener",
        **_proxy_adjustments(trusted_proxy),
    )
    socket_map: dict[int, Any] = {}
    dispatcher = RequestDispatcher(quick_paths, limits.idle_timeout, batch)
    adjustments.body_limit = max_request_body
    adjustments.quick_bodies = quick_bodies
    adjustments.is_quick = dispatcher.is_quick
    plain_gets = plain_gets_fit(waitress_version or importlib.metadata.version("waitress"))
    servers = []
    try:
        for sockinfo in adjustments.listen:
            servers.append(
                _Server(
                    app,
                    map=socket_map,
                    dispatcher=dispatcher,
                    adj=adjustments,
                    sockinfo=sockinfo,
                    limits=limits,
                    plain_gets=plain_gets,
                )
            )
    except BaseException:
        wasyncore.close_all(socket_map)
        dispatcher.shutdown(timeout=0.5)
        raise
    return HttpServer(servers, socket_map, dispatcher)


def _proxy_adjustments(trusted_proxy: str | None) -> dict[str, Any]:
    """waitress's settings for believing the forwarding headers of `trusted_proxy` only (none if None): the last
    X-Forwarded-For address is the one the proxy saw; what a client put before it is not believed."""
    if trusted_proxy is None:
        return {}
    return {
        "trusted_proxy": trusted_proxy,
        "trusted_proxy_count": 1,
        "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"},
    }


def plain_gets_fit(waitress_version: str) -> bool:
    """Whether plain GETs may skip the parser of waitress `waitress_version`: only if it is the release that
    read_plain_get mirrors. If not, logs (once per call) that every request goes through waitress's parser."""
    if waitress_version == PLAIN_GET_WAITRESS:
        return True
    log.warning(
        "waitress %s is installed, not %s which the fast reader of plain pings mirrors:"
        " every request goes through waitress's own parser",
        waitress_version,
        PLAIN_GET_WAITRESS,
    )
    return False


def serve_until_signalled(http_server: HttpServer, stop_requested: threading.Event, shutdown_grace: float) -> None:
    """Serve until `stop_requested` is set, then answer the requests in flight (up to `shutdown_grace` s) and close."""
    socket_map, dispatcher = http_server.socket_map, http_server.dispatcher
    for server in http_server.servers:
        server.io_thread = threading.get_ident()
    while not stop_requested.is_set():
        _serve_one_round(socket_map, dispatcher, POLL_TIMEOUT)
    log.info("stopping: no new connections; answering requests in flight")
    for server in http_server.servers:
        server.accepting = False
    deadline = time.monotonic() + shutdown_grace
    while _requests_in_flight(http_server) and time.monotonic() < deadline:
        _serve_one_round(socket_map, dispatcher, 0.05)
    dispatcher.shutdown(timeout=0.5)
    wasyncore.close_all(socket_map)


def _serve_one_round(socket_map: dict[int, Any], dispatcher: RequestDispatcher, timeout: float) -> None:
    wasyncore.loop(timeout=0 if dispatcher.has_arrived() else timeout, map=socket_map, use_poll=True, count=1)
    dispatcher.serve_arrived(time.time())


def _requests_in_flight(http_server: HttpServer) -> bool:
    channels = [channel for server in http_server.servers for channel in list(server.active_channels.values())]
    return http_server.dispatcher.has_arrived() or any(c.requests or c.total_outbufs_len for c in channels)


def _connection_limit(wanted_connections: int) -> int:
    """`wanted_connections`, or fewer if the process may not open that many files even after raising its soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = wanted_connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted_connections
    limit = max(soft - RESERVED_FILES, 16)
    log.warning("at most %d open files allowed: accepting at most %d connections at once", soft, limit)
    return limit


def _quiet_waitress_logs() -> None:
    # Queueing on the workers is expected here; waitress would warn on nearly every queued request.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    waitress_log = logging.getLogger("waitress")
    if not any(isinstance(f, RateLimitedMessages) for f in waitress_log.filters):
        waitress_log.addFilter(RateLimitedMessages(CONNECTION_LIMIT_MESSAGES, CONNECTION_LIMIT_LOG_INTERVAL))
