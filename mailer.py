"""Alert emails: what they say (pure functions of data) and sending them over SMTP with implicit TLS, a
mandatory STARTTLS upgrade, or in plain text to a relay on this machine (SMTP_SECURITY), each conversation
within a whole-operation deadline (SMTP_DEADLINE) and reading at most outbound.ANSWER_LIMIT bytes of
any reply."""

import dataclasses
import functools
import logging
import re
import smtplib
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from typing import Protocol

import outbound
from config import SmtpSettings
from localtime import (
    duration_in_words,
    every,
    format_email_clock,
    format_email_time,
    logs_link,
    run_length,
    zone_sentence,
)
from records import QueuedEmail, Signal, UserState
from rules import BACK, FAILURE, RUN_TIMEOUT, SILENCE, START_LATE, SUCCESS, TOO_OFTEN, expected_at

log = logging.getLogger("ping_listener.mailer")

# How long each network operation may take (connecting, the TLS handshake, sending, reading a reply).
SMTP_TIMEOUT = 10.0
# How long one SMTP conversation may take in all (a drain step's: connecting, TLS, login and every email of
# the step; or one test email), however slowly the server answers: emails not settled by then are retried.
SMTP_DEADLINE = 60.0
FALLBACK_SENDER = "ping-listener@localhost"

# How much of a failing signal's body its failure email quotes: the end, where errors usually are.
QUOTED_OUTPUT_CHARS = 2000
# What every email calls its link to /logs, the signals of the day it is about.
LOGS_LINE = "That day's signals: "
# A digest's subject is cut to this many characters, its last one an ellipsis.
MAX_DIGEST_SUBJECT = 120
# How many email_frequency values _reminder keeps in words.
REMINDERS_KEPT = 256
# Control characters other than tab and newline would garble a plain-text email: shown as U+FFFD.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

SENT = "sent"
RETRY = "retry"
REJECTED = "rejected"
# Answers about authentication (RFC 4954): the setup's fault, whatever command they answer.
# 530 authentication required, 534 mechanism too weak, 535 credentials invalid, 538 encryption required.
AUTHENTICATION_CODES = frozenset({530, 534, 535, 538})


@dataclass(frozen=True, slots=True)
class SendResult:
    """The fate of one email: SENT, RETRY (try again later) or REJECTED (permanently)."""

    status: str
    error: str | None = None

    def brief(self) -> str:
        """What happened, without the SMTP server's words: "sent", "the SMTP server answered 535", "TimeoutError"."""
        if self.status == SENT:
            return "sent"
        reason = self.error or "unknown"
        code = reason[:3]
        if code.isdigit() and reason[3:4] in (" ", ""):
            return f"the SMTP server answered {code}" + (
                " (a login problem: check SMTP_LOGIN and SMTP_PASSWORD)" if int(code) in AUTHENTICATION_CODES else ""
            )
        return reason.partition(":")[0]


class MailSender(Protocol):
    """What the scheduler sends alert emails through: SmtpMailer, or a test's recording fake."""

    def new_message_id(self) -> str:
        """A fresh Message-ID header value for an email from this sender."""
        ...

    def send_all(self, emails: Iterable[QueuedEmail]) -> Iterator[tuple[QueuedEmail, SendResult]]:
        """Try to send each email; yield (email, SendResult) as each is settled, every email once."""
        ...


class TestEmailSender(Protocol):
    """What the testing page's "send test email" button sends through: SmtpMailer, or a test's fake."""

    def send_test(self, recipient: str, now: float) -> SendResult:
        """Send one test email to `recipient` at once; SENT if the SMTP server accepted it."""
        ...


def event_moment(user: UserState, kind: str, signal: Signal | None = None) -> float:
    """The moment an alert about `kind` (rules.SILENCE, FAILURE, RUN_TIMEOUT, START_LATE, TOO_OFTEN) or a recovery
    (rules.BACK) is about, whose day its logs link shows: the failing `signal`, the run's start, the return, the
    success that came too soon, or the last ping; the start of monitoring where there is none."""
    if kind == FAILURE and signal is not None:
        return signal.at
    moment = {RUN_TIMEOUT: user.run_started, BACK: user.back_at, TOO_OFTEN: user.too_often_at}.get(kind, user.last_ping)
    return moment if moment is not None else user.monitored_since


def compose_alert(user: UserState, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the alert for `user`'s silence, as (subject, body), written for people.

    A user watched by max_sleep is "NAME disconnection detected": how long it may be silent, its last ping
    (or that none was received since monitoring began, and when), what to check on a device. A scheduled
    user is "NAME missed its 02:00 run" (the expected time in its zone): the run's expected time, its
    schedule and grace, and what to check for a job (its cron entry, its last output). Durations are in
    words; every time is in one zone (the user's `tz`, else the service's), named once; the logs link
    points at the day of the last ping, or of the start of monitoring if none was received. The body ends
    with how often the alert repeats.
    """
    username = user.username
    seen = event_moment(user, SILENCE)
    zone = user.tz
    if user.last_ping is not None:
        last_ping_line = f"Last ping: {format_email_time(seen, zone)}"
    else:
        last_ping_line = f"No ping received since monitoring began at {format_email_time(seen, zone)}."
    expected = None if user.schedule is None else expected_at(user)
    if user.schedule is None:
        subject = f"{username} disconnection detected"
        opening = f"Ping Listener has heard nothing from {username} for more than {duration_in_words(user.max_sleep)}."
        check = (
            f"What to check: is {username} powered on and online, and is whatever pings for it (a cron job,"
            f" a script, a timer) still running? Its next ping ends this alert."
        )
    else:
        run = "run" if expected is None else f"{format_email_clock(expected, zone)} run"
        subject = f"{username} missed its {run}"
        when = "" if expected is None else f" expected at {format_email_time(expected, zone)[:16]}"
        opening = (
            f"{username} missed its run{when} (schedule {user.schedule}, with {duration_in_words(user.grace or 0.0)}"
            f" of grace): Ping Listener has heard nothing from it since."
        )
        check = (
            f"What to check: is the cron entry ({user.schedule}) that runs {username} still in place, and was its"
            f" machine up to run it? The job's last output (its log, or the mail cron sends) says whether it"
            f" started and why it did not report. Its next ping ends this alert."
        )
    body = (
        f"{opening}\n"
        f"\n"
        f"{last_ping_line}\n"
        f"{LOGS_LINE}{logs_link(server_root, username, seen)}\n"
        f"{zone_sentence(seen if expected is None else expected, zone)}\n"
        f"\n"
        f"{check}\n"
        f"\n"
        f"{_repeat_policy(user.email_frequency)}\n"
    )
    return subject, body


def compose_test_email(server: str) -> tuple[str, str]:
    """Subject and plain-text body of a test email sent through the SMTP server `server` (host:port)."""
    body = (
        f"This is a test email from Ping Listener, sent through {server}.\n"
        f"\n"
        f"If you are reading it, alert emails can reach this address too.\n"
    )
    return "Ping Listener test email", body


def compose_failure(user: UserState, signal: Signal, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the alert for `user`'s failure reported by `signal` (its latest fail), as
    (subject, body).

    It says when the failure was reported, its exit code and the duration of the run it closed, if
    any, links to that day's signals, and ends with the last QUOTED_OUTPUT_CHARS characters of the
    signal's body when it had one. With a fail_threshold above 1 it is `NAME failed N times in a row`; a
    success that closed a run shorter than min_runtime (rules.counts_as) is `NAME finished too fast`, saying
    how long the run took and was expected to take.
    """
    username = user.username
    too_fast = signal.kind == SUCCESS
    reported = f"{'Run finished' if too_fast else 'Failure reported'}: {format_email_time(signal.at, user.tz)}"
    if signal.exit_code is not None:
        reported += f", exit code {signal.exit_code}"
    if signal.duration is not None:
        reported += f", after a run of {run_length(signal.duration)}"
    if too_fast:
        reported += f", expected at least {duration_in_words(user.min_runtime or 0.0)}"
        subject, what = f"{username} finished too fast", f"{username} finished its run too fast to have done its work"
    else:
        subject, what = f"{username} failure reported", f"{username} reported a failure"
    if user.fail_threshold > 1:
        subject = f"{username} failed {user.fail_count} times in a row"
        what += (
            f": {user.fail_count} failures in a row since its last success (alerts wait for"
            f" {user.fail_threshold} in a row)"
        )
    body = (
        f"{what}.\n"
        f"\n"
        f"{reported}.\n"
        f"{LOGS_LINE}{logs_link(server_root, username, event_moment(user, FAILURE, signal))}\n"
        f"{zone_sentence(signal.at, user.tz)}\n"
        f"\n"
        f"You will be reminded {_reminder(user.email_frequency)} until {username} reports a success.\n"
    )
    if signal.body:
        quoted = _UNPRINTABLE.sub("\ufffd", signal.body[-QUOTED_OUTPUT_CHARS:])
        shown = (
            "Its output"
            if len(signal.body) <= QUOTED_OUTPUT_CHARS
            else f"The last {QUOTED_OUTPUT_CHARS} characters of its output"
        )
        body += f"\n{shown}:\n\n{quoted}\n"
    return subject, body


def compose_start_late(user: UserState, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the alert for scheduled `user` whose run has not started within its
    start_grace after its expected time, as (subject, body): `NAME did not start on time`."""
    username = user.username
    expected = expected_at(user)
    seen = event_moment(user, START_LATE)
    run = "its next run" if expected is None else f"its {format_email_clock(expected, user.tz)} run"
    body = (
        f"{username} has not started {run} within {duration_in_words(user.start_grace or 0.0)} of its time"
        f" (schedule {user.schedule}).\n"
        f"\n"
        f"Last contact: {format_email_time(seen, user.tz)}\n"
        f"{LOGS_LINE}{logs_link(server_root, username, seen)}\n"
        f"{zone_sentence(seen, user.tz)}\n"
        f"\n"
        f"Its start ends this alert; it still has {duration_in_words(user.grace or 0.0)} after its time to finish.\n"
        f"You will be reminded {_reminder(user.email_frequency)} until it starts.\n"
    )
    return f"{username} did not start on time", body


def compose_flapping(user: UserState, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the one notice that `user` is flapping, as (subject, body): `NAME is
    flapping`, saying that no alert or recovery follows until it has been stable for flap_quiet."""
    username = user.username
    seen = event_moment(user, SILENCE)
    body = (
        f"{username} went down and came back more than {user.flap_threshold} times within an hour.\n"
        f"\n"
        f"No alert or recovery about it will follow until it has been stable (no new outage) for"
        f" {duration_in_words(user.flap_quiet)}; then, if it is down, it is alerted as usual.\n"
        f"{LOGS_LINE}{logs_link(server_root, username, seen)}\n"
    )
    return f"{username} is flapping", body


def compose_too_often(user: UserState, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the notice that `user` sent two successes closer than its min_interval,
    as (subject, body): `NAME pinged too often`, saying how close they were."""
    username = user.username
    at = event_moment(user, TOO_OFTEN)
    body = (
        f"{username} pinged twice within {duration_in_words(round(user.too_often_gap or 0.0, 3))}, expected at most"
        f" once every {duration_in_words(user.min_interval or 0.0)}: is it misconfigured?\n"
        f"\n"
        f"Second ping: {format_email_time(at, user.tz)}\n"
        f"{LOGS_LINE}{logs_link(server_root, username, at)}\n"
        f"{zone_sentence(at, user.tz)}\n"
        f"\n"
        f"You will be told {_reminder(user.email_frequency)} at most while it goes on.\n"
    )
    return f"{username} pinged too often", body


def compose_run_timeout(user: UserState, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the alert for `user`'s run that outlasted its max_runtime, as (subject, body)."""
    username = user.username
    started = event_moment(user, RUN_TIMEOUT)
    body = (
        f"{username} started a run and has not reported its end within the"
        f" {duration_in_words(user.max_runtime or 0)} it is allowed.\n"
        f"\n"
        f"Run started: {format_email_time(started, user.tz)}\n"
        f"{LOGS_LINE}{logs_link(server_root, username, started)}\n"
        f"{zone_sentence(started, user.tz)}\n"
        f"\n"
        f"You will be reminded {_reminder(user.email_frequency)} while the run goes on.\n"
    )
    return f"{username} did not finish in time", body


def compose_recovery(user: UserState, server_root: str) -> tuple[str, str]:
    """Subject and plain-text body of the email saying that `user` is back, as (subject, body).

    It says when the alerted outage went down (user.down_since), when the user came back (its back_at)
    and for how long it was down, and links to the signals of the day it came back.
    """
    username = user.username
    back = event_moment(user, BACK)
    down = user.down_since if user.down_since is not None else back
    body = (
        f"{username} is back.\n"
        f"\n"
        f"Went down: {format_email_time(down, user.tz)}\n"
        f"Came back: {format_email_time(back, user.tz)}\n"
        f"Down for: {run_length(back - down)}\n"
        f"{LOGS_LINE}{logs_link(server_root, username, back)}\n"
        f"{zone_sentence(back, user.tz)}\n"
    )
    return f"{username} is back", body


def by_recipient(emails: Iterable[QueuedEmail]) -> list[list[QueuedEmail]]:
    """`emails` grouped by recipient, each group in the order given, groups in the order of their first email.

    What the outbox drain sends as one email each: a group of one as itself, a larger one as a digest.
    """
    groups: dict[str, list[QueuedEmail]] = {}
    for email in emails:
        groups.setdefault(email.recipient, []).append(email)
    return list(groups.values())


def collapse(emails: Iterable[QueuedEmail]) -> list[tuple[QueuedEmail, tuple[int, ...]]]:
    """What to write of `emails` (queued rows for one recipient): each email to write with the ids of the rows
    it carries (its own among them), in queue order (by id). Every row is carried by exactly one.

    A device's rows are read in queue order. An alert carries the unsent alerts of its kind before it
    (rules.SILENCE, FAILURE or RUN_TIMEOUT): a reminder adds nothing to an unsent alert, so only the
    latest is written. A recovery (rules.BACK) carries every unsent alert of the outage it ends: an
    outage already over is told as what it is, its recovery, which says when it went down. A written
    email counts the most attempts of the rows it carries, so that their back-off goes on.
    """
    by_device: dict[str, list[QueuedEmail]] = {}
    for email in emails:
        by_device.setdefault(email.username, []).append(email)
    written = []
    for rows in by_device.values():
        unsent: dict[str, list[QueuedEmail]] = {}
        for email in sorted(rows, key=lambda row: row.id):
            if email.kind == BACK:
                written.append(_carrying(email, [row for kind in unsent.values() for row in kind] + [email]))
                unsent = {}
            else:
                unsent.setdefault(email.kind, []).append(email)
        written.extend(_carrying(kind[-1], kind) for kind in unsent.values())
    return sorted(written, key=lambda item: item[0].id)


def _carrying(email: QueuedEmail, rows: Sequence[QueuedEmail]) -> tuple[QueuedEmail, tuple[int, ...]]:
    attempts = max(row.attempts for row in rows)
    return dataclasses.replace(email, attempts=attempts), tuple(sorted(row.id for row in rows))


def digest_subject(emails: Sequence[QueuedEmail]) -> str:
    """The subject of a digest of `emails`: `N devices need attention: A, B, C` (N distinct devices, in
    alphabetical order), or `N devices are back: ...` when all are recoveries; cut with an ellipsis to
    MAX_DIGEST_SUBJECT characters. One device is "1 device needs attention" (or "is back")."""
    names = sorted({email.username for email in emails})
    back = all(email.kind == BACK for email in emails)
    if len(names) == 1:
        what = "device is back" if back else "device needs attention"
    else:
        what = "devices are back" if back else "devices need attention"
    subject = f"{len(names)} {what}: {', '.join(names)}"
    if len(subject) > MAX_DIGEST_SUBJECT:
        subject = subject[: MAX_DIGEST_SUBJECT - 1] + "\u2026"
    return subject


def digest(emails: Sequence[QueuedEmail], message_id: str, created_at: float) -> QueuedEmail:
    """The one email that carries `emails` (two or more, for one recipient) as a digest, dated `created_at`.

    Its body holds each email's subject and text in turn, by device name and then in the order they were
    queued. Its id is the first email's, and its attempts the most any of them had.
    """
    ordered = sorted(emails, key=lambda email: (email.username, email.id))
    parts = [f"{len(emails)} alert emails for you were due at once; here they are together.\n"]
    for email in ordered:
        parts.append(f"\n===== {email.subject} =====\n\n{email.body.rstrip()}\n")
    return QueuedEmail(
        id=emails[0].id,
        recipient=emails[0].recipient,
        subject=digest_subject(emails),
        body="".join(parts),
        message_id=message_id,
        queued_at=created_at,
        attempts=max(email.attempts for email in emails),
    )


def build_message(email: QueuedEmail, sender: str) -> EmailMessage:
    """The RFC 5322 message for a queued email from `sender` (its From header), dated when it was queued."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = email.recipient
    message["Subject"] = email.subject
    message["Date"] = formatdate(email.queued_at, localtime=True)
    message["Message-ID"] = email.message_id
    message.set_content(email.body)
    return message


def from_header(sender: str, name: str) -> str:
    """The From header for `sender`: with the display name `name`, unless `sender` has one or `name` is empty."""
    own_name, address = parseaddr(sender)
    return sender if own_name or not name or not address else formataddr((name, address))


class SmtpSetupError(Exception):
    """The SMTP server cannot be used as configured (unreachable, TLS, login); the message says why."""


class SmtpMailer:
    """Sends emails through one SMTP server, as SMTP_SECURITY says: over implicit TLS ("ssl"), after a
    mandatory STARTTLS upgrade ("starttls"), or in plain text to a relay on this machine ("none"). In
    both TLS modes the certificate is checked against the system CAs and the host name."""

    def __init__(self, smtp: SmtpSettings, timeout: float = SMTP_TIMEOUT, deadline: float = SMTP_DEADLINE) -> None:
        """Use `smtp`; `timeout` bounds every network operation and `deadline` every conversation, in seconds."""
        self._smtp = smtp
        self._timeout = timeout
        self._deadline = deadline
        self.sender = smtp.sender or FALLBACK_SENDER
        self.from_header = from_header(self.sender, smtp.sender_name)
        self.server = f"{smtp.host}:{smtp.port}"
        self._message_id_domain = parseaddr(self.sender)[1].rpartition("@")[2] or "localhost"
        # Built once: it reads SSL_CERT_FILE and the system's CA store.
        self._ssl_context = outbound.tls_context()

    def new_message_id(self) -> str:
        """A fresh Message-ID header value for an email from this sender."""
        return make_msgid(domain=self._message_id_domain)

    def send_all(self, emails: Iterable[QueuedEmail]) -> Iterator[tuple[QueuedEmail, SendResult]]:
        """Send `emails`; yield (email, SendResult) as each is settled.

        A 5xx answer to MAIL, RCPT or DATA about the message or its recipient rejects that email,
        as does an email this server can never take (an address it cannot encode); a 4xx answer
        retries it. A connection that breaks while an email is sent retries that email, and the
        others go on over a new connection, so one troublesome email cannot hold back the rest.
        A fault of the setup retries every email not yet sent, logged as an error: failing to
        connect, TLS, a refused login, or an answer about authentication (530, 534, 535, 538, or
        a 5xx to MAIL or RCPT from a server that offers a login none was made to). The whole
        conversation ends within the deadline: the emails not settled by then are retried.
        """
        pending = list(emails)
        deadline = outbound.Deadline(self._deadline)
        while pending:
            sending = False
            try:
                with self._connect(deadline) as connection:
                    # A 421 answer closes the connection: the next email needs a new one.
                    while pending and connection.sock is not None:
                        sending = True
                        result = self._send_one(connection, pending[0])
                        sending = False
                        yield pending.pop(0), result
            except _SetupFault as fault:
                log.error(
                    "cannot send email through %s: %s (%d email(s) stay queued and are retried)",
                    self.server,
                    fault.result.error,
                    len(pending),
                )
                for email in pending:
                    yield email, fault.result
                return
            except (OSError, smtplib.SMTPException) as error:
                result = SendResult(RETRY, _explain(error, deadline))
                if sending:
                    log.warning("connection lost while sending email %d: %s", pending[0].id, result.error)
                    yield pending.pop(0), result
                    continue
                if pending:
                    log.error(
                        "cannot send email through %s: %s (%d email(s) stay queued and are retried)",
                        self.server,
                        result.error,
                        len(pending),
                    )
                for email in pending:
                    yield email, result
                return

    def send_test(self, recipient: str, now: float) -> SendResult:
        """Send one test email to `recipient` at once, outside the outbox; SENT if the server accepted it.

        Any other result's `error` is the server's answer or the connection problem. Logs nothing:
        the caller tells the person.
        """
        subject, body = compose_test_email(self.server)
        email = QueuedEmail(0, recipient, subject, body, self.new_message_id(), now, 0)
        deadline = outbound.Deadline(self._deadline)
        try:
            with self._connect(deadline) as connection:
                return self._send_one(connection, email)
        except _SetupFault as fault:
            return fault.result
        except (OSError, smtplib.SMTPException) as error:
            return SendResult(RETRY, _explain(error, deadline))

    def check_login(self) -> str:
        """Connect and log in (if SMTP_LOGIN is set) once, sending nothing; say what was done.

        Raises SmtpSetupError with the server's answer or the connection problem.
        """
        deadline = outbound.Deadline(self._deadline)
        try:
            with self._connect(deadline):
                pass
        except (OSError, smtplib.SMTPException) as error:
            raise SmtpSetupError(_explain(error, deadline)) from None
        if self._smtp.login:
            return f"logged in to {self.server} as {self._smtp.login}"
        return f"connected to {self.server} (no login: SMTP_LOGIN is not set)"

    def _connect(self, deadline: outbound.Deadline) -> smtplib.SMTP:
        """A connection as SMTP_SECURITY says, logged in (if SMTP_LOGIN is set) and ready for MAIL, whose every
        operation ends by `deadline`."""
        implicit_tls = self._ssl_context if self._smtp.security == "ssl" else None
        connection = _BoundedSmtp(self._smtp.host, self._smtp.port, self._timeout, deadline, implicit_tls)
        try:
            if self._smtp.security == "starttls":
                connection.ehlo()
                # Never a fallback to plain text: a server (or someone in between) that does not offer
                # STARTTLS gets nothing, not even the login.
                if not connection.has_extn("starttls"):
                    raise NoStartTlsError("the SMTP server does not offer STARTTLS; nothing was sent in plain text")
                connection.starttls(context=self._ssl_context)
                connection.ehlo()
            if self._smtp.login:
                connection.login(self._smtp.login, self._smtp.password or "")
            else:
                connection.ehlo_or_helo_if_needed()
        except BaseException:
            connection.close()
            raise
        return connection

    def _send_one(self, connection: smtplib.SMTP, email: QueuedEmail) -> SendResult:
        try:
            message = build_message(email, self.from_header)
        except ValueError as error:
            return SendResult(REJECTED, f"cannot build the message: {error}")
        try:
            connection.send_message(message, self.sender, [email.recipient])
        except smtplib.SMTPRecipientsRefused as error:
            code, text = next(iter(error.recipients.values()))
            return self._refused(connection, code, text, envelope=True)
        except smtplib.SMTPSenderRefused as error:
            return self._refused(connection, error.smtp_code, error.smtp_error, envelope=True)
        except smtplib.SMTPDataError as error:
            return self._refused(connection, error.smtp_code, error.smtp_error, envelope=False)
        except smtplib.SMTPNotSupportedError as error:
            return SendResult(REJECTED, f"the SMTP server cannot take this message: {error}")
        return SendResult(SENT)

    def _refused(self, connection: smtplib.SMTP, code: int, text: bytes | str, envelope: bool) -> SendResult:
        """The result of an SMTP refusal; raises _SetupFault if it is about authentication, not the email.

        `envelope` says whether it answered MAIL or RCPT (rather than DATA): a server that offers
        a login, when none was made, may refuse those because of it.
        """
        answer = _answer(code, text)
        no_login = not self._smtp.login and connection.has_extn("auth")
        if code in AUTHENTICATION_CODES or (envelope and no_login and 500 <= code < 600):
            hint = " (SMTP_LOGIN is not set, and this server offers a login)" if no_login else ""
            raise _SetupFault(SendResult(RETRY, answer + hint))
        return SendResult(REJECTED if 500 <= code < 600 else RETRY, answer)


class _BoundedSmtp(smtplib.SMTP):
    """smtplib's client over an outbound.BoundedSocket: every operation ends by `deadline`, and at most
    outbound.ANSWER_LIMIT bytes of a reply are read. TLS from the first byte with `implicit_tls`, a context
    from outbound.tls_context() (so is the one given to starttls)."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        deadline: outbound.Deadline,
        implicit_tls: ssl.SSLContext | None,
    ) -> None:
        self._deadline = deadline
        self._implicit_tls = implicit_tls
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host, port, timeout):
        # smtplib's hook for making the socket (SMTP_SSL overrides it the same way).
        connection = outbound.connect((host, port), timeout, self._deadline)
        if self._implicit_tls is None:
            return connection
        wrapped = self._implicit_tls.wrap_socket(connection, server_hostname=host)
        outbound.adopt(wrapped, connection)
        return wrapped

    def starttls(self, *args, **kwargs):
        """smtplib's starttls, the TLS socket bounded as the plain one was."""
        plain = self.sock
        reply = super().starttls(*args, **kwargs)
        if plain is not None and self.sock is not None:
            outbound.adopt(self.sock, plain)
        return reply


class NoStartTlsError(smtplib.SMTPException):
    """SMTP_SECURITY is starttls and the server does not offer STARTTLS: a fault of the connection, retried."""


class _SetupFault(Exception):
    """An answer that every email would get alike: retry them all (SendResult `result`)."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.error)
        self.result = result


def _answer(code: int, message: bytes | str) -> str:
    return f"{code} {message.decode(errors='replace') if isinstance(message, bytes) else message}"


def _describe(error):
    if isinstance(error, smtplib.SMTPResponseException):
        return _answer(error.smtp_code, error.smtp_error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _explain(error, deadline):
    """What went wrong, for the log and the outbox's last_error: the server's answer or the problem, and a hint;
    first of all that the conversation ran out of time if `deadline` has passed."""
    if deadline.expired():
        return f"the SMTP conversation did not end within its {deadline.seconds:g} s deadline ({_describe(error)})"
    if isinstance(error, smtplib.SMTPAuthenticationError):
        hint = " (check SMTP_LOGIN and SMTP_PASSWORD)"
    elif isinstance(error, ssl.SSLCertVerificationError):
        hint = " (the server's certificate is not trusted; SSL_CERT_FILE can name a CA file to trust)"
    elif isinstance(error, ssl.SSLError):
        hint = " (with SMTP_SECURITY=ssl, SMTP_PORT must be a port that speaks TLS from the first byte, such as 465)"
    else:
        hint = ""
    return _describe(error) + hint


def _repeat_policy(email_frequency):
    return f"You will be reminded {_reminder(email_frequency)} while it stays silent."


# An alert's email_frequency in words is the same few for a whole fleet, and written once per late user in each
# step of the absence listener: kept (a pure function of the number).
@functools.lru_cache(maxsize=REMINDERS_KEPT)
def _reminder(email_frequency):
    return every(email_frequency) if email_frequency else "at every check of the service"
