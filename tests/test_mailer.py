import dataclasses
import itertools
import re
import socket
import ssl
import threading

import pytest
from hypothesis import given, strategies as st

import config
import mailer
import outbound
import rules
import support
from mailer import REJECTED, RETRY, SENT, SmtpMailer, SmtpSetupError, build_message, compose_alert
from records import QueuedEmail, Signal, UserState
from support import T0, TlsSmtpServer


def user(username="pi", last_ping=T0, monitored_since=T0 - 3600):
    return UserState(1, username, True, 60.0, 600.0, monitored_since, last_ping, None, T0 + 60)


def test_the_alert_names_the_user_its_last_ping_silence_and_the_logs_of_that_day_in_words_for_people():
    subject, body = compose_alert(user(), "https://example.net")
    assert subject == "pi disconnection detected"
    assert body == (
        "Ping Listener has heard nothing from pi for more than 1 minute.\n"
        "\n"
        "Last ping: 2026-09-21 16:13:20\n"
        "That day's signals: https://example.net/logs?username=pi&year=26&month=09&day=21\n"
        "All times are in CEST, the service's time zone.\n"
        "\n"
        "What to check: is pi powered on and online, and is whatever pings for it (a cron job, a script, a timer)"
        " still running? Its next ping ends this alert.\n"
        "\n"
        "You will be reminded every 10 minutes while it stays silent.\n"
    )


def scheduled(tz="Europe/Paris", **changes):
    """A job run by cron at 02:30 on weekdays, last pinged at T0 (Monday 2026-09-21 16:13:20 CEST)."""
    fields = {"max_sleep": 0.0, "schedule": "30 2 * * 1-5", "tz": tz, "grace": 900.0, **changes}
    return dataclasses.replace(user("nightly-cron"), **fields)


# scheduled()'s alert, in full.
MISSED_RUN = (
    "nightly-cron missed its run expected at 2026-09-22 02:30 (schedule 30 2 * * 1-5, with 15 minutes of"
    " grace): Ping Listener has heard nothing from it since.\n"
    "\n"
    "Last ping: 2026-09-21 16:13:20\n"
    "That day's signals: https://example.net/logs?username=nightly-cron&year=26&month=09&day=21\n"
    "All times are in CEST (Europe/Paris).\n"
    "\n"
    "What to check: is the cron entry (30 2 * * 1-5) that runs nightly-cron still in place, and was its"
    " machine up to run it? The job's last output (its log, or the mail cron sends) says whether it started"
    " and why it did not report. Its next ping ends this alert.\n"
    "\n"
    "You will be reminded every 10 minutes while it stays silent.\n"
)


def test_a_missed_scheduled_run_has_its_own_subject_and_says_what_to_check_for_a_job():
    subject, body = compose_alert(scheduled(), "https://example.net")
    assert subject == "nightly-cron missed its 02:30 run"
    assert body == MISSED_RUN


def test_every_time_in_an_email_is_in_the_users_zone_named_once():
    # The service runs in Europe/Paris (conftest); the job in UTC: its last ping and its run both in UTC.
    subject, body = compose_alert(scheduled(tz="UTC"), "https://example.net")
    assert subject == "nightly-cron missed its 02:30 run"
    assert "expected at 2026-09-22 02:30 " in body
    assert "Last ping: 2026-09-21 14:13:20\n" in body
    assert body.count("UTC") == 1 and "All times are in UTC.\n" in body
    assert "CEST" not in body and "CET" not in body
    back = dataclasses.replace(scheduled(tz="America/New_York"), down_since=T0 - 60, back_at=T0)
    _, body = mailer.compose_recovery(back, "https://example.net")
    assert "Went down: 2026-09-21 10:12:20\nCame back: 2026-09-21 10:13:20\n" in body
    assert body.count("EDT") == 1


def test_without_a_ping_the_alert_says_since_when_it_has_been_monitored_and_links_that_day():
    _, body = compose_alert(user(last_ping=None, monitored_since=T0 + 86400), "http://127.0.0.1:8080")
    assert "No ping received since monitoring began at 2026-09-22 16:13:20." in body
    assert "http://127.0.0.1:8080/logs?username=pi&year=26&month=09&day=22" in body


def test_the_username_is_url_encoded_in_the_link():
    subject, body = compose_alert(user("kitchen pi/2&x=1"), "https://example.net")
    assert subject == "kitchen pi/2&x=1 disconnection detected"
    assert "/logs?username=kitchen+pi%2F2%26x%3D1&year=26" in body


def queued_email(recipient="oncall@example.com", email_id=1):
    subject, body = compose_alert(user(), "https://example.net")
    return QueuedEmail(email_id, recipient, subject, body, f"<{email_id}@example.com>", T0 + 61, 0)


def test_the_message_carries_from_to_date_message_id_and_subject():
    message = build_message(queued_email(), "alerts@example.com")
    assert message["From"] == "alerts@example.com"
    assert message["To"] == "oncall@example.com"
    assert message["Subject"] == "pi disconnection detected"
    assert message["Message-ID"] == "<1@example.com>"
    assert message["Date"] == "Mon, 21 Sep 2026 16:14:21 +0200"
    assert message.get_content_type() == "text/plain"


SENDER = "Ping Listener <alerts@example.com>"


def smtp_mailer(port, **options):
    return support.smtp_mailer(port, sender=SENDER, **options)


def results(sender, emails):
    return [(email.id, result.status) for email, result in sender.send_all(emails)]


@pytest.mark.usefixtures("trust_test_ca")
def test_it_sends_over_implicit_tls_with_login(smtp_server):
    sender = smtp_mailer(smtp_server.port)
    assert results(sender, [queued_email("a@example.com", 1), queued_email("b@example.com", 2)]) == [
        (1, SENT),
        (2, SENT),
    ]
    [(mail_from, to_a, message), (_, to_b, _)] = smtp_server.wait_for_messages(2)
    assert (mail_from, to_a, to_b) == ("alerts@example.com", ["a@example.com"], ["b@example.com"])
    assert message["Subject"] == "pi disconnection detected"
    assert "Last ping: 2026-09-21 16:13:20\r\n" in message.get_content()


@pytest.mark.usefixtures("trust_test_ca")
@pytest.mark.parametrize(
    ("where", "reply", "status"),
    [
        ("rcpt_reply", "550 5.1.1 no such user", REJECTED),
        ("rcpt_reply", "450 4.2.1 mailbox busy", RETRY),
        ("data_reply", "554 5.7.1 message refused", REJECTED),
        ("data_reply", "451 4.3.0 try again later", RETRY),
    ],
)
def test_a_5xx_answer_rejects_the_email_and_a_4xx_answer_retries_it(smtp_server, where, reply, status):
    setattr(smtp_server, where, reply)
    [(email, result)] = list(smtp_mailer(smtp_server.port).send_all([queued_email()]))
    assert (result.status, result.error) == (status, reply.replace(" ", " ", 1))


@pytest.mark.usefixtures("trust_test_ca")
def test_a_refused_login_retries_every_email_and_is_logged_loudly(smtp_server, caplog):
    sender = smtp_mailer(smtp_server.port, password="wrong")
    assert results(sender, [queued_email(email_id=1), queued_email(email_id=2)]) == [(1, RETRY), (2, RETRY)]
    assert "ERROR" in caplog.text and "535" in caplog.text


@pytest.mark.usefixtures("trust_test_ca")
def test_an_unreachable_server_retries_every_email():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    [(_, result)] = list(smtp_mailer(port).send_all([queued_email()]))
    assert result.status == RETRY
    assert "ConnectionRefusedError" in result.error


def test_an_untrusted_certificate_is_not_accepted(smtp_server, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    [(_, result)] = list(smtp_mailer(smtp_server.port).send_all([queued_email()]))
    assert result.status == RETRY
    assert "CERTIFICATE_VERIFY_FAILED" in result.error
    assert smtp_server.messages == []


def test_nothing_to_send_opens_no_connection():
    assert list(smtp_mailer(1).send_all([])) == []


def test_message_ids_are_unique_and_use_the_senders_domain():
    sender = smtp_mailer(1)
    first, second = sender.new_message_id(), sender.new_message_id()
    assert first != second
    assert first.endswith("@example.com>")


def test_without_smtp_from_or_login_a_fallback_sender_is_used():
    sender = SmtpMailer(config.load_smtp_settings({}))
    assert sender.sender == mailer.FALLBACK_SENDER


@pytest.mark.usefixtures("trust_test_ca")
def test_an_address_the_server_cannot_take_is_rejected_and_does_not_hold_back_the_next(smtp_server):
    # The test server does not offer SMTPUTF8, so it can never take a non-ASCII address.
    emails = [queued_email("josé@example.com", 1), queued_email("ok@example.com", 2)]
    [(first, first_result), (second, second_result)] = list(smtp_mailer(smtp_server.port).send_all(emails))
    assert (first.id, first_result.status, second.id, second_result.status) == (1, REJECTED, 2, SENT)
    assert "SMTPUTF8" in first_result.error


@pytest.mark.usefixtures("trust_test_ca")
def test_a_connection_lost_during_one_email_retries_it_and_sends_the_others(smtp_server):
    smtp_server.drop_in_data_to = {"cursed@example.com"}
    emails = [queued_email("cursed@example.com", 1), queued_email("a@example.com", 2), queued_email("b@example.com", 3)]
    assert results(smtp_mailer(smtp_server.port), emails) == [(1, RETRY), (2, SENT), (3, SENT)]
    assert [to for _, [to], _ in smtp_server.wait_for_messages(2)] == ["a@example.com", "b@example.com"]


@pytest.mark.usefixtures("trust_test_ca")
def test_after_a_421_answer_the_next_email_gets_a_new_connection(smtp_server):
    smtp_server.data_reply = "421 4.3.2 shutting down"
    sender = smtp_mailer(smtp_server.port)
    [(_, first), (_, second)] = list(sender.send_all([queued_email(email_id=1), queued_email(email_id=2)]))
    # Each was refused by the server itself, not lost with a connection closed under it.
    assert (first.status, first.error, second.status, second.error) == (
        RETRY,
        "421 4.3.2 shutting down",
        RETRY,
        "421 4.3.2 shutting down",
    )


@pytest.mark.parametrize(
    ("max_sleep", "email_frequency", "silence", "repeat"),
    [
        (1_209_600, 604_800, "for more than 14 days.", "reminded every 7 days while"),
        (5400, 3600, "for more than 1 hour 30 minutes.", "reminded every hour while"),
        (0.5, 0, "for more than 0.5 seconds.", "reminded at every check of the service while"),
    ],
)
def test_durations_and_the_repeat_policy_are_written_in_words(max_sleep, email_frequency, silence, repeat):
    watched = UserState(1, "backup", True, max_sleep, email_frequency, T0, T0, None, T0 + max_sleep)
    _, body = compose_alert(watched, "https://example.net")
    assert silence in body
    assert repeat in body
    assert " seconds" not in body.replace("0.5 seconds", "")


@pytest.mark.parametrize(
    ("sender", "name", "header"),
    [
        ("alerts@example.com", "Ping Listener", "Ping Listener <alerts@example.com>"),
        ("alerts@example.com", "Home monitor", "Home monitor <alerts@example.com>"),
        ("alerts@example.com", "", "alerts@example.com"),
        ("Ops <alerts@example.com>", "Ping Listener", "Ops <alerts@example.com>"),
        ("alerts@example.com", "Smith, J.", '"Smith, J." <alerts@example.com>'),
    ],
)
def test_the_from_header_has_a_display_name_unless_smtp_from_has_one_or_it_is_set_empty(sender, name, header):
    assert mailer.from_header(sender, name) == header


def test_a_display_name_beyond_ascii_is_encoded_and_reads_back():
    message = build_message(queued_email(), mailer.from_header("alerts@example.com", "Surveillance café"))
    assert "=?utf-8?" in message.as_string()
    assert message["From"] == "Surveillance café <alerts@example.com>"


def no_login_mailer(port):
    return SmtpMailer(config.SmtpSettings("127.0.0.1", port, None, None, "alerts@example.com"), timeout=5)


@pytest.mark.usefixtures("trust_test_ca")
def test_a_530_for_want_of_a_login_retries_every_email_and_is_logged_loudly(smtp_server, caplog):
    emails = [queued_email("a@example.com", 1), queued_email("b@example.com", 2)]
    outcome = list(no_login_mailer(smtp_server.port).send_all(emails))
    assert [(email.id, result.status) for email, result in outcome] == [(1, RETRY), (2, RETRY)]
    assert outcome[0][1].error.startswith("530 5.7.0 Authentication required")
    assert "SMTP_LOGIN is not set" in outcome[0][1].error
    [record] = [record for record in caplog.records if record.name == "ping_listener.mailer"]
    assert (
        record.levelname == "ERROR" and "530" in record.getMessage() and "2 email(s) stay queued" in record.getMessage()
    )
    assert smtp_server.messages == []


@pytest.mark.usefixtures("trust_test_ca")
@pytest.mark.parametrize(("reply", "status"), [("554 5.7.1 relay access denied", RETRY), ("450 4.2.1 busy", RETRY)])
def test_a_recipient_refused_by_a_server_offering_a_login_none_was_made_to_is_retried(ca, reply, status):
    relay = TlsSmtpServer(ca, require_login=False).start()
    try:
        relay.rcpt_reply = reply
        [(_, result)] = list(no_login_mailer(relay.port).send_all([queued_email()]))
    finally:
        relay.stop()
    assert (result.status, result.error.split(" (")[0]) == (status, reply)


@pytest.mark.usefixtures("trust_test_ca")
@pytest.mark.parametrize("code", [530, 534, 535, 538])
def test_an_authentication_code_is_a_setup_fault_whatever_command_it_answers(smtp_server, code):
    smtp_server.data_reply = f"{code} 5.7.8 authentication problem"
    [(_, first), (_, second)] = list(
        smtp_mailer(smtp_server.port).send_all([queued_email(email_id=1), queued_email(email_id=2)])
    )
    assert (first.status, second.status) == (RETRY, RETRY)


@pytest.mark.usefixtures("trust_test_ca")
def test_a_test_email_is_sent_at_once_with_the_display_name(smtp_server):
    result = smtp_mailer(smtp_server.port).send_test("me@example.com", T0)
    assert (result.status, result.brief()) == (SENT, "sent")
    [(mail_from, to, message)] = smtp_server.wait_for_messages(1)
    assert (mail_from, to, message["From"]) == ("alerts@example.com", ["me@example.com"], SENDER)
    assert message["Subject"] == "Ping Listener test email"
    assert f"sent through 127.0.0.1:{smtp_server.port}" in message.get_content()


@pytest.mark.usefixtures("trust_test_ca")
def test_a_test_email_with_a_wrong_password_says_what_the_server_answered(smtp_server, caplog):
    result = smtp_mailer(smtp_server.port, password="wrong").send_test("me@example.com", T0)
    assert result.status == RETRY
    assert result.error == "535 5.7.8 Authentication credentials invalid (check SMTP_LOGIN and SMTP_PASSWORD)"
    assert result.brief() == "the SMTP server answered 535 (a login problem: check SMTP_LOGIN and SMTP_PASSWORD)"
    assert [record for record in caplog.records if record.name.startswith("ping_listener")] == []  # the caller tells


def test_a_test_email_to_an_unreachable_server_says_so():
    result = smtp_mailer(support.free_port()).send_test("me@example.com", T0)
    assert result.status == RETRY
    assert result.error.startswith("ConnectionRefusedError")
    assert result.brief() == "ConnectionRefusedError"


@pytest.mark.usefixtures("trust_test_ca")
def test_the_login_check_logs_in_and_sends_nothing(smtp_server):
    assert (
        smtp_mailer(smtp_server.port).check_login()
        == f"logged in to 127.0.0.1:{smtp_server.port} as alerts@example.com"
    )
    assert smtp_server.messages == []


@pytest.mark.usefixtures("trust_test_ca")
def test_the_login_check_raises_with_the_servers_answer(smtp_server):
    with pytest.raises(mailer.SmtpSetupError, match=r"^535 5\.7\.8 .*check SMTP_LOGIN and SMTP_PASSWORD"):
        smtp_mailer(smtp_server.port, password="wrong").check_login()
    with pytest.raises(mailer.SmtpSetupError, match="^ConnectionRefusedError"):
        smtp_mailer(support.free_port()).check_login()


def test_the_failure_email_quotes_the_end_of_the_output_with_its_exit_code_and_the_runs_duration():
    tail = "\x00\x1b[31mERROR\x1b[0m\tdisk full\n"
    output = "a" * 3000 + tail
    signal = Signal(T0, "fail", 12, 3725.4, output)
    subject, body = mailer.compose_failure(user(), signal, "https://example.net")
    assert subject == "pi failure reported"
    assert body == (
        "pi reported a failure.\n"
        "\n"
        "Failure reported: 2026-09-21 16:13:20, exit code 12, after a run of 1 hour 2 minutes 5 seconds.\n"
        "That day's signals: https://example.net/logs?username=pi&year=26&month=09&day=21\n"
        "All times are in CEST, the service's time zone.\n"
        "\n"
        "You will be reminded every 10 minutes until pi reports a success.\n"
        "\n"
        "The last 2000 characters of its output:\n"
        "\n" + "a" * (2000 - len(tail)) + "\ufffd\ufffd[31mERROR\ufffd[0m\tdisk full\n\n"
    )
    # It still makes a valid message.
    message = build_message(QueuedEmail(1, "a@example.com", subject, body, "<1@x>", T0, 0), "alerts@example.com")
    assert "ERROR" in message.get_content()


def test_a_failure_without_output_or_run_says_so_briefly():
    _, body = mailer.compose_failure(user(), Signal(T0, "fail", None, None, None), "https://example.net")
    assert "Failure reported: 2026-09-21 16:13:20.\n" in body
    assert "output" not in body


def test_a_run_shorter_than_a_second_took_under_a_second():
    _, body = mailer.compose_failure(user(), Signal(T0, "fail", 23, 0.031, None), "https://example.net")
    assert "Failure reported: 2026-09-21 16:13:20, exit code 23, after a run of under a second.\n" in body


def test_the_run_timeout_email_says_when_the_run_started_and_how_long_it_may_run():
    running = dataclasses.replace(user(), run_started=T0 - 90, max_runtime=60.0)
    subject, body = mailer.compose_run_timeout(running, "https://example.net")
    assert subject == "pi did not finish in time"
    assert body == (
        "pi started a run and has not reported its end within the 1 minute it is allowed.\n"
        "\n"
        "Run started: 2026-09-21 16:11:50\n"
        "That day's signals: https://example.net/logs?username=pi&year=26&month=09&day=21\n"
        "All times are in CEST, the service's time zone.\n"
        "\n"
        "You will be reminded every 10 minutes while the run goes on.\n"
    )


def test_the_recovery_email_says_when_it_went_down_came_back_and_for_how_long():
    back = dataclasses.replace(user(), down_since=T0 - 86400 - 3600, back_at=T0)
    subject, body = mailer.compose_recovery(back, "https://example.net")
    assert subject == "pi is back"
    assert body == (
        "pi is back.\n"
        "\n"
        "Went down: 2026-09-20 15:13:20\n"
        "Came back: 2026-09-21 16:13:20\n"
        "Down for: 1 day 1 hour\n"
        "That day's signals: https://example.net/logs?username=pi&year=26&month=09&day=21\n"
        "All times are in CEST, the service's time zone.\n"
    )


def test_no_email_names_a_setting_in_its_sentences():
    failed = Signal(T0, "fail", 1, 2.0, "out")
    running = dataclasses.replace(user(), run_started=T0 - 90, max_runtime=60.0, down_since=T0 - 60, back_at=T0)
    texts = [
        *compose_alert(user(), "https://example.net"),
        *compose_alert(scheduled(), "https://example.net"),
        *mailer.compose_failure(user(), failed, "https://example.net"),
        *mailer.compose_run_timeout(running, "https://example.net"),
        *mailer.compose_recovery(running, "https://example.net"),
    ]
    for setting in ("max_sleep", "max_runtime", "email_frequency", "monitor", "tz", "notify"):
        assert not any(re.search(rf"\b{setting}\b", text) for text in texts), setting


def queued(email_id, username, kind="late", recipient="oncall@example.com", attempts=0):
    subject = f"{username} is back" if kind == "back" else f"{username} disconnection detected"
    return QueuedEmail(
        email_id, recipient, subject, f"text about {username}\n", f"<{email_id}@x>", T0, attempts, username, kind
    )


def test_a_digest_of_real_emails_reads_in_full():
    nas = dataclasses.replace(user("nas"), down_since=T0 - 600, back_at=T0)
    composed = [
        (nas, "back", mailer.compose_recovery(nas, "https://example.net")),
        (scheduled(), "late", compose_alert(scheduled(), "https://example.net")),
    ]
    emails = [
        QueuedEmail(number, "oncall@example.com", subject, body, f"<{number}@x>", T0, 0, who.username, kind)
        for number, (who, kind, (subject, body)) in enumerate(composed, 1)
    ]
    digest = mailer.digest(emails, "<digest@x>", T0 + 5)
    assert digest.subject == "2 devices need attention: nas, nightly-cron"
    assert digest.body == (
        "2 alert emails for you were due at once; here they are together.\n"
        "\n"
        "===== nas is back =====\n"
        "\n"
        "nas is back.\n"
        "\n"
        "Went down: 2026-09-21 16:03:20\n"
        "Came back: 2026-09-21 16:13:20\n"
        "Down for: 10 minutes\n"
        "That day's signals: https://example.net/logs?username=nas&year=26&month=09&day=21\n"
        "All times are in CEST, the service's time zone.\n"
        "\n"
        "===== nightly-cron missed its 02:30 run =====\n"
        "\n" + MISSED_RUN
    )


def test_a_digest_names_its_devices_in_order_and_holds_each_emails_text_in_turn():
    emails = [queued(3, "pi"), queued(4, "cam", attempts=2), queued(5, "pi", kind="back")]
    digest = mailer.digest(emails, "<digest@x>", T0 + 5)
    assert (digest.id, digest.recipient, digest.message_id, digest.queued_at, digest.attempts) == (
        3,
        "oncall@example.com",
        "<digest@x>",
        T0 + 5,
        2,
    )
    assert digest.subject == "2 devices need attention: cam, pi"
    assert digest.body == (
        "3 alert emails for you were due at once; here they are together.\n"
        "\n===== cam disconnection detected =====\n\ntext about cam\n"
        "\n===== pi disconnection detected =====\n\ntext about pi\n"
        "\n===== pi is back =====\n\ntext about pi\n"
    )
    message = build_message(digest, "Ping Listener <alerts@example.com>")
    assert (message["Message-ID"], message["Subject"]) == ("<digest@x>", "2 devices need attention: cam, pi")


def test_a_digest_of_recoveries_only_says_they_are_back_and_one_device_is_singular():
    assert mailer.digest_subject([queued(1, "pi", "back"), queued(2, "nas", "back")]) == "2 devices are back: nas, pi"
    assert mailer.digest_subject([queued(1, "pi"), queued(2, "pi", "back")]) == "1 device needs attention: pi"


def test_a_long_digest_subject_is_cut_with_an_ellipsis_at_120_characters():
    emails = [queued(index, f"camera-{index:03d}") for index in range(40)]
    subject = mailer.digest_subject(emails)
    assert len(subject) == mailer.MAX_DIGEST_SUBJECT == 120
    assert subject.startswith("40 devices need attention: camera-000, camera-001, ")
    assert subject.endswith("\u2026")


def written(emails):
    """mailer.collapse's answer as (id, kind, carried ids) of each email to write."""
    return [(email.id, email.kind, carried) for email, carried in mailer.collapse(emails)]


def test_an_alert_and_its_reminder_both_unsent_are_written_once_as_the_latest():
    assert written([queued(1, "nas"), queued(2, "nas")]) == [(2, "late", (1, 2))]


def test_an_outage_over_before_its_alert_went_is_written_as_its_recovery_alone():
    [(email, carried)] = mailer.collapse([queued(1, "pi", attempts=3), queued(2, "pi", kind="back")])
    assert (email.subject, carried, email.attempts) == ("pi is back", (1, 2), 3)


def test_a_new_outage_after_a_recovery_is_written_after_it_and_other_conditions_and_devices_stay_apart():
    emails = [
        queued(1, "pi"),
        queued(2, "cam"),
        queued(3, "pi", kind="failed"),
        queued(4, "pi", kind="back"),
        queued(5, "pi"),
        queued(6, "pi"),
        queued(7, "cam", kind="run_timeout"),
    ]
    assert written(emails) == [(2, "late", (2,)), (4, "back", (1, 3, 4)), (6, "late", (5, 6)), (7, "run_timeout", (7,))]


KINDS = st.sampled_from([rules.SILENCE, rules.FAILURE, rules.RUN_TIMEOUT, rules.BACK])


@st.composite
def queues(draw):
    """Queued rows for one recipient: each a device and a kind, with ids in queue order, given in any order."""
    rows = draw(st.lists(st.tuples(st.sampled_from(["pi", "nas", "cam"]), KINDS, st.integers(0, 9)), max_size=12))
    emails = [
        queued(index + 1, username, kind, attempts=attempts) for index, (username, kind, attempts) in enumerate(rows)
    ]
    return draw(st.permutations(emails))


@given(queues())
def test_every_row_is_carried_once_by_the_latest_of_the_rows_it_goes_with(emails):
    collapsed = mailer.collapse(emails)
    carried = [row_id for _, ids in collapsed for row_id in ids]
    assert sorted(carried) == sorted(email.id for email in emails)
    by_id = {email.id: email for email in emails}
    for email, ids in collapsed:
        assert email.id == max(ids)
        assert {by_id[row_id].username for row_id in ids} == {email.username}
        assert email.attempts == max(by_id[row_id].attempts for row_id in ids)
        assert dataclasses.replace(email, attempts=by_id[email.id].attempts) == by_id[email.id]
    assert [email.id for email, _ in collapsed] == sorted(email.id for email, _ in collapsed)


@given(queues())
def test_no_condition_is_written_twice_and_no_alert_before_its_own_recovery(emails):
    collapsed = [email for email, _ in mailer.collapse(emails)]
    for username in {email.username for email in emails}:
        kinds = [email.kind for email in collapsed if email.username == username]
        # Per device: recoveries first, then at most one email per condition still going on.
        alerts = [kind for kind in kinds if kind != rules.BACK]
        assert kinds == [rules.BACK] * (len(kinds) - len(alerts)) + alerts
        assert len(alerts) == len(set(alerts))
    # What is written has nothing left to collapse.
    assert mailer.collapse([email for email in collapsed]) == [(email, (email.id,)) for email in collapsed]


def test_emails_are_grouped_by_recipient_in_the_order_they_come():
    emails = [queued(1, "pi"), queued(2, "nas", recipient="b@example.com"), queued(3, "cam")]
    assert [[email.id for email in group] for group in mailer.by_recipient(emails)] == [[1, 3], [2]]


# SMTP_SECURITY: a mandatory STARTTLS upgrade, and plain text to a relay on this machine.


@pytest.fixture
def starttls_server(ca):
    server = TlsSmtpServer(ca, security="starttls").start()
    yield server
    server.stop()


@pytest.mark.usefixtures("trust_test_ca")
def test_starttls_upgrades_the_connection_then_logs_in_and_sends(starttls_server):
    # The server refuses AUTH and MAIL before STARTTLS: an email accepted went over TLS.
    sender = smtp_mailer(starttls_server.port, security="starttls")
    assert results(sender, [queued_email("a@example.com", 1)]) == [(1, SENT)]
    [(_, rcpt_tos, message)] = starttls_server.wait_for_messages(1)
    assert (rcpt_tos, message["Subject"]) == (["a@example.com"], "pi disconnection detected")
    assert starttls_server.logins == 1
    assert "logged in to 127.0.0.1" in sender.check_login()


@pytest.mark.usefixtures("trust_test_ca")
def test_a_server_that_does_not_offer_starttls_gets_nothing_in_plain_text_and_the_email_is_retried(ca, caplog):
    plain = TlsSmtpServer(ca, security="plain").start()
    try:
        sender = smtp_mailer(plain.port, security="starttls")
        [(_, result)] = list(sender.send_all([queued_email()]))
        with pytest.raises(SmtpSetupError, match="does not offer STARTTLS"):
            sender.check_login()
    finally:
        plain.stop()
    assert result.status == RETRY
    assert "does not offer STARTTLS; nothing was sent in plain text" in result.error
    assert (plain.messages, plain.logins) == ([], 0)
    assert "stay queued and are retried" in caplog.text


def test_starttls_refuses_a_certificate_the_system_does_not_trust(starttls_server, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    [(_, result)] = list(smtp_mailer(starttls_server.port, security="starttls").send_all([queued_email()]))
    assert result.status == RETRY
    assert "CERTIFICATE_VERIFY_FAILED" in result.error
    assert (starttls_server.messages, starttls_server.logins) == ([], 0)


def test_none_sends_in_plain_text_to_a_loopback_relay(ca):
    relay = TlsSmtpServer(ca, require_login=False, security="plain").start()
    try:
        sender = smtp_mailer(relay.port, security="none", login=None)
        assert results(sender, [queued_email("a@example.com", 1)]) == [(1, SENT)]
        [(_, rcpt_tos, _)] = relay.wait_for_messages(1)
    finally:
        relay.stop()
    assert rcpt_tos == ["a@example.com"]


def test_ssl_mode_to_a_starttls_port_is_a_connection_problem_with_a_hint(starttls_server):
    [(_, result)] = list(smtp_mailer(starttls_server.port, timeout=1).send_all([queued_email()]))
    assert result.status == RETRY
    assert "SMTP_SECURITY=ssl" in result.error


def trickling_mailer(port, deadline, timeout=5.0):
    """An SmtpMailer (implicit TLS) to 127.0.0.1:`port` with a whole-conversation `deadline`."""
    smtp = config.SmtpSettings("127.0.0.1", port, support.SMTP_LOGIN, support.SMTP_PASSWORD, SENDER)
    return SmtpMailer(smtp, timeout=timeout, deadline=deadline)


# A greeting of 7 lines whose bytes come every TRICKLE_INTERVAL s: whole, it takes about 5 s.
TRICKLED_GREETING = b"220-smtp.test says hello, slowly\r\n" * 6 + b"220 smtp.test ready\r\n"
TRICKLE_INTERVAL = 5.0 / len(TRICKLED_GREETING)


@pytest.mark.usefixtures("trust_test_ca")
def test_a_server_that_trickles_its_replies_is_given_up_at_the_deadline_and_every_email_retried(ca):
    deadline, timeout = 1.0, 5.0
    # Each byte comes well within the per-operation timeout: only the whole-conversation deadline can end it.
    assert timeout > TRICKLE_INTERVAL
    greeting = lambda: (TRICKLED_GREETING[i : i + 1] for i in range(len(TRICKLED_GREETING)))  # noqa: E731
    with support.Trickler(greeting, TRICKLE_INTERVAL, ca) as trickling:
        settled = list(
            trickling_mailer(trickling.port, deadline, timeout).send_all([queued_email(), queued_email(email_id=2)])
        )
        # Given up before the server had even finished its greeting.
        assert support.wait_until(lambda: trickling.closed_by_client == 1)
        assert trickling.sent[0] < len(TRICKLED_GREETING)
    assert [(email.id, result.status) for email, result in settled] == [(1, RETRY), (2, RETRY)]
    assert settled[0][1].error.startswith("the SMTP conversation did not end within its 1 s deadline")


@pytest.mark.usefixtures("trust_test_ca")
def test_a_reply_that_never_ends_is_read_no_further_than_64_kib_and_the_email_retried(ca):
    line = b"220-" + b"x" * 1000 + b"\r\n"
    with support.Trickler(lambda: itertools.repeat(line, 10_000), ca=ca) as flooding:
        [(_, result)] = trickling_mailer(flooding.port, deadline=10).send_all([queued_email()])
    assert result.status == RETRY
    assert result.error.endswith(f"the answer went on past {outbound.ANSWER_LIMIT} bytes")


class StartTlsTrickler:
    """An SMTP server on 127.0.0.1 that answers one connection's EHLO and STARTTLS at once, upgrades it to
    TLS (a certificate from `ca`), then trickles a reply that never ends, a byte every 0.1 s, until the
    client closes or stop() is called. `trickled` counts the bytes sent over TLS."""

    def __init__(self, ca):
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._context)
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.trickled = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="starttls-trickler", daemon=True)
        self._thread.start()

    def stop(self):
        self._stopping.set()
        self._socket.close()
        self._thread.join(5)

    def _serve(self):
        connection, _ = self._socket.accept()
        try:
            connection.settimeout(5)
            lines = connection.makefile("rb")
            connection.sendall(b"220 smtp.test ready\r\n")
            lines.readline()  # EHLO
            connection.sendall(b"250-smtp.test\r\n250 STARTTLS\r\n")
            lines.readline()  # STARTTLS
            connection.sendall(b"220 go ahead\r\n")
            connection = self._context.wrap_socket(connection, server_side=True)
            while not self._stopping.wait(0.1):
                connection.sendall(b"2" if self.trickled == 0 else b"x")
                self.trickled += 1
        except OSError:
            pass
        finally:
            connection.close()


@pytest.mark.usefixtures("trust_test_ca")
def test_after_starttls_a_server_that_trickles_its_replies_is_given_up_at_the_deadline(ca):
    trickling = StartTlsTrickler(ca)
    try:
        smtp = config.SmtpSettings(
            "127.0.0.1", trickling.port, support.SMTP_LOGIN, "secret", SENDER, security="starttls"
        )
        [(_, result)] = SmtpMailer(smtp, timeout=5, deadline=1.5).send_all([queued_email()])
    finally:
        trickling.stop()
    assert result.status == RETRY
    assert result.error.startswith("the SMTP conversation did not end within its 1.5 s deadline")
    # Its reply had begun over TLS: the deadline held after the upgrade.
    assert trickling.trickled > 0
