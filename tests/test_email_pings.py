"""Email pings (email_pings.py): the pure decisions, then the real listener with a real store, spoken to by
Python's smtplib and by swaks over plain SMTP and STARTTLS."""

import contextlib
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

import config
from config import EmailKeywords, EmailPingsConfig, LiveSettings
from email_pings import (
    MAX_MESSAGE_BYTES,
    MAX_MIME_PARTS,
    MAX_MULTIPARTS,
    MAX_SIGNAL_TEXT,
    WRONG_RECIPIENT_LIMIT,
    EmailPingListener,
    ListenerLimits,
    MalformedMessage,
    Refused,
    email_signal_kind,
    html_to_text,
    message_content,
    recipient_username,
    tls_context,
)
from records import StoreUnavailableError
from store import Store
from support import SLACK, SmallDiskStore, make_settings, query, wait_until

DOMAIN = "ping.example.net"
TOKEN = "s3cret-token-0123456789"
USERS = {
    "nas": {"monitor": True, "max_sleep": 86400, "email_frequency": 3600},
    "backup": {
        "monitor": True,
        "max_sleep": 86400,
        "email_frequency": 3600,
        "email_keywords": {"fail": ["failed", "error"], "start": ["started"], "success": ["completed", "success"]},
    },
    "vault": {"monitor": True, "max_sleep": 86400, "email_frequency": 3600, "token": TOKEN},
    "my device": {"monitor": True, "max_sleep": 86400, "email_frequency": 3600},
}
KEYWORDS = EmailKeywords(fail=("failed", "error"), start=("started",), success=("completed", "success"))


def users(document=USERS):
    return make_settings(document).users


def message(subject="Backup report", text="All done.", html=None, sender="nas@home.example", to=f"nas@{DOMAIN}"):
    """An email as a NAS writes one: plain text, or HTML only, or both as multipart/alternative."""
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, to, subject
    if text is not None:
        mail.set_content(text)
    if html is not None:
        if text is None:
            mail.set_content(html, subtype="html")
        else:
            mail.add_alternative(html, subtype="html")
    return mail


# ---- The pure decisions


def test_a_recipient_names_a_user_of_the_domain_with_its_token_when_it_has_one():
    configured = users()
    assert recipient_username(f"nas@{DOMAIN}", DOMAIN, configured) == "nas"
    assert recipient_username("nas@PING.Example.NET", DOMAIN, configured) == "nas"
    assert recipient_username(f'"my device"@{DOMAIN}', DOMAIN, configured) == "my device"
    assert recipient_username(f"vault+{TOKEN}@{DOMAIN}", DOMAIN, configured) == "vault"
    # A check's UUID (any case) names it, as /ping/<uuid> does; a user with a token still needs it.
    uuids = {"0b5c1a9e-6f1d-4c55-9f0e-3a1d2b7c8e90": "nas", "5d7e0c2a-1b3f-4e6a-8c9d-0e1f2a3b4c5d": "vault"}.get
    assert recipient_username(f"0B5C1A9E-6F1D-4C55-9F0E-3A1D2B7C8E90@{DOMAIN}", DOMAIN, configured, uuids) == "nas"
    vault = f"5d7e0c2a-1b3f-4e6a-8c9d-0e1f2a3b4c5d+{TOKEN}@{DOMAIN}"
    assert recipient_username(vault, DOMAIN, configured, uuids) == "vault"
    with pytest.raises(Refused):
        recipient_username(f"5d7e0c2a-1b3f-4e6a-8c9d-0e1f2a3b4c5d@{DOMAIN}", DOMAIN, configured, uuids)
    refusals = {
        f"ghost@{DOMAIN}": "550 5.1.1 unknown user ghost",
        "nas@example.org": f"550 5.7.1 relaying denied: this server takes mail for @{DOMAIN} only",
        f"nas@mail.{DOMAIN}": f"550 5.7.1 relaying denied: this server takes mail for @{DOMAIN} only",
        f"vault@{DOMAIN}": f"550 5.7.1 missing token for vault: write vault+TOKEN@{DOMAIN}",
        f"vault+wrong-token-0123456789@{DOMAIN}": "550 5.7.1 wrong token for vault",
        # A user without a token takes no +TAG: the address is all the secret there is.
        f"nas+anything@{DOMAIN}": "550 5.1.1 unknown user nas+anything",
        f"NAS@{DOMAIN}": "550 5.1.1 unknown user NAS",
    }
    for address, reply in refusals.items():
        with pytest.raises(Refused) as refused:
            recipient_username(address, DOMAIN, configured)
        assert refused.value.reply == reply, address


def test_keywords_decide_the_kind_fail_first_then_start_then_success_case_ignored():
    assert email_signal_kind("Backup failed", "", KEYWORDS) == "fail"
    assert email_signal_kind("Backup report", "Task COMPLETED with an ERROR", KEYWORDS) == "fail"
    assert email_signal_kind("Backup started", "will report when completed", KEYWORDS) == "start"
    assert email_signal_kind("Backup started", "and failed at once", KEYWORDS) == "fail"
    assert email_signal_kind("Backup report", "Completed.", KEYWORDS) == "success"
    assert email_signal_kind("Sauvegarde terminée", "Rien à signaler", KEYWORDS) == "log"
    # In the subject or in the text, either will do.
    assert email_signal_kind("Success", "", KEYWORDS) == "success"
    assert email_signal_kind("", "success", KEYWORDS) == "success"


def test_without_keywords_every_email_is_a_success():
    assert email_signal_kind("Backup FAILED", "error error", None) == "success"
    assert email_signal_kind("Backup FAILED", "error", EmailKeywords()) == "success"
    # Only fail keywords: an email without one is no success (it may be any report): it is recorded as a log.
    assert email_signal_kind("Backup done", "", EmailKeywords(fail=("failed",))) == "log"


def test_the_text_is_the_plain_part_or_the_html_turned_to_text_and_the_subject_is_decoded():
    assert message_content(bytes(message("Report", "Line one\nLine two"))) == ("Report", "Line one\nLine two")
    html = (
        "<html><head><title>Report</title><style>p {color: red}</style></head><body>"
        "<h1>Hyper Backup</h1><p>Task&nbsp;<b>nightly</b> has <i>failed</i> &amp; stopped.</p>"
        "<script>alert('x')</script><table><tr><td>Files</td><td>120</td></tr></table><br>End</body></html>"
    )
    assert message_content(bytes(message("Report", text=None, html=html))) == (
        "Report",
        "Hyper Backup\nTask nightly has failed & stopped.\nFiles120\nEnd",
    )
    both = message("Report", text="the plain text", html="<p>the html</p>")
    assert message_content(bytes(both)) == ("Report", "the plain text")
    encoded = (
        b"From: nas@home.example\r\nSubject: =?utf-8?B?U2F1dmVnYXJkZSDDqWNob3XDqWU=?= =?utf-8?Q?_sur_NAS?=\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: "
        b"quoted-printable\r\n\r\nT=E2che termin=E9e\r\n"
    )
    assert message_content(encoded) == ("Sauvegarde échouée sur NAS", "Tâche terminée")
    latin = b"Subject: =?iso-8859-1?q?=E9chec?=\r\n\r\nbody\r\n"
    assert message_content(latin) == ("échec", "body")


def test_a_multipart_message_with_attachments_gives_its_first_text_part():
    mixed = MIMEMultipart("mixed")
    mixed["Subject"] = "UPS event"
    mixed.attach(MIMEText("<p>On battery</p>", "html"))
    mixed.attach(MIMEText("log line 1\nlog line 2\n", "plain"))  # an attached log, after the body
    attachment = MIMEText("a,b\n1,2\n", "csv")
    attachment.add_header("Content-Disposition", "attachment", filename="events.csv")
    mixed.attach(attachment)
    subject, text = message_content(mixed.as_bytes())
    assert subject == "UPS event"
    assert text in ("On battery", "log line 1\nlog line 2")


def test_the_text_is_cut_at_its_first_10000_bytes_without_splitting_a_character():
    text = "é" * 20_000
    _, kept = message_content(bytes(message("Long", text)))
    assert len(kept.encode()) == MAX_SIGNAL_TEXT and set(kept) == {"é"}
    _, kept_html = message_content(bytes(message("Long", None, "<p>" + "word " * 100_000 + "</p>")))
    assert len(kept_html.encode()) <= MAX_SIGNAL_TEXT and kept_html.startswith("word word")
    assert html_to_text("<p>" + "x" * 50_000) == "x" * MAX_SIGNAL_TEXT


def nested_multiparts(depth):
    """A message of `depth` multiparts, each inside the one before."""
    return b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n" + b"".join(
        f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n".encode() for i in range(depth)
    )


def many_parts(count, boundary=b'"=_part"'):
    """A multipart message of `count` text parts."""
    delimiter = b"--" + boundary.strip(b'"')
    parts = b"".join(delimiter + b"\r\nContent-Type: text/plain\r\n\r\npart\r\n" for _ in range(count))
    return (
        b"Subject: x\r\nContent-Type: multipart/mixed; boundary="
        + boundary
        + b"\r\n\r\n"
        + parts
        + delimiter
        + b"--\r\n"
    )


def test_a_message_that_is_no_email_or_has_too_many_parts_to_read_is_malformed():
    for data in (b"", b"just some text with no header at all\r\n", b"\r\n\r\nbody"):
        with pytest.raises(MalformedMessage, match="no header"):
            message_content(data)
    # Parts cost the email package milliseconds each, and nested ones far more: they are counted first.
    assert message_content(nested_multiparts(MAX_MULTIPARTS - 1)) == ("x", "")
    with pytest.raises(MalformedMessage, match=f"too many multipart sections \\(at most {MAX_MULTIPARTS}\\)"):
        message_content(nested_multiparts(3000))
    assert message_content(many_parts(MAX_MIME_PARTS)) == ("x", "part")
    for boundary in (b'"=_part"', b"plain-boundary"):
        with pytest.raises(MalformedMessage, match=f"too many MIME parts \\(at most {MAX_MIME_PARTS}\\)"):
            message_content(many_parts(MAX_MIME_PARTS + 1, boundary))
    # A boundary in RFC 2231 pieces is not read before parsing: every line beginning with -- counts.
    pieces = many_parts(MAX_MIME_PARTS + 1).replace(b'boundary="=_part"', b"boundary*0*=''%3D; boundary*1=_part")
    with pytest.raises(MalformedMessage, match="too many MIME parts"):
        message_content(pieces)


def test_email_pings_settings_are_checked_with_key_paths():
    valid = make_settings(email_pings={"port": 2525, "domain": "Ping.Example.NET"}).email_pings
    assert valid == EmailPingsConfig(2525, DOMAIN, "0.0.0.0")
    assert make_settings().email_pings is None
    bad = {
        "port": "25",
        "domain": "not a domain",
        "host": "",
        "tls_certificate": "/etc/cert.pem",
        "relay": True,
    }
    with pytest.raises(config.ConfigError) as error:
        make_settings(email_pings=bad)
    assert error.value.problems == [
        "email_pings.relay: unknown key (expected one of domain, host, port, tls_certificate, tls_key)",
        'email_pings.port: must be an integer from 0 to 65535 (0: the OS chooses), got "25"',
        'email_pings.domain: must be a domain name such as ping.example.net, got "not a domain"',
        'email_pings.host: must be an address or host name to listen on, got ""',
        "email_pings.tls_key: missing (STARTTLS needs tls_certificate and tls_key; tls_certificate is given)",
    ]
    with pytest.raises(config.ConfigError) as error:
        make_settings(email_pings={"port": 70000})
    assert error.value.problems == [
        "email_pings.port: must be an integer from 0 to 65535 (0: the OS chooses), got 70000",
        "email_pings.domain: missing",
    ]


def test_email_keywords_are_checked_with_key_paths():
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 60}
    parsed = make_settings({"nas": {**user, "email_keywords": {"fail": ["failed"], "success": []}}})
    assert parsed.users["nas"].email_keywords == EmailKeywords(fail=("failed",))
    assert make_settings({"nas": user}).users["nas"].email_keywords is None
    with pytest.raises(config.ConfigError) as error:
        make_settings({"nas": {**user, "email_keywords": {"fail": "failed", "sucess": ["ok"], "start": [""]}}})
    assert error.value.problems == [
        "users.nas.email_keywords.sucess: unknown key (expected one of fail, start, success)",
        'users.nas.email_keywords.fail: must be a list of non-empty strings, got "failed"',
        'users.nas.email_keywords.start: must be a list of non-empty strings, got [""]',
    ]
    with pytest.raises(config.ConfigError) as error:
        make_settings({"nas": {**user, "email_keywords": ["failed"]}})
    assert error.value.problems == [
        'users.nas.email_keywords: must be an object such as {"fail": ["failed", "error"], "success": ["completed"]},'
        ' got ["failed"]'
    ]


def test_a_certificate_that_cannot_be_loaded_is_a_key_path_error(tmp_path, ca):
    missing = EmailPingsConfig(2525, DOMAIN, tls_certificate=str(tmp_path / "none.pem"), tls_key=str(tmp_path / "k"))
    with pytest.raises(config.ConfigError, match=r"^email_pings.tls_certificate: cannot read .*none.pem"):
        tls_context(missing)
    certificate = ca.issue_cert(DOMAIN)
    certificate.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    mismatched = EmailPingsConfig(
        2525, DOMAIN, tls_certificate=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "other-key.pem")
    )
    with pytest.raises(
        config.ConfigError, match=r"^email_pings.tls_key: .*other-key.pem is not the key of .*cert.pem$"
    ):
        tls_context(mismatched)
    (tmp_path / "garbage.pem").write_text("not a certificate")
    garbage = EmailPingsConfig(
        2525, DOMAIN, tls_certificate=str(tmp_path / "garbage.pem"), tls_key=str(tmp_path / "garbage.pem")
    )
    with pytest.raises(
        config.ConfigError, match=r"^email_pings.tls_certificate: .*garbage.pem and its key are not PEM"
    ):
        tls_context(garbage)


# ---- The listener, with a real store


@pytest.fixture
def start_listener(store):
    """start_listener(users=USERS, context=None, limits=ListenerLimits(), on=store): a listener on 127.0.0.1 with
    an OS-chosen port over `on` (the test's store by default); each is stopped after the test."""
    started = []

    def start(document=USERS, context=None, limits=None, on=None):
        live = LiveSettings(make_settings(document))
        target = store if on is None else on
        target.sync_users(live.current.users, time.time())
        where = EmailPingsConfig(0, DOMAIN, "127.0.0.1")
        listener = EmailPingListener(where, target, live, time.time, context, limits or ListenerLimits())
        listener.start()
        started.append(listener)
        listener.live = live
        return listener

    yield start
    for listener in started:
        listener.stop()


def signals(store, username=None):
    """(username, kind, body) of every signal committed, oldest first, read through a connection of its own."""
    rows = query(
        store.path,
        "SELECT username, kind, body FROM pings JOIN users ON users.id = pings.user_id ORDER BY pings.id",
    )
    return [row for row in rows if username is None or row[0] == username]


def send(port, mail, recipients=None, **client):
    with smtplib.SMTP("127.0.0.1", port, timeout=10, **client) as smtp:
        return smtp.send_message(mail, to_addrs=recipients)


def test_a_message_to_name_at_domain_is_a_signal_committed_before_the_250(store, start_listener):
    listener = start_listener()
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as smtp:
        smtp.ehlo("nas.home.example")
        assert "auth" not in smtp.esmtp_features  # the address is the secret
        assert smtp.esmtp_features["size"] == str(MAX_MESSAGE_BYTES)
        assert smtp.mail("nas@home.example") == (250, b"OK")
        assert smtp.rcpt(f"nas@{DOMAIN}")[0] == 250
        code, reply = smtp.data(bytes(message("Nightly backup", "Everything went fine.\n")))
        assert (code, reply) == (250, b"2.0.0 recorded: nas success")
        # Read through another connection as soon as the 250 is in: committed.
        assert signals(store) == [("nas", "success", "Subject: Nightly backup\n\nEverything went fine.")]


@pytest.mark.parametrize(
    ("mail", "kind"),
    [
        (message("Hyper Backup: task nightly has failed", "See the log."), "fail"),
        (message("Hyper Backup report", "Task nightly completed with an Error on 2 files."), "fail"),
        (message("Backup started", "Task nightly started."), "start"),
        (message("Hyper Backup report", "Task nightly completed."), "success"),
        (message("Hyper Backup report", None, "<p>Task nightly <b>COMPLETED</b></p>"), "success"),
        # Words in the markup are not text: no keyword here.
        (message("Report", None, '<p class="failed">Status: OK</p><script>error()</script>'), "log"),
        (message("Report", None, "<p>Status: <span>fai</span>led</p>"), "fail"),
        (message("=?utf-8?q?Sauvegarde_=C3=A9chou=C3=A9e_=28FAILED=29?=", "x"), "fail"),
        (message("Rapport", "Rien à dire"), "log"),
    ],
)
def test_keywords_over_smtp_decide_each_signals_kind(store, start_listener, mail, kind):
    listener = start_listener()
    del mail["To"]
    mail["To"] = f"backup@{DOMAIN}"
    send(listener.port, mail)
    [(username, recorded, _)] = signals(store)
    assert (username, recorded) == ("backup", kind)


def test_a_multipart_message_and_an_encoded_subject_are_recorded_as_read(store, start_listener):
    listener = start_listener()
    mail = message("=?utf-8?B?w4l0YXQgZGUgbGEgc2F1dmVnYXJkZQ==?=", "Tâche : réussie.\n", "<p>Tâche : réussie.</p>")
    mail.add_attachment(b"\x00binary log", maintype="application", subtype="octet-stream", filename="log.bin")
    send(listener.port, mail, [f"backup@{DOMAIN}", f"nas@{DOMAIN}"])
    assert signals(store) == [
        ("backup", "log", "Subject: État de la sauvegarde\n\nTâche : réussie."),
        ("nas", "success", "Subject: État de la sauvegarde\n\nTâche : réussie."),
    ]


def test_unknown_names_other_domains_and_missing_tokens_are_refused_at_rcpt_and_store_nothing(store, start_listener):
    listener = start_listener()
    for recipient, code in [
        (f"ghost@{DOMAIN}", 550),
        ("nas@example.org", 550),
        (f"vault@{DOMAIN}", 550),
        (f"vault+wrong-token-0123456789@{DOMAIN}", 550),
    ]:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("nas@home.example")
            assert smtp.rcpt(recipient)[0] == code, recipient
            # With no recipient accepted there is nothing to send.
            assert smtp.docmd("DATA")[0] == 503
    send(listener.port, message(to=f"vault+{TOKEN}@{DOMAIN}"))
    assert [(username, kind) for username, kind, _ in signals(store)] == [("vault", "success")]


def test_a_message_over_1_mb_gets_552_and_records_nothing(store, start_listener):
    listener = start_listener()
    big = message("Big", "x" * 990 + "\n")
    big.set_content(("y" * 998 + "\n") * (MAX_MESSAGE_BYTES // 1000 + 10))
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as smtp:
        # A client that announces the size is refused at MAIL.
        smtp.ehlo()
        assert smtp.mail("nas@home.example", [f"SIZE={len(bytes(big))}"])[0] == 552
        smtp.rset()
        # One that does not is refused once the message has come.
        smtp.mail("nas@home.example")
        smtp.rcpt(f"nas@{DOMAIN}")
        code, _ = smtp.data(big.as_string())
        assert code == 552
        # The session goes on.
        smtp.mail("nas@home.example")
        smtp.rcpt(f"nas@{DOMAIN}")
        assert smtp.data(bytes(message("Small", "ok")))[0] == 250
    assert [subject for _, _, subject in signals(store)] == ["Subject: Small\n\nok"]


def test_a_malformed_message_gets_554_records_nothing_and_the_listener_goes_on(store, start_listener):
    listener = start_listener()
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as smtp:
        for data in (b"no header, only words\r\n", nested_multiparts(3000), many_parts(MAX_MIME_PARTS + 1)):
            smtp.ehlo()
            smtp.mail("nas@home.example")
            smtp.rcpt(f"nas@{DOMAIN}")
            code, reply = smtp.data(data)
            assert code == 554, reply
        assert signals(store) == []
        smtp.mail("nas@home.example")
        smtp.rcpt(f"nas@{DOMAIN}")
        assert smtp.data(bytes(message()))[0] == 250
    assert len(signals(store)) == 1


def test_a_message_the_store_cannot_commit_gets_451_and_records_nothing(tmp_path, start_listener):
    disk = SmallDiskStore(tmp_path / "small.db")
    try:
        listener = start_listener(on=disk)
        send(listener.port, message("First"))
        disk.fill_up()
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("nas@home.example")
            smtp.rcpt(f"nas@{DOMAIN}")
            smtp.rcpt(f"backup@{DOMAIN}")
            code, reply = smtp.data(bytes(message("Second", "x" * 9000)))
        assert (code, reply) == (451, b"4.3.0 storage unavailable; try again later")
        assert [body for _, _, body in signals(disk)] == ["Subject: First\n\nAll done."]
        disk.free_up()
        send(listener.port, message("Third"), [f"nas@{DOMAIN}", f"backup@{DOMAIN}"])
        assert len(signals(disk)) == 3
    finally:
        disk.close()


def test_a_reload_of_the_settings_is_followed_at_the_next_recipient(store, start_listener):
    listener = start_listener()
    added = {**USERS, "router": {"monitor": True, "max_sleep": 60, "email_frequency": 60}}
    listener.live.replace(make_settings(added))
    store.reload_users(listener.live.current.users, time.time())
    send(listener.port, message(to=f"router@{DOMAIN}"))
    assert [username for username, _, _ in signals(store)] == ["router"]


@pytest.fixture
def certificate_files(ca, tmp_path):
    """(certificate path, key path) of a certificate for DOMAIN from the tests' CA."""
    issued = ca.issue_cert(DOMAIN, "127.0.0.1")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    for index, blob in enumerate(issued.cert_chain_pems):
        with certificate.open("ab") as file:
            file.write(blob.bytes())
        del index
    issued.private_key_pem.write_to_path(str(key))
    return str(certificate), str(key)


def test_starttls_is_offered_with_the_given_certificate_and_mail_goes_through_it(
    store, start_listener, certificate_files, ca_path
):
    certificate, key = certificate_files
    context = tls_context(EmailPingsConfig(0, DOMAIN, tls_certificate=certificate, tls_key=key))
    listener = start_listener(context=context)
    client = ssl.create_default_context(cafile=str(ca_path))
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as smtp:
        smtp.ehlo()
        assert "starttls" in smtp.esmtp_features
        smtp.starttls(context=client)
        smtp.ehlo()
        assert "starttls" not in smtp.esmtp_features and "auth" not in smtp.esmtp_features
        assert isinstance(smtp.sock, ssl.SSLSocket)
        smtp.send_message(message("Over TLS", "secret report"))
    # Plain SMTP is still taken (STARTTLS is offered, not required: appliances may not speak it).
    send(listener.port, message("Plain"))
    assert [body for _, _, body in signals(store)] == [
        "Subject: Over TLS\n\nsecret report",
        "Subject: Plain\n\nAll done.",
    ]


def swaks(port, *args):
    return subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--from", "nas@home.example", "--helo", "nas.home.example", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_swaks_pings_by_email_plain_and_with_starttls(store, start_listener, certificate_files, ca_path):
    certificate, key = certificate_files
    context = tls_context(EmailPingsConfig(0, DOMAIN, tls_certificate=certificate, tls_key=key))
    listener = start_listener(context=context)
    plain = swaks(listener.port, "--to", f"backup@{DOMAIN}", "--header", "Subject: Backup task failed", "--body", "x")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "<-  250 2.0.0 recorded: backup fail" in plain.stdout
    tls = swaks(
        listener.port,
        "--to", f"vault+{TOKEN}@{DOMAIN}",
        "--tls", "--tls-verify", "--tls-ca-path", str(ca_path),
        "--header", "Subject: =?utf-8?q?Sauvegarde_r=C3=A9ussie?=",
        "--body", "Completed without errors",
    )  # fmt: skip
    assert tls.returncode == 0, tls.stdout + tls.stderr
    assert "TLS started with cipher" in tls.stdout
    unknown = swaks(listener.port, "--to", f"ghost@{DOMAIN}")
    assert unknown.returncode != 0 and "<** 550 5.1.1 unknown user ghost" in unknown.stdout
    assert signals(store) == [
        ("backup", "fail", "Subject: Backup task failed\n\nx"),
        ("vault", "success", "Subject: Sauvegarde réussie\n\nCompleted without errors"),
    ]


def greeting(port, source="127.0.0.1"):
    """The first line a new connection from `source` gets, or b"" if it is closed without one; and the socket."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return connection.makefile("rb").readline(), connection


def test_at_most_max_sessions_at_once_and_max_sessions_per_address(start_listener):
    listener = start_listener(limits=ListenerLimits(max_sessions=3, max_sessions_per_address=2))
    with contextlib.ExitStack() as held:
        first, second = (held.enter_context(greeting(listener.port)[1]) for _ in range(2))
        line, refused = greeting(listener.port)
        with refused:
            assert line == b"421 4.7.0 too many connections from 127.0.0.1; try again later\r\n"
            assert refused.recv(10) == b""  # and closed
        line, third = greeting(listener.port, "127.0.0.2")
        held.enter_context(third)
        assert line.startswith(b"220 ")
        line, refused = greeting(listener.port, "127.0.0.3")
        with refused:
            assert line == b"421 4.7.0 too many connections; try again later\r\n"
        first.close()
        wait_until(lambda: greeting(listener.port, "127.0.0.4")[0].startswith(b"220 "), message="a session freed")
    del second


def test_an_idle_session_is_closed_after_the_command_timeout_and_every_session_at_its_deadline(start_listener):
    limits = ListenerLimits(command_timeout=0.5, session_deadline=2.0)
    listener = start_listener(limits=limits)
    line, idle = greeting(listener.port)
    with idle:
        started = time.monotonic()
        assert idle.recv(100) == b""
        assert time.monotonic() - started < limits.command_timeout + SLACK
    line, busy = greeting(listener.port)
    with busy:
        started = time.monotonic()
        replies = busy.makefile("rb")
        while time.monotonic() - started < limits.session_deadline + SLACK:
            with contextlib.suppress(OSError):
                busy.sendall(b"NOOP\r\n")
            reply = replies.readline()
            if reply != b"250 OK\r\n":
                break
            time.sleep(0.1)
        assert reply == b"421 4.4.2 session deadline reached\r\n"
        assert replies.readline() == b""


def test_an_address_naming_wrong_recipients_is_refused_for_a_while_others_are_not(store, start_listener):
    listener = start_listener()
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=10, source_address=("127.0.0.5", 0)) as smtp:
        smtp.ehlo()
        smtp.mail("guesser@example.org")
        for attempt in range(WRONG_RECIPIENT_LIMIT):
            assert smtp.rcpt(f"guess{attempt}@{DOMAIN}")[0] == 550
        code, reply = smtp.rcpt(f"nas@{DOMAIN}")
        assert code == 450 and reply.startswith(b"4.7.1 too many unknown recipients from 127.0.0.5; try again in")
    send(listener.port, message(), source_address=("127.0.0.6", 0))
    assert [username for username, _, _ in signals(store)] == ["nas"]


class HeldStore(Store):
    """The real Store, whose batches of signals wait until the test releases them: a commit that takes long."""

    def __init__(self, path):
        super().__init__(path)
        self.entered = threading.Event()
        self.release = threading.Event()

    @contextlib.contextmanager
    def ping_batch(self):
        self.entered.set()
        self.release.wait(30)
        with super().ping_batch():
            yield


def test_a_message_being_recorded_at_its_sessions_deadline_gets_its_250_before_the_session_closes(
    tmp_path, start_listener
):
    held = HeldStore(tmp_path / "held.db")
    try:
        limits = ListenerLimits(session_deadline=0.5)
        listener = start_listener(limits=limits, on=held)
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("nas@home.example")
            smtp.rcpt(f"nas@{DOMAIN}")
            smtp.send(b"DATA\r\n")
            assert smtp.getreply()[0] == 354
            smtp.send(message().as_bytes().replace(b"\n", b"\r\n") + b".\r\n")
            assert held.entered.wait(10)
            time.sleep(limits.session_deadline + 0.5)  # past the deadline, while the commit is held
            held.release.set()
            assert smtp.getreply() == (250, b"2.0.0 recorded: nas success")
            # Then, unasked, the deadline.
            assert smtp.getreply() == (421, b"4.4.2 session deadline reached")
        assert len(signals(held)) == 1
    finally:
        held.release.set()
        held.close()


def test_garbage_from_a_client_gets_smtp_errors_never_a_crash(store, start_listener, caplog):
    listener = start_listener()
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as connection:
        replies = connection.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        for line in (
            b"EHLO x",
            b"MAIL FROM:<a@b> SIZE=huge",
            b"MAIL FROM:<a@b>",
            b"RCPT TO:<nas@" + DOMAIN.encode() + b"> NOTIFY=NEVER",
            b"RCPT TO:<\xff\xfe@" + DOMAIN.encode() + b">",
            b"RCPT TO:<<<>>>",
            b"RCPT TO:" + b"x" * 5000,
            b"AUTH PLAIN AGFkbWluAHNlY3JldA==",
            b"\x00\x01\x02",
        ):
            connection.sendall(line + b"\r\n")
            reply = replies.readline()
            while reply[3:4] == b"-":  # a reply of several lines
                reply = replies.readline()
            assert reply[:1] in (b"2", b"4", b"5"), (line, reply)
            assert reply[:1] != b"2" or line in (b"EHLO x", b"MAIL FROM:<a@b>"), (line, reply)
    send(listener.port, message())
    assert [username for username, _, _ in signals(store)] == ["nas"]
    assert not [record for record in caplog.records if record.levelname in ("ERROR", "CRITICAL")]


class FailingSecondStore(Store):
    """The real Store, but recording a signal for `fails_for` fails as a storage fault would, after the others
    of its batch were written."""

    fails_for = "backup"

    def record_ping(self, username, now, kind="success", exit_code=None, body=None):
        if username == self.fails_for:
            raise StoreUnavailableError("storage unavailable: the test says so")
        super().record_ping(username, now, kind, exit_code, body)


def test_a_message_to_several_users_is_recorded_for_all_or_for_none(tmp_path, start_listener):
    failing = FailingSecondStore(tmp_path / "failing.db")
    try:
        listener = start_listener(on=failing)
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("nas@home.example")
            smtp.rcpt(f"nas@{DOMAIN}")
            smtp.rcpt(f"backup@{DOMAIN}")
            assert smtp.data(message().as_string())[0] == 451
        assert signals(failing) == []
    finally:
        failing.close()
