"""Status pages and badges (status.py, web.py's /status and /badge routes) over a real SQLite store, the absence
listener's real steps and a clock the test moves: what a page shows, what it must never show, uptime as the
alerts called it, badges, and caching."""

import xml.etree.ElementTree as ElementTree

import pytest
import webtest
from test_scheduler import RecordingMailer

import status
from config import LiveSettings
from scheduler import Scheduler
from support import T0, Clock, make_settings, make_test_app, wait_until

BADGE_KEY = "badge-key-0123456789"
TOKEN = "token-never-shown-0123456789"
USERS = {
    "router": {"monitor": True, "max_sleep": 60, "email_frequency": 3600, "tags": ["home"]},
    "nas-box-7": {
        "monitor": True,
        "max_sleep": 60,
        "email_frequency": 3600,
        "device_email": "nas-owner@example.org",
        "tags": ["home"],
    },
    "backup-job": {"monitor": True, "max_sleep": 60, "email_frequency": 3600},
    "old-printer": {"monitor": False, "max_sleep": 60, "email_frequency": 3600},
    "hidden-cam-42": {"monitor": True, "max_sleep": 60, "email_frequency": 3600, "token": TOKEN, "tags": ["home"]},
}
PAGES = {
    "home": {
        "title": "Home lab <status>",
        "users": ["router", "nas-box-7", "backup-job", "old-printer"],
        "show_names": {"nas-box-7": "Storage"},
    }
}
SECRET_BODY = "body-never-shown-xyzzy"


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def world(store, clock):
    """(client, listener step): the app over `store` with USERS and PAGES, monitored since T0."""
    settings = make_settings(USERS, status_pages=PAGES, badge_key=BADGE_KEY, recipient="oncall-secret@example.com")
    store.sync_users(settings.users, T0)
    scheduler = Scheduler(store, RecordingMailer(), LiveSettings(settings), "https://example.net", clock)
    client = webtest.TestApp(make_test_app(store, settings, clock))
    return client, scheduler


def at(clock, seconds):
    """Move the clock to T0 + `seconds`, past the life of any snapshot answers are made from."""
    assert seconds - (clock.now - T0) >= status.STALE_SECONDS
    clock.now = T0 + seconds


def ping(client, name, kind="", body=SECRET_BODY):
    path = f"/ping/{name}" + (f"/{kind}" if kind else "")
    headers = {"Authorization": f"Bearer {TOKEN}"} if name == "hidden-cam-42" else {}
    client.post(path, body, headers=headers, status=200)


def page_json(client, slug="home"):
    answer = client.get(f"/status/{slug}.json", status=200)
    assert answer.content_type == "application/json"
    return answer.json


def test_a_status_page_shows_each_listed_device_its_state_and_uptimes_and_nothing_else(world, clock, store):
    client, listener = world
    for name in USERS:
        ping(client, name)
    at(clock, 30)
    ping(client, "backup-job", "fail")
    store.snooze("router", T0 + 3600, T0 + 30)
    at(clock, 200)  # nas-box-7 and hidden-cam-42 are silent past max_sleep: both alerted
    listener.check_once(clock.now)
    data = page_json(client)
    assert data["title"] == "Home lab <status>"
    assert [(d["name"], d["state"]) for d in data["devices"]] == [
        ("router", "snoozed"),
        ("Storage", "late"),
        ("backup-job", "failed"),
        ("old-printer", "paused"),
    ]
    for device in data["devices"]:
        assert set(device) == {"name", "state", "uptime", "daily"}
        assert set(device["uptime"]) == {"24h", "7d", "30d", "90d"}
        assert all(0.0 <= value <= 1.0 for value in device["uptime"].values())
        assert len(device["daily"]) == 90
    page = client.get("/status/home", status=200)
    assert page.content_type == "text/html"
    # The state is in the HTML itself, for a reader without JavaScript; the title escaped.
    assert '<span class="state late">late</span>' in page.text
    assert "<h1>Home lab &lt;status&gt;</h1>" in page.text


def test_no_ping_body_token_email_recipient_renamed_or_unlisted_user_appears_in_a_page(world, clock, store):
    client, listener = world
    for name in USERS:
        ping(client, name)
    at(clock, 200)
    listener.check_once(clock.now)  # alerts, and emails queued to every recipient
    at(clock, 300)
    for name in USERS:
        ping(client, name, "fail")
    at(clock, 400)
    listener.check_once(clock.now)
    # What the page must keep to itself is in the database: emails to both recipients, the bodies, the token's user.
    assert {email.recipient for email in store.recent_emails(50)} == {
        "oncall-secret@example.com",
        "nas-owner@example.org",
    }
    for answer in (client.get("/status/home"), client.get("/status/home.json")):
        text = answer.text
        for secret in ("hidden-cam-42", "nas-box-7", SECRET_BODY, TOKEN, "oncall-secret", "nas-owner", "@", BADGE_KEY):
            assert secret not in text
    assert {incident["name"] for incident in page_json(client)["incidents"]} <= {"router", "Storage", "backup-job"}


def test_uptime_counts_an_alerted_outage_from_its_start_until_the_success_that_ended_it(world, clock):
    client, listener = world
    for name in USERS:
        ping(client, name)
    at(clock, 100)
    listener.check_once(clock.now)  # every monitored user went down at T0 + 60
    at(clock, 460)
    ping(client, "router")  # router: down 400 s of its 460 s known
    at(clock, 3600)
    data = page_json(client)
    router = data["devices"][0]
    assert router["uptime"]["24h"] == pytest.approx(1 - 400 / 3600)
    assert router["uptime"]["90d"] == router["uptime"]["24h"]  # nothing before T0 is known: it counts neither way
    assert {"name": "router", "began": T0 + 60, "ended": T0 + 460} in data["incidents"]
    storage = data["devices"][1]
    assert storage["uptime"]["24h"] == pytest.approx(60 / 3600)
    assert {"name": "Storage", "began": T0 + 60, "ended": None} in data["incidents"]
    # A late device not yet alerted is not counted down: the alerts did not call it so.
    assert data["devices"][3]["uptime"]["24h"] == 1.0


def test_answers_carry_cache_control_and_an_etag_and_a_matching_if_none_match_gets_304(world, clock):
    client, _ = world
    for path in ("/status/home", "/status/home.json", f"/badge/{BADGE_KEY}/router.svg"):
        answer = client.get(path, status=200)
        assert answer.headers["Cache-Control"] == "public, max-age=10"
        etag = answer.headers["ETag"]
        unchanged = client.get(path, headers={"If-None-Match": etag}, status=304)
        assert unchanged.body == b""
        client.get(path, headers={"If-None-Match": '"other"'}, status=200)
        client.get(path, headers={"If-None-Match": "\x80"}, status=200)  # not UTF-8: no ETag of ours, no 500
    before = client.get("/status/home.json").headers["ETag"]
    at(clock, 200)  # everyone is late now: a new answer, a new ETag
    assert client.get("/status/home.json").headers["ETag"] != before


def test_an_unknown_page_is_a_404(world):
    client, _ = world
    assert client.get("/status/nope", status=404).text == "no status page nope"
    client.get("/status/nope.json", status=404)


def badge(client, name, form, status_code=200):
    return client.get(f"/badge/{BADGE_KEY}/{name}.{form}", status=status_code)


def test_badges_say_up_late_or_down_as_svg_json_and_shields(world, clock):
    client, listener = world
    for name in USERS:
        ping(client, name)
    svg = ElementTree.fromstring(badge(client, "router", "svg").body)
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")] == ["router", "up"]
    assert badge(client, "router", "json").json == {"status": "up", "total": 1, "grace": 0, "down": 0}
    at(clock, 100)  # late, not yet alerted: grace
    assert badge(client, "router", "json").json == {"status": "grace", "total": 1, "grace": 1, "down": 0}
    texts = [t.text for t in ElementTree.fromstring(badge(client, "router", "svg").body).iter() if t.text]
    assert texts[-1] == "late"
    listener.check_once(clock.now)
    at(clock, 130)
    assert badge(client, "router", "json").json == {"status": "down", "total": 1, "grace": 0, "down": 1}
    assert badge(client, "router", "shields").json == {
        "schemaVersion": 1,
        "label": "router",
        "message": "down",
        "color": "red",
    }
    svg = ElementTree.fromstring(badge(client, "router", "svg").body)
    assert [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")] == ["router", "down"]
    assert badge(client, "router", "svg").content_type == "image/svg+xml"


def test_a_tags_badge_covers_every_user_carrying_it(world, clock):
    client, listener = world
    for name in ("router", "nas-box-7", "hidden-cam-42"):
        ping(client, name)
    at(clock, 30)
    ping(client, "router")
    ping(client, "nas-box-7", "fail")
    listener.check_once(clock.now)
    at(clock, 80)  # hidden-cam-42 late, nas-box-7 failed (alerted), router up
    assert badge(client, "home", "json").json == {"status": "down", "total": 3, "grace": 1, "down": 1}


@pytest.mark.parametrize(
    "path",
    [
        "/badge/wrong-key-0123456789/router.svg",
        f"/badge/{BADGE_KEY[:-1]}/router.svg",
        f"/badge/{BADGE_KEY}/ghost.svg",
        f"/badge/{BADGE_KEY}/router.png",
        f"/badge/{BADGE_KEY}/router",
        f"/badge/{BADGE_KEY}/.svg",
    ],
)
def test_a_wrong_key_or_an_unknown_name_or_tag_is_a_404(world, path):
    client, _ = world
    assert world[0].get(path, status=404).text == "no such badge"


def test_without_a_badge_key_there_are_no_badges(store, clock):
    settings = make_settings(USERS)
    store.sync_users(settings.users, T0)
    client = webtest.TestApp(make_test_app(store, settings, clock))
    client.get("/badge/None/router.svg", status=404)


def test_a_snapshot_is_used_10_s_then_until_30_s_while_a_thread_takes_the_next(world, clock):
    client, _ = world
    ping(client, "router")
    assert page_json(client)["devices"][0]["state"] == "up"
    clock.now = T0 + 5
    ping(client, "router", "fail")
    assert page_json(client)["devices"][0]["state"] == "up"  # within CACHE_SECONDS: the same answer
    clock.now = T0 + status.CACHE_SECONDS + 5
    assert page_json(client)["devices"][0]["state"] == "up"  # the last answer, while a thread takes the next
    wait_until(lambda: page_json(client)["devices"][0]["state"] == "failed", timeout=10, message="the next snapshot")
    clock.now = T0 + status.CACHE_SECONDS + 6
    ping(client, "router")
    clock.now = T0 + status.CACHE_SECONDS + 5 + status.STALE_SECONDS
    assert page_json(client)["devices"][0]["state"] == "up"  # too old to use: a new one before answering


def test_the_services_own_downtime_counts_neither_up_nor_down(world, clock, store):
    client, listener = world
    ping(client, "router")
    ping(client, "nas-box-7")
    at(clock, 100)
    listener.check_once(clock.now)  # both went down at T0 + 60
    ping(client, "nas-box-7")
    store.upkeep(T0 + 120)  # the service last seen running at T0 + 120, then stopped until T0 + 1000
    store.sync_users(make_settings(USERS, status_pages=PAGES).users, T0 + 1000)
    clock.now = T0 + 1100
    ping(client, "router")  # router: down from T0 + 60 to T0 + 1100, of which 880 s unknown
    at(clock, 3600)
    router, storage = page_json(client)["devices"][:2]
    assert router["uptime"]["24h"] == pytest.approx(1 - (60 + 100) / (3600 - 880))
    # The downtime is unknown for every device, down or not.
    assert storage["uptime"]["24h"] == pytest.approx(1 - 40 / (3600 - 880))


def test_a_reload_is_seen_at_once_a_page_removed_is_a_404(store, clock):
    live = LiveSettings(make_settings(USERS, status_pages=PAGES, badge_key=BADGE_KEY))
    store.sync_users(live.current.users, T0)
    client = webtest.TestApp(make_test_app(store, live, clock))
    client.get("/status/home", status=200)
    client.get(f"/badge/{BADGE_KEY}/router.svg", status=200)
    live.replace(make_settings(USERS, status_pages={"lab": {"title": "Lab", "users": ["router"]}}))
    client.get("/status/home", status=404)
    assert page_json(client, "lab")["title"] == "Lab"
    client.get(f"/badge/{BADGE_KEY}/router.svg", status=404)


@pytest.mark.parametrize("status_name", ["up", "grace", "down"])
def test_a_badge_svg_of_any_name_is_well_formed_svg_naming_it(status_name):
    svg = ElementTree.fromstring(status.badge_svg('<b & "c">', status_name))
    texts = [text.text for text in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert texts == ['<b & "c">', status.BADGE_WORDS[status_name]]


def test_a_device_in_a_maintenance_window_or_paused_over_the_api_says_so(store, clock):
    users = {
        "router": {**USERS["router"], "maintenance": [{"schedule": "* * * * *", "duration": 600, "tz": "UTC"}]},
        "nas-box-7": USERS["nas-box-7"],
        "backup-job": USERS["backup-job"],
    }
    pages = {"home": {"title": "Home", "users": list(users)}}
    settings = make_settings(users, status_pages=pages, badge_key=BADGE_KEY)
    store.sync_users(settings.users, T0)
    listener = Scheduler(store, RecordingMailer(), LiveSettings(settings), "https://example.net", clock)
    client = webtest.TestApp(make_test_app(store, settings, clock))
    for name in users:
        ping(client, name)
    store.pause("nas-box-7", True, T0)
    at(clock, 70)  # router's window opened at T0 + 60; backup-job is silent past max_sleep
    listener.check_once(clock.now)
    assert [(d["name"], d["state"]) for d in page_json(client)["devices"]] == [
        ("router", "maintenance"),
        ("nas-box-7", "paused"),
        ("backup-job", "late"),
    ]
