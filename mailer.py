"""Alert emails: what they say (pure functions of data) and sending them over SMTP with implicit TLS."""

import logging
import re
import smtplib
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Protocol

from config import SmtpSettings
from localtime import format_local_time, logs_link
from store import QueuedEmail, Signal, UserState

log = logging.getLogger("ping_listener.mailer")

SMTP_TIMEOUT = 10.0
FALLBACK_SENDER = "ping-listener@localhost"

# How much of a failing signal's body its failure email quotes: the end, where errors usually are.
QUOTED_OUTPUT_CHARS = 2000
# Control characters other than tab and newline would garble a plain-text email: shown as U+FFFD.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

SENT = "sent"
RETRY = "retry"
REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class SendResult:
    """The fate of one email: SENT, RETRY (try again later) or REJECTED (permanently)."""

    status: str
    error: str | None = None


class MailSender(Protocol):
    """What the scheduler sends alert emails through: SmtpMailer, or a test's recording fake."""

    def new_message_id(self) -> str:
        """A fresh Message-ID header value for an email from this sender."""
        ...

    def send_all(self, emails: Iterable[QueuedEmail]) -> Iterator[tuple[QueuedEmail, SendResult]]:
        """Try to send each email; yield (email, SendResult) as each is settled, every email once."""
        ...


def compose_alert(user: UserState, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the alert for `user`, as (subject, body).

    Times are shown in the local time zone (TZ); the logs link points at the day of the last ping,
    or of the start of monitoring if none was received.
    """
    username = user.username
    if user.last_ping is not None:
        seen = user.last_ping
        last_ping_line = f"Last ping: {format_local_time(seen)}"
    else:
        seen = user.monitored_since
        last_ping_line = f"No ping received since monitoring began at {format_local_time(seen)}."
    body = (
        f"Ping Listener has heard nothing from {username} for longer than its max_sleep"
        f" of {_seconds(user.max_sleep)}.\n"
        f"\n"
        f"{last_ping_line}\n"
        f"Pings of that day: {logs_link(server_root, username, seen)}\n"
        f"\n"
        f"This alert repeats at most every {_seconds(user.email_frequency)} while the silence lasts.\n"
    )
    return f"{username} disconnection detected", body


def compose_failure(user: UserState, signal: Signal, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the alert for `user`'s failure reported by `signal`, as (subject, body).

    It says when the failure was reported, its exit code and the duration of the run it closed, if
    any, links to that day's signals, and ends with the last QUOTED_OUTPUT_CHARS characters of the
    signal's body when it had one.
    """
    username = user.username
    reported = f"Failure reported: {format_local_time(signal.at)}"
    if signal.exit_code is not None:
        reported += f", exit code {signal.exit_code}"
    if signal.duration is not None:
        reported += f", after a run of {_elapsed(signal.duration)}"
    body = (
        f"{username} reported a failure.\n"
        f"\n"
        f"{reported}.\n"
        f"Signals of that day: {logs_link(server_root, username, signal.at)}\n"
        f"\n"
        f"This alert repeats at most every {_seconds(user.email_frequency)} until {username} reports a success.\n"
    )
    if signal.body:
        quoted = _UNPRINTABLE.sub("\ufffd", signal.body[-QUOTED_OUTPUT_CHARS:])
        shown = (
            "Its output"
            if len(signal.body) <= QUOTED_OUTPUT_CHARS
            else f"The last {QUOTED_OUTPUT_CHARS} characters of its output"
        )
        body += f"\n{shown}:\n\n{quoted}\n"
    return f"{username} failure reported", body


def compose_run_timeout(user: UserState, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the alert for `user`'s run that outlasted its max_runtime, as (subject, body)."""
    username = user.username
    started = user.run_started if user.run_started is not None else user.monitored_since
    body = (
        f"{username} started a run and has not reported its end within its max_runtime"
        f" of {_seconds(user.max_runtime or 0)}.\n"
        f"\n"
        f"Run started: {format_local_time(started)}\n"
        f"Signals of that day: {logs_link(server_root, username, started)}\n"
        f"\n"
        f"This alert repeats at most every {_seconds(user.email_frequency)} while the run goes on.\n"
    )
    return f"{username} did not finish in time", body


def compose_recovery(user: UserState, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the email saying that `user` is back, as (subject, body).

    It says when the alerted outage went down (user.down_since), when the user came back (its back_at)
    and for how long it was down, and links to the signals of the day it came back.
    """
    username = user.username
    back = user.back_at if user.back_at is not None else user.monitored_since
    down = user.down_since if user.down_since is not None else back
    body = (
        f"{username} is back.\n"
        f"\n"
        f"Went down: {format_local_time(down)}\n"
        f"Came back: {format_local_time(back)}\n"
        f"Down for: {_elapsed(back - down)}\n"
        f"Signals of that day: {logs_link(server_root, username, back)}\n"
    )
    return f"{username} is back", body


def build_message(email: QueuedEmail, sender: str) -> EmailMessage:
    """The RFC 5322 message for a queued email, dated when it was queued."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = email.recipient
    message["Subject"] = email.subject
    message["Date"] = formatdate(email.queued_at, localtime=True)
    message["Message-ID"] = email.message_id
    message.set_content(email.body)
    return message


class SmtpMailer:
    """Sends emails through one SMTP-over-SSL server, certificate checked against the system CAs."""

    def __init__(self, smtp: SmtpSettings, timeout: float = SMTP_TIMEOUT) -> None:
        """Use `smtp`; `timeout` bounds every network operation, in seconds."""
        self._smtp = smtp
        self._timeout = timeout
        self.sender = smtp.sender or FALLBACK_SENDER
        self._message_id_domain = parseaddr(self.sender)[1].rpartition("@")[2] or "localhost"
        # Built once: it reads SSL_CERT_FILE and the system's CA store.
        self._ssl_context = ssl.create_default_context()

    def new_message_id(self) -> str:
        """A fresh Message-ID header value for an email from this sender."""
        return make_msgid(domain=self._message_id_domain)

    def send_all(self, emails: Iterable[QueuedEmail]) -> Iterator[tuple[QueuedEmail, SendResult]]:
        """Send `emails`; yield (email, SendResult) as each is settled.

        A 5xx answer to MAIL, RCPT or DATA rejects that email, as does an email this server can
        never take (an address it cannot encode); a 4xx answer retries it. A connection that breaks
        while an email is sent retries that email, and the others go on over a new connection, so
        one troublesome email cannot hold back the rest. Failing to connect or log in is a fault
        of the setup: it retries every email not yet tried.
        """
        pending = list(emails)
        while pending:
            sending = False
            try:
                with self._connect() as connection:
                    # A 421 answer closes the connection: the next email needs a new one.
                    while pending and connection.sock is not None:
                        sending = True
                        result = self._send_one(connection, pending[0])
                        sending = False
                        yield pending.pop(0), result
            except (OSError, smtplib.SMTPException) as error:
                reason = _describe(error)
                if sending:
                    log.warning("connection lost while sending email %d: %s", pending[0].id, reason)
                    yield pending.pop(0), SendResult(RETRY, reason)
                    continue
                if pending:
                    log.error(
                        "cannot send email through %s:%s: %s (%d email(s) stay queued)",
                        self._smtp.host,
                        self._smtp.port,
                        reason,
                        len(pending),
                    )
                for email in pending:
                    yield email, SendResult(RETRY, reason)
                return

    def _connect(self):
        connection = smtplib.SMTP_SSL(
            self._smtp.host, self._smtp.port, timeout=self._timeout, context=self._ssl_context
        )
        try:
            if self._smtp.login:
                connection.login(self._smtp.login, self._smtp.password or "")
        except BaseException:
            connection.close()
            raise
        return connection

    def _send_one(self, connection, email):
        try:
            message = build_message(email, self.sender)
        except ValueError as error:
            return SendResult(REJECTED, f"cannot build the message: {error}")
        try:
            connection.send_message(message, self.sender, [email.recipient])
        except smtplib.SMTPRecipientsRefused as error:
            code, text = next(iter(error.recipients.values()))
            return _refused(code, text)
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
            return _refused(error.smtp_code, error.smtp_error)
        except smtplib.SMTPNotSupportedError as error:
            return SendResult(REJECTED, f"the SMTP server cannot take this message: {error}")
        return SendResult(SENT)


def _refused(code, message):
    text = f"{code} {message.decode(errors='replace') if isinstance(message, bytes) else message}"
    return SendResult(REJECTED if 500 <= code < 600 else RETRY, text)


def _describe(error):
    if isinstance(error, smtplib.SMTPResponseException):
        return _refused(error.smtp_code, error.smtp_error).error
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _seconds(value):
    # Ten significant digits: config caps durations at 1e9 s, so this never turns to "1.2e+06".
    return f"{value:.10g} seconds" if value != 1 else "1 second"


def _elapsed(seconds):
    # A measured time, for people: whole seconds, larger units when it is long (7 h 3 min 5 s).
    total = max(round(seconds), 0)
    if total < 60:
        return "1 second" if total == 1 else f"{total} seconds"
    parts = [(total // 86400, "d"), (total // 3600 % 24, "h"), (total // 60 % 60, "min"), (total % 60, "s")]
    return " ".join(f"{value} {unit}" for value, unit in parts if value)
