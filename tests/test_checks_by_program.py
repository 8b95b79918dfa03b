"""Checks by program, through the app in process on both databases: UUIDs and /ping/<uuid>, checks created
by a signal with create=1 (auto_provision), the ping_key slug URLs, and checks created by program kept across
restarts and reloads, a name in settings.json taking them over."""

import json
import re
import sqlite3
import uuid

import pytest
import webtest

import server
from checks import Checks
from config import LiveSettings
from records import CheckLimitError
from support import BACKENDS, T0, Clock, make_settings, make_test_app, write_settings

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PING_KEY = "k" * 8 + "-ping-key-16"
PI = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
FLEET = {"defaults": {"max_sleep": 300}, "auto_provision": True}


def app_for(store, clock, users=None, **top_level):
    settings = make_settings(users, **top_level)
    store.sync_users(settings.users, T0 - 3600)
    live = LiveSettings(settings)
    checks = Checks(store, live)
    client = webtest.TestApp(make_test_app(store, live, clock, checks=checks))
    return client, live, checks


@pytest.fixture
def clock():
    return Clock(T0)


def signals(store, username):
    return [signal.kind for signal in reversed(store.recent_signals(username, 100))]


@BACKENDS
def test_every_check_gets_a_lowercase_uuid_once_and_keeps_it_across_restarts_and_removal(store, clock):
    _, _, checks = app_for(store, clock, {"pi": PI, "nas": PI})
    pi = checks.uuid_of("pi")
    assert UUID.fullmatch(pi) and pi != checks.uuid_of("nas")
    store.sync_users(make_settings({"nas": PI}).users, T0)
    store.sync_users(make_settings({"pi": PI, "nas": PI}).users, T0 + 1)
    assert Checks(store, LiveSettings(make_settings({"pi": PI, "nas": PI}))).uuid_of("pi") == pi


@BACKENDS
def test_the_uuids_given_at_once_are_distinct_random_version_4_uuids(store, clock):
    names = [f"cam-{index}" for index in range(200)]
    _, _, checks = app_for(store, clock, dict.fromkeys(names, PI))
    given = [uuid.UUID(checks.uuid_of(name)) for name in names]
    assert [str(one) for one in given] == [checks.uuid_of(name) for name in names]
    assert {(one.version, one.variant) for one in given} == {(4, uuid.RFC_4122)}
    assert len(set(given)) == len(names)
    # Each of the 122 random bits takes both values: none is fixed by the way they are made.
    random_bits = (1 << 128) - 1 - (0xF << 76) - (0b11 << 62)
    assert all(
        any(one.int >> bit & 1 for one in given) and not all(one.int >> bit & 1 for one in given)
        for bit in range(128)
        if random_bits >> bit & 1
    )


@BACKENDS
@pytest.mark.parametrize(
    "suffix, kind",
    [("", "success"), ("/", "success"), ("/start", "start"), ("/fail", "fail"), ("/log", "log"), ("/0", "success")]
    + [("/3", "fail"), ("/start/", "start")],
)
def test_a_signal_by_uuid_reaches_the_check_as_by_name(store, clock, suffix, kind):
    client, _, checks = app_for(store, clock)
    answer = client.post(f"/ping/{checks.uuid_of('pi')}{suffix}", "body", status=200)
    assert answer.text == "26/09/21 16:13:20"
    assert signals(store, "pi") == [kind]


def test_an_unknown_uuid_is_a_404_that_writes_nothing(store, clock):
    client, _, _ = app_for(store, clock)
    client.get("/ping/0b7e2b4c-8f5e-4a8e-9a7e-5c1d2e3f4a5b", status=404)
    assert signals(store, "pi") == []


@BACKENDS
def test_a_signal_with_create_creates_the_check_from_defaults_and_answers_201(store, clock):
    client, live, checks = app_for(store, clock, {"pi": PI}, **FLEET)
    answer = client.get("/ping/cam-17?create=1", status=201)
    assert answer.text == "26/09/21 16:13:20"
    assert live.current.users["cam-17"].max_sleep == 300.0
    assert signals(store, "cam-17") == ["success"]
    assert checks.definition("cam-17").created_by == "ping"
    # Then it is a check like any other: another create=1 signal is a plain 200.
    client.get("/ping/cam-17/start?create=1", status=200)
    client.get(f"/ping/{checks.uuid_of('cam-17')}/fail", status=200)
    assert signals(store, "cam-17") == ["success", "start", "fail"]


@BACKENDS
def test_without_create_or_auto_provision_an_unknown_name_is_a_404_that_writes_nothing(store, clock):
    client, live, _ = app_for(store, clock, {"pi": PI}, **FLEET)
    client.get("/ping/cam-17", status=404)
    client.get("/ping/cam-17?create=0", status=404)
    off, off_live, _ = app_for(store, clock, {"pi": PI}, defaults={"max_sleep": 300})
    off.get("/ping/cam-18?create=1", status=404)
    assert set(store.program_checks()) == set()
    assert "cam-17" not in live.current.users


def test_the_query_form_creates_too(store, clock):
    client, live, _ = app_for(store, clock, {"pi": PI}, **FLEET)
    client.get("/ping?username=cam-1&create=1&status=start", status=201)
    assert signals(store, "cam-1") == ["start"]


@BACKENDS
def test_past_auto_provision_limit_a_create_is_a_403_that_writes_nothing(store, clock):
    client, live, _ = app_for(store, clock, {"pi": PI}, auto_provision_limit=2, **FLEET)
    client.get("/ping/a?create=1", status=201)
    client.get("/ping/b?create=1", status=201)
    answer = client.get("/ping/c?create=1", status=403)
    assert answer.text == "cannot create c: auto_provision_limit (2 checks created by signals) reached"
    assert sorted(live.current.users) == ["a", "b", "pi"]
    assert [check.username for check in store.program_checks()] == ["a", "b"]
    with pytest.raises(CheckLimitError):
        store.create_check("c", live.current.users["a"], "{}", "ping", 2, T0)


def test_a_name_the_defaults_cannot_make_valid_is_a_400_naming_the_problem(store, clock):
    client, _, _ = app_for(store, clock, {"pi": PI}, require_tokens=False, **FLEET)
    answer = client.get("/ping/a%01b?create=1", status=400)
    assert answer.text == "cannot create a\x01b: check: a username must not contain control characters"


def test_auto_provision_needs_defaults_that_make_a_check():
    with pytest.raises(Exception, match="auto_provision: needs defaults with max_sleep or schedule"):
        make_settings({"pi": PI}, auto_provision=True)


@BACKENDS
@pytest.mark.parametrize("suffix, kind", [("", "success"), ("/start", "start"), ("/fail", "fail"), ("/7", "fail")])
def test_the_ping_key_slug_url_signals_the_check_named_by_the_slug(store, clock, suffix, kind):
    client, _, _ = app_for(store, clock, {"pi": PI}, ping_key=PING_KEY)
    client.get(f"/ping/{PING_KEY}/pi{suffix}", status=200)
    assert signals(store, "pi") == [kind]
    client.get(f"/ping/{PING_KEY[:-1]}x/pi", status=400)  # not the key: /ping/NAME/<unknown signal>
    assert signals(store, "pi") == [kind]


def test_runitor_create_requests_make_and_signal_the_check(store, clock):
    """runitor -ping-key KEY -slug backup -create: GET /ping/KEY/backup/start?create=1, then the run's result
    (POST with its output) to /ping/KEY/backup/<exit code>?create=1, as its documentation shows."""
    client, live, _ = app_for(store, clock, {"pi": PI}, ping_key=PING_KEY, **FLEET)
    client.get(f"/ping/{PING_KEY}/backup/start?create=1", status=201)
    clock.now += 5
    client.post(f"/ping/{PING_KEY}/backup/0?create=1", "backup done\n", status=200)
    assert "backup" in live.current.users
    assert signals(store, "backup") == ["start", "success"]
    assert store.recent_signals("backup", 1)[0].body == "backup done\n"


def test_the_ping_key_must_be_a_long_secret():
    with pytest.raises(Exception, match="ping_key: must be a string of at least 16"):
        make_settings({"pi": PI}, ping_key="short")


@BACKENDS
def test_checks_created_by_program_survive_a_restart_and_a_reload(store, clock, tmp_path):
    client, live, checks = app_for(store, clock, {"pi": PI}, **FLEET)
    client.get("/ping/cam-1?create=1", status=201)
    uuid = checks.uuid_of("cam-1")
    # A restart: the users of settings.json again, and the checks created by program read back.
    settings = make_settings({"pi": PI}, **FLEET)
    store.sync_users(settings.users, T0 + 10)
    restarted = LiveSettings(settings)
    again = Checks(store, restarted)
    assert "cam-1" in restarted.current.users and again.uuid_of("cam-1") == uuid
    # A reload that does not list it keeps it.
    path = write_settings(tmp_path / "settings.json", {"pi": PI, "nas": PI}, **FLEET)
    assert server.reload_settings(path, restarted, store, lambda: T0 + 20, again)
    assert sorted(restarted.current.users) == ["cam-1", "nas", "pi"]
    assert [user.username for user in store.configured_users()] == ["cam-1", "nas", "pi"]


@BACKENDS
def test_a_reload_that_declares_a_name_created_by_program_takes_it_over_keeping_its_history(
    store, clock, tmp_path, caplog
):
    client, live, checks = app_for(store, clock, {"pi": PI}, **FLEET)
    client.get("/ping/cam-1?create=1", status=201)
    uuid = checks.uuid_of("cam-1")
    path = write_settings(tmp_path / "settings.json", {"pi": PI, "cam-1": {**PI, "max_sleep": 5}}, **FLEET)
    assert server.reload_settings(path, live, store, lambda: T0 + 20, checks)
    assert live.current.users["cam-1"].max_sleep == 5.0
    assert checks.definition("cam-1") is None and store.program_checks() == []
    assert checks.uuid_of("cam-1") == uuid
    assert signals(store, "cam-1") == ["success"]
    assert "cam-1: settings.json now declares this check, created by program: it takes it over" in caplog.text
    # Removed from the file later, it is gone, as any user removed from settings.json.
    path = write_settings(tmp_path / "settings.json", {"pi": PI}, **FLEET)
    assert server.reload_settings(path, live, store, lambda: T0 + 30, checks)
    client.get("/ping/cam-1", status=404)


def test_a_check_created_on_one_instance_reaches_another_at_its_next_refresh(store, clock, tmp_path):
    client, _, _ = app_for(store, clock, {"pi": PI}, **FLEET)
    other_live = LiveSettings(make_settings({"pi": PI}, **FLEET))
    other = Checks(store, other_live)
    client.get("/ping/cam-1?create=1", status=201)
    assert "cam-1" not in other_live.current.users
    assert other.refresh() is True
    assert "cam-1" in other_live.current.users
    assert other.refresh() is False


def test_the_uuid_column_is_filled_for_users_from_before_uuids(store, clock):
    store.sync_users(make_settings({"pi": PI}).users, T0)
    with sqlite3.connect(store.path) as connection:
        connection.execute("UPDATE users SET uuid = NULL")
    store.sync_users(make_settings({"pi": PI}).users, T0 + 1)
    with sqlite3.connect(store.path) as connection:
        [(uuid,)] = connection.execute("SELECT uuid FROM users").fetchall()
    assert UUID.fullmatch(uuid)


def test_a_definition_is_stored_as_json(store, clock):
    client, _, _ = app_for(store, clock, {"pi": PI}, **FLEET)
    client.get("/ping/cam-1?create=1", status=201)
    [check] = store.program_checks()
    assert json.loads(check.program)["settings"] == {}
