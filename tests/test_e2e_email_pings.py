"""Email pings through the real service (`python server.py` subprocesses): mail relayed by a real Postfix, a
kill -9 right after the 250, a flood of SMTP sessions while HTTP pings are answered, several instances on one
PostgreSQL database each listening, and the startup errors of a listener that cannot start."""

import collections
import concurrent.futures
import contextlib
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import textwrap
from email.message import EmailMessage
from pathlib import Path

import pytest

from email_pings import ListenerLimits
from support import ServerProcess, free_port, query, run_server, server_env, wait_until, write_settings

DOMAIN = "ping.example.net"
# Debian's Postfix, by path: /usr/sbin may not be on PATH.
POSTFIX = "/usr/sbin/postfix"
USERS = {
    "nas": {"monitor": True, "max_sleep": 86400, "email_frequency": 3600},
    "backup": {
        "monitor": True,
        "max_sleep": 86400,
        "email_frequency": 3600,
        "email_keywords": {"fail": ["failed"], "success": ["completed"]},
    },
}
LIMITS = ListenerLimits()


def email_settings(tmp_path, port, users=USERS, **email_pings):
    return write_settings(
        tmp_path / "settings.json",
        users,
        email_pings={"port": port, "domain": DOMAIN, "host": "127.0.0.1", **email_pings},
    )


def message(subject="Backup task completed", to=f"nas@{DOMAIN}", text="Task nightly completed."):
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "nas@home.example", to, subject
    mail.set_content(text)
    return mail


def signals(db):
    """(username, kind, body) of every signal in the database `db`, oldest first."""
    return query(db, "SELECT username, kind, body FROM pings JOIN users ON users.id = pings.user_id ORDER BY pings.id")


def test_mail_to_a_checks_uuid_is_a_signal_for_it_as_ping_uuid_is(tmp_path, start_server):
    port = free_port()
    service = start_server(email_settings(tmp_path, port))
    db = tmp_path / "ping_listener.db"
    [(uuid,)] = query(db, "SELECT uuid FROM users WHERE username = 'nas'")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(message("Backup task completed", to=f"{uuid.upper()}@{DOMAIN}"))
    assert service.get(f"/ping/{uuid}")[0] == 200
    assert [(name, kind) for name, kind, _ in signals(db)] == [("nas", "success"), ("nas", "success")]


def test_the_service_takes_email_pings_with_its_http_ones_and_stops_cleanly(tmp_path, start_server):
    port = free_port()
    service = start_server(email_settings(tmp_path, port))
    assert f"listening for mail to @{DOMAIN} on 127.0.0.1:{port}" in service.log()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        assert smtp.ehlo()[1].startswith(DOMAIN.encode())
        smtp.send_message(message("Hyper Backup: task nightly failed", to=f"backup@{DOMAIN}"))
    assert service.get("/ping/nas")[0] == 200
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
        replies = idle.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        assert service.stop() == 0
        # A session still open is told, not cut.
        assert replies.readline() == b"421 4.3.2 the service is shutting down\r\n"
    db = tmp_path / "ping_listener.db"
    assert signals(db) == [
        ("backup", "fail", "Subject: Hyper Backup: task nightly failed\n\nTask nightly completed."),
        ("nas", "success", None),
    ]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10)


def test_a_kill_9_right_after_the_250_keeps_the_signal(tmp_path, start_server):
    port = free_port()
    settings = email_settings(tmp_path, port)
    service = start_server(settings)
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
    smtp.ehlo()
    smtp.mail("nas@home.example")
    smtp.rcpt(f"nas@{DOMAIN}")
    smtp.rcpt(f"backup@{DOMAIN}")
    code, _ = smtp.data(message("Backup task failed").as_string())
    service.process.send_signal(signal.SIGKILL)
    assert code == 250
    service.process.wait()
    smtp.close()
    db = tmp_path / "ping_listener.db"
    body = "Subject: Backup task failed\n\nTask nightly completed."
    assert signals(db) == [("nas", "success", body), ("backup", "fail", body)]
    restarted = start_server(settings)
    status, answer = restarted.get("/logs?username=backup&details=1&" + _today(restarted))
    assert status == 200 and '"kind": "fail"' in answer, answer
    assert restarted.stop() == 0


def _today(service):
    """year=..&month=..&day=.. of the service's today, from a ping's answer (%y/%m/%d %H:%M:%S)."""
    status, answer = service.get("/ping/nas")
    assert status == 200
    year, month, day = answer.split()[0].split("/")
    return f"year={year}&month={month}&day={day}"


class Postfix:
    """A real Postfix (Debian's package) in a directory of its own: a "Local only" relay listening on
    127.0.0.1:`port`, taking mail from 127.0.0.0/8 and sending mail for `domain` to [127.0.0.1]:`relay_to`,
    as a NAS's mail server would. Its master must run as root (Postfix refuses otherwise); its daemons run as
    the `postfix` user, which is why the directory is made in /tmp, readable by all."""

    def __init__(self, port, domain, relay_to):
        self.port = port
        self.directory = Path(tempfile.mkdtemp(prefix="postfix-"))
        self.directory.chmod(0o755)
        config, queue, data = (self.directory / name for name in ("etc", "spool", "data"))
        for directory in (config, queue, data):
            directory.mkdir()
        shutil.chown(data, "postfix")
        master = Path("/usr/share/postfix/master.cf.dist").read_text()  # the package's own, as shipped
        # Its own smtpd on the port given, not port 25.
        master = "\n".join(line for line in master.splitlines() if not line.startswith("smtp      inet"))
        master += f"\n127.0.0.1:{port} inet n - n - - smtpd\n"
        (config / "master.cf").write_text(master)
        (config / "main.cf").write_text(
            textwrap.dedent(f"""\
                compatibility_level = 3.6
                queue_directory = {queue}
                data_directory = {data}
                mail_owner = postfix
                setgid_group = postdrop
                inet_interfaces = 127.0.0.1
                inet_protocols = ipv4
                myhostname = relay.home.example
                mydestination =
                mynetworks = 127.0.0.0/8
                relay_domains = {domain}
                transport_maps = inline:{{{domain}=smtp:[127.0.0.1]:{relay_to}}}
                smtp_tls_security_level = none
                alias_maps =
                alias_database =
                local_transport = error:local delivery is disabled
                maillog_file = /dev/stdout
                syslog_name = postfix-test
                """)
        )
        self.log_path = self.directory / "maillog"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [POSTFIX, "-c", str(config), "start-fg"], stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_until_listening(self):
        def listening():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
            return False

        wait_until(listening, timeout=30, message=f"postfix listening on {self.port}; log:\n{self.log()}")

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        subprocess.run([POSTFIX, "-c", str(self.directory / "etc"), "stop"], capture_output=True, timeout=30)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def postfix_relay():
    """start(relay_to): a real Postfix relaying mail for DOMAIN to 127.0.0.1:relay_to; stopped after the test."""
    if not Path(POSTFIX).exists():
        pytest.fail("Debian's postfix package is needed (make test installs it)")
    if os.geteuid() != 0:
        pytest.skip("Postfix's master runs as root only")
    started = []

    def start(relay_to):
        relay = Postfix(free_port(), DOMAIN, relay_to)
        started.append(relay)
        relay.wait_until_listening()
        return relay

    yield start
    for relay in started:
        relay.stop()


def test_a_message_relayed_by_postfix_is_recorded_and_an_unknown_name_bounces_at_the_relay(
    tmp_path, start_server, postfix_relay
):
    port = free_port()
    service = start_server(email_settings(tmp_path, port))
    relay = postfix_relay(port)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as smtp:
        smtp.send_message(message("Hyper Backup: task nightly failed", to=f"backup@{DOMAIN}"))
        smtp.send_message(message(to=f"ghost@{DOMAIN}"))
    db = tmp_path / "ping_listener.db"
    wait_until(lambda: signals(db), timeout=60, message=f"the relayed signal; postfix log:\n{relay.log()}")
    assert signals(db) == [("backup", "fail", "Subject: Hyper Backup: task nightly failed\n\nTask nightly completed.")]
    # Postfix got the 550 at RCPT for the unknown name: it bounces the message, never retries it.
    wait_until(
        lambda: "said: 550 5.1.1 unknown user ghost" in relay.log() and "status=bounced" in relay.log(),
        timeout=60,
        message=f"the bounce; postfix log:\n{relay.log()}",
    )
    assert service.stop() == 0


def test_a_flood_of_smtp_sessions_is_held_to_its_bounds_while_http_pings_are_answered(tmp_path, start_server):
    port = free_port()
    service = start_server(email_settings(tmp_path, port))
    addresses = [f"127.0.0.{10 + index}" for index in range(LIMITS.max_sessions // LIMITS.max_sessions_per_address + 2)]
    pinged = collections.Counter()

    def ping_http(count):
        for _ in range(count):
            pinged[service.get("/ping/nas")[0]] += 1

    with contextlib.ExitStack() as held, concurrent.futures.ThreadPoolExecutor(4) as pingers:
        pinging = [pingers.submit(ping_http, 50) for _ in range(4)]
        greetings = collections.Counter()
        for address in addresses:
            for _ in range(LIMITS.max_sessions_per_address + 5):
                connection = held.enter_context(
                    socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(address, 0))
                )
                greetings[connection.makefile("rb").readline()] += 1
        for future in pinging:
            future.result()
    attempted = len(addresses) * (LIMITS.max_sessions_per_address + 5)
    assert greetings[f"220 {DOMAIN} Ping Listener\r\n".encode()] == LIMITS.max_sessions, greetings
    refused = {line: count for line, count in greetings.items() if not line.startswith(b"220 ")}
    assert all(line.startswith(b"421 4.7.0 too many connections") for line in refused), refused
    assert sum(refused.values()) == attempted - LIMITS.max_sessions
    assert pinged == {200: 200}

    # The held sessions closed: a flood of messages goes through, while pings are answered.
    def send_messages(index):
        replies = collections.Counter()
        for number in range(10):
            source = (addresses[index % len(addresses)], 0)
            with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=source) as smtp:
                replies[tuple(smtp.send_message(message(f"run {index}-{number}")).items())] += 1
        return replies

    with concurrent.futures.ThreadPoolExecutor(20) as senders:
        pinging = [senders.submit(ping_http, 50) for _ in range(2)]
        sending = [senders.submit(send_messages, index) for index in range(16)]
        sent = sum((future.result() for future in sending), collections.Counter())
        for future in pinging:
            future.result()
    assert sent == {(): 160}  # no recipient refused
    assert pinged == {200: 300}
    assert service.stop() == 0
    db = tmp_path / "ping_listener.db"
    assert query(db, "SELECT count(*) FROM pings WHERE body LIKE 'Subject: run %'") == [(160,)]


def test_several_instances_on_one_postgresql_database_each_listen_and_record_each_message_once(
    tmp_path, postgres_url, smtp_server, ca_path
):
    ports = [free_port(), free_port()]
    instances = []
    try:
        for index, port in enumerate(ports):
            (tmp_path / str(index)).mkdir()
            settings = email_settings(tmp_path / str(index), port)
            env = server_env(smtp_server.port, ca_path)
            instances.append(ServerProcess(settings, postgres_url, env, tmp_path / f"server-{index}.log").start())
        for index, port in enumerate(ports):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.send_message(message(f"to instance {index}"))
        assert sorted(body for _, _, body in signals(postgres_url)) == [
            "Subject: to instance 0\n\nTask nightly completed.",
            "Subject: to instance 1\n\nTask nightly completed.",
        ]
        for instance in instances:
            assert instance.stop() == 0
    finally:
        for instance in instances:
            if instance.process.poll() is None:
                instance.kill()


def test_a_listener_that_cannot_start_stops_startup_with_status_2_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = email_settings(tmp_path, port)
        result = run_server("--settings", str(settings), "--db", str(tmp_path / "db.sqlite"), "--port", "0")
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"email_pings: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    missing = email_settings(tmp_path, 0, tls_certificate=str(tmp_path / "none.pem"), tls_key=str(tmp_path / "key.pem"))
    result = run_server("--settings", str(missing), "--db", str(tmp_path / "db.sqlite"), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"email_pings.tls_certificate: cannot read {tmp_path / 'none.pem'} or its key: No such file or directory"
    )
