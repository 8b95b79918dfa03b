"""The real service as a subprocess on 127.0.0.1, sending through a real SMTP-over-TLS server."""

import concurrent.futures
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest

import server
from support import (
    LIBFAKETIME,
    ROOT,
    SLACK,
    SMTP_LOGIN,
    SilentSmtpServer,
    TlsSmtpServer,
    free_port,
    outbox,
    query,
    run_server,
    server_env,
    wait_until,
    write_settings,
)

PI = {"pi": {"monitor": True, "max_sleep": 0.5, "email_frequency": 3600}}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """The --db of the service under test, for each backend: a SQLite file, or a new PostgreSQL database."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "ping_listener.db"


def test_a_silent_device_is_reported_by_email_with_a_working_logs_link(tmp_path, db, start_server, smtp_server):
    service = start_server(write_settings(tmp_path / "settings.json", PI), db)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", service.url)
    status, answer = service.get("/ping?username=pi")
    assert status == 200 and re.fullmatch(r"\d\d/\d\d/\d\d \d\d:\d\d:\d\d", answer)
    ping_time = answer.split()[1]
    year, month, day = answer.split()[0].split("/")
    assert service.get(f"/logs?username=pi&year={year}&month={month}&day={day}") == (200, f'["{ping_time}"]')

    [(mail_from, recipients, message)] = smtp_server.wait_for_messages(1)
    assert (mail_from, recipients) == (SMTP_LOGIN, ["oncall@example.com"])
    assert (message["From"], message["To"]) == (f"Ping Listener <{SMTP_LOGIN}>", "oncall@example.com")
    assert message["Subject"] == "pi disconnection detected"
    assert message["Date"] and re.fullmatch(r"<.+@example\.com>", message["Message-ID"])
    body = message.get_content()
    assert "heard nothing from pi for more than 0.5 seconds." in body
    assert "You will be reminded every hour while it stays silent." in body
    assert f"Last ping: 20{year}-{month}-{day} {ping_time}" in body
    link = re.search(r"http://\S+/logs\?\S+", body).group()
    assert link == f"{service.url}/logs?username=pi&year={year}&month={month}&day={day}"
    assert service.get(link.removeprefix(service.url)) == (200, f'["{ping_time}"]')

    assert service.stop() == 0
    assert outbox(db) == [("oncall@example.com", "sent", 1)]


def test_server_root_prefixes_the_logs_link(tmp_path, start_server, smtp_server):
    start_server(write_settings(tmp_path / "settings.json", PI, server_root="https://monitor.example.net/pl"))
    [(_, _, message)] = smtp_server.wait_for_messages(1)
    assert "https://monitor.example.net/pl/logs?username=pi&year=" in message.get_content()


def test_it_prints_one_listening_line_and_exits_0_soon_after_sigterm(tmp_path, db, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", PI), db)
    service.get("/ping?username=pi")
    # What the service gives itself on SIGTERM: requests in flight, then its loops; then it exits.
    assert service.stop(timeout=server.SHUTDOWN_GRACE + server.SCHEDULER_STOP_TIMEOUT + SLACK) == 0
    assert service.process.stdout.read() == b""  # nothing after the one line already read


def test_pings_and_queued_email_survive_a_restart(tmp_path, db, start_server, smtp_server):
    settings = write_settings(tmp_path / "settings.json", PI)
    down = start_server(settings, db, SMTP_PORT=str(free_port()))
    status, answer = down.get("/ping?username=pi")
    year, month, day = answer.split()[0].split("/")
    # The SMTP server is unreachable: the alert waits in the outbox, its failed attempt recorded.
    for _ in range(500):
        if outbox(db) and outbox(db)[0][2] >= 1:
            break
        time.sleep(0.02)
    assert outbox(db) == [("oncall@example.com", "queued", 1)]
    assert "cannot send email through 127.0.0.1" in down.log()
    assert down.stop() == 0

    up = start_server(settings, db)
    assert up.get(f"/logs?username=pi&year={year}&month={month}&day={day}") == (200, f'["{answer.split()[1]}"]')
    [(_, _, message)] = smtp_server.wait_for_messages(1, timeout=15)
    assert message["Subject"] == "pi disconnection detected"
    assert up.stop() == 0
    assert outbox(db) == [("oncall@example.com", "sent", 2)]


def test_a_user_removed_from_the_settings_is_404_but_keeps_its_history(tmp_path, db, start_server):
    settings = tmp_path / "settings.json"
    first = start_server(write_settings(settings, PI), db)
    _, answer = first.get("/ping?username=pi")
    year, month, day = answer.split()[0].split("/")
    first.stop()
    second = start_server(write_settings(settings, {"nas": PI["pi"]}), db)
    assert second.get("/ping?username=pi") == (404, "unknown user pi")
    assert second.get(f"/logs?username=pi&year={year}&month={month}&day={day}")[0] == 200


def test_the_readme_sqlite3_query_answers_when_a_device_pinged(tmp_path, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", PI))
    _, answer = service.get("/ping?username=pi")
    service.stop()
    output = subprocess.run(
        ["sqlite3", str(tmp_path / "ping_listener.db"), "SELECT local_time FROM pings_readable WHERE username = 'pi'"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    year, month, day = answer.split()[0].split("/")
    assert output == f"20{year}-{month}-{day} {answer.split()[1]}\n"


def test_64_concurrent_pingers_all_succeed_while_the_scheduler_writes(tmp_path, db, start_server, smtp_server):
    users = {f"device{i}": {"monitor": True, "max_sleep": 0, "email_frequency": 0} for i in range(200)}
    service = start_server(write_settings(tmp_path / "settings.json", users, base_frequency=0), db)

    def ping(index):
        statuses = []
        for _ in range(20):
            name = urllib.parse.quote(f"device{index}")
            statuses.append(service.get(f"/ping?username={name}")[0])
        return statuses

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        statuses = [status for result in pool.map(ping, range(64)) for status in result]
    assert statuses.count(200) == 64 * 20, {status: statuses.count(status) for status in set(statuses)}
    assert service.stop() == 0
    assert "locked" not in service.log()
    assert query(db, "SELECT count(*) FROM pings") == [(64 * 20,)]
    assert query(db, "SELECT count(*) > 0 FROM alerts") == [(True,)]


def test_invalid_settings_stop_startup_with_status_2_and_one_line_per_problem(tmp_path):
    settings = write_settings(tmp_path / "settings.json", {"pi": {"monitor": "yes", "max_sleep": "ten"}})
    result = run_server("--settings", str(settings), "--db", str(tmp_path / "db"), "--port", "0")
    assert result.returncode == 2
    assert sorted(result.stderr.splitlines()) == [
        "users.pi.email_frequency: missing",
        'users.pi.max_sleep: must be a number >= 0, got "ten"',
        'users.pi.monitor: must be true or false, got "yes"',
    ]
    assert result.stdout == ""


def test_a_cycle_of_dependencies_stops_startup_with_status_2_naming_it(tmp_path):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    users = {"router": {**user, "depends_on": "cam"}, "cam": {**user, "depends_on": "router"}}
    settings = write_settings(tmp_path / "settings.json", users)
    result = run_server("--settings", str(settings), "--db", str(tmp_path / "db"), "--port", "0")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == 'users.router.depends_on: a cycle of dependencies: "router" -> "cam" -> "router"\n'


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"SMTP_PORT": "smtp"}, "SMTP_PORT: must be an integer port from 1 to 65535, got 'smtp'"),
        ({"SMTP_SECURITY": "tls"}, "SMTP_SECURITY: must be one of ssl, starttls or none, got 'tls'"),
        (
            {"SMTP_SECURITY": "none", "SMTP_HOST": "mail.example.net"},
            "SMTP_SECURITY: none (no TLS) is only allowed to a loopback SMTP_HOST (localhost, 127.0.0.0/8, ::1),"
            " got SMTP_HOST 'mail.example.net'; use starttls or ssl",
        ),
        (
            {"METRICS_TOKEN": "abc"},
            "METRICS_TOKEN: must be at least 16 characters without spaces or control characters, got 3 characters",
        ),
        (
            {"API_KEY": "fifteen-chars-x"},
            "API_KEY: must be at least 16 characters without spaces or control characters, got 15 characters",
        ),
        (
            {"PING_KEY": "ping/key-0123456789"},
            "PING_KEY: must be at least 16 characters without spaces, / or control characters, got 19 characters",
        ),
    ],
)
def test_a_bad_smtp_port_or_security_or_plain_text_to_another_machine_stops_startup_with_status_2(
    tmp_path, environ, problem
):
    settings = write_settings(tmp_path / "settings.json", PI)
    result = run_server(
        "--settings",
        str(settings),
        "--db",
        str(tmp_path / "db"),
        "--port",
        "0",
        env={**environ, "PATH": "/usr/bin:/bin"},
    )
    assert (result.returncode, result.stderr, result.stdout) == (2, problem + "\n", "")
    assert not (tmp_path / "db").exists()


def test_a_database_that_is_not_sqlite_stops_startup_with_status_2_naming_it(tmp_path):
    settings = write_settings(tmp_path / "settings.json", PI)
    db_path = tmp_path / "notes.txt"
    db_path.write_text("not a database " * 1000)
    result = run_server("--settings", str(settings), "--db", str(db_path), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.startswith(f"{db_path}: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_an_invalid_port_stops_startup_with_status_2(tmp_path, port):
    settings = write_settings(tmp_path / "settings.json", PI)
    result = run_server("--settings", str(settings), "--db", str(tmp_path / "db"), "--port", port)
    assert result.returncode == 2
    assert f"argument --port: must be an integer from 0 to 65535, got {port!r}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_address_it_cannot_listen_on_stops_startup_with_status_2(tmp_path):
    settings = write_settings(tmp_path / "settings.json", PI)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for host, where in (("nonexistent.invalid", "nonexistent.invalid:0"), ("127.0.0.1", f"127.0.0.1:{port}")):
            result = run_server(
                "--settings",
                str(settings),
                "--db",
                str(tmp_path / "db"),
                "--host",
                host,
                "--port",
                "0" if host != "127.0.0.1" else str(port),
            )
            assert result.returncode == 2, result.stderr
            assert f"cannot listen on {where}: " in result.stderr
            assert "Traceback" not in result.stderr


def send_test_email(address, cwd, **env):
    """`python server.py --send-test-email ADDRESS` run in `cwd` with `env` (only)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--send-test-email", address],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=cwd,
    )


def test_send_test_email_exits_0_once_the_server_accepted_it_and_touches_no_database(tmp_path, smtp_server, ca_path):
    result = send_test_email("me@example.com", tmp_path, **server_env(smtp_server.port, ca_path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"test email to me@example.com accepted by 127.0.0.1:{smtp_server.port}\n"
    [(_, recipients, message)] = smtp_server.wait_for_messages(1)
    assert (recipients, message["From"]) == (["me@example.com"], f"Ping Listener <{SMTP_LOGIN}>")
    assert message["Subject"] == "Ping Listener test email"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"SMTP_PASSWORD": "wrong"},
            "535 5.7.8 Authentication credentials invalid (check SMTP_LOGIN and SMTP_PASSWORD)",
        ),
        ({"SMTP_LOGIN": "", "SMTP_PASSWORD": ""}, "530 5.7.0 Authentication required"),
        ({"SMTP_PORT": "unreachable"}, "ConnectionRefusedError: [Errno 111] Connection refused"),
    ],
)
def test_send_test_email_exits_1_with_the_servers_answer_or_the_connection_problem(
    tmp_path, smtp_server, ca_path, env, problem
):
    port = free_port() if env.get("SMTP_PORT") == "unreachable" else smtp_server.port
    env = server_env(smtp_server.port, ca_path, **{**env, "SMTP_PORT": str(port)})
    result = send_test_email("me@example.com", tmp_path, **env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"test email to me@example.com not sent through 127.0.0.1:{port}: {problem}")
    assert len(result.stderr.splitlines()) == 1
    assert smtp_server.messages == []


def test_send_test_email_exits_2_for_a_bad_address_or_smtp_setting(tmp_path):
    result = send_test_email("me@", tmp_path, SMTP_PORT="smtp", SMTP_FROM_NAME="two\nlines", PATH="/usr/bin:/bin")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "--send-test-email: must be an email address like name@example.com, got 'me@'",
        "SMTP_PORT: must be an integer port from 1 to 65535, got 'smtp'",
        "SMTP_FROM_NAME: must be one line without control characters, got 'two\\nlines'",
    ]


def test_a_local_relay_gets_the_test_email_and_the_alerts_for_root_at_localhost(tmp_path, ca, ca_path, start_server):
    relay = TlsSmtpServer(ca, require_login=False, security="plain").start()
    local = {
        "SMTP_PORT": str(relay.port),
        "SMTP_SECURITY": "none",
        "SMTP_LOGIN": "",
        "SMTP_PASSWORD": "",
        "SMTP_FROM": "ping-listener@localhost",
    }
    try:
        result = send_test_email("root@localhost", tmp_path, **server_env(relay.port, ca_path, **local))
        assert (result.returncode, result.stderr) == (0, "")
        service = start_server(write_settings(tmp_path / "settings.json", PI, recipient="root@localhost"), **local)
        messages = relay.wait_for_messages(2)
        assert service.stop() == 0
    finally:
        relay.stop()
    assert [(mail_from, recipients, message["Subject"]) for mail_from, recipients, message in messages] == [
        ("ping-listener@localhost", ["root@localhost"], "Ping Listener test email"),
        ("ping-listener@localhost", ["root@localhost"], "pi disconnection detected"),
    ]


def test_the_startup_login_check_logs_that_it_worked(tmp_path, start_server, smtp_server):
    service = start_server(write_settings(tmp_path / "settings.json", PI, server_root="https://monitor.example.net"))
    expected = f"INFO ping_listener.server: SMTP check: logged in to 127.0.0.1:{smtp_server.port} as {SMTP_LOGIN}"
    wait_until(lambda: expected in service.log(), message="the SMTP check's line")
    assert smtp_server.messages == []
    assert "server_root" not in service.log()


def test_a_failed_startup_login_check_is_logged_loudly_and_startup_goes_on(tmp_path, start_server, smtp_server):
    service = start_server(write_settings(tmp_path / "settings.json", {}), SMTP_PASSWORD="wrong")
    wait_until(lambda: "SMTP check failed" in service.log(), message="the SMTP check's line")
    assert (
        "ERROR ping_listener.server: SMTP check failed: 535 5.7.8 Authentication credentials invalid"
        " (check SMTP_LOGIN and SMTP_PASSWORD); alerts stay queued and are retried until this is fixed"
    ) in service.log()
    assert service.get("/logs?username=nobody&year=26&month=1&day=1")[0] == 404  # it serves all the same


def test_an_unreachable_smtp_server_never_delays_startup(tmp_path, start_server):
    silent = SilentSmtpServer()
    try:
        service = start_server(write_settings(tmp_path / "settings.json", PI), SMTP_PORT=str(silent.port))
        # Listening and answering while the SMTP check waits for a greeting that never comes (until
        # SMTP_TIMEOUT, when it would log that it failed).
        assert service.get("/ping?username=pi")[0] == 200
        assert service.stop() == 0
    finally:
        silent.stop()
    assert "SMTP check" not in service.log()  # still waiting for its answer when the service stopped


def test_without_server_root_on_a_loopback_address_startup_warns_that_links_work_only_here(tmp_path, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", PI))
    assert service.stop() == 0
    assert (
        f"WARNING ping_listener.server: server_root is not set and the service listens on 127.0.0.1: the links in"
        f" alert emails ({service.url}/logs?...) will not work on another device, such as the phone you read"
        f" them on; set server_root in {tmp_path / 'settings.json'}"
    ) in service.log()


def test_a_database_in_a_missing_directory_stops_startup_with_one_line_naming_the_directory(tmp_path):
    settings = write_settings(tmp_path / "settings.json", PI)
    db_path = tmp_path / "state" / "ping_listener.db"
    result = run_server("--settings", str(settings), "--db", str(db_path), "--port", "0")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"{db_path}: the directory {tmp_path / 'state'} does not exist; create it or choose another --db\n"
    )


JOB = {"job": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}}


def subjects(smtp_server):
    return [message["Subject"] for _, _, message in smtp_server.messages]


def test_a_failure_with_its_output_is_emailed_and_the_next_success_says_it_is_back_once(
    tmp_path, db, start_server, smtp_server
):
    service = start_server(write_settings(tmp_path / "settings.json", JOB), db)
    output = b"x" * 20_000 + b"\nrsync: write failed: No space left on device (28)\n\xff"
    status, answer = service.post("/ping/job/23", output)
    assert status == 200
    [(_, _, failure)] = smtp_server.wait_for_messages(1)
    assert failure["Subject"] == "job failure reported"
    body = failure.get_content()
    assert f"Failure reported: 20{answer.replace('/', '-')}, exit code 23." in body
    # The first 10 000 bytes were kept, and the email quotes their last 2 000 characters.
    assert "x" * 2000 in body and "No space left" not in body
    assert service.get("/ping/job")[0] == 200
    [_, (_, _, back)] = smtp_server.wait_for_messages(2)
    assert back["Subject"] == "job is back"
    assert "Down for: " in back.get_content()
    assert service.get("/ping?username=job&exit_code=0")[0] == 200
    assert service.stop() == 0
    assert subjects(smtp_server) == ["job failure reported", "job is back"]


def test_one_recovery_for_a_failure_alerted_before_a_restart(tmp_path, db, start_server, smtp_server):
    settings = write_settings(tmp_path / "settings.json", JOB)
    first = start_server(settings, db)
    assert first.get("/ping?username=job&status=fail")[0] == 200
    smtp_server.wait_for_messages(1)
    assert first.stop() == 0
    second = start_server(settings, db)
    assert second.get("/ping/job/0")[0] == 200
    smtp_server.wait_for_messages(2)
    assert second.stop() == 0
    assert subjects(smtp_server) == ["job failure reported", "job is back"]


def test_a_run_past_max_runtime_is_reported_and_logs_details_show_it(tmp_path, db, start_server, smtp_server):
    token = "the-jobs-token-0123456789"
    users = {"job": {**JOB["job"], "max_runtime": 0.5, "token": token}}
    service = start_server(write_settings(tmp_path / "settings.json", users), db)
    status, answer = service.get(f"/ping/job/start?token={token}")
    [(_, _, late)] = smtp_server.wait_for_messages(1)
    assert late["Subject"] == "job did not finish in time"
    service.post("/ping/job", b"done", headers={"Authorization": f"Bearer {token}"})
    smtp_server.wait_for_messages(2)
    year, month, day = answer.split()[0].split("/")
    query = f"username=job&year={year}&month={month}&day={day}&details=1"
    status, details = service.get(f"/logs?{query}", headers={"Authorization": f"Bearer {token}"})
    assert service.stop() == 0
    start, success = json.loads(details)
    assert (start["kind"], start["time"]) == ("start", answer.split()[1])
    assert (success["kind"], success["body"], success["duration"] > 0.5) == ("success", "done", True)
    assert subjects(smtp_server) == ["job did not finish in time", "job is back"]


def test_a_scheduled_job_that_missed_its_run_is_reported_by_email_naming_the_run(
    tmp_path, db, start_server, smtp_server
):
    users = {
        "backup": {
            "monitor": True,
            "schedule": "30 2 * * 1-5",
            "tz": "Europe/Paris",
            "grace": 1,
            "email_frequency": 3600,
        }
    }
    # The service's clock starts 3 seconds before the job's 02:30 run in Paris.
    service = start_server(
        write_settings(tmp_path / "settings.json", users),
        db,
        LD_PRELOAD=LIBFAKETIME,
        FAKETIME="@2026-11-30 02:29:57",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        TZ="Europe/Paris",
    )
    [(_, recipients, message)] = smtp_server.wait_for_messages(1)
    assert (recipients, message["Subject"]) == (["oncall@example.com"], "backup missed its 02:30 run")
    body = message.get_content()
    assert "backup missed its run expected at 2026-11-30 02:30 (schedule 30 2 * * 1-5, with 1 second of grace)" in body
    assert "No ping received since monitoring began at 2026-11-30 02:29:5" in body
    assert service.stop() == 0


STORM = {
    "router": {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600},
    **{
        f"cam{index}": {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600, "depends_on": "router"}
        for index in range(5)
    },
    "nas": {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600},
    "pi": {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600},
}


def test_a_digest_waits_out_an_smtp_outage_and_a_kill_and_is_delivered_once_with_its_message_id(
    tmp_path, db, start_server, ca
):
    port = free_port()  # nothing listens: the SMTP server is down
    settings = write_settings(tmp_path / "settings.json", STORM)
    service = start_server(settings, db, SMTP_PORT=str(port))
    # router, nas and pi are alerted, the five cameras behind the router suppressed; their emails to
    # oncall@example.com make one digest, which meets the outage and waits to be retried.
    wait_until(
        lambda: query(db, "SELECT count(*), min(attempts) FROM outbox WHERE digest_id IS NOT NULL") == [(3, 1)],
        message="a digest of three emails tried once",
    )
    service.kill()
    assert query(db, "SELECT count(*) FROM alerts WHERE suppressed") == [(5,)]
    [(message_id, subject)] = query(db, "SELECT message_id, subject FROM digests")
    assert subject == "3 devices need attention: nas, pi, router"
    smtp = TlsSmtpServer(ca).start(port)
    try:
        service = start_server(settings, db, SMTP_PORT=str(port))
        [(_, recipients, message)] = smtp.wait_for_messages(1)
        wait_until(lambda: query(db, "SELECT DISTINCT status FROM outbox") == [("sent",)], message="all sent")
        assert service.stop() == 0
        assert len(smtp.messages) == 1
    finally:
        smtp.stop()
    assert (recipients, message["Subject"], message["Message-ID"]) == (["oncall@example.com"], subject, message_id)
    body = message.get_content()
    assert [body.count(f"===== {name} disconnection detected =====") for name in ("nas", "pi", "router")] == [1, 1, 1]
    assert query(db, "SELECT count(*), count(DISTINCT digest_id) FROM outbox") == [(3, 1)]


def test_curl_gets_the_json_list_and_a_browser_the_page(tmp_path, start_server):
    users = {"backup-job": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}}
    service = start_server(write_settings(tmp_path / "settings.json", users))
    status, answer = service.get("/ping/backup-job/23")
    assert status == 200
    year, month, day = answer.split()[0].split("/")  # the signal's local date
    url = f"{service.url}/logs?username=backup-job&year={year}&month={month}&day={day}"

    def curl(*headers):
        arguments = ["curl", "-sS", "-m", "10", "-D", "-", *(part for h in headers for part in ("-H", h)), url]
        head, _, body = subprocess.run(arguments, capture_output=True, check=True, timeout=20).stdout.partition(
            b"\r\n\r\n"
        )
        return head.decode(), body

    plain_head, plain = curl()  # curl's own Accept: */*
    assert "Content-Type: application/json" in plain_head
    assert re.fullmatch(rb'\["\d\d:\d\d:\d\d"\]', plain)
    for accept in ("Accept: */*", "Accept: application/json", "Accept: text/html, application/json"):
        assert curl(accept)[1] == plain
    page_head, page = curl("Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
    assert "Content-Type: text/html; charset=utf-8" in page_head
    assert b"<title>backup-job: signals of " in page and b"<td>failure</td><td>23</td>" in page
