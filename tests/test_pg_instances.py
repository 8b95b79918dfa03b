"""Several real instances of the service (`python server.py` subprocesses) on one PostgreSQL database, sending
through one real SMTP-over-TLS server: pings to any of them are recorded once, an alert storm is split
between them with no email sent twice, one killed with SIGKILL has its work taken over within the documented
bound, one joining running instances changes no deadline; and how the database is chosen (DATABASE_URL,
--db) and refused (exit 2, one line, never the password)."""

import collections
import concurrent.futures
import re
import time

import pytest

from mailer import SMTP_TIMEOUT
from pg_store import CLAIM_TIMEOUT
from pgcluster import PASSWORD
from rules import FIRST_RETRY_DELAY
from support import (
    SLACK,
    ServerProcess,
    SilentSmtpServer,
    free_port,
    query,
    run_server,
    server_env,
    wait_out_resends,
    wait_until,
    write_settings,
)

BASE_FREQUENCY = 0.05
EMAIL_PROCESSING_FREQUENCY = 0.05


def storm(count, first_deadline=0.3, spacing=0.05):
    """`count` never-pinged users whose deadlines (from the start of monitoring) follow each other `spacing`
    seconds apart, each with an address of its own, so that every alert goes out as its own email."""
    return {
        f"device{index:03}": {
            "monitor": True,
            "max_sleep": round(first_deadline + index * spacing, 3),
            "email_frequency": 3600,
            "device_email": f"device{index:03}@example.com",
        }
        for index in range(count)
    }


def write_storm_settings(tmp_path, users):
    return write_settings(
        tmp_path / "settings.json",
        users,
        base_frequency=BASE_FREQUENCY,
        email_processing_frequency=EMAIL_PROCESSING_FREQUENCY,
    )


def emails_by_recipient(smtp_server):
    """{recipient: [(subject, Message-ID), ...]} of every email the SMTP server accepted."""
    received = collections.defaultdict(list)
    for _, recipients, message in smtp_server.messages:
        for recipient in recipients:
            received[recipient].append((message["Subject"], message["Message-ID"]))
    return received


def instance_id(db, service):
    """The id in `instances` of the running `service` (by its process id)."""
    [(found,)] = query(db, "SELECT id FROM instances WHERE pid = %s", (service.process.pid,))
    return found


def logged_counts(service, pattern):
    """The numbers that the (\\d+) of `pattern` caught in each line of `service`'s log."""
    return [int(number) for number in re.findall(pattern, service.log())]


def test_pings_to_either_instance_are_recorded_once_and_committed_before_the_answer(
    tmp_path, postgres_url, start_server
):
    users = {f"dev{index}": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600} for index in range(8)}
    settings = write_settings(tmp_path / "settings.json", users)
    first, second = start_server(settings, postgres_url), start_server(settings, postgres_url)

    # Each ping answered by one instance is already in the other's /logs.
    for index in range(10):
        answering, other = (first, second) if index % 2 else (second, first)
        status, answer = answering.get("/ping?username=dev0")
        assert status == 200
        year, month, day = answer.split()[0].split("/")
        _, listed = other.get(f"/logs?username=dev0&year={year}&month={month}&day={day}")
        assert f'"{answer.split()[1]}"' in listed

    def ping(index):
        service = (first, second)[index % 2]
        return [service.get(f"/ping?username=dev{1 + index % 7}")[0] for _ in range(25)]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = [status for answers in pool.map(ping, range(32)) for status in answers]
    assert statuses == [200] * 32 * 25
    assert query(postgres_url, "SELECT count(*) FROM pings") == [(10 + 32 * 25,)]
    assert query(postgres_url, "SELECT sum(pings_total) FROM users") == [(10 + 32 * 25,)]
    assert first.stop() == 0 and second.stop() == 0
    assert PASSWORD not in first.log() + second.log()


def test_an_alert_storm_is_split_between_two_instances_and_no_email_is_sent_twice(
    tmp_path, postgres_url, start_server, smtp_server
):
    users = storm(60)
    # Both instances run before the storm's users exist: were they in the settings at the start, the first
    # instance could decide the whole storm (deadlines counted from its start) before the second one is up.
    # A reload of both adds them while both are ticking; the storm begins at the first reload.
    quiet = {"quiet": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}}
    settings = write_storm_settings(tmp_path, quiet)
    first, second = start_server(settings, postgres_url), start_server(settings, postgres_url)
    write_storm_settings(tmp_path, {**quiet, **users})
    for service in (first, second):
        service.reload()
    for service in (first, second):
        wait_until(lambda service=service: "settings reloaded" in service.log(), message="the storm's users added")
    smtp_server.wait_for_messages(len(users), timeout=20)
    wait_out_resends(EMAIL_PROCESSING_FREQUENCY)  # nothing more may come, not even after a back-off
    assert first.stop() == 0 and second.stop() == 0

    received = emails_by_recipient(smtp_server)
    assert sorted(received) == sorted(user["device_email"] for user in users.values())
    assert all(len(emails) == 1 for emails in received.values()), {r: e for r, e in received.items() if len(e) > 1}
    assert {subject for [(subject, _)] in received.values()} == {f"{name} disconnection detected" for name in users}
    assert len({message_id for [(_, message_id)] in received.values()}) == len(users)
    assert query(postgres_url, "SELECT count(*), count(DISTINCT user_id) FROM alerts") == [(60, 60)]

    # Both deciding and sending were shared: each instance queued some alerts and sent some emails.
    decided = [sum(logged_counts(service, r"queued alerts for (\d+) late user")) for service in (first, second)]
    sent = [logged_counts(service, r"sent alert email (\d+) to") for service in (first, second)]
    assert sum(decided) == len(users) and min(decided) > 0, decided
    assert sorted(sent[0] + sent[1]) == sorted({*sent[0], *sent[1]}) and min(map(len, sent)) > 0, sent
    assert PASSWORD not in first.log() + second.log()


def test_one_of_two_instances_holds_its_claims_while_it_lives_and_the_other_sends_them_in_time_once_it_is_killed(
    tmp_path, postgres_url, start_server, smtp_server
):
    users = storm(40)
    settings = write_storm_settings(tmp_path, users)
    # The victim's SMTP server never answers: the emails it claims stay claimed, unsent, until it dies.
    silent = SilentSmtpServer()
    try:
        victim = start_server(settings, postgres_url, SMTP_PORT=str(silent.port))
        survivor = start_server(settings, postgres_url)
        victim_id = instance_id(postgres_url, victim)
        held = wait_until(
            lambda: query(
                postgres_url,
                "SELECT recipient FROM outbox WHERE claimed_by = %s AND status = 'queued'",
                (victim_id,),
            ),
            message="the victim holding claimed emails",
        )
        # Once their back-off is over only the victim's claim keeps them from the survivor, which must wait
        # while the victim lives (it is stuck on its SMTP server for SMTP_TIMEOUT).
        time.sleep(FIRST_RETRY_DELAY + 1)
        assert SMTP_TIMEOUT > FIRST_RETRY_DELAY + 2
        assert not {recipient for (recipient,) in held} & set(emails_by_recipient(smtp_server))
        victim.kill()
        # The documented failover bound; the wait fails past it.
        bound = BASE_FREQUENCY + EMAIL_PROCESSING_FREQUENCY + CLAIM_TIMEOUT
        smtp_server.wait_for_messages(len(users), timeout=bound + SLACK)
    finally:
        silent.stop()
    wait_out_resends(EMAIL_PROCESSING_FREQUENCY)
    assert survivor.stop() == 0

    received = emails_by_recipient(smtp_server)
    assert sorted(received) == sorted(user["device_email"] for user in users.values())
    assert all(len(emails) == 1 for emails in received.values()), {r: e for r, e in received.items() if len(e) > 1}
    assert {recipient for (recipient,) in held} <= set(received)
    assert query(postgres_url, "SELECT count(*), count(DISTINCT user_id) FROM alerts") == [(40, 40)]
    assert query(postgres_url, "SELECT DISTINCT status FROM outbox") == [("sent",)]
    assert PASSWORD not in victim.log() + survivor.log()


def deadlines(db):
    return query(db, "SELECT username, monitored_since, due_at FROM users ORDER BY username")


def test_an_instance_joining_running_ones_changes_no_deadline_and_one_starting_alone_restarts_monitoring(
    tmp_path, postgres_url, start_server
):
    users = {
        "quiet": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600},
        "pinged": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600},
    }
    settings = write_settings(tmp_path / "settings.json", users)
    first = start_server(settings, postgres_url)
    assert first.get("/ping?username=pinged")[0] == 200
    before = deadlines(postgres_url)
    time.sleep(0.2)  # so that a restart of monitoring would move them

    joining = start_server(settings, postgres_url)
    assert deadlines(postgres_url) == before
    assert first.stop() == 0
    assert deadlines(postgres_url) == before  # one of two stopping changes nothing either
    assert joining.stop() == 0

    # No instance runs now: the next one starts alone and monitoring starts again from its start.
    time.sleep(0.2)
    alone = start_server(settings, postgres_url)
    after = deadlines(postgres_url)
    assert alone.stop() == 0
    assert [since > old_since for (_, since, _), (_, old_since, _) in zip(after, before, strict=True)] == [True, True]


def test_database_url_selects_postgresql_when_no_db_is_given_and_db_wins_over_it(
    tmp_path, postgres_url, smtp_server, ca_path
):
    settings = write_settings(
        tmp_path / "settings.json", {"pi": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}}
    )
    # postgres:// is the same as postgresql://.
    from_environment = postgres_url.replace("postgresql://", "postgres://", 1)
    env = server_env(smtp_server.port, ca_path, DATABASE_URL=from_environment)
    service = ServerProcess(settings, None, env, tmp_path / "environment.log").start()
    assert service.get("/ping?username=pi")[0] == 200
    assert service.stop() == 0
    assert query(postgres_url, "SELECT count(*) FROM pings") == [(1,)]

    sqlite_path = tmp_path / "chosen.db"
    service = ServerProcess(settings, sqlite_path, env, tmp_path / "command-line.log").start()
    assert service.get("/ping?username=pi")[0] == 200
    assert service.stop() == 0
    assert query(sqlite_path, "SELECT count(*) FROM pings") == [(1,)]
    assert query(postgres_url, "SELECT count(*) FROM pings") == [(1,)]
    assert PASSWORD not in (tmp_path / "environment.log").read_text() + (tmp_path / "command-line.log").read_text()


def test_a_url_without_a_password_takes_it_from_pgpassword(tmp_path, postgres_server, postgres_url, start_server):
    settings = write_settings(
        tmp_path / "settings.json", {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 60}}
    )
    without_password = postgres_server.url(postgres_url.rsplit("/", 1)[1], password=None)
    service = start_server(settings, without_password, PGPASSWORD=PASSWORD)
    assert service.get("/ping?username=pi")[0] == 200
    assert service.stop() == 0
    assert query(postgres_url, "SELECT count(*) FROM pings") == [(1,)]


@pytest.mark.parametrize("given_as", ["--db", "DATABASE_URL"])
@pytest.mark.parametrize(
    "problem",
    ["wrong password", "unreachable server", "missing database", "bad port"],
)
def test_a_database_url_that_cannot_be_used_stops_startup_with_status_2_and_one_line_without_the_password(
    tmp_path, postgres_server, postgres_url, problem, given_as
):
    database = postgres_url.rsplit("/", 1)[1]
    url = {
        "wrong password": postgres_server.url(database, password="wrong-password-3c1d"),
        "unreachable server": postgres_url.replace(f":{postgres_server.port}/", f":{free_port()}/"),
        "missing database": postgres_server.url("no_such_database"),
        "bad port": postgres_url.replace(f":{postgres_server.port}/", ":port/"),
    }[problem]
    password = "wrong-password-3c1d" if problem == "wrong password" else PASSWORD
    settings = write_settings(tmp_path / "settings.json", {})
    arguments = ["--settings", str(settings), "--port", "0"]
    if given_as == "--db":
        result = run_server(*arguments, "--db", url)
    else:
        result = run_server(*arguments, env={"PATH": "/usr/bin:/bin", "DATABASE_URL": url})
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert password not in result.stderr
    assert "Traceback" not in result.stderr
    assert ":***@" in result.stderr  # the URL is named, its password hidden
    assert query(postgres_url, "SELECT to_regclass('pings')") == [(None,)]
