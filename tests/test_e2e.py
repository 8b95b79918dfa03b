"""The real service as a subprocess on 127.0.0.1, sending through a real SMTP-over-TLS server."""

import concurrent.futures
import re
import socket
import sqlite3
import subprocess
import time
import urllib.parse

import pytest

from support import SMTP_LOGIN, free_port, outbox, run_server, write_settings

PI = {"pi": {"monitor": True, "max_sleep": 0.5, "email_frequency": 3600}}


def test_a_silent_device_is_reported_by_email_with_a_working_logs_link(tmp_path, start_server, smtp_server):
    service = start_server(write_settings(tmp_path / "settings.json", PI))
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", service.url)
    status, answer = service.get("/ping?username=pi")
    assert status == 200 and re.fullmatch(r"\d\d/\d\d/\d\d \d\d:\d\d:\d\d", answer)
    ping_time = answer.split()[1]
    year, month, day = answer.split()[0].split("/")
    assert service.get(f"/logs?username=pi&year={year}&month={month}&day={day}") == (200, f'["{ping_time}"]')

    [(mail_from, recipients, message)] = smtp_server.wait_for_messages(1)
    assert (mail_from, recipients) == (SMTP_LOGIN, ["oncall@example.com"])
    assert (message["From"], message["To"]) == (SMTP_LOGIN, "oncall@example.com")
    assert message["Subject"] == "pi disconnection detected"
    assert message["Date"] and re.fullmatch(r"<.+@example\.com>", message["Message-ID"])
    body = message.get_content()
    assert "heard nothing from pi for longer than its max_sleep of 0.5 seconds" in body
    assert f"Last ping: 20{year}-{month}-{day} {ping_time}" in body
    link = re.search(r"http://\S+/logs\?\S+", body).group()
    assert link == f"{service.url}/logs?username=pi&year={year}&month={month}&day={day}"
    assert service.get(link.removeprefix(service.url)) == (200, f'["{ping_time}"]')

    assert service.stop() == 0
    assert outbox(tmp_path / "ping_listener.db") == [("oncall@example.com", "sent", 1)]


def test_server_root_prefixes_the_logs_link(tmp_path, start_server, smtp_server):
    start_server(write_settings(tmp_path / "settings.json", PI, server_root="https://monitor.example.net/pl"))
    [(_, _, message)] = smtp_server.wait_for_messages(1)
    assert "https://monitor.example.net/pl/logs?username=pi&year=" in message.get_content()


def test_it_prints_one_listening_line_and_exits_0_soon_after_sigterm(tmp_path, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", PI))
    service.get("/ping?username=pi")
    started = time.monotonic()
    assert service.stop(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert service.process.stdout.read() == b""  # nothing after the one line already read


def test_pings_and_queued_email_survive_a_restart(tmp_path, start_server, smtp_server):
    settings = write_settings(tmp_path / "settings.json", PI)
    db_path = tmp_path / "ping_listener.db"
    down = start_server(settings, SMTP_PORT=str(free_port()))
    status, answer = down.get("/ping?username=pi")
    year, month, day = answer.split()[0].split("/")
    # The SMTP server is unreachable: the alert waits in the outbox, its failed attempt recorded.
    for _ in range(500):
        if outbox(db_path) and outbox(db_path)[0][2] >= 1:
            break
        time.sleep(0.02)
    assert outbox(db_path) == [("oncall@example.com", "queued", 1)]
    assert "cannot send email through 127.0.0.1" in down.log()
    assert down.stop() == 0

    up = start_server(settings)
    assert up.get(f"/logs?username=pi&year={year}&month={month}&day={day}") == (200, f'["{answer.split()[1]}"]')
    [(_, _, message)] = smtp_server.wait_for_messages(1, timeout=15)
    assert message["Subject"] == "pi disconnection detected"
    assert up.stop() == 0
    assert outbox(db_path) == [("oncall@example.com", "sent", 2)]


def test_a_user_removed_from_the_settings_is_404_but_keeps_its_history(tmp_path, start_server):
    settings = tmp_path / "settings.json"
    first = start_server(write_settings(settings, PI))
    _, answer = first.get("/ping?username=pi")
    year, month, day = answer.split()[0].split("/")
    first.stop()
    second = start_server(write_settings(settings, {"nas": PI["pi"]}))
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


def test_64_concurrent_pingers_all_succeed_while_the_scheduler_writes(tmp_path, start_server, smtp_server):
    users = {f"device{i}": {"monitor": True, "max_sleep": 0, "email_frequency": 0} for i in range(200)}
    service = start_server(write_settings(tmp_path / "settings.json", users, base_frequency=0))

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
    with sqlite3.connect(tmp_path / "ping_listener.db") as connection:
        assert connection.execute("SELECT count(*) FROM pings").fetchone()[0] == 64 * 20
        assert connection.execute("SELECT count(*) FROM alerts").fetchone()[0] > 0


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


def test_a_bad_smtp_port_stops_startup_with_status_2(tmp_path):
    settings = write_settings(tmp_path / "settings.json", PI)
    result = run_server(
        "--settings",
        str(settings),
        "--db",
        str(tmp_path / "db"),
        "--port",
        "0",
        env={"SMTP_PORT": "smtp", "PATH": "/usr/bin:/bin"},
    )
    assert (result.returncode, result.stderr) == (2, "SMTP_PORT: must be an integer port from 1 to 65535, got 'smtp'\n")


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
