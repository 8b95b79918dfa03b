"""The real service run for a fleet: SIGHUP reloads, tokens, /metrics, /healthz, the heartbeat, hostile settings.

The service is a subprocess on 127.0.0.1 sending through a real SMTP-over-TLS server (conftest.py).
"""

import json
import re

import prometheus_client.parser

from support import (
    HttpReceiver,
    delivered_subjects,
    query,
    run_server,
    wait_for_delivered,
    wait_out_resends,
    wait_until,
    write_settings,
)

TOKEN = "token-of-the-new-device-42"
QUIET = {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}
METRICS_TOKEN = "metrics-token-for-prometheus"
EMAIL_PROCESSING_FREQUENCY = 0.05


def reloaded(service, count=1):
    """Send SIGHUP and wait until the service has logged the outcome of the `count`th reload."""
    service.reload()
    wait_until(
        lambda: len(re.findall(r"settings (reloaded|not reloaded)", service.log())) >= count,
        message=f"reload {count} logged",
    )


def user_rows(db_path):
    return {
        name: rest
        for name, *rest in query(db_path, "SELECT username, configured, monitored_since, last_ping, due_at FROM users")
    }


def test_a_valid_reload_adds_removes_and_leaves_the_others_untouched(tmp_path, start_server):
    settings = tmp_path / "settings.json"
    service = start_server(write_settings(settings, {"pi": QUIET, "old": QUIET}))
    assert service.get("/ping?username=pi")[0] == 200
    _, answer = service.get("/ping?username=old")
    year, month, day = answer.split()[0].split("/")
    before = user_rows(tmp_path / "ping_listener.db")

    write_settings(settings, {"pi": QUIET, "new": {**QUIET, "token": TOKEN}})
    reloaded(service)
    assert "settings reloaded: 1 user(s) added, 1 removed, 0 changed" in service.log()
    after = user_rows(tmp_path / "ping_listener.db")
    assert after["pi"] == before["pi"]  # no fresh deadline for an unchanged user
    assert after["old"][0] == 0
    assert service.get("/ping?username=old") == (404, "unknown user old")
    assert service.get(f"/logs?username=old&year={year}&month={month}&day={day}")[0] == 200
    assert service.get("/ping?username=new") == (403, "wrong or missing token for new")
    assert service.get("/ping?username=new", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert TOKEN not in service.log()
    assert service.stop() == 0


def test_a_shorter_max_sleep_makes_a_device_late_at_once(tmp_path, start_server, smtp_server):
    settings = tmp_path / "settings.json"
    service = start_server(write_settings(settings, {"pi": QUIET}))
    service.get("/ping?username=pi")
    write_settings(settings, {"pi": {**QUIET, "max_sleep": 0.1}})
    reloaded(service)
    [(_, _, message)] = smtp_server.wait_for_messages(1)
    assert message["Subject"] == "pi disconnection detected"
    assert "for more than 0.1 seconds." in message.get_content()


def test_an_invalid_reload_logs_each_problem_and_changes_nothing(tmp_path, start_server):
    settings = tmp_path / "settings.json"
    service = start_server(write_settings(settings, {"pi": QUIET}))
    write_settings(settings, {"pi": {**QUIET, "max_sleep": "ten"}, "new": {**QUIET, "colour": "red"}})
    reloaded(service)
    log = service.log()
    assert 'users.pi.max_sleep: must be a number >= 0, got "ten"' in log
    assert "users.new.colour: unknown key (expected one of" in log
    assert "settings not reloaded (2 problem(s) above); the previous settings stay in force" in log
    assert "Traceback" not in log
    assert service.get("/ping?username=pi")[0] == 200
    assert service.get("/ping?username=new")[0] == 404
    settings.write_text("{not json")
    reloaded(service, 2)
    assert "invalid JSON" in service.log()
    write_settings(settings, {"pi": QUIET, "new": QUIET})  # fixed: the next SIGHUP applies it
    reloaded(service, 3)
    assert service.get("/ping?username=new")[0] == 200
    assert service.stop() == 0


def test_without_a_recipient_alerts_go_to_device_email_and_a_reload_that_needs_one_is_refused(
    tmp_path, start_server, smtp_server
):
    settings = tmp_path / "settings.json"
    document = {
        "base_frequency": 0.05,
        "email_processing_frequency": 0.05,
        "users": {"pi": {**QUIET, "max_sleep": 0.1, "device_email": "pi-owner@example.com"}},
    }
    settings.write_text(json.dumps(document))
    service = start_server(settings)
    [(_, recipients, message)] = smtp_server.wait_for_messages(1)
    assert (recipients, message["Subject"]) == (["pi-owner@example.com"], "pi disconnection detected")
    document["users"]["new"] = QUIET
    settings.write_text(json.dumps(document))
    reloaded(service)
    assert (
        'recipient: missing, needed by users.new (a user that notifies "email" and has no device_email sends'
        " its alerts to recipient)" in service.log()
    )
    assert service.get("/ping?username=new") == (404, "unknown user new")
    assert service.stop() == 0


def test_a_reload_during_an_alert_storm_loses_and_doubles_no_alert(tmp_path, start_server, smtp_server):
    settings = tmp_path / "settings.json"
    stormy = {f"device-{n:03d}": {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600} for n in range(150)}
    service = start_server(write_settings(settings, stormy, email_processing_frequency=EMAIL_PROCESSING_FREQUENCY))
    db = tmp_path / "ping_listener.db"
    wait_until(lambda: query(db, "SELECT count(*) FROM outbox")[0][0] > 0, message="the storm begins")
    write_settings(
        settings,
        {**stormy, "late-comer": {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600}},
        email_processing_frequency=EMAIL_PROCESSING_FREQUENCY,
    )
    reloaded(service)
    # They reach the one recipient as a few digests (and perhaps lone emails): each alert in exactly one.
    wait_for_delivered(smtp_server, 151, timeout=30)
    wait_out_resends(EMAIL_PROCESSING_FREQUENCY)
    subjects = delivered_subjects(smtp_server.messages)
    assert sorted(subjects) == sorted(f"{name} disconnection detected" for name in [*stormy, "late-comer"])
    assert query(db, "SELECT count(*), count(DISTINCT user_id) FROM alerts") == [(151, 151)]
    assert service.stop() == 0


def test_a_user_removed_while_its_email_is_queued_keeps_it_and_it_is_sent(tmp_path, start_server, smtp_server):
    settings = tmp_path / "settings.json"
    smtp_server.data_reply = "451 4.3.0 try again later"
    service = start_server(write_settings(settings, {"pi": {**QUIET, "max_sleep": 0.1}, "nas": QUIET}))
    db = tmp_path / "ping_listener.db"
    wait_until(lambda: query(db, "SELECT attempts FROM outbox") == [(1,)], message="a first attempt refused")
    write_settings(settings, {"nas": QUIET})
    reloaded(service)
    assert service.get("/ping?username=pi") == (404, "unknown user pi")
    smtp_server.data_reply = None
    [(_, _, message)] = smtp_server.wait_for_messages(1, timeout=15)  # its retry, 5 s later
    assert message["Subject"] == "pi disconnection detected"
    wait_until(lambda: query(db, "SELECT status FROM outbox") == [("sent",)], message="recorded as sent")
    assert service.stop() == 0


def test_metrics_and_healthz_of_the_running_service(tmp_path, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", {"pi": QUIET}), METRICS_TOKEN=METRICS_TOKEN)
    assert service.get("/healthz") == (200, "ok")
    service.get("/ping?username=pi")
    assert service.get("/metrics")[0] == 401
    status, text = service.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200
    families = {family.name: family for family in prometheus_client.parser.text_string_to_metric_families(text)}
    assert [(s.labels, s.value) for s in families["ping_listener_pings"].samples] == [({"user": "pi"}, 1.0)]
    assert [s.value for s in families["ping_listener_up"].samples] == [1.0]
    wait_until(
        lambda: (
            "ping_listener_absence_step_seconds_count 0.0"
            not in service.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})[1]
        ),
        message="an absence step measured",
    )
    assert service.stop() == 0


def test_metrics_count_deliveries_by_channel_kind_and_outcome(tmp_path, start_server, smtp_server):
    late = {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600, "notify": ["email", "webhook:chat"]}
    with HttpReceiver() as hook:
        hook.status = 404  # refused for good
        settings = write_settings(
            tmp_path / "settings.json", {"pi": late}, webhooks={"chat": {"url": hook.url, "format": "slack"}}
        )
        service = start_server(settings, METRICS_TOKEN=METRICS_TOKEN)

        def deliveries():
            text = service.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})[1]
            families = {family.name: family for family in prometheus_client.parser.text_string_to_metric_families(text)}
            return {
                (sample.labels["channel_kind"], sample.labels["outcome"]): sample.value
                for sample in families["ping_listener_deliveries"].samples
                if sample.name == "ping_listener_deliveries_total"
            }

        counted = wait_until(
            lambda: (counts := deliveries()).get(("slack", "failed")) and counts.get(("email", "sent")) and counts,
            message="an email sent and a webhook POST failed, counted",
        )
    assert counted == {
        ("email", "sent"): 1.0,
        ("email", "retried"): 0.0,
        ("email", "failed"): 0.0,
        ("slack", "failed"): 1.0,
    }
    assert service.stop() == 0


def test_metrics_are_disabled_without_metrics_token(tmp_path, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", {"pi": QUIET}))
    assert service.get("/metrics") == (404, "metrics are disabled: METRICS_TOKEN is not set")


def test_the_service_sends_its_heartbeat_and_a_reload_can_change_it(tmp_path, start_server):
    settings = tmp_path / "settings.json"
    with HttpReceiver() as first, HttpReceiver() as second:
        url = first.url + "/ping/service-uuid"
        service = start_server(write_settings(settings, {"pi": QUIET}, heartbeat_url=url, heartbeat_frequency=0.1))
        wait_until(lambda: len(first.paths) >= 2, message="heartbeats")
        assert set(first.paths) == {"/ping/service-uuid"}
        write_settings(settings, {"pi": QUIET}, heartbeat_url=second.url + "/hb", heartbeat_frequency=0.1)
        reloaded(service)
        wait_until(lambda: len(second.paths) >= 2, message="heartbeats to the new URL")
        assert service.stop() == 0


def test_the_service_runs_on_when_its_heartbeat_url_is_down(tmp_path, start_server):
    receiver = HttpReceiver()
    url = receiver.url + "/hb"
    receiver.stop()
    service = start_server(
        write_settings(tmp_path / "settings.json", {"pi": QUIET}, heartbeat_url=url, heartbeat_frequency=0.1)
    )
    wait_until(lambda: service.log().count("heartbeat to 127.0.0.1 failed") >= 2, message="failures logged")
    assert service.get("/ping?username=pi")[0] == 200
    assert service.get("/healthz") == (200, "ok")
    assert service.stop() == 0


def test_hostile_usernames_stop_startup_with_key_path_lines_not_a_traceback(tmp_path):
    user = json.dumps(QUIET)
    huge = "x" * 1_000_000
    text = (
        '{"base_frequency": 1, "email_processing_frequency": 1, "recipient": "a@example.com",'
        f' "server_root": "https://example.net/\\ud800", "users": {{"\\ud800": {user}, "a\\u2028b": {user},'
        f' "{huge}": {{"monitor": true, "max_sleep": "{huge}", "email_frequency": 1,'
        ' "device_email": "\\udfff@x.io"}}}'
    )
    settings = tmp_path / "settings.json"
    settings.write_text(text)
    result = run_server("--settings", str(settings), "--db", str(tmp_path / "db"), "--port", "0")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    assert all(len(line) < 300 for line in lines)
    assert sorted(line.split(":")[0] for line in lines) == sorted(
        [
            "server_root",
            'users."\\ud800"',
            'users."a\\u2028b"',
            f"users.{'x' * 57}....device_email",
            f"users.{'x' * 57}....max_sleep",
        ]
    )
