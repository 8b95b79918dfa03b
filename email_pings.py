"""Email pings: an SMTP listener inside the service that takes a message to NAME@domain as a signal for NAME.

For the jobs that can only send an email when they finish (a NAS's backup task, a router's config export,
a UPS): settings.json's `email_pings` turns it on. A message to NAME@domain (NAME+TOKEN@domain for a user
with a token) is recorded as an HTTP signal is, by the same store call, committed before the 250 that
answers its DATA; its subject and the first MAX_SIGNAL_TEXT bytes of its text are the signal's body, and
the user's `email_keywords` decide its kind (email_signal_kind). It takes only what it must: a recipient
that names no user is refused at RCPT (550), another domain too (it is no relay), a message larger than
MAX_MESSAGE_BYTES gets 552, one it cannot read 554, and nothing is recorded for any of them.

Every session is bounded (ListenerLimits): at most `max_sessions` at once and `max_sessions_per_address`
from one address (a further one gets 421), a deadline for each command and one for the whole session, and
an address that names wrong recipients is refused for a while as guessed passwords are (guards.py).

The listener runs aiosmtpd on an asyncio loop in a thread of its own; messages are read and recorded one
at a time on a second thread, so that neither the loop nor a flood of mail takes more than a thread's
share of the interpreter from the pings served over HTTP. Deciding is done by the pure functions below
(recipient_username, message_content, email_signal_kind, signal_body); the classes only act.
"""

import asyncio
import concurrent.futures
import email
import email.policy
import hmac
import html.parser
import logging
import math
import re
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage, MIMEPart
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from config import ConfigError, EmailKeywords, EmailPingsConfig, LiveSettings, UserConfig, secret_digest
from guards import WrongPasswordLimiter, count_wrong
from records import StoreUnavailableError, UnknownUserError
from rules import FAIL, LOG, START, SUCCESS
from store_contract import StoreContract

log = logging.getLogger("ping_listener.email_pings")

# A larger message is refused with 552 (and EHLO announces it as SIZE), counted as aiosmtpd counts the bytes
# of DATA: every line with its CRLF, as sent.
MAX_MESSAGE_BYTES = 1_000_000
# The first this many bytes of a message's text are kept with its signal (an HTTP signal keeps as much of
# its body), after the subject, itself cut to MAX_SUBJECT characters.
MAX_SIGNAL_TEXT = 10_000
MAX_SUBJECT = 998
# A message's recipients: more get 452 (the sender sends the rest in another message).
MAX_RECIPIENTS = 50
# Each SMTP command (HELO, MAIL, NOOP...) may be sent at most this many times in one session.
MAX_COMMAND_CALLS = 100
# Lines of a message may be this long (RFC 5321 says 1 000, but appliances write an HTML report on one line).
MAX_LINE = 64 * 1024
# Unknown recipients (and those of other domains, and wrong tokens) count as wrong guesses: after this many
# from one address within WRONG_RECIPIENT_WINDOW seconds it is refused for the window, after
# WRONG_RECIPIENT_GLOBAL_LIMIT from all addresses together every address is, but those that named a right
# one within a day (guards.WrongPasswordLimiter).
WRONG_RECIPIENT_LIMIT = 10
WRONG_RECIPIENT_GLOBAL_LIMIT = 100
WRONG_RECIPIENT_WINDOW = 60.0
# On shutdown, messages being received or recorded may finish for this long; then every session is closed.
SHUTDOWN_GRACE = 0.5
# A message of more MIME parts than this, or of more multiparts (each with its boundary), is refused before
# it is read: the email package's work grows with every part, and much faster with parts nested in parts.
MAX_MIME_PARTS = 32
MAX_MULTIPARTS = 10
# A multipart's boundary parameter, as the bytes of a Content-Type header write it; boundary* (RFC 2231) too.
_BOUNDARY = re.compile(rb'boundary(\*[0-9]*\*?)?\s*=\s*(?:"([^"\r\n]*)"|([^\s;]*))', re.IGNORECASE)
# How often a session past its deadline looks again whether its message has been recorded.
_RECORDING_CHECK = 0.1
# The text of an HTML part is read this many characters at a time, until MAX_SIGNAL_TEXT bytes of it came.
_HTML_PIECE = 4096
# HTML elements whose content is no text a person reads, and those that end a line of text.
_HIDDEN_ELEMENTS = {"head", "script", "style", "title", "template"}
_LINE_ELEMENTS = {"br", "p", "div", "tr", "li", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "pre", "blockquote"}
_SPACES = re.compile(r"[ \t\f\v\xa0]+")
_QUOTED_PAIR = re.compile(r"\\(.)")


@dataclass(frozen=True)
class ListenerLimits:
    """What one SMTP session may take: the listener's bounds, each a number of seconds or of sessions."""

    # Each may hold a message of up to MAX_MESSAGE_BYTES while it arrives: 100 MB in all at most.
    max_sessions: int = 100
    # A relay sends a domain's mail over at most 20 connections at once (Postfix's default).
    max_sessions_per_address: int = 20
    # Each command must arrive within this long of the previous one (DATA's whole content, too).
    command_timeout: float = 60.0
    # A session is closed this long after it opened, whatever it is doing (a message being recorded gets its
    # answer first).
    session_deadline: float = 300.0


class Refused(Exception):
    """An SMTP command is refused: `reply` is the whole reply line, code first."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _no_uuids(uuid: str) -> None:
    """No check has a UUID: recipient_username's default."""
    return None


def recipient_username(
    address: str, domain: str, users: Mapping[str, UserConfig], name_of: Callable[[str], str | None] = _no_uuids
) -> str:
    """The configured user a message to `address` is a signal for; Refused with a 550 if there is none.

    `address` must be in `domain` (lowercase; its case is ignored), its local part (unquoted, case
    kept) NAME for a user without a token, NAME+TOKEN for one with one (the last `+` separates them).
    In place of NAME, a check's UUID (any case) names it, as /ping/<uuid> does: `name_of` maps a UUID
    to its check's name.
    """
    local, at, address_domain = address.rpartition("@")
    if not at or address_domain.lower().rstrip(".") != domain:
        raise Refused(f"550 5.7.1 relaying denied: this server takes mail for @{domain} only")
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = _QUOTED_PAIR.sub(r"\1", local[1:-1])
    local = name_of(local.lower()) or local
    user = users.get(local)
    if user is not None and user.token_digest is None:
        return local
    name, plus, token = local.rpartition("+")
    name = name_of(name.lower()) or name
    holder = users.get(name) if plus else None
    if holder is not None and holder.token_digest is not None:
        if hmac.compare_digest(secret_digest(token), holder.token_digest):
            return name
        raise Refused(f"550 5.7.1 wrong token for {_shown(name)}")
    if user is not None:
        raise Refused(f"550 5.7.1 missing token for {_shown(local)}: write {_shown(local)}+TOKEN@{domain}")
    raise Refused(f"550 5.1.1 unknown user {_shown(local)}")


class MalformedMessage(Exception):
    """A message that cannot be read as an email; its text says why."""


def message_content(data: bytes) -> tuple[str, str]:
    """(subject, text) of the message `data` (as received in DATA): the subject decoded (RFC 2047 encoded
    words), cut to MAX_SUBJECT characters; the text of its body, its first MAX_SIGNAL_TEXT bytes at most.

    The text is the plain-text part if the message has one (a multipart's first, as a mail reader shows
    it), else its HTML part turned to text, else "". MalformedMessage if the message has no header at all
    or cannot be read (nested too deeply, say).
    """
    problem = _structure_problem(data)
    if problem is not None:
        raise MalformedMessage(problem)
    try:
        message = email.message_from_bytes(data, policy=email.policy.default)
        if not message.keys():
            raise MalformedMessage("not an email message: it has no header")
        subject = " ".join(str(message.get("Subject", "")).split())[:MAX_SUBJECT]
        assert isinstance(message, EmailMessage)  # as policy.default makes it
        part = message.get_body(preferencelist=("plain", "html"))
        if part is None:
            return subject, ""
        # Lines end in CRLF on the wire: kept as a mail reader shows them, without blank lines at the end.
        text = _part_text(part).replace("\r\n", "\n").rstrip()
        if part.get_content_subtype() == "html":
            return subject, html_to_text(text)
        return subject, _cut(text, MAX_SIGNAL_TEXT)
    except MalformedMessage:
        raise
    except Exception as error:  # the email package raises anything from ValueError to RecursionError
        raise MalformedMessage(f"malformed message ({type(error).__name__})") from None


def _structure_problem(data: bytes) -> str | None:
    """Why the message `data` has too many MIME parts to be read (see MAX_MIME_PARTS), or None.

    Counted in its bytes, before it is parsed: each boundary parameter is a multipart, each line that
    begins with `--` and a boundary a part. A boundary written in RFC 2231 pieces is not read here: every
    line that begins with `--` then counts as a part.
    """
    found = _BOUNDARY.findall(data)
    if len(found) > MAX_MULTIPARTS:
        return f"too many multipart sections (at most {MAX_MULTIPARTS})"
    lines = b"\n" + data
    if any(star for star, _, _ in found):
        parts = lines.count(b"\n--")
    else:
        boundaries = {quoted or plain for _, quoted, plain in found}
        # Each delimiter line begins a part, but a closing one (--BOUNDARY--).
        parts = sum(
            lines.count(b"\n--" + boundary) - lines.count(b"\n--" + boundary + b"--")
            for boundary in boundaries
            if boundary
        )
    if parts > MAX_MIME_PARTS:
        return f"too many MIME parts (at most {MAX_MIME_PARTS})"
    return None


def html_to_text(markup: str) -> str:
    """The text a person reads in the HTML `markup` (no tags, scripts or styles; entities decoded; a line for
    each paragraph, line break or table row), its first MAX_SIGNAL_TEXT bytes at most. Only as much of the
    markup is read as that takes."""
    parser = _TextOfHtml()
    for start in range(0, len(markup), _HTML_PIECE):
        parser.feed(markup[start : start + _HTML_PIECE])
        if parser.size > MAX_SIGNAL_TEXT:
            break
    parser.close()
    lines = (_SPACES.sub(" ", line).strip() for line in "".join(parser.pieces).splitlines())
    return _cut("\n".join(line for line in lines if line), MAX_SIGNAL_TEXT)


def email_signal_kind(subject: str, text: str, keywords: EmailKeywords | None) -> str:
    """The kind of signal (rules.SIGNAL_KINDS) an email with `subject` and `text` is, for a user with `keywords`.

    Without keywords (None, or every list empty) every email is a success. Otherwise the first kind of
    fail, start, success with a keyword found in the subject or the text, case ignored; log if none is.
    """
    if keywords is None or not (keywords.fail or keywords.start or keywords.success):
        return SUCCESS
    searched = f"{subject}\n{text}".casefold()
    for kind, words in ((FAIL, keywords.fail), (START, keywords.start), (SUCCESS, keywords.success)):
        if any(word.casefold() in searched for word in words):
            return kind
    return LOG


def signal_body(subject: str, text: str) -> str:
    """The body kept with an email's signal: `Subject: ...`, a blank line, then its text."""
    return f"Subject: {subject}\n\n{text}"


def tls_context(settings: EmailPingsConfig) -> ssl.SSLContext | None:
    """The server-side TLS context STARTTLS uses, from `settings`' certificate and key; None without them.

    ConfigError naming the key if a file cannot be read or is not a PEM certificate and its key.
    """
    if settings.tls_certificate is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_certificate, settings.tls_key)
    except ssl.SSLError as error:  # before OSError, of which it is one
        if error.reason == "KEY_VALUES_MISMATCH":
            problem = f"email_pings.tls_key: {settings.tls_key} is not the key of {settings.tls_certificate}"
        else:
            problem = (
                f"email_pings.tls_certificate: {settings.tls_certificate} and its key are not PEM ({error.reason})"
            )
        raise ConfigError([problem]) from None
    except OSError as error:
        raise ConfigError(
            [f"email_pings.tls_certificate: cannot read {settings.tls_certificate} or its key: {error.strerror}"]
        ) from None
    return context


class EmailPingListener:
    """The SMTP listener of `settings` (EmailPingsConfig): records email pings in `store` for the users of
    the settings in force (`live`), at `clock()` epoch seconds; STARTTLS with `context` if given.

    start() binds and begins to serve in threads of its own; stop(), from any other thread, ends them.
    """

    def __init__(
        self,
        settings: EmailPingsConfig,
        store: StoreContract,
        live: LiveSettings,
        clock: Callable[[], float],
        context: ssl.SSLContext | None = None,
        limits: ListenerLimits = ListenerLimits(),
        name_of: Callable[[str], str | None] = _no_uuids,
    ) -> None:
        """Ready to start; nothing bound yet. `name_of` gives the name of the check whose UUID it is given."""
        self._settings = settings
        self._store = store
        self._live = live
        self._clock = clock
        self._context = context
        self.limits = limits
        self._name_of = name_of
        self._wrong_recipients = WrongPasswordLimiter(
            WRONG_RECIPIENT_LIMIT, WRONG_RECIPIENT_WINDOW, WRONG_RECIPIENT_GLOBAL_LIMIT
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="email-pings", daemon=True)
        # One message read and recorded at a time, off the loop.
        self._recorder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="email-pings-recorder")
        self._server: asyncio.AbstractServer | None = None
        # Only the loop's thread touches these.
        self._sessions: set[_Session] = set()
        self._per_address: dict[str, int] = {}
        self._busy: set[asyncio.Future[None]] = set()
        self.port: int | None = None

    def start(self) -> None:
        """Listen on the settings' host and port; OSError if that cannot be done."""
        # aiosmtpd logs every command at INFO, the recipients' tokens among them.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self._thread.start()
        listening = asyncio.run_coroutine_threadsafe(
            self._loop.create_server(lambda: _Session(self), self._settings.host, self._settings.port), self._loop
        )
        try:
            self._server = listening.result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._recorder.shutdown()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "email pings: listening for mail to @%s on %s:%d (STARTTLS %s)",
            self._settings.domain,
            self._settings.host,
            self.port,
            "offered" if self._context is not None else "not offered",
        )

    def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Take no new session, let messages being received or recorded finish for up to `grace` seconds (a
        message whose signal was committed gets its 250), then close every session and end the threads."""
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._shut_down(grace), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
        # Messages still queued are not recorded: their sessions are closed, so their senders send them again.
        self._recorder.shutdown(cancel_futures=True)

    async def _shut_down(self, grace: float) -> None:
        assert self._server is not None
        self._server.close()
        if self._busy:
            await asyncio.wait(self._busy, timeout=grace)
        for session in list(self._sessions):
            session.close_with("421 4.3.2 the service is shutting down")
        # Each closed session's handler ends at the loop's next steps.
        for _ in range(3):
            await asyncio.sleep(0)

    def admit(self, session: "_Session", address: str) -> str | None:
        """Count a new session from `address`; the 421 that refuses it when the limits are reached, else None."""
        if len(self._sessions) >= self.limits.max_sessions:
            return "421 4.7.0 too many connections; try again later"
        if self._per_address.get(address, 0) >= self.limits.max_sessions_per_address:
            return f"421 4.7.0 too many connections from {address}; try again later"
        self._sessions.add(session)
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return None

    def release(self, session: "_Session", address: str) -> None:
        """Forget an admitted session that ended."""
        self._sessions.discard(session)
        left = self._per_address.pop(address, 1) - 1
        if left:
            self._per_address[address] = left

    def busy(self) -> "asyncio.Future[None]":
        """A future of the loop's, done when the caller says so: a message is being received or recorded."""
        future = self._loop.create_future()
        self._busy.add(future)
        future.add_done_callback(self._busy.discard)
        return future

    def check_recipient(self, address: str, client: str) -> str:
        """The user a recipient names, for a session from `client`; Refused with the reply otherwise (450 while
        `client` is refused for its wrong recipients, 550 for a wrong one, which counts)."""
        now = self._clock()
        refusal = self._wrong_recipients.refusal(client, now)
        if refusal is not None:
            source = "all addresses" if refusal.everyone else client
            seconds = math.ceil(refusal.until - now)
            raise Refused(f"450 4.7.1 too many unknown recipients from {source}; try again in {seconds} s")
        try:
            username = recipient_username(address, self._settings.domain, self._live.current.users, self._name_of)
        except Refused:
            count_wrong(self._wrong_recipients, client, now, "email recipients")
            raise
        self._wrong_recipients.record_right(client, now)
        return username

    async def accept_message(self, content: bytes, usernames: list[str]) -> str:
        """Read the message `content` and record its signal for each of `usernames` (on the recorder's thread);
        the reply to its DATA: 250 once committed, else the error, with nothing recorded."""
        return await self._loop.run_in_executor(self._recorder, self._record, content, usernames)

    def _record(self, content: bytes, usernames: list[str]) -> str:
        try:
            subject, text = message_content(content)
        except MalformedMessage as error:
            return f"554 5.6.0 {error}"
        users = self._live.current.users
        body = signal_body(subject, text)
        now = self._clock()
        recorded = []
        try:
            with self._store.ping_batch():
                for username in usernames:
                    user = users.get(username)
                    if user is None:  # removed by a reload since its RCPT
                        continue
                    kind = email_signal_kind(subject, text, user.email_keywords)
                    try:
                        self._store.record_ping(username, now, kind, None, body)
                    except UnknownUserError:
                        continue
                    recorded.append(f"{username} {kind}")
        except StoreUnavailableError as error:
            log.error("email ping for %s not recorded: %s", ", ".join(usernames), error)
            return "451 4.3.0 storage unavailable; try again later"
        if not recorded:
            return "550 5.1.1 no recipient is a configured user any more"
        return _shown(f"250 2.0.0 recorded: {', '.join(recorded)}", 500)


class _Handler:
    """aiosmtpd's hooks: each asks the listener, which decides."""

    def __init__(self, listener: EmailPingListener) -> None:
        self._listener = listener

    async def handle_EHLO(  # noqa: N802 (aiosmtpd's naming)
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # No AUTH is offered: the address is the secret, as a Healthchecks ping address is.
        session.host_name = hostname
        return [line for line in responses if not line[4:].startswith("AUTH")]

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 4.5.3 at most {MAX_RECIPIENTS} recipients a message"
        try:
            username = self._listener.check_recipient(address, _address_of(session))
        except Refused as refused:
            return refused.reply
        envelope.rcpt_tos.append(username)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        assert envelope.original_content is not None and isinstance(server, _Session)
        server.recording = True
        try:
            return await self._listener.accept_message(
                envelope.original_content, list(dict.fromkeys(envelope.rcpt_tos))
            )
        finally:
            server.recording = False

    async def handle_exception(self, error: Exception) -> str:
        log.error("email pings: a session failed: %r", error)
        return "451 4.3.0 internal error; try again later"


class _Session(SMTP):
    """One SMTP connection, counted and bounded by its listener (ListenerLimits)."""

    line_length_limit = MAX_LINE

    def __init__(self, listener: EmailPingListener) -> None:
        limits = listener.limits
        super().__init__(
            _Handler(listener),
            data_size_limit=MAX_MESSAGE_BYTES,
            enable_SMTPUTF8=True,
            hostname=listener._settings.domain,
            ident="Ping Listener",
            tls_context=listener._context,
            timeout=limits.command_timeout,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            command_call_limit=MAX_COMMAND_CALLS,
            loop=listener._loop,
        )
        self._listener = listener
        self._address = ""
        self._refusal: str | None = None
        self._admitted = False
        self._deadline: asyncio.TimerHandle | None = None
        # Whether a message of this session is being read and recorded (then its deadline waits for the 250).
        self.recording = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # the connection itself, not the TLS layer STARTTLS puts on it
            peer = transport.get_extra_info("peername")
            self._address = peer[0] if isinstance(peer, tuple) else str(peer)
            self._refusal = self._listener.admit(self, self._address)
            self._admitted = self._refusal is None
            if self._admitted:
                self._deadline = self.loop.call_later(self._listener.limits.session_deadline, self._deadline_reached)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._admitted:
            self._admitted = False
            self._listener.release(self, self._address)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            await self.push(self._refusal)
            self.close_with(None)
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str) -> None:
        """DATA, with the listener knowing that a message is being received and recorded until it is answered."""
        busy = self._listener.busy()
        try:
            await super().smtp_DATA(arg)
        finally:
            busy.set_result(None)

    def _deadline_reached(self) -> None:
        # A message being recorded gets its answer first: cut now, its sender would send it again. Reading and
        # recording one is bounded (MAX_MIME_PARTS, the store's busy timeout), so this waits a bounded time.
        if self.recording:
            self._deadline = self.loop.call_later(_RECORDING_CHECK, self._deadline_reached)
        else:
            self.close_with("421 4.4.2 session deadline reached")

    def close_with(self, reply: str | None) -> None:
        """Send `reply` (if any) and close the connection, at once."""
        if self.transport is not None and not self.transport.is_closing():
            if reply is not None:
                self.transport.write(reply.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
            self.transport.close()


def _address_of(session: Session) -> str:
    peer: Any = session.peer
    return peer[0] if isinstance(peer, tuple) else str(peer)


def _part_text(part: MIMEPart) -> str:
    """A text part's content as text: its charset decoded, or as UTF-8 with replacement if the charset is
    unknown or wrong."""
    try:
        content = part.get_content()
    except (LookupError, UnicodeError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def _cut(text: str, size: int) -> str:
    """`text`'s first `size` bytes in UTF-8 (a character cut in two is dropped)."""
    if len(text) * 4 <= size:
        return text
    return text.encode("utf-8", "surrogatepass")[:size].decode("utf-8", "ignore")


def _shown(text: str, limit: int = 80) -> str:
    """`text` as a reply may quote it: printable ASCII (anything else escaped), cut to `limit` characters."""
    shown = text.encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(character if character.isprintable() else "?" for character in shown)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class _TextOfHtml(html.parser.HTMLParser):
    """Collects the text of HTML fed to it, in `pieces`, and their `size` so far in characters."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.size = 0
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_ELEMENTS:
            self._hidden += 1
        elif tag in _LINE_ELEMENTS:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_ELEMENTS:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _LINE_ELEMENTS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.pieces.append(data.replace("\n", " "))
            self.size += len(data)
