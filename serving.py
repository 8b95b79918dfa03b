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

This relies on waitress internals, pinned by `waitress==3.0.2` in requirements.txt; tests/test_serving.py
checks each behaviour relied on:
- a channel calls `server.add_task(channel)` once per complete request, and `channel.service()` answers
  exactly one request (`channel.requests[0]`, whose `.path` and `.error` the parser sets) and adds the
  channel again if another request is queued;
- `channel.total_outbufs_len`, `channel.last_activity`, `channel.connected`, `channel.handle_close()`
  closing a channel from the I/O thread, and `channel.handle_write()` sending what it can;
- every byte of an answer leaves through `HTTPChannel._flush_some()` (withheld there until a batch commits);
- `TcpWSGIServer` takes a `dispatcher` and a `sockinfo`, `handle_accept` accepts one connection, and
  `pull_trigger()` is only needed to wake the poll from another thread;
- waitress logs two lines each time open connections cross `connection_limit`;
- an answer that carries its own Date header gets no second one from waitress (web.py's /ping answers
  bring theirs, formatted once a second).
"""

import collections
import contextlib
import logging
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
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

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
# waitress's lines when open connections cross the connection limit: at most one of each per interval.
CONNECTION_LIMIT_MESSAGES = ("total open connections reached the connection limit", "total open connections dropped")
CONNECTION_LIMIT_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class ServingLimits:
    """What one server allows: open connections at once, and when an idle connection is closed.

    A connection idle (no request, nothing sent or received) for `idle_timeout` seconds is closed;
    idle connections are looked for every `cleanup_interval` seconds, so with the defaults one is
    closed 20 to 30 s after its last activity. A connection whose client stops reading its answers
    is closed the same way. Beyond `connection_limit` open connections no more are accepted: the
    rest wait in the kernel's accept queue.
    """

    connection_limit: int = 10_000
    idle_timeout: int = 20
    cleanup_interval: int = 10


DEFAULT_LIMITS = ServingLimits()


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
        what is not so: each of these connections is closed without its answer.
        """
        # A lone request commits its own write before answering, in one statement instead of three.
        batch = self._batch if len(channels) > 1 else contextlib.nullcontext
        for channel in channels:
            channel.withhold_output = True
        try:
            with batch():
                for channel in channels:
                    channel.service()
        except Exception as error:
            log.error("closing %d connection(s) unanswered: %s", len(channels), error)
            for channel in channels:
                channel.handle_close()
        finally:
            for channel in channels:
                channel.withhold_output = False
        for channel in channels:
            if channel.connected and channel.writable():
                channel.handle_write()

    def _dispatch(self, channel: Any, now: float, quick: list[Any]) -> None:
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
        if request.error is not None or not channel.connected or self._is_quick(request.path):
            quick.append(channel)
        else:
            self._workers.add_task(channel)

    def _is_quick(self, path: str) -> bool:
        # Run for every request: one tuple lookup and one startswith() instead of a loop over the paths.
        return path in self._quick_paths or path.startswith(self._below_quick_paths)


class _Channel(HTTPChannel):
    """waitress's connection, whose answers can be withheld while the batch that made them is not committed."""

    withhold_output = False

    def _flush_some(self, do_close: bool = True) -> bool:
        if self.withhold_output:
            return False
        return bool(super()._flush_some(do_close))


class _Server(TcpWSGIServer):
    """waitress's TCP server, accepting up to ACCEPTS_PER_ROUND connections per poll round instead of one,
    and woken by its trigger only from other threads."""

    channel_class = _Channel
    io_thread: int | None = None  # the serving loop's thread, set when it starts

    def pull_trigger(self) -> None:
        # service() pulls the trigger to wake the poll after each answer; on the I/O thread itself
        # that is a wasted write and an extra poll round per ping.
        if threading.get_ident() != self.io_thread:
            super().pull_trigger()

    def handle_accept(self) -> None:
        for _ in range(ACCEPTS_PER_ROUND):
            open_before = len(self._map)
            if open_before >= self.adj.connection_limit:
                return
            super().handle_accept()
            if len(self._map) == open_before:
                return  # nothing more to accept now


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
) -> HttpServer:
    """A bound HttpServer for the WSGI `app`; requests for `quick_paths` are answered on the I/O thread,
    those of one poll round inside one `batch()` block (e.g. Store.ping_batch), their answers sent only
    once the block has ended without an error.

    Also sets what serving this way needs process-wide: the GIL switch interval, the limit on open
    files raised towards the connection limit, and waitress's connection-limit lines rate-limited.
    Raises OSError if the address cannot be bound, ValueError if the host does not resolve.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    _quiet_waitress_logs()
    adjustments = Adjustments(
        host=host,
        port=port,
        connection_limit=_connection_limit(limits.connection_limit),
        backlog=LISTEN_BACKLOG,
        channel_timeout=limits.idle_timeout,
        cleanup_interval=limits.cleanup_interval,
        max_request_body_size=max_request_body,
        ident="ping-listener",
    )
    socket_map: dict[int, Any] = {}
    dispatcher = RequestDispatcher(quick_paths, limits.idle_timeout, batch)
    servers = []
    try:
        for sockinfo in adjustments.listen:
            servers.append(_Server(app, map=socket_map, dispatcher=dispatcher, adj=adjustments, sockinfo=sockinfo))
    except BaseException:
        wasyncore.close_all(socket_map)
        dispatcher.shutdown(timeout=0.5)
        raise
    return HttpServer(servers, socket_map, dispatcher)


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
