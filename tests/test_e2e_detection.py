"""Detection end to end (SPEC "Detection"): the real service as a subprocess on 127.0.0.1 sends each rule's email
through a real SMTP-over-TLS server, on both databases."""

import time

import pytest

from support import LIBFAKETIME, query, wait_until, write_settings


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """The --db of the service under test, for each backend: a SQLite file, or a new PostgreSQL database."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "ping_listener.db"


def watched(**settings):
    return {"pi": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600, **settings}}


def test_fails_in_a_row_reaching_fail_threshold_are_one_email_quoting_the_last_output(
    tmp_path, db, start_server, smtp_server
):
    service = start_server(write_settings(tmp_path / "settings.json", watched(fail_threshold=2)), db)
    assert service.post("/ping/pi/fail", b"first error")[0] == 200
    assert service.post("/ping/pi/3", b"disk full")[0] == 200
    [(_, recipients, message)] = smtp_server.wait_for_messages(1)
    assert (recipients, message["Subject"]) == (["oncall@example.com"], "pi failed 2 times in a row")
    body = message.get_content()
    assert "exit code 3" in body and body.rstrip().endswith("disk full")
    assert service.stop() == 0
    assert len(smtp_server.messages) == 1


def test_a_run_shorter_than_min_runtime_is_reported_as_finished_too_fast(tmp_path, db, start_server, smtp_server):
    service = start_server(write_settings(tmp_path / "settings.json", watched(min_runtime=60)), db)
    assert service.get("/ping/pi/start")[0] == 200
    assert service.post("/ping/pi", b"copied 0 files")[0] == 200
    [(_, _, message)] = smtp_server.wait_for_messages(1)
    assert message["Subject"] == "pi finished too fast"
    body = message.get_content()
    assert "expected at least 1 minute" in body and "copied 0 files" in body
    assert service.stop() == 0


def test_two_successes_closer_than_min_interval_are_reported_as_pinged_too_often(
    tmp_path, db, start_server, smtp_server
):
    service = start_server(write_settings(tmp_path / "settings.json", watched(min_interval=3600)), db)
    for _ in range(3):
        assert service.get("/ping?username=pi")[0] == 200
    [(_, _, message)] = smtp_server.wait_for_messages(1)
    assert message["Subject"] == "pi pinged too often"
    assert "expected at most once every 1 hour" in message.get_content()
    assert service.stop() == 0
    # One notice per email_frequency: the third ping, as close, sent no second one.
    assert len(smtp_server.messages) == 1


def test_a_scheduled_run_not_started_within_start_grace_is_reported_before_its_grace(
    tmp_path, db, start_server, smtp_server
):
    users = {
        "backup": {
            "monitor": True,
            "schedule": "30 2 * * *",
            "tz": "Europe/Paris",
            "grace": 3600,
            "start_grace": 1,
            "email_frequency": 3600,
        }
    }
    # The service's clock starts 10 seconds before the job's 02:30 run in Paris (a loaded machine may take
    # seconds to start it); no start comes.
    service = start_server(
        write_settings(tmp_path / "settings.json", users),
        db,
        LD_PRELOAD=LIBFAKETIME,
        FAKETIME="@2026-11-30 02:29:50",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        TZ="Europe/Paris",
    )
    [(_, _, message)] = smtp_server.wait_for_messages(1, timeout=30)
    assert message["Subject"] == "backup did not start on time"
    assert "backup has not started its 02:30 run within 1 second of its time (schedule 30 2 * * *)" in (
        message.get_content()
    )
    assert service.stop() == 0


def test_no_alert_inside_a_maintenance_window_and_the_silence_counts_from_its_end(
    tmp_path, db, start_server, smtp_server
):
    users = {"pi": {"monitor": True, "max_sleep": 1, "email_frequency": 3600}}
    window = {"schedule": "0 3 * * *", "duration": 15, "tz": "Europe/Paris"}
    # The service's clock starts as the window opens, at 03:00 in Paris (2026-11-30 02:00 UTC); pi never pings.
    window_end = 1796004000 + 15
    service = start_server(
        write_settings(tmp_path / "settings.json", users, maintenance=[window]),
        db,
        LD_PRELOAD=LIBFAKETIME,
        FAKETIME="@2026-11-30 03:00:00",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        TZ="Europe/Paris",
    )
    [(_, _, message)] = smtp_server.wait_for_messages(1, timeout=40)
    assert message["Subject"] == "pi disconnection detected"
    assert service.stop() == 0
    [(alerted_at,)] = query(db, "SELECT at FROM alerts")
    assert alerted_at > window_end + 1


def test_a_flapping_device_gets_one_flapping_notice_and_then_no_more_emails(tmp_path, db, start_server, smtp_server):
    users = {"pi": {"monitor": True, "max_sleep": 0.3, "email_frequency": 0, "flap_threshold": 2, "flap_quiet": 3600}}
    service = start_server(write_settings(tmp_path / "settings.json", users), db)

    def outage():
        """A ping, then a silence past max_sleep that the listener has seen."""
        seen = len(query(db, "SELECT id FROM alerts"))
        assert service.get("/ping?username=pi")[0] == 200
        wait_until(lambda: len(query(db, "SELECT id FROM alerts")) > seen, message="an alert or notice decided")

    # Each outage is two state changes: the second makes three, past the threshold of 2.
    for _ in range(2):
        outage()
    wait_until(lambda: ("flapping",) in query(db, "SELECT kind FROM alerts"), message="the flapping notice")
    flapping_at = query(db, "SELECT max(id) FROM alerts")[0][0]
    for _ in range(3):
        assert service.get("/ping?username=pi")[0] == 200
        time.sleep(0.5)  # a silence past max_sleep: an outage, neither alerted nor recovered
    smtp_server.wait_for_messages(1)
    wait_until(lambda: query(db, "SELECT count(*) FROM outbox WHERE status = 'queued'") == [(0,)], message="sent")
    assert service.stop() == 0
    assert query(db, f"SELECT kind FROM alerts WHERE id > {flapping_at}") == []
    texts = [f"{message['Subject']}\n{message.get_content()}" for _, _, message in smtp_server.messages]
    assert sum("pi is flapping" in text for text in texts) == 1
