"""What the tests share: a fixed "now", real collaborators (an SMTP-over-TLS server, the service run as a
subprocess, a store on a disk that fills up) and readers of what was committed."""

import asyncio
import contextlib
import email
import email.policy
import http.server
import json
import os
import re
import selectors
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import psycopg
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from prometheus_client import Histogram

import config
import mailer
import metrics
import web
from mailer import SmtpMailer
from overview import Overview
from pg_store import PgStore
from rules import FIRST_RETRY_DELAY
from store import Store

ROOT = Path(__file__).resolve().parent.parent
# A fixed "now": Monday 2026-09-21 16:13:20 in Paris, the zone the tests run in (conftest.py).
# libfaketime (Debian's faketime package, which `make test` installs): a server started with
# LD_PRELOAD=LIBFAKETIME and FAKETIME="@2026-11-30 02:29:57" has its wall clock start at that local time
# and run at the real pace from there (FAKETIME_DONT_FAKE_MONOTONIC=1 leaves its monotonic clock alone).
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
T0 = 1_790_000_000.0
# A test marked so runs on each backend: the `store` fixture (conftest.py) gives it a SQLite file, then a new
# PostgreSQL database. For the tests of the store's contract, which holds on both.
BACKENDS = pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
SMTP_LOGIN = "alerts@example.com"
SMTP_PASSWORD = "smtp-secret"
# What a loaded 2-core test machine may add to a bound the code promises (starting a step, an SMTP conversation,
# a process's exit) before a test calls it broken: the margin of a deadline, not a speed target.
SLACK = 5.0


class TlsSmtpServer:
    """An SMTP server speaking implicit TLS on 127.0.0.1, requiring login, recording what it accepts.

    Without a login it answers MAIL with 530 (authentication required); a wrong password gets 535.
    `require_login=False` makes it offer a login without requiring one, as a relay does that refuses
    only some recipients to strangers.
    Set `rcpt_reply` or `data_reply` (e.g. "550 5.1.1 no such user") to make it refuse, or
    `drop_in_data` to make it close the connection once a message's content has arrived, before
    answering it: the one moment when a client cannot know whether its message was accepted.
    `drop_in_data_to` does the same only for messages to the recipients it holds.
    `security="starttls"` makes it a server on a plain port that offers STARTTLS and requires it
    before MAIL and AUTH; `security="plain"` one that offers no TLS at all (nor requires a login
    unless `require_login` says so). `logins` counts the AUTH commands it received.
    """

    def __init__(self, ca, require_login=True, security="ssl"):
        self.require_login = require_login
        self.security = security
        self.logins = 0
        self.messages = []
        self.rcpt_reply = None
        self.data_reply = None
        self.drop_in_data = False
        self.drop_in_data_to = set()
        self._received = threading.Condition()
        self._ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._ssl_context)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="smtp-test-server", daemon=True)
        self._server = None
        self.port = None

    def start(self, port=0):
        """Listen (on `port`, or one the OS chooses) and return self."""
        self._thread.start()
        implicit_tls = self._ssl_context if self.security == "ssl" else None
        self._server = asyncio.run_coroutine_threadsafe(
            self._loop.create_server(self._new_session, "127.0.0.1", port, ssl=implicit_tls), self._loop
        ).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self):
        """Stop listening and end the server's thread."""

        async def close():
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def wait_for_messages(self, count, timeout=10):
        """Wait until at least `count` messages were accepted; return them all (fails after `timeout`)."""
        with self._received:
            if not self._received.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"expected {count} email(s) within {timeout} s, got {len(self.messages)}")
            return list(self.messages)

    def _new_session(self):
        # aiosmtpd counts only STARTTLS as TLS; this connection is TLS from its first byte, so AUTH
        # over it is safe. LOGIN is left out: aiosmtpd mishandles smtplib's fallback to it.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            starttls = self.security == "starttls"
            return SMTP(
                _Handler(self),
                hostname="smtp.test",
                authenticator=self._authenticate,
                auth_required=self.require_login,
                auth_require_tls=starttls,
                auth_exclude_mechanism=["LOGIN"],
                tls_context=self._ssl_context if starttls else None,
                require_starttls=starttls,
                loop=self._loop,
            )

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins += 1
        return _authenticate(server, session, envelope, mechanism, auth_data)


class _Handler:
    def __init__(self, server):
        self._server = server

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self._server.rcpt_reply:
            return self._server.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self._server.drop_in_data or self._server.drop_in_data_to.intersection(envelope.rcpt_tos):
            server.transport.abort()
            return "421 never sent: the connection is gone"
        if self._server.data_reply:
            return self._server.data_reply
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        with self._server._received:
            self._server.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
            self._server._received.notify_all()
        return "250 Message accepted"


class SilentSmtpServer:
    """A port on 127.0.0.1 that accepts connections and never says a word, like a hung SMTP server."""

    def __init__(self):
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.connections = []
        self._thread = threading.Thread(target=self._accept, name="silent-smtp-server", daemon=True)
        self._thread.start()

    def stop(self):
        """Close the port and every connection it accepted."""
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(5)
        for connection in self.connections:
            connection.close()

    def _accept(self):
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.connections.append(connection)


class Trickler:
    """A hostile server on 127.0.0.1 (TLS with a certificate from `ca`, if given): to each connection it sends
    the bytes `answer()` yields (an iterable of bytes, possibly endless), one piece every `interval`
    seconds (0: as fast as the client takes them), reading nothing, until the pieces run out, the client
    closes or stop() is called. A peer such as an HTTP server answering a byte every few seconds, an SMTP
    server whose reply never ends, or a webhook with an endless body.

    `sent` holds the bytes sent on each connection so far, in order of connection; `closed_by_client` the
    number of connections the client closed before the answer ran out.
    """

    def __init__(self, answer, interval=0.0, ca=None):
        self._answer = answer
        self._interval = interval
        self._context = None
        if ca is not None:
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._context)
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"{'https' if ca is not None else 'http'}://127.0.0.1:{self.port}"
        self.sent = []
        self.closed_by_client = 0
        self._stopping = threading.Event()
        self._connections = []
        self._thread = threading.Thread(target=self._accept, name="trickler", daemon=True)
        self._thread.start()

    def stop(self):
        """Stop sending, close the port and every connection."""
        self._stopping.set()
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(5)
        for thread in self._connections:
            thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def _accept(self):
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            index = len(self.sent)
            self.sent.append(0)
            thread = threading.Thread(target=self._serve, args=(connection, index), daemon=True)
            self._connections.append(thread)
            thread.start()

    def _serve(self, connection, index):
        try:
            if self._context is not None:
                connection.settimeout(5)
                connection = self._context.wrap_socket(connection, server_side=True)
                connection.settimeout(None)
            for piece in self._answer():
                if self._stopping.wait(self._interval):
                    return
                connection.sendall(piece)
                self.sent[index] += len(piece)
        except OSError:
            self.closed_by_client += 1
        finally:
            connection.close()


class HttpReceiver:
    """A real HTTP server on 127.0.0.1 (http.server in a thread; HTTPS with a certificate from `ca`, if
    given) that records every GET and POST. Use as a context manager, or call stop().

    `requests` holds (method, path, headers, body) of each, `paths` their paths. `answers` scripts the
    answers to the next requests, in order: a status (int), (status, headers), or HANG to read the
    request and never answer it; once it is empty, each request gets `status` (200 unless set).
    """

    HANG = "hang"

    def __init__(self, ca=None):
        self.requests = []
        self.answers = []
        self.status = 200
        self._received = threading.Condition()
        self._stopping = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        if ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"{'https' if ca is not None else 'http'}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="http-receiver", daemon=True
        )
        self._thread.start()

    @property
    def paths(self):
        """The path (and query) of every request received, in order."""
        return [path for _, path, _, _ in self.requests]

    def stop(self):
        """Stop answering and close the port; requests left hanging are released."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def wait_for_requests(self, count, timeout=10):
        """Wait until at least `count` requests arrived; return them all (fails after `timeout`)."""
        with self._received:
            if not self._received.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"expected {count} request(s) within {timeout} s, got {len(self.requests)}")
            return list(self.requests)

    def _handler_class(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                self._answer(b"")

            def do_POST(self):  # noqa: N802
                self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def _answer(self, body):
                with receiver._received:
                    receiver.requests.append((self.command, self.path, self.headers, body))
                    answer = receiver.answers.pop(0) if receiver.answers else receiver.status
                    receiver._received.notify_all()
                if answer == HttpReceiver.HANG:
                    receiver._stopping.wait(30)
                    return
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        return Handler


def _authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_LOGIN.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


def delivered_subjects(messages):
    """The subject of every email that `messages` (as TlsSmtpServer keeps them) delivered, in order: a digest
    counts as the emails it carried (its `===== SUBJECT =====` lines)."""
    subjects = []
    for _, _, message in messages:
        carried = re.findall(r"^===== (.+?) =====\r?$", message.get_content(), re.MULTILINE)
        subjects += carried or [message["Subject"]]
    return subjects


def wait_for_delivered(smtp_server, count, timeout=10):
    """Wait until `smtp_server` has delivered at least `count` emails, digests counting as the emails they
    carried; return their subjects (fails after `timeout`)."""
    return wait_until(
        lambda: len(subjects := delivered_subjects(smtp_server.messages)) >= count and subjects,
        timeout,
        message=f"{count} email(s) delivered",
    )


# How late a loop's step may start, beyond the time it is due, on a loaded 2-core test machine: the margin of a
# wait for something that must not come (a longer one would only make the wait longer).
STEP_LATENESS = 1.0


def wait_out_resends(email_processing_frequency):
    """Wait as long as an email that reached the SMTP server at its first attempt could be sent again.

    Before sending, the outbox drain pushes the email's next attempt back by rules.FIRST_RETRY_DELAY (its
    first back-off); an email whose result the service did not record is due again then, and is sent at the
    drain's next step. Called once the last expected email arrived (so after every email was claimed), this
    waits past each one's retry: a double, of any of them, has arrived by the time it returns.
    """
    time.sleep(FIRST_RETRY_DELAY + email_processing_frequency + STEP_LATENESS)


def write_settings(path, users, **top_level):
    """Write a settings.json at `path` with `users` and defaults a test can override; return `path`."""
    document = {
        "base_frequency": 0.05,
        "email_processing_frequency": 0.05,
        "recipient": "oncall@example.com",
        "users": users,
    }
    document.update(top_level)
    Path(path).write_text(json.dumps(document))
    return path


class ServerProcess:
    """`python server.py` as a subprocess on 127.0.0.1 with an OS-chosen port, given `db` (a SQLite path or a
    PostgreSQL URL) as --db, or no --db at all for None."""

    def __init__(self, settings_path, db, env, log_path):
        self._args = [sys.executable, str(ROOT / "server.py"), "--settings", str(settings_path)]
        self._args += ["--db", str(db)] if db is not None else []
        self._args += ["--host", "127.0.0.1", "--port", "0"]
        self._env = env
        self.log_path = Path(log_path)
        self.process = None
        self.url = None

    def start(self, timeout=10):
        """Start it and wait for its `listening on` line; return self."""
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self._args, cwd=ROOT, env=self._env, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL
        )
        line = self._read_line(timeout)
        prefix = "listening on "
        if not line.startswith(prefix):
            self.process.kill()
            raise AssertionError(f"server printed {line!r}, not a listening line; log:\n{self.log()}")
        self.url = line[len(prefix) :].strip()
        return self

    def stop(self, timeout=5):
        """SIGTERM it; return its exit status (fails if it takes longer than `timeout`)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server did not exit within {timeout} s of SIGTERM; log:\n{self.log()}") from None
        finally:
            self._log.close()

    def kill(self):
        """SIGKILL it, as a crash would."""
        self.process.kill()
        self.process.wait()
        self._log.close()

    def reload(self):
        """Send it SIGHUP, as `systemctl reload` does."""
        self.process.send_signal(signal.SIGHUP)

    def get(self, path, timeout=10, headers=None):
        """GET `path` (with `headers`, a dict, if given); return (status, body text)."""
        return self.post(path, None, timeout, headers)

    def post(self, path, body, timeout=10, headers=None):
        """POST `body` (bytes) to `path`, or GET it if `body` is None; return (status, body text)."""
        try:
            request = urllib.request.Request(self.url + path, data=body, headers=headers or {})
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def log(self):
        """What the server wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def _read_line(self, timeout):
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.process.kill()
                raise AssertionError(f"server printed nothing within {timeout} s; log:\n{self.log()}")
        return self.process.stdout.readline().decode()


def run_server(*args, env=None):
    """Run `python server.py *args` to its end (a startup that fails); return its CompletedProcess, text."""
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py"), *args], capture_output=True, text=True, timeout=20, env=env
    )


def server_env(smtp_port, ca_path, **extra):
    """The environment for a server subprocess that sends through the test SMTP server."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SMTP_", "TESTING_", "OVERVIEW_"))}
    env.update(
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        SMTP_LOGIN=SMTP_LOGIN,
        SMTP_PASSWORD=SMTP_PASSWORD,
        SSL_CERT_FILE=str(ca_path),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def smtp_mailer(port, *, password=SMTP_PASSWORD, sender=None, timeout=5, security="ssl", login=SMTP_LOGIN):
    """An SmtpMailer logging in to 127.0.0.1:`port` as SMTP_SECURITY `security` says, each network operation
    bounded by `timeout` seconds."""
    smtp = config.SmtpSettings("127.0.0.1", port, login, password, sender, security=security)
    return SmtpMailer(smtp, timeout=timeout)


class SmallDiskStore(Store):
    """The real Store on a "disk" of `pages` database pages, which a test can fill up and free.

    SQLite's PRAGMA max_page_count belongs to one connection, so it is set on every connection
    each time one is used; SQLite then refuses growth with SQLITE_FULL as it would on a full disk.
    """

    pages = 1 << 30

    def fill_up(self):
        """No more pages: what is left is the free space inside the pages already used."""
        self.pages = self.pragma("page_count")

    def free_up(self):
        """Space returns."""
        self.pages = 1 << 30

    def before_use(self, connection):
        connection.execute(f"PRAGMA max_page_count = {self.pages}")


class Tmpfs:
    """A real tmpfs of `size` bytes mounted at `directory` (mounting needs root, as `make test` runs), which a
    test can fill up to its last byte and free again: the disk full that SQLite meets at its COMMIT."""

    def __init__(self, directory, size):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)], check=True)
        self._filler = self.directory / "filler"

    def fill_up(self):
        """Write a file until the disk refuses one more byte."""
        descriptor = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (1 << 16, 1 << 12, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(descriptor, b"\0" * chunk)
        finally:
            os.close(descriptor)

    def free_up(self):
        """Space returns."""
        self._filler.unlink(missing_ok=True)

    def unmount(self):
        subprocess.run(["umount", "--lazy", str(self.directory)], check=True)


def outbox(db):
    """(recipient, status, attempts) of each email in the outbox, oldest first."""
    return query(db, "SELECT recipient, status, attempts FROM outbox ORDER BY id")


def db_of(store):
    """Where `store` keeps its data, as query() takes it: a SQLite path or a PostgreSQL URL (with its password)."""
    return store.url if isinstance(store, PgStore) else store.path


def query(db, sql, parameters=()):
    """The rows `sql` selects from the database `db`, through a connection of its own: `db` is the path of a
    SQLite file, or a postgresql:// URL (whose `parameters` are written %s in `sql`, not ?)."""
    if str(db).startswith("postgresql://"):
        with psycopg.connect(db) as connection:
            return connection.execute(sql, parameters).fetchall()
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute(sql, parameters).fetchall()


def free_port():
    """A port on 127.0.0.1 that nothing listens on (until someone takes it)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return unused.getsockname()[1]


def wait_until(condition, timeout=10, interval=0.02, message="condition"):
    """Poll `condition()` until it is truthy and return its value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout} s")
        time.sleep(interval)


def make_settings(users=None, **top_level):
    """Validated Settings from a settings.json-shaped document with test defaults."""
    document = {
        "base_frequency": 1,
        "email_processing_frequency": 1,
        "recipient": "oncall@example.com",
        "users": users if users is not None else {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600}},
    }
    document.update(top_level)
    return config.parse_settings(document)


class ScriptedTestEmails:
    """Stands in for SmtpMailer's send_test (the testing page's test email): records each, answers `result`."""

    def __init__(self, result=None):
        self.result = result or mailer.SendResult(mailer.SENT)
        self.sent_to = []

    def send_test(self, recipient, now):
        self.sent_to.append((recipient, now))
        return self.result


class Clock:
    """A wall clock that moves only when the test says so."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def app_operations(
    store, clock=time.time, *, health_problem=lambda: None, metrics_token=None, api_key=None, api_key_readonly=None
):
    """web.Operations for an app under test: healthy unless told otherwise, metrics of `store`."""
    step_seconds = Histogram("ping_listener_absence_step_seconds", "step", registry=None)
    return web.Operations(
        health_problem, metrics.Exporter(store, clock, step_seconds), metrics_token, api_key, api_key_readonly
    )


def make_test_app(
    store, settings, clock, testing_password=None, test_emails=None, overview_password=None, checks=None, **operations
):
    """web.make_app over `settings` (Settings, or LiveSettings to replace them later), `test_emails` (a
    ScriptedTestEmails by default), app_operations() and `checks` (checks.Checks; made by the app if None)."""
    live = settings if isinstance(settings, config.LiveSettings) else config.LiveSettings(settings)
    return web.make_app(
        store,
        live,
        clock,
        testing_password,
        test_emails or ScriptedTestEmails(),
        app_operations(store, clock, **operations),
        Overview(store),
        overview_password,
        checks,
    )
