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

This module imports nothing else of the project but outbound.py; only its child processes import Apprise.
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
# How long asking Apprise whether it can use the settings' URLs may take (starting Python and Apprise included).
CHECK_DEADLINE = 30.0
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


def url_problems(urls: Sequence[str]) -> list[str | None]:
    """For each of `urls`, why Apprise cannot use it (a sentence naming its scheme only), or None if it can.

    Apprise is asked in a child process (as for sending), so that the service itself never loads Apprise and
    its 150 plugins (some 40 MB); it answers within CHECK_DEADLINE.
    """
    if not urls:
        return []
    try:
        with _job_file(json.dumps(list(urls)).encode()) as stdin:
            finished = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "check"],
                stdin=stdin,
                capture_output=True,
                timeout=CHECK_DEADLINE,
                env=_child_environment(),
            )
        usable = json.loads(finished.stdout)
        if not (isinstance(usable, list) and len(usable) == len(urls)):
            raise ValueError(f"Apprise answered {len(finished.stdout)} bytes that are no answer")
    except subprocess.TimeoutExpired:
        return [f"Apprise did not say within {CHECK_DEADLINE:g} s whether it can read this URL"] * len(urls)
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        return [f"cannot ask Apprise whether it can read this URL ({type(error).__name__}: {error})"] * len(urls)
    return [
        None
        if ok is True
        else f"Apprise cannot read this URL ({hidden(url)}; the rest is not shown, as it may hold a token)"
        for url, ok in zip(urls, usable, strict=True)
    ]


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


def _check() -> None:
    """The child's work when asked to check: read a JSON list of URLs from standard input and write a JSON list
    saying, for each, whether Apprise can use it. Apprise's log, which names unreadable URLs whole, goes nowhere
    (the child configures no logging, and its parent drops its standard error)."""
    import apprise

    usable = []
    for url in json.loads(sys.stdin.buffer.read()):
        try:
            usable.append(apprise.Apprise.instantiate(url) is not None)
        except Exception:  # whatever Apprise trips on, the URL is not one it can use
            usable.append(False)
    sys.stdout.write(json.dumps(usable))


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
    if sys.argv[1] == "check":
        _check()
    else:
        _child(int(sys.argv[1]))
