import json
import sqlite3

import pytest
import webtest

import server
from support import make_settings

T0 = 1_790_000_000.0  # Monday 2026-09-21 16:13:20 in Paris


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock(T0)


def make_client(store, clock, users=None, testing_password=None):
    settings = make_settings(users)
    store.sync_users(settings.users, T0 - 3600)
    return webtest.TestApp(server.make_app(store, settings, clock, testing_password))


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


def test_a_full_disk_is_a_503_with_a_clear_message(client, store):
    connection = store._connection()
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")
    client.get("/ping?username=pi", status=200)  # fits in a page already allocated
    for _ in range(2000):
        answer = client.get("/ping?username=pi", status="*")
        if answer.status_int != 200:
            break
    assert (answer.status_int, answer.text) == (503, "storage unavailable: the disk is full; try again later")


def test_the_page_at_root_says_when_testing_mode_is_disabled(client):
    answer = client.get("/", status=200)
    assert "testing mode is disabled: TESTING_PASSWORD is not set" in answer.text


def test_testing_config_is_503_when_testing_mode_is_disabled(client):
    answer = client.post_json("/testing/config", {"password": "x"}, status=503)
    assert answer.text == "testing mode is disabled: TESTING_PASSWORD is not set"


def test_testing_config_needs_the_right_password(store, clock):
    client = make_client(store, clock, testing_password="let me in")
    assert client.post_json("/testing/config", {"password": "nope"}, status=401).text == "wrong testing password"
    client.post("/testing/config", "not json", status=400)
    client.post_json("/testing/config", ["let me in"], status=400)
    answer = client.post_json("/testing/config", {"password": "let me in"}, status=200)
    assert answer.json == {"users": {"pi": {"monitor": True, "max_sleep": 60.0, "email_frequency": 600.0}}}
    assert "smtp" not in json.dumps(answer.json).lower()
