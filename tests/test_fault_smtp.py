"""SMTP faults: the absence listener keeps time, pings are answered, no email is lost, none is retried forever.

The real service runs as a subprocess; an SMTP server is down, silent, answering 4xx or 5xx, or
dropping the connection in DATA, then recovers; or the service has no login or a wrong password for it
(530, 535: faults of the setup, never of the email) until a restart with the right one.
"""

import collections
import concurrent.futures
import itertools

import pytest

from config import LiveSettings, SmtpSettings
from mailer import SMTP_TIMEOUT, SmtpMailer
from rules import retry_delay
from scheduler import Scheduler
from support import (
    SLACK,
    SMTP_LOGIN,
    T0,
    Clock,
    SilentSmtpServer,
    TlsSmtpServer,
    Trickler,
    delivered_subjects,
    free_port,
    make_settings,
    query,
    smtp_mailer,
    wait_for_delivered,
    wait_until,
    write_settings,
)

# pi is late first and its alert meets the fault; nas is late while the fault lasts; probe pings.
USERS = {
    "pi": {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600},
    "nas": {"monitor": True, "max_sleep": 1.5, "email_frequency": 3600},
    "probe": {"monitor": False, "max_sleep": 0, "email_frequency": 0},
}
BASE_FREQUENCY = 0.05
# How late nas's alert may be recorded: the absence listener's next step, every base_frequency, and what a
# loaded machine may add. Were the listener waiting on SMTP, a silent server would delay it by SMTP_TIMEOUT.
ON_TIME = BASE_FREQUENCY + SLACK
assert ON_TIME < SMTP_TIMEOUT

OUTBOX_SQL = (
    "SELECT users.username, outbox.status, outbox.attempts FROM outbox"
    " JOIN alerts ON alerts.id = outbox.alert_id JOIN users ON users.id = alerts.user_id ORDER BY outbox.id"
)


def outbox(db_path):
    """(username, status, attempts) of each email in the outbox, oldest first."""
    return query(db_path, OUTBOX_SQL)


def lateness_of_alert(db_path, username):
    """Seconds between the moment `username` became late and its first recorded alert, or None if none."""
    rows = query(
        db_path,
        "SELECT min(alerts.at) - (users.monitored_since + users.max_sleep) FROM alerts"
        " JOIN users ON users.id = alerts.user_id WHERE users.username = ?",
        (username,),
    )
    return rows[0][0]


class SmtpFault:
    """An SMTP server on `port` that fails in one way until recover() makes it accept mail.

    `env` is what the service's environment needs for the fault (a setup fault is in the service's
    SMTP settings, and a restart without it recovers).
    """

    def __init__(self, kind, ca, smtp_server):
        self.kind = kind
        self._ca = ca
        self._silent = None
        self._started = []
        self.server = smtp_server
        self.env = {}
        if kind == "530 no login":
            self.port = smtp_server.port
            self.env = {"SMTP_LOGIN": "", "SMTP_PASSWORD": "", "SMTP_FROM": SMTP_LOGIN}
        elif kind == "535 wrong password":
            self.port = smtp_server.port
            self.env = {"SMTP_PASSWORD": "not the password"}
        elif kind == "down":
            self.port = free_port()
        elif kind == "silent":
            self._silent = SilentSmtpServer()
            self.port = self._silent.port
        else:
            self.port = smtp_server.port
            if kind == "4xx":
                smtp_server.rcpt_reply = "451 4.3.0 mailbox temporarily unavailable"
            else:
                smtp_server.drop_in_data = True

    def has_met(self, db_path):
        """Whether pi's email met the fault: a failed attempt recorded, or an SMTP conversation hanging."""
        attempts = query(db_path, "SELECT attempts FROM outbox WHERE id = 1")
        if self.kind == "silent":
            return attempts == [(0,)] and len(self._silent.connections) > 0
        return bool(attempts) and attempts[0][0] >= 1

    def recover(self):
        """Make the SMTP server on `port` accept mail; return it."""
        if self.kind in ("down", "silent"):
            if self._silent:
                self._silent.stop()
                self._silent = None
            self.server = TlsSmtpServer(self._ca).start(self.port)
            self._started.append(self.server)
        self.server.rcpt_reply = None
        self.server.drop_in_data = False
        return self.server

    def close(self):
        """Stop what this fault started."""
        if self._silent:
            self._silent.stop()
        for server in self._started:
            server.stop()


@pytest.fixture
def smtp_fault(request, ca, smtp_server):
    """The SmtpFault named by the test's parameter."""
    fault = SmtpFault(request.param, ca, smtp_server)
    yield fault
    fault.close()


@pytest.mark.parametrize(
    "smtp_fault", ["down", "silent", "4xx", "drop in DATA", "530 no login", "535 wrong password"], indirect=True
)
def test_alerts_are_detected_on_time_during_an_smtp_fault_and_delivered_once_after_it_and_a_restart(
    tmp_path, start_server, smtp_fault
):
    settings = write_settings(tmp_path / "settings.json", USERS, base_frequency=BASE_FREQUENCY)
    db_path = tmp_path / "ping_listener.db"
    faulty = start_server(settings, SMTP_PORT=str(smtp_fault.port), **smtp_fault.env)
    wait_until(lambda: smtp_fault.has_met(db_path), message=f"pi's email meeting the SMTP fault ({smtp_fault.kind})")
    assert faulty.get("/ping?username=probe")[0] == 200

    lateness = wait_until(lambda: lateness_of_alert(db_path, "nas"), message="nas alerted")
    assert lateness < ON_TIME, f"nas alerted {lateness:.2f} s after it became late, during SMTP fault {smtp_fault.kind}"
    if smtp_fault.kind == "silent":
        # Proof that the listener did not wait on SMTP: pi's conversation had not even ended.
        assert query(db_path, "SELECT attempts FROM outbox WHERE id = 1") == [(0,)]
    assert [(username, status) for username, status, _ in outbox(db_path)] == [("pi", "queued"), ("nas", "queued")]
    if smtp_fault.kind.startswith("53"):
        # Loudly: the service's log says the emails stay queued, with the server's answer.
        assert (
            f"ERROR ping_listener.mailer: cannot send email through 127.0.0.1:{smtp_fault.port}: {smtp_fault.kind[:3]} "
            in (faulty.log())
        )
    assert faulty.stop() == 0, faulty.log()

    smtp_server = smtp_fault.recover()
    recovered = start_server(settings, SMTP_PORT=str(smtp_fault.port))
    # Both due at once after the restart: one digest of the two, or two emails if they came apart.
    wait_for_delivered(smtp_server, 2)
    assert recovered.stop() == 0
    subjects = collections.Counter(delivered_subjects(smtp_server.messages))
    assert subjects == {"pi disconnection detected": 1, "nas disconnection detected": 1}, (
        f"{sum(subjects.values())} email(s) delivered after SMTP fault {smtp_fault.kind}: {dict(subjects)}"
    )
    assert [status for _, status, _ in outbox(db_path)] == ["sent", "sent"]


def test_a_permanently_rejected_email_is_marked_failed_and_never_retried_even_after_a_restart(
    tmp_path, start_server, smtp_server
):
    smtp_server.rcpt_reply = "550 5.1.1 no such user"
    settings = tmp_path / "settings.json"
    db_path = tmp_path / "ping_listener.db"
    rejecting = start_server(write_settings(settings, USERS, base_frequency=BASE_FREQUENCY))
    wait_until(lambda: outbox(db_path) == [("pi", "failed", 1), ("nas", "failed", 1)], message="both emails failed")
    lateness = lateness_of_alert(db_path, "nas")
    assert lateness < ON_TIME, f"nas alerted {lateness:.2f} s after it became late, while SMTP answered 5xx"
    assert rejecting.get("/ping?username=probe")[0] == 200
    assert rejecting.stop() == 0

    # The server accepts mail again; a new user's alert shows the outbox is being drained.
    smtp_server.rcpt_reply = None
    write_settings(
        settings,
        {**USERS, "cam": {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600}},
        base_frequency=BASE_FREQUENCY,
    )
    accepting = start_server(settings)
    smtp_server.wait_for_messages(1)
    assert accepting.stop() == 0
    subjects = [message["Subject"] for _, _, message in smtp_server.messages]
    assert subjects == ["cam disconnection detected"], f"{len(subjects)} email(s) delivered: {subjects}"
    assert outbox(db_path) == [("pi", "failed", 1), ("nas", "failed", 1), ("cam", "sent", 1)]


@pytest.mark.usefixtures("trust_test_ca")
def test_a_silent_smtp_server_costs_one_timed_out_attempt_then_the_email_is_sent(store, smtp_server):
    silent = SilentSmtpServer()
    clock = Clock(T0 + 61)
    settings = make_settings()
    store.sync_users(settings.users, T0)
    timeout = 0.5
    hung = Scheduler(
        store, smtp_mailer(silent.port, timeout=timeout), LiveSettings(settings), "https://example.net", clock
    )
    hung.check_once(clock.now)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        # The timeout bounds every network operation: the first, reading the greeting, ends the step.
        assert pool.submit(hung.drain_once, clock.now).result(timeout=timeout + SLACK) == 1
    finally:
        silent.stop()  # closing its connections ends a step still waiting
        pool.shutdown()
    [(status, attempts, error)] = query(store.path, "SELECT status, attempts, last_error FROM outbox")
    assert (status, attempts) == ("queued", 1)
    assert "timed out" in error

    working = Scheduler(
        store, smtp_mailer(smtp_server.port, timeout=5), LiveSettings(settings), "https://example.net", clock
    )
    clock.now += retry_delay(1)
    assert working.drain_once(clock.now) == 1
    [(_, _, message)] = smtp_server.wait_for_messages(1)
    assert message["Subject"] == "pi disconnection detected"
    assert query(store.path, "SELECT status, attempts FROM outbox") == [("sent", 2)]


@pytest.mark.usefixtures("trust_test_ca")
def test_a_drain_step_waits_on_a_trickling_smtp_server_no_longer_than_the_conversations_deadline(store, ca):
    # A reply that would take a minute, each byte well within the per-operation timeout.
    endless_greeting = lambda: itertools.repeat(b"x", 600)  # noqa: E731
    clock = Clock(T0 + 61)
    settings = make_settings()
    store.sync_users(settings.users, T0)
    with Trickler(endless_greeting, 0.1, ca) as trickling:
        smtp = SmtpSettings("127.0.0.1", trickling.port, SMTP_LOGIN, "secret", None)
        mailer = SmtpMailer(smtp, timeout=5, deadline=1)
        steps = Scheduler(store, mailer, LiveSettings(settings), "https://example.net", clock)
        steps.check_once(clock.now)
        assert steps.drain_once(clock.now) == 1
        # The step is over while the server is still in its first reply.
        assert trickling.sent[0] < 600
    [(status, attempts, error)] = query(store.path, "SELECT status, attempts, last_error FROM outbox")
    assert (status, attempts) == ("queued", 1)
    assert error.startswith("the SMTP conversation did not end within its 1 s deadline")
