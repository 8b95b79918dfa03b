"""The management API (/api/v1/, /api/v2/, /api/v3/), through the app in process on both databases: every
endpoint, its fields as Healthchecks shapes them, and every error."""

import dataclasses
import json
import random

import pytest
import webtest

import api
import server
import sql_store
from checks import Checks, Definition
from config import LiveSettings
from records import LISTED_FIELDS, PAUSED_UNTIL, UserState, listed_state
from support import BACKENDS, T0, Clock, make_settings, make_test_app, write_settings

KEY = "rw-api-key-0123456789"
READ_KEY = "ro-api-key-0123456789"
PI = {"monitor": True, "max_sleep": 60, "email_frequency": 600, "tags": ["home"]}
RW = {"X-Api-Key": KEY}
RO = {"X-Api-Key": READ_KEY}


@pytest.fixture
def clock():
    return Clock(T0)


def api_app(store, clock, keys=(KEY, READ_KEY), users=None, **top_level):
    settings = make_settings(users if users is not None else {"pi": PI}, **top_level)
    store.sync_users(settings.users, T0)
    live = LiveSettings(settings)
    checks = Checks(store, live)
    app = make_test_app(store, live, clock, checks=checks, api_key=keys[0], api_key_readonly=keys[1])
    return webtest.TestApp(app), live, checks


@pytest.fixture
def client(store, clock):
    return api_app(store, clock)[0]


def create(client, status=201, version=3, **fields):
    answer = client.post_json(f"/api/v{version}/checks/", fields, headers=RW, status=status)
    return answer.json if status < 300 else answer.text


@BACKENDS
def test_a_created_check_is_listed_read_pinged_by_its_uuid_and_deleted(store, clock):
    client, live, checks = api_app(store, clock)
    created = create(client, name="backup", timeout=600, grace=60, tags="db nightly", desc="the nightly dump")
    uuid = created["uuid"]
    assert created["status"] == "new" and created["timeout"] == 600 and created["grace"] == 60
    assert created["ping_url"] == f"http://localhost:80/ping/{uuid}"
    assert created["update_url"] == f"http://localhost:80/api/v3/checks/{uuid}"
    assert (created["tags"], created["desc"], created["slug"]) == ("db nightly", "the nightly dump", "backup")
    assert live.current.users["backup"].max_sleep == 660.0
    client.get(f"/ping/{uuid}", status=200)
    shown = client.get(f"/api/v3/checks/{uuid}", headers=RW).json
    assert (shown["status"], shown["n_pings"], shown["last_ping"]) == ("up", 1, "2026-09-21T14:13:20+00:00")
    assert shown["next_ping"] == "2026-09-21T14:23:20+00:00"
    names = [check["name"] for check in client.get("/api/v3/checks/", headers=RW).json["checks"]]
    assert names == ["backup", "pi"]
    assert client.delete(f"/api/v3/checks/{uuid}", headers=RW).json["name"] == "backup"
    client.get(f"/api/v3/checks/{uuid}", headers=RW, status=404)
    client.get(f"/ping/{uuid}", status=404)
    assert "backup" not in live.current.users


@BACKENDS
def test_the_status_goes_grace_between_timeout_and_max_sleep_then_down(store, clock):
    client, _, _ = api_app(store, clock)
    uuid = create(client, name="job", timeout=600, grace=60)["uuid"]
    client.get("/ping/job")
    clock.now = T0 + 601
    assert client.get(f"/api/v1/checks/{uuid}", headers=RW).json["status"] == "grace"
    clock.now = T0 + 661
    assert client.get(f"/api/v1/checks/{uuid}", headers=RW).json["status"] == "down"


def test_the_list_filters_by_tag_and_slug(client):
    create(client, name="a", tags="db prod")
    create(client, name="b", tags="db")

    def names(query):
        return [check["name"] for check in client.get(f"/api/v3/checks/{query}", headers=RW).json["checks"]]

    assert names("?tag=db") == ["a", "b"]
    assert names("?tag=db&tag=prod") == ["a"]
    assert names("?tag=home") == ["pi"]
    assert names("?slug=b") == ["b"]
    assert client.get("/api/v3/checks/?slug=nope", headers=RW).text == '{"checks":[]}'


@BACKENDS
def test_create_with_unique_answers_200_with_the_existing_check_changed(store, clock):
    client, live, _ = api_app(store, clock)
    first = create(client, name="backup", timeout=600, grace=60)
    again = create(client, status=200, name="backup", timeout=900, grace=60, unique=["name"])
    assert again["uuid"] == first["uuid"] and again["timeout"] == 900
    assert live.current.users["backup"].max_sleep == 960.0
    assert create(client, status=409, name="backup", timeout=900) == (
        'a check named backup exists already (send "unique": ["name"] to change it instead)'
    )


def test_update_changes_only_the_fields_given_and_a_schedule_replaces_the_timeout(client, store):
    uuid = create(client, name="job", timeout=600, grace=60, desc="x", email_frequency=30)["uuid"]
    changed = client.post_json(f"/api/v3/checks/{uuid}", {"desc": "y"}, headers=RW).json
    assert (changed["desc"], changed["timeout"], changed["grace"], changed["email_frequency"]) == ("y", 600, 60, 30)
    cron = client.post_json(f"/api/v3/checks/{uuid}", {"schedule": "0 3 * * *", "tz": "UTC"}, headers=RW).json
    assert (cron["schedule"], cron["tz"], "timeout" in cron) == ("0 3 * * *", "UTC", False)


@BACKENDS
def test_pause_lasts_until_the_next_success_unless_manual_resume(store, clock):
    client, _, checks = api_app(store, clock)
    uuid = create(client, name="job", timeout=600, grace=60)["uuid"]
    assert client.post(f"/api/v3/checks/{uuid}/pause", headers=RW).json["status"] == "paused"
    assert store.user("job").snoozed_until == PAUSED_UNTIL
    client.get("/ping/job/start")
    client.get("/ping/job/log")
    assert client.get(f"/api/v3/checks/{uuid}", headers=RW).json["status"] == "paused"
    client.get("/ping/job")
    assert client.get(f"/api/v3/checks/{uuid}", headers=RW).json["status"] == "up"
    client.post_json(f"/api/v3/checks/{uuid}", {"manual_resume": True}, headers=RW)
    client.post(f"/api/v3/checks/{uuid}/pause", headers=RW)
    client.get("/ping/job")
    assert client.get(f"/api/v3/checks/{uuid}", headers=RW).json["status"] == "paused"
    assert client.post(f"/api/v3/checks/{uuid}/resume", headers=RW).json["status"] == "up"
    assert store.user("job").snoozed_until == T0


@BACKENDS
def test_a_check_of_the_settings_file_is_read_paused_and_resumed_but_not_changed_or_deleted(store, clock):
    client, live, checks = api_app(store, clock)
    uuid = checks.uuid_of("pi")
    shown = client.get(f"/api/v3/checks/{uuid}", headers=RW).json
    assert (shown["timeout"], shown["grace"], shown["tags"], shown["declared_in"]) == (60, 0, "home", "settings")
    assert client.post(f"/api/v3/checks/{uuid}/pause", headers=RW).json["status"] == "paused"
    client.get("/ping/pi")  # ends the pause, as for any check
    assert client.get(f"/api/v3/checks/{uuid}", headers=RW).json["status"] == "up"
    answer = client.post_json(f"/api/v3/checks/{uuid}", {"desc": "x"}, headers=RW, status=403)
    assert answer.text == "pi is declared in the settings file: change it there"
    client.delete(f"/api/v3/checks/{uuid}", headers=RW, status=403)
    create(client, status=409, name="pi")
    assert live.current.users["pi"].max_sleep == 60.0


def test_pings_and_flips(client, store, clock):
    uuid = create(client, name="job", timeout=60, grace=0, email_frequency=0)["uuid"]
    client.get("/ping/job/start")
    clock.now += 5
    client.post("/ping/job/3", "oops")
    pings = client.get(f"/api/v3/checks/{uuid}/pings/", headers=RW).json["pings"]
    assert [(ping["type"], ping["n"]) for ping in pings] == [("fail", 2), ("start", 1)]
    assert (pings[0]["duration"], pings[0]["exit_status"]) == (5.0, 3)
    assert client.get(f"/api/v3/checks/{uuid}/flips/", headers=RW).json == []


def test_channels_list_email_and_each_webhook_and_a_check_can_name_them(store, clock):
    hooks = {"ops": {"url": "https://hooks.example.net/x", "format": "json"}}
    client, live, _ = api_app(store, clock, webhooks=hooks)
    listed = client.get("/api/v3/channels/", headers=RW).json["channels"]
    assert [(channel["name"], channel["kind"]) for channel in listed] == [("email", "email"), ("ops", "webhook")]
    created = create(client, name="job", channels=listed[1]["id"])
    assert created["channels"] == listed[1]["id"]
    assert live.current.users["job"].notify == ("webhook:ops",)
    assert create(client, name="all", channels="*")["channels"] == ",".join(c["id"] for c in listed)
    assert client.get("/api/v3/badges/", headers=RW).json == {"badges": {}}


def test_badges_list_each_tags_badge_urls_which_answer(store, clock):
    key = "badge-key-0123456789"
    users = {"pi": {**PI, "tags": ["home", "lab"]}, "nas": {**PI, "tags": ["home"]}}
    client, _, _ = api_app(store, clock, users=users, badge_key=key, server_root="https://mon.example.net")
    badges = client.get("/api/v3/badges/", headers=RO).json["badges"]
    assert set(badges) == {"home", "lab"}
    assert badges["home"]["svg"] == f"https://mon.example.net/badge/{key}/home.svg"
    assert badges["home"]["json3"] == badges["home"]["json"] == f"https://mon.example.net/badge/{key}/home.json"
    assert badges["lab"]["shields"] == f"https://mon.example.net/badge/{key}/lab.shields"
    assert client.get(badges["home"]["json"].removeprefix("https://mon.example.net")).json["total"] == 2


@pytest.mark.parametrize("version", [1, 2, 3])
def test_every_version_answers_with_the_same_handlers(client, version):
    created = create(client, version=version, name=f"v{version}")
    assert created["update_url"].endswith(f"/api/v{version}/checks/{created['uuid']}")


def test_the_key_may_come_in_the_json_body(client):
    client.post_json("/api/v3/checks/", {"name": "job", "api_key": KEY}, status=201)


def test_a_read_only_key_reads_by_unique_key_and_cannot_write(client):
    uuid = create(client, name="job")["uuid"]
    listed = client.get("/api/v3/checks/", headers=RO).json["checks"]
    job = next(check for check in listed if check["name"] == "job")
    assert "uuid" not in job and "ping_url" not in job
    assert client.get(f"/api/v3/checks/{job['unique_key']}", headers=RO).json["name"] == "job"
    answer = client.post_json("/api/v3/checks/", {"name": "x"}, headers=RO, status=403)
    assert answer.text == "the read-only API key (API_KEY_READONLY) cannot change anything"
    client.post(f"/api/v3/checks/{uuid}/pause", headers=RO, status=403)
    client.delete(f"/api/v3/checks/{uuid}", headers=RO, status=403)


def test_a_wrong_or_missing_key_is_a_401_counted_in_the_password_limiter(client):
    client.get("/api/v3/checks/", status=401)
    for _ in range(4):
        assert client.get("/api/v3/checks/", headers={"X-Api-Key": "x" * 20}, status=401).text == (
            "wrong or missing API key (X-Api-Key)"
        )
    # The limiter refuses the address after the limit of wrong secrets (guards.WRONG_PASSWORD_LIMIT).
    answers = [client.get("/api/v3/checks/", headers={"X-Api-Key": "y" * 20}, expect_errors=True) for _ in range(20)]
    assert answers[-1].status_int == 429


def test_with_no_key_set_every_api_path_is_404(store, clock):
    client, _, _ = api_app(store, clock, keys=(None, None))
    for path in ("/api/v1/checks/", "/api/v3/channels/", "/api/v2/badges/"):
        assert client.get(path, headers=RW, status=404).text.startswith("the management API is disabled")
    client.post_json("/api/v3/checks/", {"name": "x"}, headers=RW, status=404)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": "x", "timeout": "ten"}, 'timeout: must be a number >= 0, got "ten"'),
        ({"name": "x", "grace": -1}, "grace: must be a number >= 0, got -1"),
        ({"name": "x", "email_frequency": True}, "email_frequency: must be a number >= 0, got true"),
        ({"name": "x", "schedule": "61 * * * *", "tz": "UTC"}, "schedule: "),
        ({"name": "x", "schedule": "0 3 * * *", "tz": "Mars/Base"}, "tz: "),
        ({"name": "x", "device_email": "nobody"}, "device_email: must be an email address"),
        ({"name": "x", "depends_on": "ghost"}, 'depends_on: no check named "ghost" is configured'),
        ({"name": "x", "colour": "red"}, "colour: unknown field"),
        ({"name": "x", "tags": ["a"]}, "tags: must be a string of tags separated by spaces"),
        ({"name": "x", "channels": "pager"}, 'channels: unknown channel "pager"'),
        ({"name": "x", "methods": "POST"}, 'methods: only "" (HEAD, GET and POST) is supported'),
        ({"name": "a\x01"}, "check: a username must not contain control characters"),
        ({"timeout": 60}, "name: missing"),
        ({"name": "x", "unique": ["colour"]}, "unique: must be a list of name, slug, tags, timeout, grace"),
    ],
)
def test_an_invalid_field_is_a_400_naming_it_and_nothing_is_written(client, store, fields, message):
    answer = client.post_json("/api/v3/checks/", fields, headers=RW, status=400)
    assert answer.text.startswith(message), answer.text
    assert store.program_checks() == []


def test_an_update_with_an_invalid_field_changes_nothing(client, store):
    uuid = create(client, name="job", timeout=600, grace=60)["uuid"]
    client.post_json(f"/api/v3/checks/{uuid}", {"desc": "new", "timeout": -5}, headers=RW, status=400)
    shown = client.get(f"/api/v3/checks/{uuid}", headers=RW).json
    assert (shown["desc"], shown["timeout"]) == ("", 600)


def test_bad_bodies_and_unknown_checks(client):
    client.post("/api/v3/checks/", "{", headers={**RW, "Content-Type": "application/json"}, status=400)
    client.post_json("/api/v3/checks/", [1], headers=RW, status=400)
    big = json.dumps({"name": "x", "desc": "d" * 70_000})
    answer = client.post("/api/v3/checks/", big, headers={**RW, "Content-Type": "application/json"}, status=413)
    assert "at most 65536 bytes" in answer.text
    client.get("/api/v3/checks/0b7e2b4c-8f5e-4a8e-9a7e-5c1d2e3f4a5b", headers=RW, status=404)
    client.post("/api/v3/checks/0b7e2b4c-8f5e-4a8e-9a7e-5c1d2e3f4a5b/pause", headers=RW, status=404)


def test_a_check_others_depend_on_cannot_be_deleted(client):
    uuid = create(client, name="router")["uuid"]
    create(client, name="nas", depends_on="router")
    answer = client.delete(f"/api/v3/checks/{uuid}", headers=RW, status=400)
    assert answer.text == "check: nas depends on it (depends_on); change or delete that one first"


def listing_matches_each_check(client):
    """The list's answer, checked against each check read alone (which is encoded afresh); its statuses by name."""
    listed = client.get("/api/v3/checks/", headers=RW).json["checks"]
    for check in listed:
        assert client.get(f"/api/v3/checks/{check['uuid']}", headers=RW).json == check
    return {check["name"]: check["status"] for check in listed}


@BACKENDS
def test_the_list_follows_signals_pauses_changes_and_time_as_each_check_does(store, clock):
    # The list re-encodes a check only when what it shows moved: each listing is compared with the checks
    # read one by one, across every moment a status turns (timeout, grace, a run's max_runtime, a snooze's end).
    client, _, _ = api_app(
        store, clock, users={"pi": PI, "cron": {"monitor": True, "email_frequency": 600, "schedule": "0 * * * *"}}
    )
    job = create(client, name="job", timeout=600, grace=60, max_runtime=120)["uuid"]
    assert listing_matches_each_check(client) == {"cron": "new", "job": "new", "pi": "new"}
    client.get("/ping/job")
    client.get("/ping/pi")
    assert listing_matches_each_check(client) == {"cron": "new", "job": "up", "pi": "up"}
    clock.now = T0 + 61
    assert listing_matches_each_check(client) == {"cron": "new", "job": "up", "pi": "down"}
    clock.now = T0 + 601
    assert listing_matches_each_check(client)["job"] == "grace"
    clock.now = T0 + 661
    assert listing_matches_each_check(client)["job"] == "down"
    client.get("/ping/job")
    client.get("/ping/job/start")
    assert listing_matches_each_check(client)["job"] == "started"
    clock.now = T0 + 782
    assert listing_matches_each_check(client)["job"] == "down"  # the run is past max_runtime
    client.post(f"/api/v3/checks/{job}/pause", headers=RW)
    assert listing_matches_each_check(client)["job"] == "paused"
    client.post_json(f"/api/v3/checks/{job}", {"desc": "changed"}, headers=RW)
    assert client.get("/api/v3/checks/", headers=RW).json["checks"][1]["desc"] == "changed"
    client.get("/ping/job")
    store.snooze("pi", T0 + 900, clock.now)
    assert listing_matches_each_check(client) == {"cron": "new", "job": "up", "pi": "paused"}
    clock.now = T0 + 900
    assert listing_matches_each_check(client)["pi"] == "up"  # silence counts again from the snooze's end
    clock.now = T0 + 961
    assert listing_matches_each_check(client)["pi"] == "down"


def listing_of_a_new_app(store, live, checks, clock, version=3, headers=RW):
    """The list as an app that never listed before answers it: every check encoded afresh."""
    app = make_test_app(store, live, clock, checks=checks, api_key=KEY, api_key_readonly=READ_KEY)
    return webtest.TestApp(app).get(f"/api/v{version}/checks/", headers=headers).json


@BACKENDS
def test_the_list_never_answers_a_check_as_it_was_before_a_signal_pause_reload_update_or_other_key(
    store, clock, tmp_path
):
    # Each step changes one check's JSON through one of the things the listing's cache is keyed by (its row, its
    # config, its definition, the version and key asked with); the app that listed before each step must answer as
    # one that never listed. A step the cache missed would answer the check as it was.
    settings = {"pi": PI, "nas": {**PI, "tags": ["home", "disk"]}}
    client, live, checks = api_app(store, clock, users=settings)
    job = create(client, name="job", timeout=600, grace=60)["uuid"]

    def fresh(version=3, headers=RW):
        answer = client.get(f"/api/v{version}/checks/", headers=headers).json
        assert answer == listing_of_a_new_app(store, live, checks, clock, version, headers)
        return {check["name"]: check for check in answer["checks"]}

    fresh()
    client.get("/ping/pi")
    assert fresh()["pi"]["n_pings"] == 1
    client.get("/ping/job/fail")
    assert fresh()["job"]["status"] == "down"
    client.post(f"/api/v3/checks/{job}/pause", headers=RW)
    assert fresh()["job"]["status"] == "paused"
    client.post_json(f"/api/v3/checks/{job}", {"desc": "the nightly dump"}, headers=RW)
    assert fresh()["job"]["desc"] == "the nightly dump"
    # A reload changing what only the settings hold (the row's columns that the listing reads stay as they were).
    path = write_settings(tmp_path / "settings.json", {**settings, "nas": {**PI, "email_frequency": 900}})
    assert server.reload_settings(path, live, store, clock, checks)
    assert (fresh()["nas"]["email_frequency"], fresh()["nas"]["tags"]) == (900, "home")
    path = write_settings(tmp_path / "settings.json", {**settings, "pi": {**PI, "max_sleep": 120}})
    assert server.reload_settings(path, live, store, clock, checks)
    assert fresh()["pi"]["max_sleep"] == 120
    # Settings put in force by another than Checks (the listing answers whatever settings are in force).
    nas = dataclasses.replace(live.current.users["nas"], email_frequency=1200.0)
    live.replace(dataclasses.replace(live.current, users={**live.current.users, "nas": nas}))
    assert fresh()["nas"]["email_frequency"] == 1200
    assert fresh(version=1)["pi"]["update_url"].startswith("http://localhost:80/api/v1/checks/")
    assert "uuid" not in fresh(headers=RO)["pi"]
    assert fresh()["pi"]["update_url"].startswith("http://localhost:80/api/v3/checks/")
    clock.now = T0 + 121
    assert fresh()["pi"]["status"] == "down"
    clock.now = T0 + 60  # the clock set back
    assert fresh()["pi"]["status"] == "up"


def random_state(rng, name):
    """A UserState of `name` with every field drawn at random (times around T0, some None)."""

    def moment():
        return rng.choice([None, T0 + rng.uniform(-4000, 4000)])

    def length():
        return rng.choice([None, rng.uniform(1, 3000)])

    drawn = {}
    for field in dataclasses.fields(UserState):
        if field.name in ("id", "username", "parent"):
            continue
        drawn[field.name] = moment()
    drawn.update(
        monitor=rng.random() < 0.9,
        notify_recovery=rng.random() < 0.5,
        max_sleep=rng.uniform(1, 3000),
        email_frequency=rng.uniform(1, 3000),
        monitored_since=T0 + rng.uniform(-4000, 0),
        flap_quiet=rng.uniform(1, 3000),
        schedule=rng.choice([None, "0 * * * *"]),
        tz=rng.choice([None, "UTC", "Asia/Kathmandu"]),
        last_alert_kind=rng.choice([None, "late", "failed"]),
        suppressed_kind=rng.choice([None, "late"]),
        **{key: rng.randint(0, 3) for key in ("fail_count", "flap_count", "fail_signal", "last_signal")},
        **{key: rng.randint(1, 3) for key in ("fail_threshold", "flap_threshold")},
        **{key: length() for key in ("max_runtime", "grace", "min_runtime", "min_interval", "start_grace")},
        **{key: length() for key in ("last_duration", "too_often_gap")},
    )
    return UserState(id=rng.randint(1, 100), username=name, **drawn)


def test_what_the_list_reads_of_a_check_s_row_is_all_its_json_depends_on():
    # The list reads only LISTED_FIELDS of each row (records.listed_state leaves the rest at their defaults): a
    # field the status came to depend on without being listed would make these differ.
    rng = random.Random(25)
    scheduled = {"monitor": True, "email_frequency": 600, "schedule": "0 * * * *", "tz": "Asia/Kathmandu", "grace": 120}
    configs = [make_settings({"a": PI}).users["a"], make_settings({"a": scheduled}).users["a"]]
    definitions = [None, Definition({}, grace=60.0)]
    for _ in range(1000):
        user, config, definition = random_state(rng, "a"), rng.choice(configs), rng.choice(definitions)
        listed = listed_state((user.username, 7, *(getattr(user, field) for field in LISTED_FIELDS)))
        now = T0 + rng.uniform(-4000, 8000)
        for readonly in (False, True):
            shown = api.check_dict(user, config, definition, "u", 7, now, 3, readonly, "http://x")
            assert api.check_dict(listed, config, definition, "u", 7, now, 3, readonly, "http://x") == shown
        grace = 60.0 if definition is not None else config.grace or 0.0
        assert api.status_until(listed, config, grace, now) == api.status_until(user, config, grace, now)


@BACKENDS
def test_the_store_lists_each_configured_check_s_name_signal_count_and_listed_fields_by_name(store, clock):
    client, _, _ = api_app(store, clock, users={"pi": PI, "Zed": PI, "nas": {**PI, "max_runtime": 30}})
    client.get("/ping/pi")
    client.get("/ping/nas/start")
    client.get("/ping/Zed/fail")
    store.snooze("pi", T0 + 900, T0)
    expected = [
        (name, store.pings_total(name), *(getattr(store.user(name), field) for field in LISTED_FIELDS))
        for name in ("Zed", "nas", "pi")
    ]
    assert [tuple(row) for row in store.listed_check_rows()] == expected
    assert store.pings_total("nobody") is None


def test_the_store_reads_the_listed_rows_along_the_names_index_without_sorting(store):
    listed = sql_store.SQLITE.sql(sql_store.LISTED_CHECKS_SQL)
    assert store.query_plan(listed) == ["SCAN users USING INDEX sqlite_autoindex_users_1"]
