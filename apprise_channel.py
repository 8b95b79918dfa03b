"""Notifications through Apprise (https://github.com/caronc/Apprise), which knows about 150 services (Telegram,
Pushover, Signal, Home Assistant, SMS gateways, ...), each named by an Apprise URL such as
tgram://BOT_TOKEN/CHAT_ID.

Apprise makes its own HTTP requests (through the requests library), which the service's deadlines cannot
reach from outside. So each batch of notifications to one URL runs in a child process of its own
(`python apprise_channel.py`), given the URL and the messages on its standard input (never on its command
line, which other users of the machine can read), answering one line per message as each is settled. The
child's sockets read at most outbound.ANSWER_LIMIT bytes of each answer; the parent waits for each line up
to the deadline, then kills the child: a slow, hung or trickling service ends by the deadline whatever it
does, and holds nothing afterwards.

An Apprise URL holds its service's token. It is never logged, shown in an error, stored or passed on a
command line: errors show the URL's scheme only (`hidden`), and what Apprise itself says about a failure is
kept with every piece of the URL blotted out (`scrub`).

This module imports nothing else of the project but outbound.py (and Apprise, only when a URL is checked, and
in the child).
"""

import contextlib
import json
import logging
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import outbound

# How long the child may take to start (load Python and Apprise's plugins) on top of its first message's deadline.
START_DEADLINE = 20.0
# The most of what Apprise says about a failure that is kept (after scrubbing).
ERROR_CHARS = 300
# Pieces of an Apprise URL shorter than this are not blotted out of Apprise's messages (they would blot out
# ordinary words); no token is that short.
MIN_SECRET_CHARS = 4
# The most of the child's answer for one message that is read.
ANSWER_LIMIT = outbound.ANSWER_LIMIT
# What separates the pieces of a URL (scheme, user, password, host, port, path segments, query names and values).
_URL_SEPARATORS = re.compile(r"[/:@?&=#,;+\s]+")


@dataclass(frozen=True, slots=True)
class Message:
    """One notification: its title, its body, and its Apprise type (info, success, warning or failure)."""

    title: str
    body: str
    type: str


def hidden(url: str) -> str:
    """`url` fit to show: its scheme only (`tgram://…`), as the rest may hold a token."""
    scheme = url.partition("://")[0] if "://" in url else ""
    return f"{scheme}://…" if re.fullmatch(r"[A-Za-z][\w+.-]{0,31}", scheme) else "…"


def url_problem(url: str) -> str | None:
    """Why Apprise cannot use `url` (a sentence naming its scheme only), or None if it can."""
    apprise = _quiet_apprise()
    try:
        if apprise.Apprise.instantiate(url) is not None:
            return None
    except Exception:  # noqa: S110 -- whatever Apprise trips on, the URL is not one it can use
        pass
    return f"Apprise cannot read this URL ({hidden(url)}; the rest is not shown, as it may hold a token)"


def scrub(text: str, url: str) -> str:
    """`text` with every piece of `url` (and of its %-decoded form) but its scheme, MIN_SECRET_CHARS long or
    longer, replaced by `***`."""
    scheme = url.partition("://")[0]
    pieces = set(_URL_SEPARATORS.split(url)) | set(_URL_SEPARATORS.split(urllib.parse.unquote(url)))
    for piece in sorted(pieces, key=len, reverse=True):
        if len(piece) >= MIN_SECRET_CHARS and piece != scheme:
            text = text.replace(piece, "***")
    return text


def notify_each(url: str, messages: Sequence[Message], deadline: float) -> Generator[str | None, None, None]:
    """Send `messages` in turn through the Apprise `url`, in a child process; yield, as each is settled, None
    if Apprise sent it, else the reason it did not (scrubbed).

    Each message is settled within `deadline` seconds of the previous one (the first within START_DEADLINE
    more). If the child does not answer in time, or dies, that message's reason says so and nothing more
    is yielded: the child is killed, and the remaining messages were not tried. Closing the generator kills
    the child too.
    """
    job = json.dumps({"url": url, "messages": [[m.title, m.body, m.type] for m in messages]}).encode()
    allowed = START_DEADLINE + deadline * len(messages) + 5
    with _job_file(job) as stdin:
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(int(allowed))],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_child_environment(),
        )
    assert child.stdout is not None
    try:
        lines = _Lines(child.stdout)
        for index in range(len(messages)):
            seconds = deadline + (START_DEADLINE if index == 0 else 0.0)
            line = lines.next(outbound.Deadline(seconds))
            if line is None:
                if lines.ended:
                    yield f"Apprise stopped before answering (exit status {child.wait()})"
                else:
                    yield f"no answer from Apprise within the {seconds:g} s deadline"
                return
            yield _error_of(line, url)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


class _Lines:
    """The lines a child writes, each read within a deadline and at most ANSWER_LIMIT bytes long."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        self._buffer = b""
        self.ended = False

    def next(self, deadline: outbound.Deadline) -> bytes | None:
        """The next line (without its newline), or None if the child ended, went past the limit or the deadline."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                if len(self._buffer) > ANSWER_LIMIT:
                    return None
                try:
                    ready = selector.select(deadline.timeout(1.0))
                except outbound.DeadlineExceeded:
                    return None
                if ready:
                    piece = os.read(self._fd, 65536)
                    if not piece:
                        self.ended = True
                        return None
                    self._buffer += piece
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def _error_of(line: bytes, url: str) -> str | None:
    try:
        answer = json.loads(line)
    except ValueError:
        return "Apprise answered something unreadable"
    if not isinstance(answer, dict) or answer.get("sent") is True:
        return None if isinstance(answer, dict) else "Apprise answered something unreadable"
    return scrub(str(answer.get("error") or "Apprise could not send it"), url)[:ERROR_CHARS]


@contextlib.contextmanager
def _job_file(job: bytes) -> Iterator[int]:
    """A file holding `job`, read from its start: in memory (memfd) where the system has it, so that the URL
    never reaches a disk; else an unnamed temporary file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("apprise-job", os.MFD_CLOEXEC)
        try:
            os.write(fd, job)
            os.lseek(fd, 0, os.SEEK_SET)
            yield fd
        finally:
            os.close(fd)
    else:
        with tempfile.TemporaryFile() as file:
            file.write(job)
            file.seek(0)
            yield file.fileno()


def _child_environment() -> dict[str, str]:
    """The service's environment, with SSL_CERT_FILE (if set) also told to requests, which reads REQUESTS_CA_BUNDLE
    instead: Apprise's services are trusted as the service's other HTTPS peers are."""
    environment = dict(os.environ)
    if "SSL_CERT_FILE" in environment:
        environment["REQUESTS_CA_BUNDLE"] = environment["SSL_CERT_FILE"]
    return environment


def _quiet_apprise() -> Any:
    """The apprise module, with its logger kept from the service's log: it names unreadable URLs whole."""
    apprise_log = logging.getLogger("apprise")
    apprise_log.propagate = False
    apprise_log.setLevel(logging.CRITICAL + 1)
    import apprise

    return apprise


class _Said(logging.Handler):
    """Keeps what Apprise says at warning level and above about the notification under way."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _child(alarm: int) -> None:
    """The child's work: read {"url", "messages"} from standard input, send each message, and write one line per
    message, {"sent": true} or {"sent": false, "error": ...}, as each is settled."""
    # Whatever happens, the child ends by then, even if its parent is gone.
    signal.alarm(alarm)
    # Every socket made from here on (those of requests too) reads at most ANSWER_LIMIT bytes of each answer.
    import socket
    import ssl

    socket.socket = outbound.BoundedSocket  # type: ignore[misc]
    ssl.SSLContext.sslsocket_class = outbound.BoundedSslSocket
    job = json.loads(sys.stdin.buffer.read())
    said = _Said()
    apprise_log = logging.getLogger("apprise")
    apprise_log.addHandler(said)
    apprise_log.propagate = False
    import apprise

    notifier = apprise.Apprise()
    usable = notifier.add(job["url"])
    for title, body, kind in job["messages"]:
        said.lines.clear()
        try:
            sent = usable and notifier.notify(body=body, title=title, notify_type=kind)
        except Exception as error:  # a plugin's bug fails this message, not the others
            said.lines.append(f"{type(error).__name__}: {error}")
            sent = False
        answer: dict[str, Any] = {"sent": True}
        if not sent:
            reason = " ".join(" ".join(said.lines).split()) or "Apprise could not send it"
            answer = {"sent": False, "error": scrub(reason, job["url"])[:ERROR_CHARS]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _child(int(sys.argv[1]))
