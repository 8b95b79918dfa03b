"""Load that a fleet puts on the service, for tests and benchmarks: bursts of fresh connections, idle and
non-reading clients. Every request goes to a server on this machine's loopback and every loop is bounded.
"""

import asyncio
import resource
import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class BurstResult:
    """What a burst got back: each answered request's status and latency (s), and each failure's reason."""

    statuses: list
    latencies: list
    failures: list
    elapsed: float

    def count(self, status):
        """How many requests were answered with `status`."""
        return sum(1 for answered in self.statuses if answered == status)


def burst(host, port, targets, timeout=30.0, http_version="1.1"):
    """Open one connection per target in `targets` (a request path each) at once, send `GET target` in
    HTTP/`http_version` with `Connection: close` on each, and read each answer to its end; return a BurstResult.

    A connection refused, reset, or not answered within `timeout` seconds is a failure.
    """
    allow_open_files(len(targets) + 256)
    return asyncio.run(_burst(host, port, list(targets), timeout, http_version))


async def _burst(host, port, targets, timeout, http_version):
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one_request(host, port, target, timeout, start, http_version)) for target in targets]
    await asyncio.sleep(0)
    began = time.monotonic()
    start.set()
    results = await asyncio.gather(*tasks)
    elapsed = time.monotonic() - began
    statuses, latencies, failures = [], [], []
    for status, finished, failure in results:
        if failure is None:
            statuses.append(status)
            latencies.append(finished - began)
        else:
            failures.append(failure)
    return BurstResult(statuses, latencies, failures, elapsed)


async def _one_request(host, port, target, timeout, start, http_version):
    await start.wait()
    request = f"GET {target} HTTP/{http_version}\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            answer = await reader.read()
        status_line = answer.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2:
            return None, None, f"incomplete answer {answer[:40]!r}"
        return int(status_line[1]), time.monotonic(), None
    except TimeoutError:
        return None, None, "timeout"
    except OSError as error:
        return None, None, type(error).__name__
    finally:
        if writer is not None:
            writer.close()


def open_idle_connections(host, port, count):
    """`count` connected sockets that send nothing; the caller closes them."""
    allow_open_files(count + 256)
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection((host, port), timeout=10))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def pipeline_without_reading(host, port, target, count):
    """A socket that has sent `count` pipelined `GET target` requests and will never read; the caller closes it."""
    sock = socket.create_connection((host, port), timeout=10)
    request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    sock.sendall(request * count)
    return sock


class Trickle:
    """Connections from one address (this machine's, as the OS chooses it to reach the server) that each send
    half a request, then one byte at a time when told to: a slowloris. The server may close any of them; the
    caller closes the rest (close())."""

    HALF_A_REQUEST = b"GET /ping?username=slow HTTP/1.1\r\nHost: x\r\n"

    def __init__(self, host, port, count):
        """Open `count` connections to `host`:`port`."""
        allow_open_files(count + 256)
        # Every connection in the order it was opened, and those not yet seen closed by the server.
        self.opened = []
        self._open = set()
        try:
            for _ in range(count):
                # Not bound to an address first: binding picks a port that no other socket uses, which gets slow
                # with thousands in use; connect() need only avoid those to the same server.
                sock = socket.create_connection((host, port), timeout=10)
                self.opened.append(sock)
                self._open.add(sock)
                self._send(sock, self.HALF_A_REQUEST)
        except BaseException:
            self.close()
            raise

    def send_one_byte_each(self):
        """Send one more header byte on every connection not yet seen closed; return how many took it."""
        for sock in list(self._open):
            self._send(sock, b"a")
        return len(self._open)

    def close(self):
        """Close every connection."""
        for sock in self.opened:
            sock.close()

    def _send(self, sock, data):
        try:
            sock.sendall(data)
        except OSError:  # the server has closed it
            self._open.discard(sock)


def closed_by_server(sock):
    """Whether the server has closed `sock`, as peeking at it without waiting shows."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: closed with bytes of ours unread
        return True
    finally:
        sock.settimeout(timeout)


def allow_open_files(count):
    """Raise this process's soft limit on open files to at least `count`, if its hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (count if hard == resource.RLIM_INFINITY else min(count, hard), hard)
        )
