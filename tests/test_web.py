import datetime
import email.utils
import json
import logging
import sqlite3
import threading
import time
import zoneinfo

import prometheus_client.parser
import pytest
import webtest
from hypothesis import given, settings, strategies as st

import config
import mailer
import web
from config import LiveSettings, parse_settings
from records import CheckOutcome, NewEmail, Signal
from support import T0, Clock, ScriptedTestEmails, SmallDiskStore, make_settings, make_test_app


@pytest.fixture
def clock():
    return Clock(T0)


def make_client(store, clock, users=None, testing_password=None, test_emails=None):
    settings = make_settings(users)
    store.sync_users(settings.users, T0 - 3600)
    return webtest.TestApp(make_test_app(store, settings, clock, testing_password, test_emails))


@pytest.fixture
def client(store, clock):
    return make_client(store, clock)


def committed_pings(store):
    with sqlite3.connect(store.path) as connection:
        return [at for (at,) in connection.execute("SELECT at FROM pings ORDER BY id")]


def test_a_ping_is_committed_and_answered_with_its_local_time(client, store):
    answer = client.get("/ping?username=pi", status=200)
    assert answer.content_type == "text/plain"
    assert answer.text == "26/09/21 16:13:20"
    assert committed_pings(store) == [T0]


def test_a_pings_answer_and_date_header_are_those_of_the_second_it_was_recorded_in(client, store, clock):
    clock.now = T0 + 0.75
    first = client.get("/ping?username=pi", status=200)
    clock.now = T0 + 61.5
    later = client.get("/ping/pi", status=200)
    assert (first.text, first.headers["Date"]) == ("26/09/21 16:13:20", email.utils.formatdate(T0, usegmt=True))
    assert (later.text, later.headers["Date"]) == ("26/09/21 16:14:21", email.utils.formatdate(T0 + 61, usegmt=True))
    assert committed_pings(store) == [T0 + 0.75, T0 + 61.5]


def test_post_and_head_record_pings_too(client, store, clock):
    client.post("/ping?username=pi", status=200)
    clock.now += 1
    assert client.head("/ping?username=pi", status=200).body == b""
    assert committed_pings(store) == [T0, T0 + 1]


@pytest.mark.parametrize("query", ["", "?username=", "?user=pi"])
def test_a_ping_without_a_username_is_a_400(client, query):
    assert client.get("/ping" + query, status=400).text == "missing username"


def test_a_ping_from_an_unknown_user_is_a_404_and_records_nothing(client, store):
    answer = client.get("/ping?username=ghost", status=404)
    assert (answer.content_type, answer.text) == ("text/plain", "unknown user ghost")
    assert committed_pings(store) == []


def test_a_username_is_decoded_as_utf8(store, clock):
    client = make_client(store, clock, {"café": {"monitor": True, "max_sleep": 1, "email_frequency": 1}})
    client.get("/ping?username=caf%C3%A9", status=200)
    assert client.get("/ping?username=caf%E9", status=400).text == "query string is not valid UTF-8"


def ping_at(client, clock, *times):
    for at in times:
        clock.now = at
        client.get("/ping?username=pi", status=200)


def logs(client, query, status=200):
    return client.get("/logs?" + query, status=status)


def test_logs_lists_a_days_pings_in_local_time_ascending(client, clock):
    midnight = T0 - (16 * 3600 + 13 * 60 + 20)  # 2026-09-21 00:00:00 in Paris
    ping_at(client, clock, midnight + 3600, midnight - 1, midnight, midnight + 86399, midnight + 86400)
    answer = logs(client, "username=pi&year=2026&month=09&day=21")
    assert answer.content_type == "application/json"
    assert answer.json == ["00:00:00", "01:00:00", "23:59:59"]


def test_logs_shows_local_clock_times_across_a_daylight_saving_change(client, clock):
    first_half_past_two = 1_792_888_200.0  # 2026-10-25 02:30:00 CEST; clocks go back at 03:00 CEST
    ping_at(client, clock, first_half_past_two - 0.25, first_half_past_two + 59.75, first_half_past_two + 3600.5)
    answer = logs(client, "username=pi&year=2026&month=10&day=25")
    assert answer.json == ["02:29:59", "02:30:59", "02:30:00"]


def paris(*fields):
    """The epoch of a wall-clock time in Paris, the tests' local zone (conftest.py)."""
    return datetime.datetime(*fields, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")).timestamp()


# 2026-03-29 lasts 23 hours in Paris (02:00 -> 03:00), 2026-10-25 lasts 25 (03:00 -> 02:00): a day's end is
# the next local midnight, neither 24 hours after its start nor a fixed clock time.
@pytest.mark.parametrize(
    ("day", "following"), [((2026, 3, 29), (2026, 3, 30)), ((2026, 10, 25), (2026, 10, 26))], ids=["23h", "25h"]
)
def test_logs_of_a_23_or_25_hour_day_runs_from_its_midnight_to_the_next(client, clock, day, following):
    before = paris(*day) - 1
    first_hour = [paris(*day, 0, 0, 0), paris(*day, 0, 59, 59)]
    last_hour = [paris(*day, 23, 0, 0), paris(*day, 23, 59, 59)]
    after = [paris(*following, 0, 0, 0), paris(*following, 0, 0, 1), paris(*following, 0, 59, 59)]
    ping_at(client, clock, before, *first_hour, *last_hour, *after)
    year, month, mday = day
    assert logs(client, f"username=pi&year={year}&month={month}&day={mday}").json == [
        "00:00:00",
        "00:59:59",
        "23:00:00",
        "23:59:59",
    ]
    year, month, mday = following
    assert logs(client, f"username=pi&year={year}&month={month}&day={mday}").json == [
        "00:00:00",
        "00:00:01",
        "00:59:59",
    ]


@pytest.mark.parametrize("date", ["year=26&month=9&day=21", "year=2026&month=9&day=21", "year=26&month=09&day=21"])
def test_logs_accepts_two_or_four_digit_years_and_unpadded_months_and_days(client, date):
    client.get("/ping?username=pi")
    assert logs(client, f"username=pi&{date}").json == ["16:13:20"]


def test_logs_of_a_day_without_pings_is_an_empty_list(client):
    client.get("/ping?username=pi")
    assert logs(client, "username=pi&year=26&month=9&day=22").text == "[]"


def test_logs_of_a_user_configured_but_silent_is_an_empty_list(client):
    assert logs(client, "username=pi&year=26&month=9&day=21").json == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("year=26&month=9&day=21", "missing username"),
        ("username=pi&month=9&day=21", "missing year"),
        ("username=pi&year=26&day=21", "missing month"),
        ("username=pi&year=26&month=9", "missing day"),
        ("username=pi&year=&month=9&day=21", "missing year"),
        ("username=pi&year=202&month=9&day=21", "invalid year '202': expected 2 or 4 digits"),
        ("username=pi&year=twenty&month=9&day=21", "invalid year 'twenty': expected 2 or 4 digits"),
        ("username=pi&year=26&month=123&day=21", "invalid month '123': expected 1 or 2 digits"),
        ("username=pi&year=26&month=9&day=-1", "invalid day '-1': expected 1 or 2 digits"),
        ("username=pi&year=26&month=%D9%A3&day=1", "invalid month '٣': expected 1 or 2 digits"),
        ("username=pi&year=26&month=2&day=30", "invalid date 2026-02-30"),
        ("username=pi&year=26&month=13&day=1", "invalid date 2026-13-01"),
        ("username=pi&year=0000&month=1&day=1", "invalid date 0000-01-01"),
    ],
)
def test_logs_names_a_missing_or_invalid_parameter(client, query, message):
    answer = logs(client, query, status=400)
    assert (answer.content_type, answer.text) == ("text/plain", message)


def test_logs_of_an_unknown_user_is_a_404(client):
    assert logs(client, "username=ghost&year=26&month=9&day=21", status=404).text == "unknown user ghost"


def test_a_user_removed_from_the_settings_cannot_ping_but_keeps_its_logs(store, clock):
    ping_at(make_client(store, clock), clock, T0)
    client = make_client(store, clock, users={})
    client.get("/ping?username=pi", status=404)
    assert logs(client, "username=pi&year=26&month=9&day=21").json == ["16:13:20"]


def test_an_unknown_path_is_a_plain_404(client):
    answer = client.get("/nope", status=404)
    assert answer.content_type == "text/plain"
    assert "Traceback" not in answer.text


def test_a_wrong_method_is_a_plain_405(client):
    answer = client.delete("/ping?username=pi", status=405)
    assert answer.content_type == "text/plain"


def test_an_unexpected_error_is_a_plain_500_without_a_traceback(store, clock):
    client = make_client(store, clock)
    store.close()  # every query now fails in an unexpected way
    answer = client.get("/ping?username=pi", status=500, expect_errors=True)
    assert (answer.content_type, answer.text) == ("text/plain", "internal server error")


def test_a_full_disk_is_a_503_with_a_clear_message(tmp_path, clock):
    disk = SmallDiskStore(tmp_path / "small.db")
    client = make_client(disk, clock)
    disk.fill_up()
    client.get("/ping?username=pi", status=200)  # fits in a page already allocated
    for _ in range(2000):
        answer = client.get("/ping?username=pi", status="*")
        if answer.status_int != 200:
            break
    disk.close()
    assert (answer.status_int, answer.text) == (503, "storage unavailable: the disk is full; try again later")


def test_the_page_at_root_says_when_testing_mode_is_disabled(client):
    answer = client.get("/", status=200)
    assert answer.content_type == "text/html"
    assert "testing mode is disabled: TESTING_PASSWORD is not set" in answer.text
    assert answer.html.find("form") is None


HOSTILE_NAME = "<img src=x onerror=alert(1)>"


def client_with_password(store, clock, users=None, test_emails=None):
    return make_client(store, clock, users, testing_password="let me in", test_emails=test_emails)


def test_the_page_at_root_asks_for_the_password_and_runs_no_inline_script(store, clock):
    client = client_with_password(store, clock, {HOSTILE_NAME: {"monitor": True, "max_sleep": 1, "email_frequency": 1}})
    answer = client.get("/", status=200)
    assert (answer.content_type, answer.charset) == ("text/html", "utf-8")
    form = answer.html.find("form", id="unlock")
    assert (form["method"], form["action"]) == ("post", "/testing/config")
    assert form.find("input", type="password")
    assert [script.attrs for script in answer.html.find_all("script")] == [
        {"src": "/static/common.js", "defer": ""},
        {"src": "/static/testing.js", "defer": ""},
    ]
    assert [link["href"] for link in answer.html.find_all("link")] == [
        "/favicon.ico",
        "/static/common.css",
        "/static/testing.css",
    ]
    assert "<!--" not in answer.text.replace("<!-- method and action", "")  # every part put in place
    assert not [tag for tag in answer.html.find_all(True) if any(name.startswith("on") for name in tag.attrs)]
    # The page is static: users reach it only as JSON, never built into HTML by the server.
    assert "<img" not in answer.text


@pytest.mark.parametrize(
    ("path", "content_type"), [("/static/testing.js", "text/javascript"), ("/static/testing.css", "text/css")]
)
def test_the_pages_assets_are_served_with_their_content_types(client, path, content_type):
    answer = client.get(path, status=200)
    assert (answer.content_type, answer.charset) == (content_type, "utf-8")
    assert answer.headers["Cache-Control"] == "no-cache"
    assert len(answer.body) > 500


def test_the_favicon_is_a_small_icon_not_a_404(client):
    answer = client.get("/favicon.ico", status=200)
    assert answer.content_type == "image/x-icon"
    assert answer.body[:4] == b"\x00\x00\x01\x00" and len(answer.body) < 2000  # an ICO file's header


@pytest.mark.parametrize(
    "path",
    ["/static/nope.js", "/static/index.html", "/static/../server.py", "/static/%2e%2e/server.py", "/settings.json"],
)
def test_nothing_but_the_pages_assets_is_served(client, path):
    answer = client.get(path, status=404)
    assert answer.content_type == "text/plain"


@pytest.mark.parametrize("path", ["/", "/static/testing.js", "/static/testing.css", "/ping?username=pi", "/nope"])
def test_answers_forbid_inline_script_sniffing_and_framing(store, clock, path):
    answer = client_with_password(store, clock).get(path, status="*")
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "script-src" not in policy
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"


TESTING_ENDPOINTS = ["/testing/config", "/testing/state", "/testing/test-email"]


@pytest.mark.parametrize("path", TESTING_ENDPOINTS)
def test_testing_endpoints_are_503_when_testing_mode_is_disabled(client, path):
    answer = client.post_json(path, {"password": "x"}, status=503)
    assert answer.text == "testing mode is disabled: TESTING_PASSWORD is not set"
    # What the testing page reads, instead of the message.
    assert answer.headers["Ping-Listener-Testing"] == "disabled"


@pytest.mark.parametrize("path", TESTING_ENDPOINTS)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"not json", 400),
        (b'["let me in"]', 400),
        (b"{}", 400),
        (b'{"password": 1}', 400),
        (b"\xff\xfe", 400),
        (b"[" * 60_000, 400),
        (b'{"password": "nope"}', 401),
        (b'{"password": "let me in "}', 401),
    ],
)
def test_testing_endpoints_need_the_password_in_a_json_body(store, clock, path, body, status):
    answer = client_with_password(store, clock).post(path, body, content_type="application/json", status=status)
    assert answer.content_type == "text/plain"
    expected = "wrong testing password" if status == 401 else 'expected a JSON body {"password": "..."}'
    assert answer.text == expected


@pytest.mark.parametrize("path", TESTING_ENDPOINTS)
def test_testing_endpoints_do_not_take_the_password_from_the_url(store, clock, path):
    client_with_password(store, clock).post(path + "?password=let+me+in", content_type="application/json", status=400)


def shown_settings(max_sleep, email_frequency):
    """A monitored max_sleep user's settings as /testing/config and /testing/state show them."""
    return {
        "monitor": True,
        "max_sleep": max_sleep,
        "schedule": None,
        "tz": None,
        "grace": None,
        "email_frequency": email_frequency,
    }


def test_testing_config_lists_each_users_settings_and_no_smtp_setting(store, clock):
    answer = client_with_password(store, clock).post_json("/testing/config", {"password": "let me in"}, status=200)
    assert answer.json == {
        "recipient": "oncall@example.com",
        "users": {"pi": shown_settings(max_sleep=60.0, email_frequency=600.0)},
    }
    assert "smtp" not in answer.text.lower()


def alert(store, username, now, *recipients):
    """Have the absence listener's store record an alert for `username` at `now`; return its emails' ids."""
    [user] = [user for user in store.due_users(now, 100) if user.username == username]
    emails = tuple(NewEmail(to, f"{username} disconnection detected", "body", f"<{to}>") for to in recipients)
    store.save_check_outcomes([CheckOutcome(user, now + user.email_frequency, emails, down_since=user.due_at)], now)
    return [email.id for email in store.due_emails(now, 100) if email.recipient in recipients]


def test_testing_state_shows_each_users_live_state_and_recent_emails(store, clock):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    users = {"pi": user, "quiet": {**user, "monitor": False}, "gone": user, "late": user}
    client = client_with_password(store, clock, users)  # monitoring began at T0 - 3600 (15:13:20)
    ping_at(client, clock, T0 - 10)
    [sent, retried] = alert(store, "gone", T0 - 100, "oncall@example.com", "ops@example.com")
    store.mark_sent([sent], T0 - 99)
    store.schedule_retry([retried], T0 + 5, "535 5.7.8 login alerts@example.com refused by smtp.example.net")
    clock.now = T0
    answer = client.post_json("/testing/state", {"password": "let me in"}, status=200)
    assert answer.content_type == "application/json"
    state = answer.json
    assert (state["now"], state["now_local"]) == (T0, "2026-09-21 16:13:20 CEST")
    assert {name: user["state"] for name, user in state["users"].items()} == {
        "pi": "pinging",
        "quiet": "silent",
        "gone": "alerted",
        "late": "late",
    }
    assert state["users"]["pi"] == {
        "state": "pinging",
        "last_duration": None,
        "depends_on": None,
        "held_back_by": None,
        **shown_settings(max_sleep=60.0, email_frequency=600.0),
        "last_ping": T0 - 10,
        "last_ping_local": "2026-09-21 16:13:10 CEST",
        "expected_at": T0 + 50,
        "expected_at_local": "2026-09-21 16:14:10 CEST",
        "late_at": T0 + 50,
        "late_at_local": "2026-09-21 16:14:10 CEST",
        "last_alert": None,
        "last_alert_local": None,
        "held_back_until": None,
        "held_back_until_local": None,
        "run_started": None,
        "run_started_local": None,
        "failed_at": None,
        "failed_at_local": None,
        "snoozed_until": None,
        "snoozed_until_local": None,
    }
    assert (state["users"]["quiet"]["late_at"], state["users"]["gone"]["last_alert_local"]) == (
        None,
        "2026-09-21 16:11:40 CEST",
    )
    assert state["emails"] == [
        {
            "id": sent,
            "channel": "email",
            "kind": "late",
            "username": "gone",
            "recipient": "oncall@example.com",
            "status": "sent",
            "attempts": 1,
            "digest_id": None,
            "digest_subject": None,
            "last_ping": None,
            "last_ping_local": None,
            "queued_at": T0 - 100,
            "queued_at_local": "2026-09-21 16:11:40 CEST",
            "finished_at": T0 - 99,
            "finished_at_local": "2026-09-21 16:11:41 CEST",
        },
        {
            "id": retried,
            "channel": "email",
            "kind": "late",
            "username": "gone",
            "recipient": "ops@example.com",
            "status": "queued",
            "attempts": 1,
            "digest_id": None,
            "digest_subject": None,
            "last_ping": None,
            "last_ping_local": None,
            "queued_at": T0 - 100,
            "queued_at_local": "2026-09-21 16:11:40 CEST",
            "finished_at": None,
            "finished_at_local": None,
        },
    ]
    # What the SMTP server said can name its host and login: it stays in the service's log.
    assert "smtp" not in answer.text.lower() and "535" not in answer.text


def test_testing_state_says_until_when_email_frequency_holds_back_a_late_users_alert(store, clock):
    client = client_with_password(store, clock)  # pi: max_sleep 60, email_frequency 600
    alert(store, "pi", T0 - 200, "oncall@example.com")
    ping_at(client, clock, T0 - 150)
    clock.now = T0  # late since T0 - 90, alerted during its previous silence
    pi = client.post_json("/testing/state", {"password": "let me in"}).json["users"]["pi"]
    assert (pi["state"], pi["held_back_until"], pi["held_back_until_local"]) == (
        "late",
        T0 + 400,
        "2026-09-21 16:20:00 CEST",
    )


def test_a_test_email_goes_to_the_configured_recipient_only(store, clock, caplog):
    caplog.set_level(logging.INFO)
    test_emails = ScriptedTestEmails()
    client = client_with_password(store, clock, test_emails=test_emails)
    body = {"password": "let me in", "recipient": "someone-else@example.net"}
    answer = client.post_json("/testing/test-email", body, status=200)
    assert answer.json == {"recipient": "oncall@example.com", "sent": True, "result": "sent"}
    assert test_emails.sent_to == [("oncall@example.com", T0)]
    assert "test email from the testing page sent to oncall@example.com" in caplog.text


def test_a_test_email_refused_answers_the_code_and_logs_the_servers_words(store, clock, caplog):
    refused = mailer.SendResult(mailer.RETRY, "535 5.7.8 login alerts@example.com refused by smtp.example.net")
    client = client_with_password(store, clock, test_emails=ScriptedTestEmails(refused))
    answer = client.post_json("/testing/test-email", {"password": "let me in"}, status=200)
    assert answer.json == {
        "recipient": "oncall@example.com",
        "sent": False,
        "result": "the SMTP server answered 535 (a login problem: check SMTP_LOGIN and SMTP_PASSWORD)",
    }
    assert "alerts@example.com" not in answer.text and "smtp.example.net" not in answer.text
    assert "ERROR" in caplog.text and "refused by smtp.example.net" in caplog.text


def test_without_a_recipient_the_testing_page_says_so_and_sends_no_test_email(store, clock):
    users = {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600, "device_email": "pi@example.com"}}
    settings = parse_settings({"base_frequency": 1, "email_processing_frequency": 1, "users": users})
    store.sync_users(settings.users, T0 - 3600)
    test_emails = ScriptedTestEmails()
    client = webtest.TestApp(make_test_app(store, settings, clock, "let me in", test_emails))
    password = {"password": "let me in"}
    assert client.post_json("/testing/config", password, status=200).json["recipient"] is None
    answer = client.post_json("/testing/test-email", password, status=409)
    assert answer.text == "settings.json has no recipient to send a test email to"
    assert test_emails.sent_to == []


def test_one_test_email_at_a_time(store, clock):
    class Slow(ScriptedTestEmails):
        """Its SMTP conversation lasts until the test releases it."""

        def __init__(self):
            super().__init__()
            self.started, self.release = threading.Event(), threading.Event()

        def send_test(self, recipient, now):
            self.started.set()
            assert self.release.wait(10)
            return super().send_test(recipient, now)

    test_emails = Slow()
    client = client_with_password(store, clock, test_emails=test_emails)
    password = {"password": "let me in"}
    first = threading.Thread(target=client.post_json, args=("/testing/test-email", password))
    first.start()
    try:
        assert test_emails.started.wait(10)
        second = client.post_json("/testing/test-email", password, status=409)
        assert second.text == "a test email is being sent already; wait for its answer"
    finally:
        test_emails.release.set()
        first.join(10)
    assert len(test_emails.sent_to) == 1
    client.post_json("/testing/test-email", password, status=200)


def test_testing_state_lists_only_configured_users_and_the_newest_emails(store, clock):
    client = client_with_password(store, clock, {"old": {"monitor": True, "max_sleep": 1, "email_frequency": 1}})
    for n in range(web.RECENT_EMAILS + 5):
        alert(store, "old", T0 + 10 * n, f"r{n}@example.com")
    client = client_with_password(store, clock)  # "old" was removed from the settings
    state = client.post_json("/testing/state", {"password": "let me in"}).json
    assert list(state["users"]) == ["pi"]
    assert [email["recipient"] for email in state["emails"]] == [
        f"r{n}@example.com" for n in range(5, web.RECENT_EMAILS + 5)
    ]


def from_address(address):
    return {"extra_environ": {"REMOTE_ADDR": address}}


@pytest.mark.parametrize("path", TESTING_ENDPOINTS)
def test_five_wrong_passwords_in_a_minute_get_an_address_429_for_a_minute(store, clock, path):
    client = client_with_password(store, clock)
    right, wrong = {"password": "let me in"}, {"password": "guess"}
    for _ in range(5):
        client.post_json(path, wrong, status=401, **from_address("192.0.2.1"))
        clock.now += 1
    answer = client.post_json(path, right, status=429, **from_address("192.0.2.1"))
    assert answer.text == "too many wrong testing passwords from 192.0.2.1; try again in 59 s"
    assert answer.headers["Retry-After"] == "59"
    other = "/testing/state" if path == "/testing/config" else "/testing/config"
    client.post_json(other, right, status=429, **from_address("192.0.2.1"))
    client.post_json(path, right, status=200, **from_address("192.0.2.2"))
    client.cookiejar.clear()  # the session of that browser, which another one does not have
    clock.now += 58.5
    assert client.post_json(path, right, status=429, **from_address("192.0.2.1")).headers["Retry-After"] == "1"
    clock.now += 0.5  # a minute after the fifth wrong password
    client.post_json(path, right, status=200, **from_address("192.0.2.1"))
    client.post_json(path, wrong, status=401, **from_address("192.0.2.1"))


def test_wrong_passwords_spread_over_more_than_a_minute_are_never_refused(store, clock):
    client = client_with_password(store, clock)
    for offset in (0, 20, 40, 59, 60, 80, 100, 119, 120):
        clock.now = T0 + offset
        client.post_json("/testing/state", {"password": "guess"}, status=401)
    client.post_json("/testing/state", {"password": "let me in"}, status=200)


def test_the_testing_password_is_never_logged(store, clock, caplog):
    caplog.set_level(logging.DEBUG)
    client = client_with_password(store, clock)
    client.post_json("/testing/state", {"password": "let me in"}, status=200)
    for _ in range(6):
        client.post_json("/testing/state", {"password": "hunter2"}, status="*", **from_address("192.0.2.7"))
    assert "too many wrong testing passwords from 192.0.2.7: refusing it for 60 s" in caplog.text
    assert "let me in" not in caplog.text and "hunter2" not in caplog.text


def overview_client(store, clock, testing_password=None, overview_password=None):
    settings = make_settings()
    store.sync_users(settings.users, T0 - 3600)
    return webtest.TestApp(make_test_app(store, settings, clock, testing_password, overview_password=overview_password))


OVERVIEW_ENDPOINTS = ["/overview/state", "/overview/day"]
TODAY = {"username": "pi", "year": 2026, "month": 9, "day": 21}


def test_the_overview_page_loads_its_script_and_without_a_password_says_it_is_disabled(store, clock):
    answer = overview_client(store, clock, overview_password="look").get("/overview", status=200)
    assert (answer.content_type, answer.charset) == ("text/html", "utf-8")
    form = answer.html.find("form", id="unlock")
    assert (form["method"], form["action"]) == ("post", "/overview/state")
    assert [script.attrs for script in answer.html.find_all("script")] == [
        {"src": "/static/common.js", "defer": ""},
        {"src": "/static/overview.js", "defer": ""},
    ]
    assert form.find("input", type="password") and form.find("p", id="unlock-error")
    assert not [tag for tag in answer.html.find_all(True) if any(name.startswith("on") for name in tag.attrs)]
    disabled = overview_client(store, clock).get("/overview", status=200)
    assert "overview is disabled: neither OVERVIEW_PASSWORD nor TESTING_PASSWORD is set" in disabled.text
    assert disabled.html.find("form") is None and disabled.html.find("script") is None
    assert "Everything else works as usual" in disabled.text


@pytest.mark.parametrize("path", ["/static/overview.js", "/static/overview.css"])
def test_the_overview_assets_are_served(client, path):
    assert len(client.get(path, status=200).body) > 500


@pytest.mark.parametrize("path", OVERVIEW_ENDPOINTS)
def test_overview_endpoints_are_503_without_either_password(store, clock, path):
    answer = overview_client(store, clock).post_json(path, {"password": "x", **TODAY}, status=503)
    assert answer.text == "the overview is disabled: neither OVERVIEW_PASSWORD nor TESTING_PASSWORD is set"
    assert answer.headers["Ping-Listener-Overview"] == "disabled"


@pytest.mark.parametrize("path", OVERVIEW_ENDPOINTS)
def test_overview_password_unlocks_the_overview_and_the_testing_password_only_when_it_is_unset(store, clock, path):
    both = overview_client(store, clock, testing_password="test", overview_password="look")
    both.post_json(path, {"password": "look", **TODAY}, status=200)
    assert both.post_json(path, {"password": "test", **TODAY}, status=401).text == "wrong overview password"
    both.post_json("/testing/config", {"password": "look"}, status=401)
    overview_client(store, clock, testing_password="test").post_json(path, {"password": "test", **TODAY}, status=200)


def test_wrong_passwords_for_the_overview_and_the_testing_page_share_one_limit(store, clock):
    client = overview_client(store, clock, testing_password="test", overview_password="look")
    for path in ["/testing/config", "/overview/state", "/testing/state", "/overview/day"]:
        client.post_json(path, {"password": "guess", **TODAY}, status=401)
    client.post_json("/overview/state", {"password": "guess"}, status=401)  # the fifth: refused from now on
    for path in ["/overview/state", "/testing/config"]:
        assert client.post_json(path, {"password": "look"}, status=429).headers["Retry-After"] == "60"


def test_the_overview_state_lists_every_user_and_reads_nothing_it_should_not_write(store, clock):
    client = overview_client(store, clock, overview_password="look")
    client.get("/ping?username=pi", status=200)
    answer = client.post_json("/overview/state", {"password": "look"}, status=200)
    assert answer.content_type == "application/json"
    [pi] = answer.json["users"]
    assert (pi["username"], pi["state"], pi["last_ping_local"]) == ("pi", "pinging", "2026-09-21 16:13:20 CEST")
    assert answer.json["summary"] == [{"state": "pinging", "users": 1}]
    client.post_json("/overview/day", {"password": "look", **TODAY}, status=200)


def test_the_overview_state_since_an_earlier_answer_holds_what_changed_and_refuses_a_since_not_a_string(store, clock):
    client = overview_client(store, clock, overview_password="look")
    first = client.post_json("/overview/state", {"password": "look"}, status=200).json
    assert (first["complete"], [user["username"] for user in first["users"]]) == (True, ["pi"])
    again = client.post_json("/overview/state", {"password": "look", "since": first["version"]}, status=200).json
    assert (again["complete"], again["users"]) == (False, [])
    answer = client.post_json("/overview/state", {"password": "look", "since": 5}, status=400)
    assert answer.text == "invalid since: expected the version of an earlier answer, or null"


# --- operations: content type, global wrong-password budget, ping tokens, /healthz, /metrics, reload ----

TOKEN = "s3cret-token-0123456789"


@pytest.mark.parametrize("path", TESTING_ENDPOINTS)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_testing_endpoints_want_json_before_anything_else_and_count_nothing_else(store, clock, path, content_type):
    client = client_with_password(store, clock)
    body = b'{"password": "guess"}'
    for _ in range(10):
        kwargs = {} if content_type is None else {"content_type": content_type}
        answer = client.post(path, body, status=415, **kwargs)
        assert answer.text == "expected Content-Type: application/json"
    # None of those counted as a wrong password; even disabled testing mode answers 415 first.
    client.post_json(path, {"password": "let me in"}, status=200)
    client.post(path, body, headers={"Content-Type": "Application/JSON; charset=utf-8"}, status=401)
    make_client(store, clock).post(path, body, content_type="text/plain", status=415)


def test_twenty_wrong_passwords_from_all_addresses_together_refuse_every_address_for_a_minute(store, clock):
    client = client_with_password(store, clock)
    for n in range(20):
        client.post_json("/testing/state", {"password": "guess"}, status=401, **from_address(f"198.51.100.{n}"))
        clock.now += 1
    answer = client.post_json("/testing/config", {"password": "let me in"}, status=429, **from_address("192.0.2.99"))
    assert answer.text == "too many wrong testing passwords from all addresses; try again in 59 s"
    assert answer.headers["Retry-After"] == "59"
    clock.now += 58.5
    assert client.post_json("/testing/state", {"password": "let me in"}, status=429).headers["Retry-After"] == "1"
    clock.now += 0.5
    client.post_json("/testing/state", {"password": "let me in"}, status=200, **from_address("192.0.2.99"))


def test_the_holder_of_the_right_password_is_never_refused_while_many_addresses_guess(store, clock):
    settings = make_settings()
    store.sync_users(settings.users, T0 - 3600)
    app = make_test_app(store, settings, clock, overview_password="look", metrics_token="metrics-token-0123456789")
    # Each its own client, as each is its own browser or program with its own cookies.
    admin = webtest.TestApp(app, extra_environ={"REMOTE_ADDR": "192.0.2.10"})
    prometheus = webtest.TestApp(app, extra_environ={"REMOTE_ADDR": "192.0.2.20"})
    guessers = webtest.TestApp(app)
    scrape_headers = {"Authorization": "Bearer metrics-token-0123456789"}
    admin.post_json("/overview/state", {"password": "look"}, status=200)
    prometheus.get("/metrics", headers=scrape_headers, status=200)
    looked_at = []
    for second in range(0, 600, 3):  # 10 minutes; 8 addresses guess every 3 s, 160 guesses a minute
        clock.now = T0 + second
        for n in range(8):
            guess = guessers.post_json(
                "/overview/state", {"password": f"guess-{second}-{n}"}, status="*", **from_address(f"198.51.100.{n}")
            )
            assert guess.status_int in (401, 429)
            if guess.status_int == 401:
                looked_at.append(clock.now)
        # The admin's page refreshes and Prometheus scrapes throughout: never refused.
        admin.post_json("/overview/state", {"password": "look"}, status=200)
        prometheus.get("/metrics", headers=scrape_headers, status=200)
    # At most 20 guesses looked at in any minute, however many addresses guess.
    assert max(sum(1 for t in looked_at if end - 60 < t <= end) for end in looked_at) == 20
    assert len(looked_at) <= 20 * 10
    # A client that has not given the right password meanwhile, from an address that has not either, is refused
    # with everyone: this keeps the bound.
    for n in range(20):
        guessers.post_json("/overview/state", {"password": "guess"}, status="*", **from_address(f"198.51.100.{n}"))
    guessers.post_json("/overview/state", {"password": "look"}, status=429, **from_address("203.0.113.1"))


def test_a_browser_that_unlocked_is_never_refused_by_the_limit_wherever_it_connects_from(store, clock):
    app = overview_client(store, clock, overview_password="look").app
    phone = webtest.TestApp(app, extra_environ={"REMOTE_ADDR": "192.0.2.40"})
    guessers = webtest.TestApp(app)
    answer = phone.post_json("/overview/state", {"password": "look"}, status=200)
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("ping_listener_session=")
    assert {"HttpOnly", "SameSite=strict", "Path=/", "Max-Age=86400"} <= set(cookie.split("; "))
    # Someone behind the phone's own address (the same NAT) has it refused, and everyone is refused too.
    for _ in range(5):
        guessers.post_json("/overview/state", {"password": "guess"}, status=401, **from_address("192.0.2.40"))
    for n in range(15):
        guessers.post_json("/overview/state", {"password": "guess"}, status=401, **from_address(f"198.51.100.{n}"))
    guessers.post_json("/overview/state", {"password": "look"}, status=429, **from_address("192.0.2.40"))
    phone.post_json("/overview/state", {"password": "look"}, status=200)
    # The phone moves to another network: its session goes with it.
    phone.extra_environ = {"REMOTE_ADDR": "203.0.113.7"}
    phone.post_json("/overview/state", {"password": "look"}, status=200)
    assert phone.cookies["ping_listener_session"] == cookie.partition(";")[0].partition("=")[2]
    # A session spares the limit, not the password: its first wrong one ends it (the next right one starts another).
    phone.post_json("/overview/state", {"password": "guess"}, status=401)
    phone.post_json("/overview/state", {"password": "look"}, status=200)
    assert phone.cookies["ping_listener_session"] != cookie.partition(";")[0].partition("=")[2]
    # It lasts a day after its last use.
    clock.now += 86_400
    guessers.post_json("/overview/state", {"password": "look"}, status=200, **from_address("192.0.2.41"))
    session = guessers.cookies["ping_listener_session"]
    clock.now += 86_399
    guessers.post_json("/overview/state", {"password": "look"}, status=200, **from_address("192.0.2.41"))
    assert guessers.cookies["ping_listener_session"] == session
    clock.now += 86_400
    guessers.post_json("/overview/state", {"password": "look"}, status=200, **from_address("192.0.2.41"))
    assert guessers.cookies["ping_listener_session"] != session


def test_every_answer_in_a_session_tells_the_browser_to_keep_its_cookie_a_day_from_then(store, clock):
    client = overview_client(store, clock, overview_password="look")
    unlocked = client.post_json("/overview/state", {"password": "look"}, status=200).headers["Set-Cookie"]
    # A browser drops the cookie Max-Age after the answer that set it last, and the page stays open for days.
    clock.now += 86_000
    assert client.post_json("/overview/state", {"password": "look"}, status=200).headers["Set-Cookie"] == unlocked
    clock.now += 86_000
    assert client.post_json("/overview/state", {"password": "look"}, status=200).headers["Set-Cookie"] == unlocked


@pytest.mark.parametrize(
    "other_cookies",
    [
        'prefs={"theme":"dark"}',  # a JSON value, as many apps store
        "greeting=hello world",
        "a@b=1",  # a name Python's cookie parser refuses
        "x(y)=1",
        'broken="unterminated',
    ],
)
def test_another_apps_cookies_on_the_same_host_never_lose_a_browser_its_session(store, clock, other_cookies):
    # Cookies are shared by every port of a host: the browser sends the other app's cookies along with ours.
    app = overview_client(store, clock, overview_password="look").app
    phone = webtest.TestApp(app, extra_environ={"REMOTE_ADDR": "192.0.2.40"})
    guessers = webtest.TestApp(app)
    session = phone.post_json("/overview/state", {"password": "look"}, status=200).headers["Set-Cookie"]
    session = session.partition(";")[0]
    phone.cookiejar.clear()  # sent by hand below, beside the other app's
    phone.extra_environ = {"REMOTE_ADDR": "203.0.113.7"}  # another network: only its session spares it the limit
    for n in range(20):
        guessers.post_json("/overview/state", {"password": "guess"}, status=401, **from_address(f"198.51.100.{n}"))
    for cookie in (f"{other_cookies}; {session}", f"{session}; {other_cookies}"):
        answer = phone.post_json("/overview/state", {"password": "look"}, headers={"Cookie": cookie}, status=200)
        assert answer.headers["Set-Cookie"].partition(";")[0] == session  # the same session, not a new one
    # Without a session, the same cookies are a request like any other: refused with everyone, never a 500.
    fresh = webtest.TestApp(app, extra_environ={"REMOTE_ADDR": "192.0.2.41"})
    fresh.post_json("/overview/state", {"password": "look"}, headers={"Cookie": other_cookies}, status=429)


def test_wrong_metrics_tokens_count_in_the_password_limit(store, clock):
    client = metrics_client(store, clock)
    client.extra_environ = {"REMOTE_ADDR": "192.0.2.30"}
    for n in range(4):
        client.get("/metrics", headers={"Authorization": f"Bearer guess-{n}"}, status=401)
    client.get("/metrics", status=401)  # no token: nothing guessed, not counted
    client.post_json("/overview/state", {"password": "guess"}, status="*")  # the overview is disabled: not counted
    client.get("/metrics", headers={"Authorization": "Bearer guess-4"}, status=401)  # the fifth
    answer = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}, status=429)
    assert answer.text == "too many wrong bearer tokens from 192.0.2.30; try again in 60 s"
    assert answer.headers["Retry-After"] == "60"
    scrape_from = {"extra_environ": {"REMOTE_ADDR": "192.0.2.31"}}
    client.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}, status=200, **scrape_from)
    clock.now += 60
    client.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}, status=200)


def token_client(store, clock, caplog=None):
    users = {
        "pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600, "token": TOKEN},
        "open": {"monitor": True, "max_sleep": 60, "email_frequency": 600},
    }
    return make_client(store, clock, users)


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"url": f"/ping?username=pi&token={TOKEN}"},
        {"url": "/ping?username=pi", "headers": {"Authorization": f"Bearer {TOKEN}"}},
        {"url": "/ping?username=pi", "headers": {"Authorization": f"bearer   {TOKEN} "}},
    ],
)
def test_a_user_with_a_token_pings_with_it_in_the_query_or_a_bearer_header(store, clock, request_kwargs):
    token_client(store, clock).get(**request_kwargs, status=200)
    assert committed_pings(store) == [T0]


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"username": ""}, 400, "missing username"),
        ({"username": ["pi"]}, 400, "missing username"),
        ({"month": 13}, 400, "invalid date 2026-13-21"),
        ({"day": "first"}, 400, "invalid day 'first': expected 1 or 2 digits"),
        ({"year": 2026.5}, 400, "invalid year: expected a whole number"),
        ({"year": True}, 400, "invalid year: expected a whole number"),
        ({"year": None}, 400, "missing year"),
        ({"username": "ghost"}, 404, "unknown user ghost"),
    ],
)
def test_the_day_view_names_a_bad_field_or_an_unknown_user(store, clock, fields, status, message):
    client = overview_client(store, clock, overview_password="look")
    answer = client.post_json("/overview/day", {"password": "look", **TODAY, **fields}, status=status)
    assert (answer.content_type, answer.text) == ("text/plain", message)


@pytest.mark.parametrize(
    "path", ["/testing/config", "/testing/state", "/testing/test-email", *OVERVIEW_ENDPOINTS, "/snooze"]
)
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"password": "look", "username": "\\udfff"}', "username: must be valid Unicode text"),
        (b'{"password": "\\ud800look"}', "password: must be valid Unicode text"),
        (b'{"password": "look", "since": "\\udc00:1"}', "since: must be valid Unicode text"),
        (b'{"password": "look", "x": {"\\ud83d": 1}}', 'x."\\ud83d": a key must be valid Unicode text'),
        (b'{"password": "look", "x": [1, "ok \\udfff"]}', "x[1]: must be valid Unicode text"),
    ],
)
def test_a_lone_surrogate_in_any_json_body_is_a_400_naming_its_field(store, clock, path, body, message):
    settings = make_settings()
    store.sync_users(settings.users, T0 - 3600)
    client = webtest.TestApp(make_test_app(store, settings, clock, "look", overview_password="look"))
    query = "?username=pi&minutes=5" if path == "/snooze" and b"username" not in body else ""
    answer = client.post(path + query, body, content_type="application/json", status=400)
    assert (answer.content_type, answer.text) == ("text/plain", message + " (it holds a lone surrogate)")
    assert store.user("pi").snoozed_until is None
    # None of them was a wrong password.
    client.post_json("/testing/state", {"password": "look"}, status=200)


def test_a_json_body_is_checked_for_lone_surrogates_up_to_the_first_and_never_regex_searched_as_ascii(
    store, clock, monkeypatch
):
    # Anyone may send /snooze a 64 KiB body before any credential is looked at, and the check holds the GIL
    # that pings need: it must stop at the first bad string, and an ASCII string cannot hold a surrogate.
    client = snooze_client(store, clock)
    searched = []

    class CountingSearch:
        def search(self, text):
            searched.append(text)
            return surrogate.search(text)

    surrogate = config._SURROGATE
    monkeypatch.setattr(config, "_SURROGATE", CountingSearch())
    ascii_first = b'{"x": [' + b", ".join([b'"ok"'] * 5_000) + b', "caf\\u00e9 \\udfff"], "y": "\\ud800"}'
    answer = client.post("/snooze?username=pi&minutes=5", ascii_first, content_type="application/json", status=400)
    assert answer.text == "x[5000]: must be valid Unicode text (it holds a lone surrogate)"
    assert len(searched) == 1
    searched.clear()
    bad_keys = b'{"x": [' + b", ".join([b'{"\\udc00": "\\udfff"}'] * 2_000) + b"]}"
    answer = client.post("/snooze?username=pi&minutes=5", bad_keys, content_type="application/json", status=400)
    assert answer.text == 'x[0]."\\udc00": a key must be valid Unicode text (it holds a lone surrogate)'
    assert len(searched) == 1
    # A body that is one string is no object, whatever it holds.
    answer = client.post("/snooze?username=pi&minutes=5", b'"\\udfff"', content_type="application/json", status=400)
    assert answer.text.startswith("expected a JSON object")
    assert store.user("pi").snoozed_until is None


def test_the_day_view_answers_with_the_days_pings_and_its_logs_link(store, clock):
    client = overview_client(store, clock, overview_password="look")
    client.get("/ping?username=pi", status=200)
    day = client.post_json("/overview/day", {"password": "look", **TODAY, "month": "09"}, status=200).json
    assert (day["pings"], day["date_local"], day["logs_url"]) == (
        1,
        "2026-09-21",
        "/logs?username=pi&year=26&month=09&day=21",
    )


def test_the_day_view_lists_each_failure_with_its_exit_code_run_time_and_output(store, clock):
    client = overview_client(store, clock, overview_password="look")
    client.get("/ping/pi/start", status=200)
    clock.now = T0 + 0.031
    client.post("/ping/pi/23", b"line 1\nline 2\nERROR disk full\n", status=200)
    clock.now = T0 + 60
    client.get("/ping/pi/fail", status=200)
    day = client.post_json("/overview/day", {"password": "look", **TODAY}, status=200).json
    assert day["failures"] == [
        {
            "at": T0 + 0.031,
            "at_local": "2026-09-21 16:13:20 CEST",
            "exit_code": 23,
            "duration": pytest.approx(0.031, abs=1e-6),
            "body": "line 1\nline 2\nERROR disk full\n",
        },
        {"at": T0 + 60, "at_local": "2026-09-21 16:14:20 CEST", "exit_code": None, "duration": None, "body": None},
    ]


def committed_signals(store):
    with sqlite3.connect(store.path) as connection:
        return connection.execute("SELECT kind, exit_code, body FROM pings ORDER BY id").fetchall()


SIGNAL_FORMS = [
    ("/ping?username=pi", ("success", None)),
    ("/ping?username=pi&status=success", ("success", None)),
    ("/ping?username=pi&status=start", ("start", None)),
    ("/ping?username=pi&status=fail", ("fail", None)),
    ("/ping?username=pi&status=log", ("log", None)),
    ("/ping?username=pi&exit_code=0", ("success", 0)),
    ("/ping?username=pi&exit_code=1", ("fail", 1)),
    ("/ping?username=pi&exit_code=255", ("fail", 255)),
    ("/ping?username=pi&exit_code=007", ("fail", 7)),
    ("/ping/pi", ("success", None)),
    ("/ping/pi/start", ("start", None)),
    ("/ping/pi/fail", ("fail", None)),
    ("/ping/pi/log", ("log", None)),
    ("/ping/pi/0", ("success", 0)),
    ("/ping/pi/2", ("fail", 2)),
    ("/ping/pi/255", ("fail", 255)),
    # One trailing slash is the same signal.
    ("/ping/pi/", ("success", None)),
    ("/ping/pi/start/", ("start", None)),
    ("/ping/pi/fail/", ("fail", None)),
    ("/ping/pi/log/", ("log", None)),
    ("/ping/pi/0/", ("success", 0)),
    ("/ping/pi/2/", ("fail", 2)),
    ("/ping/pi%2Ffail%2F", ("fail", None)),
]


@pytest.mark.parametrize(("path", "expected"), SIGNAL_FORMS)
@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
def test_every_signal_in_both_forms_and_every_method_is_committed_and_answered_like_a_ping(
    client, store, path, expected, method
):
    answer = client.request(path, method=method, status=200)
    assert answer.content_type == "text/plain"
    assert answer.text == ("" if method == "HEAD" else "26/09/21 16:13:20")
    assert committed_signals(store) == [(*expected, None)]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/ping?username=pi&status=ok", "unknown status 'ok': expected success, start, fail, log"),
        ("/ping?username=pi&status=", "unknown status '': expected success, start, fail, log"),
        ("/ping?username=pi&status=fail&exit_code=1", "status and exit_code cannot be used together"),
        ("/ping?username=pi&exit_code=256", "invalid exit_code '256': expected 0 to 255"),
        ("/ping?username=pi&exit_code=-1", "invalid exit_code '-1': expected 0 to 255"),
        ("/ping?username=pi&exit_code=0001", "invalid exit_code '0001': expected 0 to 255"),
        ("/ping?username=pi&exit_code=", "invalid exit_code '': expected 0 to 255"),
        ("/ping?username=pi&exit_code=%D9%A3", "invalid exit_code '٣': expected 0 to 255"),
        ("/ping?status=fail", "missing username"),
        ("/ping/", "missing username"),
        ("/ping//fail", "missing username"),
        ("/ping/pi/success", "unknown signal 'success'"),
        ("/ping//", "missing username"),
        ("/ping/pi//", "unknown signal ''"),
        ("/ping/pi/fail//", "unknown signal 'fail/'"),
        ("/ping/pi//fail/", "unknown signal '/fail'"),
        ("/ping/pi/256", "unknown signal '256'"),
        ("/ping/pi/fail/1", "unknown signal 'fail/1'"),
        ("/ping/pi/x/fail", "unknown signal 'x/fail'"),
        ("/ping/pi%2Ffail%2Fx", "unknown signal 'fail/x'"),
        ("/ping/caf%E9", "path is not valid UTF-8"),
        # The path form reads only token from its query, but that query must still be one.
        ("/ping/pi?rid=%E9", "query string is not valid UTF-8"),
        ("/ping/pi?" + "&".join(f"p{n}=1" for n in range(21)), "too many query parameters (at most 20)"),
    ],
)
def test_a_bad_signal_is_a_400_naming_the_problem_and_records_nothing(client, store, path, message):
    answer = client.get(path, status=400)
    assert answer.content_type == "text/plain"
    assert answer.text.startswith(message)
    assert committed_signals(store) == []


def test_the_path_form_takes_a_percent_decoded_name_and_a_2f_is_a_separator(store, clock):
    users = {name: {"monitor": True, "max_sleep": 60, "email_frequency": 600} for name in ("café pi", "a")}
    client = make_client(store, clock, users)
    client.post("/ping/caf%C3%A9%20pi/fail", status=200)
    client.get("/ping/a%2Fstart", status=200)
    assert client.get("/ping/ghost/fail", status=404).text == "unknown user ghost"
    with sqlite3.connect(store.path) as connection:
        rows = connection.execute("SELECT username, kind FROM pings_readable ORDER BY epoch, kind").fetchall()
    assert sorted(rows) == [("a", "start"), ("café pi", "fail")]


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        (b"", None),
        (b"backup failed: disk full\n", "backup failed: disk full\n"),
        (b"caf\xe9 \xff", "caf\ufffd \ufffd"),
        (b"x" * 9_999 + "é".encode(), "x" * 9_999 + "\ufffd"),  # cut inside a character
        (b"y" * 60_000, "y" * 10_000),
    ],
)
def test_a_post_body_is_kept_as_utf8_with_replacement_cut_to_10000_bytes(client, store, body, kept):
    client.post("/ping/pi/fail", body, content_type="text/plain", status=200)
    client.post("/ping?username=pi&status=log", body, content_type="application/octet-stream", status=200)
    assert committed_signals(store) == [("fail", None, kept), ("log", None, kept)]


def test_logs_lists_every_signal_and_details_1_describes_each_with_bodies_only_for_the_users_token(store, clock):
    client = token_client(store, clock)
    client.extra_environ = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    clock.now = T0
    client.get("/ping/pi/start")
    clock.now = T0 + 2.25
    client.post("/ping/pi/log", b"half way")
    clock.now = T0 + 4.5
    client.post("/ping/pi/3", b"")
    clock.now = T0 + 5
    client.get("/ping/pi")
    client.extra_environ = {}
    query = "username=pi&year=26&month=9&day=21"
    assert logs(client, query).json == ["16:13:20", "16:13:22", "16:13:24", "16:13:25"]
    with_token = logs(client, query + f"&details=1&token={TOKEN}")
    assert with_token.content_type == "application/json"
    assert with_token.body == json.dumps(with_token.json).encode()  # written as json.dumps writes the list
    assert with_token.json == [
        {"time": "16:13:20", "kind": "start", "exit_code": None, "duration": None, "body": None},
        {"time": "16:13:22", "kind": "log", "exit_code": None, "duration": None, "body": "half way"},
        {"time": "16:13:24", "kind": "fail", "exit_code": 3, "duration": 4.5, "body": None},
        {"time": "16:13:25", "kind": "success", "exit_code": None, "duration": None, "body": None},
    ]
    bearer = client.get(f"/logs?{query}&details=1", headers={"Authorization": f"Bearer {TOKEN}"}, status=200)
    assert bearer.json == with_token.json
    # Without the token every body is left out, and the rest answered as before.
    without = logs(client, query + "&details=1")
    assert without.json == [{**signal, "body": None} for signal in with_token.json]
    assert "half way" not in without.text
    answer = logs(client, query + "&details=1&token=not-the-token-of-pi", status=403)
    assert answer.text == "wrong or missing token for pi"


def test_logs_details_of_a_user_without_a_token_or_no_longer_configured_have_no_bodies(store, clock):
    client = token_client(store, clock)
    client.post("/ping/open/fail", b"secret output", status=200)
    query = "username=open&year=26&month=9&day=21&details=1"
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        assert [signal["body"] for signal in logs(client, query).json] == [None]
        assert [signal["body"] for signal in client.get(f"/logs?{query}", headers=headers).json] == [None]
    removed = make_client(store, clock, users={})
    assert [signal["kind"] for signal in logs(removed, query).json] == ["fail"]
    assert "secret output" not in logs(removed, query).text


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def test_a_browser_opening_the_logs_link_gets_a_page_of_the_days_signals_without_their_bodies(store, clock):
    client = make_client(store, clock, {HOSTILE_NAME: {"monitor": True, "max_sleep": 60, "email_frequency": 60}})
    name = "%3Cimg+src%3Dx+onerror%3Dalert%281%29%3E"
    clock.now = T0
    client.get(f"/ping?username={name}&status=start")
    clock.now = T0 + 2.25
    client.post(f"/ping?username={name}&status=log", b"half way <b>secret</b>")
    clock.now = T0 + 4.5
    client.post(f"/ping?username={name}&exit_code=23", b"disk full")
    clock.now = T0 + 5
    client.get(f"/ping?username={name}")
    answer = client.get(f"/logs?username={name}&year=26&month=9&day=21", headers={"Accept": BROWSER_ACCEPT})
    assert answer.content_type == "text/html"
    assert answer.headers["Vary"] == "Accept"
    page = answer.text
    assert "<title>&lt;img src=x onerror=alert(1)&gt;: signals of 2026-09-21</title>" in page
    assert HOSTILE_NAME not in page
    rows = [
        '<tr class="kind-start"><td><time>16:13:20</time></td><td>start</td><td></td><td></td></tr>',
        '<tr class="kind-log"><td><time>16:13:22</time></td><td>log</td><td></td><td></td></tr>',
        '<tr class="kind-fail"><td><time>16:13:24</time></td><td>failure</td><td>23</td><td>4.5 s</td></tr>',
        '<tr class="kind-success"><td><time>16:13:25</time></td><td>success</td><td></td><td></td></tr>',
    ]
    assert "\n".join(rows) in page
    assert "4 signals." in page and "times in CEST" in page
    assert "half way" not in page and "secret" not in page and "disk full" not in page
    empty = client.get(f"/logs?username={name}&year=26&month=9&day=22", headers={"Accept": "text/html"})
    assert "No signal that day." in empty.text


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",  # curl's
        "application/json",
        "text/html, application/json",
        "application/json;q=0.5, text/html",
        "text/html;q=0",
        "text/plain",
        "",
    ],
)
def test_every_other_request_gets_the_json_list_byte_for_byte(client, clock, accept):
    ping_at(client, clock, T0, T0 + 1)
    query = "/logs?username=pi&year=26&month=9&day=21"
    answer = client.get(query, headers={} if accept is None else {"Accept": accept})
    assert (answer.content_type, answer.body) == ("application/json", b'["16:13:20", "16:13:21"]')
    details = client.get(query + "&details=1", headers={"Accept": BROWSER_ACCEPT})
    assert details.content_type == "application/json"


@pytest.mark.parametrize("value", ["0", "true", "", "11"])
def test_logs_details_takes_only_1(client, value):
    answer = logs(client, f"username=pi&year=26&month=9&day=21&details={value}", status=400)
    assert answer.text == f"invalid details {value!r}: expected 1"


@settings(max_examples=300, deadline=None)
@given(
    at=st.floats(min_value=0, max_value=4e9),
    kind=st.sampled_from(["success", "start", "fail", "log"]),
    exit_code=st.none() | st.integers(0, 255),
    duration=st.none() | st.floats(min_value=0, max_value=1e9),
    body=st.none() | st.text(max_size=50),
)
def test_a_signals_details_are_written_as_json_dumps_writes_them(at, kind, exit_code, duration, body):
    signal = Signal(at, kind, exit_code, duration, body)
    item = {
        "time": time.strftime("%H:%M:%S", time.localtime(at)),
        "kind": kind,
        "exit_code": exit_code,
        "duration": None if duration is None else round(duration, 3),
        "body": body,
    }
    assert web._signal_details_writer(True)(signal) == (json.dumps(item) + ", ").encode()
    assert web._signal_details_writer(False)(signal) == (json.dumps({**item, "body": None}) + ", ").encode()


@pytest.mark.parametrize("count", [0, 1, 2, 7, 40])
def test_a_details_answer_goes_in_pieces_of_about_its_piece_size(monkeypatch, count):
    monkeypatch.setattr(web, "LOGS_PIECE_BYTES", 100)
    write = web._signal_details_writer(True)
    signals = [Signal(T0 + n, "log", None, None, "x" * (n % 3) * 30) for n in range(count)]
    pieces = web._signal_details([write(signal) for signal in signals])
    assert b"".join(pieces) == json.dumps(json.loads(b"".join(pieces))).encode()
    assert [item["body"] for item in json.loads(b"".join(pieces))] == [signal.body for signal in signals]
    # A piece is longer only if it holds one item (with a bracket).
    assert all(len(piece) <= 100 or piece.count(b'"time"') == 1 for piece in pieces)
    assert all(len(piece) + len(after) > 100 for piece, after in zip(pieces, pieces[1:], strict=False))  # few


def test_logs_details_of_a_day_of_bodies_that_json_escapes_at_length_stays_within_its_bound_and_says_so(store, clock):
    client = token_client(store, clock)
    # Bodies of 10 000 bytes that JSON writes in six bytes each: \u0001, and \ufffd for an invalid byte.
    body = b"\x01\xff" * 5_000
    for _ in range(70):
        client.post(f"/ping/pi/log?token={TOKEN}", body)
    answer = logs(client, f"username=pi&year=26&month=9&day=21&details=1&token={TOKEN}")
    assert len(answer.body) <= web.LOGS_MAX_DETAILS_BYTES
    assert answer.body == json.dumps(answer.json).encode()
    item = json.dumps(answer.json[0])
    assert len(item) > 60_000
    # As many as fit: each takes its JSON and the ", " after it, the last one's room for the brackets.
    assert len(answer.json) == web.LOGS_MAX_DETAILS_BYTES // (len(item) + 2)
    assert answer.headers[web.LOGS_TRUNCATED] == f"first {len(answer.json)} signals of the day"
    assert web.LOGS_TRUNCATED not in logs(client, "username=pi&year=26&month=9&day=21").headers


def test_testing_state_shows_failed_and_running_users_and_the_last_runs_duration(store, clock):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    client = client_with_password(store, clock, {"pi": user, "job": {**user, "max_runtime": 30}})
    clock.now = T0 - 30
    client.get("/ping/job")
    clock.now = T0 - 20
    client.get("/ping/job/start")
    clock.now = T0 - 10
    client.post("/ping/pi/fail", b"boom")
    clock.now = T0
    state = client.post_json("/testing/state", {"password": "let me in"}).json
    pi, job = state["users"]["pi"], state["users"]["job"]
    assert (pi["state"], pi["failed_at"], pi["last_ping"]) == ("failed", T0 - 10, T0 - 10)
    assert (job["state"], job["run_started"], job["late_at"]) == ("running", T0 - 20, T0 + 10)
    clock.now = T0 + 5
    client.get("/ping/job/0")
    assert client.post_json("/testing/state", {"password": "let me in"}).json["users"]["job"]["last_duration"] == 25


def test_testing_state_shows_a_scheduled_users_schedule_and_real_deadline_right_after_a_ping(store, clock):
    # T0 is Monday 2026-09-21 16:13:20 CEST; the job runs at 02:30 in New York (08:30 in Paris).
    users = {
        "job": {
            "monitor": True,
            "schedule": "30 2 * * *",
            "tz": "America/New_York",
            "grace": 600,
            "email_frequency": 60,
        }
    }
    client = client_with_password(store, clock, users)
    clock.now = T0
    client.get("/ping?username=job", status=200)
    assert store.user("job").due_at == T0  # provisional: the listener has not looked yet
    config = client.post_json("/testing/config", {"password": "let me in"}, status=200).json["users"]["job"]
    assert (config["max_sleep"], config["schedule"], config["tz"], config["grace"]) == (
        None,
        "30 2 * * *",
        "America/New_York",
        600,
    )
    job = client.post_json("/testing/state", {"password": "let me in"}, status=200).json["users"]["job"]
    assert (job["state"], job["schedule"], job["tz"]) == ("pinging", "30 2 * * *", "America/New_York")
    assert (job["expected_at_local"], job["late_at_local"]) == ("2026-09-22 08:30:00 CEST", "2026-09-22 08:40:00 CEST")


# /snooze: pi pinged last at T0 - 10 (late at T0 + 50), settings say max_sleep 60.


def snooze_client(store, clock, users=None, api_key=None):
    """An app whose overview password is "look", whose API key is `api_key`, and whose pi has no token."""
    settings = make_settings(users)
    store.sync_users(settings.users, T0 - 3600)
    return webtest.TestApp(make_test_app(store, settings, clock, overview_password="look", api_key=api_key))


def test_snooze_answers_its_end_in_local_time_in_both_forms_and_minutes_zero_ends_it(store, clock):
    client = snooze_client(store, clock)
    answer = client.post_json("/snooze?username=pi&minutes=30", {"password": "look"}, status=200)
    assert (answer.content_type, answer.text) == ("text/plain", "26/09/21 16:43:20")
    assert store.user("pi").snoozed_until == T0 + 1800
    clock.now = T0 + 60
    answer = client.post_json("/snooze", {"username": "pi", "minutes": 10080, "password": "look"}, status=200)
    assert answer.text == "26/09/28 16:14:20"
    clock.now = T0 + 120
    answer = client.post_json("/snooze", {"username": "pi", "minutes": "0", "password": "look"}, status=200)
    assert answer.text == "26/09/21 16:15:20"
    assert store.user("pi").snoozed_until == T0 + 120
    # Not snoozed any more: minutes=0 changes nothing.
    clock.now = T0 + 180
    assert client.post_json("/snooze?username=pi&minutes=0", {"password": "look"}, status=200).text == (
        "26/09/21 16:16:20"
    )
    assert store.user("pi").snoozed_until == T0 + 120


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("minutes=5", "missing username"),
        ("username=pi", "missing minutes"),
        ("username=pi&minutes=10081", "invalid minutes '10081': expected a whole number from 0 to 10080"),
        ("username=pi&minutes=1.5", "invalid minutes '1.5': expected a whole number from 0 to 10080"),
        ("username=pi&minutes=-1", "invalid minutes '-1': expected a whole number from 0 to 10080"),
        ("username=pi&minutes=", "invalid minutes '': expected a whole number from 0 to 10080"),
        ("username=pi&minutes=%EF%BC%91", "invalid minutes '\uff11': expected a whole number from 0 to 10080"),
    ],
)
def test_snooze_refuses_a_missing_or_bad_parameter_with_a_400_and_changes_nothing(store, clock, query, message):
    answer = snooze_client(store, clock).post_json("/snooze?" + query, {"password": "look"}, status=400)
    assert (answer.content_type, answer.text) == ("text/plain", message)
    assert store.user("pi").snoozed_until is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"username": "pi", "minutes": 5.5}, "invalid minutes: expected a whole number from 0 to 10080"),
        ({"username": "pi", "minutes": True}, "invalid minutes: expected a whole number from 0 to 10080"),
        ({"username": "pi", "minutes": -1}, "invalid minutes '-1': expected a whole number from 0 to 10080"),
        ({"username": ["pi"], "minutes": 5}, "missing username"),
        ({"username": "pi", "minutes": 5, "password": 5}, "invalid password: expected a string"),
        (["pi", 5], 'expected a JSON object such as {"username": "...", "minutes": 10, "password": "..."}'),
    ],
)
def test_snooze_refuses_a_bad_json_body_with_a_400_and_changes_nothing(store, clock, body, message):
    answer = snooze_client(store, clock).post_json("/snooze", body, status=400)
    assert answer.text == message
    assert store.user("pi").snoozed_until is None


def test_snooze_of_an_unknown_user_is_a_404(store, clock):
    client = snooze_client(store, clock)
    assert client.post_json("/snooze?username=ghost&minutes=5", {"password": "look"}, status=404).text == (
        "unknown user ghost"
    )


def test_snooze_by_get_or_head_is_a_405_and_changes_nothing(store, clock):
    client = snooze_client(store, clock)
    # As a link or an image tag in another site's page would ask, whatever the credential.
    for method in (client.get, client.head):
        answer = method("/snooze?username=pi&minutes=10080&password=look", status=405)
        assert answer.headers["Allow"] == "POST"
    assert store.user("pi").snoozed_until is None


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        # A cross-site form can send these: no credential, or a JSON-looking body under another type.
        ({}, 401, "snoozing pi needs the overview password (a JSON body with password) or an API key (X-Api-Key)"),
        (
            {"params": b'{"password": "look"}', "content_type": "text/plain"},
            401,
            "snoozing pi needs the overview password (a JSON body with password) or an API key (X-Api-Key)",
        ),
        ({"params": "password=look", "content_type": "application/x-www-form-urlencoded"}, 401, None),
        ({"params": b'{"password": "guess"}', "content_type": "application/json"}, 403, "wrong overview password"),
        ({"headers": {"X-Api-Key": "a-wrong-api-key-0123456789"}}, 403, "wrong API key"),
        ({"headers": {"Authorization": "Bearer look"}}, 401, None),
        (
            {"params": b'{"password": "look"}', "content_type": "application/json", "headers": {"X-Api-Key": "k"}},
            400,
            "give one credential: the overview password or an API key, not both",
        ),
    ],
)
def test_snoozing_a_user_without_a_token_without_a_right_credential_is_refused_and_changes_nothing(
    store, clock, request_kwargs, status, message
):
    client = snooze_client(store, clock, api_key="the-api-key-0123456789")
    answer = client.post("/snooze?username=pi&minutes=10080", **request_kwargs, status=status)
    assert answer.content_type == "text/plain"
    assert message is None or answer.text == message
    assert store.user("pi").snoozed_until is None


def test_minutes_1_then_minutes_0_without_a_credential_change_nothing(store, clock):
    client = snooze_client(store, clock)
    clock.now = T0 + 100  # pi is late (its last ping T0 - 3600, max_sleep 60)
    client.post("/snooze?username=pi&minutes=1", status=401)
    clock.now += 1
    client.post("/snooze?username=pi&minutes=0", status=401)
    user = store.user("pi")
    assert (user.snoozed_until, user.muted_outage) == (None, None)


def test_snoozing_with_the_api_key_works_and_every_snooze_is_logged_with_who_and_from_where(store, clock, caplog):
    caplog.set_level(logging.INFO, logger="ping_listener.web")
    client = snooze_client(store, clock, api_key="the-api-key-0123456789")
    headers = {"X-Api-Key": "the-api-key-0123456789"}
    client.post("/snooze?username=pi&minutes=5", headers=headers, status=200, **from_address("192.0.2.5"))
    client.post_json("/snooze", {"username": "pi", "minutes": 0, "password": "look"}, **from_address("192.0.2.6"))
    assert [record.getMessage() for record in caplog.records if record.name == "ping_listener.web"] == [
        "pi snoozed until 2026-09-21 16:18:20 CEST (minutes=5) by its API key from 192.0.2.5",
        "pi snoozed until 2026-09-21 16:13:20 CEST (minutes=0) by its overview password from 192.0.2.6",
    ]
    assert "the-api-key-0123456789" not in caplog.text and "look" not in caplog.text


def test_api_keys_are_refused_when_api_key_is_not_set_and_the_password_when_neither_password_is(store, clock):
    settings = make_settings()
    store.sync_users(settings.users, T0 - 3600)
    client = webtest.TestApp(make_test_app(store, settings, clock, metrics_token="metrics-token-0123456789"))
    answer = client.post("/snooze?username=pi&minutes=5", headers={"X-Api-Key": "k" * 20}, status=403)
    assert answer.text == "API keys are disabled: API_KEY is not set"
    for _ in range(5):
        answer = client.post_json("/snooze?username=pi&minutes=5", {"password": "look"}, status=403)
        assert answer.text == "the overview is disabled: neither OVERVIEW_PASSWORD nor TESTING_PASSWORD is set"
    assert store.user("pi").snoozed_until is None
    # There was no secret to guess: nothing was counted.
    client.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}, status=200)


def test_wrong_snooze_credentials_count_in_the_password_limit(store, clock):
    users = {
        "pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600},
        "nas": {"monitor": True, "max_sleep": 60, "email_frequency": 600, "token": TOKEN},
    }
    client = snooze_client(store, clock, users, api_key="the-api-key-0123456789")
    client.extra_environ = {"REMOTE_ADDR": "192.0.2.8"}
    client.post_json("/snooze?username=pi&minutes=5", {"password": "guess"}, status=403)
    client.post("/snooze?username=pi&minutes=5", headers={"X-Api-Key": "guess-guess-guess-guess"}, status=403)
    client.post("/snooze?username=nas&minutes=5&token=guess-guess-guess-guess", status=403)
    client.post("/snooze?username=nas&minutes=5", status=403)  # no token: nothing guessed, not counted
    client.post_json("/overview/state", {"password": "guess"}, status=401)
    client.post_json("/snooze?username=pi&minutes=5", {"password": "guess"}, status=403)  # the fifth
    answer = client.post_json("/snooze?username=pi&minutes=5", {"password": "look"}, status=429)
    assert answer.text == "too many wrong credentials from 192.0.2.8; try again in 60 s"
    client.post_json("/overview/state", {"password": "look"}, status=429)
    # The device's own token is never refused: others' guesses must not stop a device.
    client.post(f"/snooze?username=nas&minutes=5&token={TOKEN}", status=200)
    assert (store.user("pi").snoozed_until, store.user("nas").snoozed_until) == (None, T0 + 300)


def test_testing_state_shows_snoozed_and_suppressed_users_and_the_parent_they_wait_for(store, clock):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    users = {"router": user, "cam": {**user, "depends_on": "router"}, "nas": user}
    client = client_with_password(store, clock, users)  # monitoring began at T0 - 3600
    client.post_json("/snooze?username=nas&minutes=5", {"password": "let me in"}, status=200)
    state = client.post_json("/testing/state", {"password": "let me in"}, status=200).json["users"]
    assert {name: live["state"] for name, live in state.items()} == {
        "router": "late",
        "cam": "suppressed",
        "nas": "snoozed",
    }
    assert (state["cam"]["depends_on"], state["router"]["depends_on"]) == ("router", None)
    assert (state["nas"]["snoozed_until"], state["nas"]["snoozed_until_local"]) == (
        T0 + 300,
        "2026-09-21 16:18:20 CEST",
    )
    assert (state["nas"]["held_back_until"], state["nas"]["held_back_by"]) == (T0 + 300, "snooze")


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"url": "/ping?username=pi"},
        {"url": "/ping?username=pi&token="},
        {"url": f"/ping?username=pi&token={TOKEN[:-1]}"},
        {"url": f"/ping?username=pi&token={TOKEN}x"},
        {"url": "/ping?username=pi&token=wrong", "headers": {"Authorization": f"Bearer {TOKEN}"}},
        {"url": "/ping?username=pi", "headers": {"Authorization": f"Basic {TOKEN}"}},
        {"url": "/ping?username=pi", "headers": {"Authorization": "Bearer"}},
    ],
)
def test_a_missing_or_wrong_token_is_a_403_and_records_nothing(store, clock, request_kwargs):
    answer = token_client(store, clock).post(**request_kwargs, status=403)
    assert (answer.content_type, answer.text) == ("text/plain", "wrong or missing token for pi")
    assert committed_pings(store) == []
    assert store.user_counts(T0).pings[1] == 0


def test_a_user_without_a_token_needs_none_and_tokens_are_never_logged(store, clock, caplog):
    caplog.set_level(logging.DEBUG)
    client = token_client(store, clock)
    client.get("/ping?username=open", status=200)
    client.get("/ping?username=open&token=whatever", status=200)
    client.get(f"/ping?username=pi&token={TOKEN}", status=200)
    client.get("/ping?username=pi&token=not-the-token-at-all", status=403)
    assert TOKEN not in caplog.text and "not-the-token-at-all" not in caplog.text


def test_a_token_is_no_key_to_another_user(store, clock):
    users = {
        "pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600, "token": TOKEN},
        "nas": {"monitor": True, "max_sleep": 60, "email_frequency": 600, "token": "another-token-for-the-nas"},
    }
    make_client(store, clock, users).get(f"/ping?username=nas&token={TOKEN}", status=403)


def test_healthz_says_ok_or_names_the_problem(store, clock):
    settings = make_settings()
    store.sync_users(settings.users, T0)
    problems = [None]
    client = webtest.TestApp(make_test_app(store, settings, clock, health_problem=lambda: problems[0]))
    answer = client.get("/healthz", status=200)
    assert (answer.content_type, answer.text) == ("text/plain", "ok")
    problems[0] = "the outbox drain is not running"
    assert client.get("/healthz", status=503).text == "the outbox drain is not running"


def metrics_client(store, clock, users=None, token="metrics-token-0123456789"):
    settings = make_settings(users)
    store.sync_users(settings.users, T0 - 3600)
    return webtest.TestApp(make_test_app(store, settings, clock, metrics_token=token))


def test_a_secret_beyond_ascii_is_accepted_in_a_header_as_clients_send_it_in_utf8(store, clock):
    secret = "clé-de-métriques-0123456789"  # settings and the environment accept it
    settings = make_settings({"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600, "token": secret}})
    store.sync_users(settings.users, T0 - 3600)
    client = webtest.TestApp(make_test_app(store, settings, clock, metrics_token=secret, api_key=secret))
    # curl and Prometheus send a header's UTF-8 bytes; a WSGI server gives each byte as one character (latin-1).
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {secret}".encode().decode("latin-1")}
    client.get("/metrics", extra_environ=bearer, status=200)
    client.get("/ping?username=pi", extra_environ=bearer, status=200)
    client.post("/snooze?username=pi&minutes=5", extra_environ=bearer, status=200)
    assert store.user("pi").snoozed_until == T0 + 300
    snooze_client(store, clock, api_key=secret).post(
        "/snooze?username=pi&minutes=5", extra_environ={"HTTP_X_API_KEY": secret.encode().decode("latin-1")}, status=200
    )
    # Bytes that are not UTF-8 are still compared as they came.
    client.get("/metrics", extra_environ={"HTTP_AUTHORIZATION": "Bearer caf\xe9"}, status=401)


def test_metrics_are_disabled_without_metrics_token(store, clock):
    answer = metrics_client(store, clock, token=None).get("/metrics", status=404)
    assert answer.text == "metrics are disabled: METRICS_TOKEN is not set"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic metrics-token-0123456789"}, {"Authorization": ""}],
)
def test_metrics_need_the_bearer_token(store, clock, headers):
    answer = metrics_client(store, clock).get("/metrics", headers=headers, status=401)
    assert answer.text == "wrong or missing bearer token"
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def scrape(client):
    answer = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}, status=200)
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {}
    for family in prometheus_client.parser.text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_show_each_users_state_and_counters_and_the_outbox(store, clock):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    users = {"pi": user, "late": user, "off": {**user, "monitor": False}, HOSTILE_NAME + '\\"': user}
    client = metrics_client(store, clock, users)
    ping_at(client, clock, T0 - 20, T0 - 10)
    [email_id] = alert(store, "late", T0 - 100, "oncall@example.com")
    store.mark_sent([email_id], T0 - 99)
    alert(store, HOSTILE_NAME + '\\"', T0 - 100, "oncall@example.com")
    clock.now = T0
    samples = scrape(client)

    def per_user(name):
        return {
            labels[0][1]: value
            for (sample, labels), value in samples.items()
            if sample == name and labels[0][0] == "user"
        }

    hostile = HOSTILE_NAME + '\\"'
    assert per_user("ping_listener_up") == {"pi": 1.0, "late": 0.0, "off": 1.0, hostile: 0.0}
    assert per_user("ping_listener_last_ping_timestamp_seconds") == {"pi": T0 - 10}
    assert per_user("ping_listener_pings_total") == {"pi": 2.0, "late": 0.0, "off": 0.0, hostile: 0.0}
    assert per_user("ping_listener_alerts_total") == {"pi": 0.0, "late": 1.0, "off": 0.0, hostile: 1.0}
    assert {labels: value for (name, labels), value in samples.items() if name == "ping_listener_outbox_emails"} == {
        (("status", "queued"),): 1.0,
        (("status", "sent"),): 1.0,
        (("status", "failed"),): 0.0,
    }
    assert samples[("ping_listener_absence_step_seconds_count", ())] == 0.0


def test_a_second_scrape_shows_what_changed_since_the_first(store, clock):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    client = metrics_client(store, clock, {"pi": user, "nas": user})
    ping_at(client, clock, T0 - 20)
    clock.now = T0
    scrape(client)
    ping_at(client, clock, T0 + 1)
    alert(store, "nas", T0 + 2, "oncall@example.com")
    clock.now = T0 + 90  # pi is late again
    samples = scrape(client)
    assert samples[("ping_listener_pings_total", (("user", "pi"),))] == 2.0
    assert samples[("ping_listener_last_ping_timestamp_seconds", (("user", "pi"),))] == T0 + 1
    assert samples[("ping_listener_up", (("user", "pi"),))] == 0.0
    assert samples[("ping_listener_alerts_total", (("user", "nas"),))] == 1.0
    assert samples[("ping_listener_pings_total", (("user", "nas"),))] == 0.0


def test_metrics_count_a_failed_user_or_a_run_past_max_runtime_as_down(store, clock):
    user = {"monitor": True, "max_sleep": 3600, "email_frequency": 600}
    client = metrics_client(store, clock, {"pi": user, "job": {**user, "max_runtime": 30}, "ok": user})
    clock.now = T0 - 40
    client.get("/ping/pi/fail")
    client.get("/ping/job/start")
    client.get("/ping/ok/start")
    clock.now = T0 - 20
    client.get("/ping/ok")
    clock.now = T0
    up = {labels[0][1]: value for (name, labels), value in scrape(client).items() if name == "ping_listener_up"}
    assert up == {"pi": 0.0, "job": 0.0, "ok": 1.0}


def test_a_replaced_setting_is_seen_at_once_by_pings_and_the_testing_page(store, clock):
    first = make_settings({"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600}})
    store.sync_users(first.users, T0)
    live = LiveSettings(first)
    client = webtest.TestApp(make_test_app(store, live, clock, "let me in"))
    second = make_settings({"nas": {"monitor": True, "max_sleep": 5, "email_frequency": 6, "token": TOKEN}})
    live.replace(second)
    # Before the store has followed: pi is gone already, and nas needs its token already.
    assert client.get("/ping?username=pi", status=404).text == "unknown user pi"
    client.get("/ping?username=nas", status=403)
    store.reload_users(second.users, T0 + 1)
    client.get(f"/ping?username=nas&token={TOKEN}", status=200)
    assert client.post_json("/testing/config", {"password": "let me in"}).json == {
        "recipient": "oncall@example.com",
        "users": {"nas": shown_settings(max_sleep=5.0, email_frequency=6.0)},
    }


def test_metrics_count_a_scheduled_user_as_up_until_its_run_and_grace_have_passed(store, clock):
    # T0 is Monday 2026-09-21 16:13:20 CEST: the job runs at 17:00, with 10 minutes' grace.
    job = {"monitor": True, "schedule": "0 17 * * *", "tz": "Europe/Paris", "grace": 600, "email_frequency": 60}
    client = metrics_client(store, clock, {"job": job})
    clock.now = T0
    client.get("/ping/job")
    up = {labels[0][1]: value for (name, labels), value in scrape(client).items() if name == "ping_listener_up"}
    assert up == {"job": 1.0}  # right after a ping, while its stored due_at is the ping's time
    clock.now = T0 + 46 * 60 + 40 + 600  # 17:10:00: exactly the grace
    assert scrape(client)[("ping_listener_up", (("user", "job"),))] == 1.0
    clock.now += 1
    assert scrape(client)[("ping_listener_up", (("user", "job"),))] == 0.0


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"url": f"/snooze?username=pi&minutes=5&token={TOKEN}"},
        {"url": "/snooze?username=pi&minutes=5", "headers": {"Authorization": f"Bearer {TOKEN}"}},
        {
            "url": "/snooze",
            "params": b'{"username": "pi", "minutes": 5}',
            "content_type": "application/json",
            "headers": {"Authorization": f"Bearer {TOKEN}"},
        },
    ],
)
def test_snoozing_a_user_with_a_token_needs_it_as_its_signals_do(store, clock, request_kwargs):
    client = token_client(store, clock)
    assert client.post(**request_kwargs, status=200).text == "26/09/21 16:18:20"
    assert store.user("pi").snoozed_until == T0 + 300


def test_snoozing_a_user_with_a_token_without_it_is_a_403_and_changes_nothing(store, clock):
    settings = make_settings(
        {
            "pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600, "token": TOKEN},
            "open": {"monitor": True, "max_sleep": 60, "email_frequency": 600},
        }
    )
    store.sync_users(settings.users, T0 - 3600)
    client = webtest.TestApp(make_test_app(store, settings, clock, overview_password="look", api_key="k" * 20))
    for url in ("/snooze?username=pi&minutes=5", "/snooze?username=pi&minutes=5&token=wrong"):
        answer = client.post(url, status=403)
        assert (answer.content_type, answer.text) == ("text/plain", "wrong or missing token for pi")
    # Neither the overview password nor an API key stands in for a user's token.
    client.post_json("/snooze?username=pi&minutes=5", {"password": "look"}, status=403)
    client.post("/snooze?username=pi&minutes=5", headers={"X-Api-Key": "k" * 20}, status=403)
    assert store.user("pi").snoozed_until is None
    client.post_json("/snooze?username=open&minutes=5", {"password": "look"}, status=200)


def test_the_path_form_reads_token_and_no_other_query_parameter(store, clock):
    client = token_client(store, clock)
    # As runitor sends a run id (rid), and as a confused script might add the query form's parameters.
    client.get(f"/ping/pi/start?status=fail&exit_code=3&username=open&rid=42&token={TOKEN}", status=200)
    client.get("/ping/open?status=fail&exit_code=3&username=pi&token=whatever", status=200)
    assert committed_signals(store) == [("start", None, None), ("success", None, None)]
    counts = store.user_counts(T0)
    assert list(zip(counts.usernames, counts.pings, strict=True)) == [("pi", 1), ("open", 1)]


@pytest.mark.parametrize("path", ["/ping/pi", "/ping/pi/fail", "/ping/pi/start", "/ping/pi/3", "/ping/pi/log"])
def test_every_path_form_signal_needs_the_users_token_too(store, clock, path):
    client = token_client(store, clock)
    assert client.get(path, status=403).text == "wrong or missing token for pi"
    assert committed_signals(store) == []
    client.get(f"{path}?token={TOKEN}", status=200)
    client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}, status=200)
    assert len(committed_signals(store)) == 2
    client.get("/ping/open/fail", status=200)  # a user without a token needs none
