"""The management API on the real service: the healthchecks-io client (a real client nobody here wrote) driving it
with api_version 1 and 3, a check created over the API going late and alerting through the real SMTP server, and
two PostgreSQL instances, a check created on one pinged and alerted through the other."""

import concurrent.futures
import json
import re
import urllib.request

import pytest
from healthchecks_io import CheckCreate, CheckUpdate, Client
from healthchecks_io.client.exceptions import CheckNotFoundError, HCAPIAuthError

from support import outbox, wait_until, write_settings

KEY = "rw-api-key-0123456789"
READ_KEY = "ro-api-key-0123456789"
PING_KEY = "ping-key-0123456789"
PI = {"pi": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}}
API_ENV = {"API_KEY": KEY, "API_KEY_READONLY": READ_KEY}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "ping_listener.db"


@pytest.mark.parametrize("version", [1, 3])
def test_the_healthchecks_io_client_lists_creates_updates_pauses_pings_and_deletes(tmp_path, start_server, version):
    settings = write_settings(tmp_path / "settings.json", PI, ping_key=PING_KEY)
    service = start_server(settings, **API_ENV)
    client = Client(
        api_key=KEY,
        ping_key=PING_KEY,
        api_url=f"{service.url}/api/",
        ping_url=f"{service.url}/ping/",
        api_version=version,
    )
    assert [check.name for check in client.get_checks()] == ["pi"]
    created = client.create_check(CheckCreate(name="backup", tags="db nightly", timeout=600, grace=60))
    assert (created.name, created.timeout, created.grace, created.status) == ("backup", 600, 60, "new")
    assert created.uuid and created.ping_url == f"{service.url}/ping/{created.uuid}"
    assert [check.name for check in client.get_checks(tags=["db"])] == ["backup"]

    assert client.success_ping(uuid=created.uuid, data="done")[0]
    assert client.start_ping(slug="backup")[0]
    assert client.exit_code_ping(0, uuid=created.uuid)[0]
    assert client.get_check(created.uuid).n_pings == 3
    assert [ping.type for ping in client.get_check_pings(created.uuid)] == ["success", "start", "success"]

    updated = client.update_check(created.uuid, CheckUpdate(timeout=1200, desc="nightly dump"))
    assert (updated.timeout, updated.grace, updated.desc) == (1200, 60, "nightly dump")
    assert client.pause_check(created.uuid).status == "paused"
    assert client.get_check(created.uuid).status == "paused"
    assert client.success_ping(uuid=created.uuid)[0]
    assert client.get_check(created.uuid).status == "up"

    assert [channel.kind for channel in client.get_integrations()] == ["email"]
    assert client.get_badges() == {}
    assert client.get_check_flips(created.uuid) == []
    assert client.delete_check(created.uuid).name == "backup"
    with pytest.raises(CheckNotFoundError):
        client.get_check(created.uuid)
    with pytest.raises(CheckNotFoundError):
        client.success_ping(uuid=created.uuid)
    with pytest.raises(HCAPIAuthError):
        Client(api_key="wrong-key-0123456789", api_url=f"{service.url}/api/").get_checks()
    readonly = Client(api_key=READ_KEY, api_url=f"{service.url}/api/", api_version=version)
    assert [check.unique_key is not None for check in readonly.get_checks()] == [True]
    with pytest.raises(HCAPIAuthError):
        readonly.create_check(CheckCreate(name="x"))
    assert service.stop() == 0


def test_a_check_created_over_the_api_goes_late_and_alerts_by_email(tmp_path, db, start_server, smtp_server):
    service = start_server(write_settings(tmp_path / "settings.json", PI), db, **API_ENV)
    body = json.dumps({"name": "cam-17", "max_sleep": 0.5, "email_frequency": 3600}).encode()
    status, answer = service.post("/api/v3/checks/", body, headers={"X-Api-Key": KEY})
    assert status == 201, answer
    assert service.get("/ping/cam-17")[0] == 200
    [(_, recipients, message)] = smtp_server.wait_for_messages(1)
    assert (recipients, message["Subject"]) == (["oncall@example.com"], "cam-17 disconnection detected")
    assert "heard nothing from cam-17 for more than 0.5 seconds." in message.get_content()
    assert service.stop() == 0
    assert outbox(db) == [("oncall@example.com", "sent", 1)]


def test_a_check_created_on_one_instance_is_pinged_and_alerted_through_the_other(
    tmp_path, postgres_url, start_server, smtp_server
):
    settings = write_settings(tmp_path / "settings.json", PI)
    first, second = start_server(settings, postgres_url, **API_ENV), start_server(settings, postgres_url, **API_ENV)
    body = json.dumps({"name": "cam-17", "max_sleep": 0.5, "email_frequency": 3600}).encode()
    status, answer = first.post("/api/v3/checks/", body, headers={"X-Api-Key": KEY})
    assert status == 201, answer
    uuid = json.loads(answer)["uuid"]
    # The other instance reads it at its next refresh (checks.REFRESH_INTERVAL).
    wait_until(lambda: second.get(f"/ping/{uuid}")[0] == 200, message="the other instance knows the check")
    [(_, _, message)] = smtp_server.wait_for_messages(1)
    assert message["Subject"] == "cam-17 disconnection detected"
    status, answer = second.get(f"/api/v1/checks/{uuid}", headers={"X-Api-Key": KEY})
    assert (status, json.loads(answer)["name"]) == (200, "cam-17")
    # Deleted through the second, it is gone from the first too.
    request_delete(second, uuid)
    wait_until(lambda: first.get(f"/ping/{uuid}")[0] == 404, message="the first instance forgot the check")
    assert first.stop() == 0 and second.stop() == 0


def request_delete(service, uuid):
    request = urllib.request.Request(f"{service.url}/api/v3/checks/{uuid}", method="DELETE", headers={"X-Api-Key": KEY})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def test_on_the_real_server_a_signal_creates_its_check_and_a_signal_ends_a_pause(tmp_path, db, start_server):
    """Signals are answered in batches sharing one commit (serving.py): the check a signal creates, and the pause
    a signal ends, are written within them."""
    settings = write_settings(tmp_path / "settings.json", PI, defaults={"max_sleep": 60}, auto_provision=True)
    service = start_server(settings, db, **API_ENV)
    status, answer = service.get("/ping/cam-17?create=1")
    assert status == 201 and re.fullmatch(r"\d\d/\d\d/\d\d \d\d:\d\d:\d\d", answer)
    assert service.get("/ping/cam-17")[0] == 200
    assert service.get("/ping/pi")[0] == 200
    status, answer = service.get("/api/v3/checks/?slug=cam-17", headers={"X-Api-Key": KEY})
    [check] = json.loads(answer)["checks"]
    assert (check["n_pings"], check["status"]) == (2, "up")
    status, answer = service.post(f"/api/v3/checks/{check['uuid']}/pause", b"", headers={"X-Api-Key": KEY})
    assert (status, json.loads(answer)["status"]) == (200, "paused")
    assert service.get("/ping/cam-17")[0] == 200
    status, answer = service.get(f"/api/v3/checks/{check['uuid']}", headers={"X-Api-Key": KEY})
    assert json.loads(answer)["status"] == "up"
    assert service.stop() == 0


def test_checks_created_by_concurrent_signals_are_each_answered_201_and_kept(tmp_path, db, start_server):
    """Concurrent signals share batches (one commit per poll round of the I/O thread): each create joins one."""
    settings = write_settings(tmp_path / "settings.json", PI, defaults={"max_sleep": 60}, auto_provision=True)
    service = start_server(settings, db, **API_ENV)

    def create(index):
        return [service.get(f"/ping/cam-{index}-{round_}?create=1")[0] for round_ in range(5)]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = [status for answers in pool.map(create, range(32)) for status in answers]
    assert statuses == [201] * 32 * 5
    status, answer = service.get("/api/v3/checks/", headers={"X-Api-Key": KEY})
    assert len(json.loads(answer)["checks"]) == 1 + 32 * 5
    assert service.stop() == 0


def test_concurrent_signals_to_a_paused_check_end_its_pause_and_are_each_answered_200(tmp_path, db, start_server):
    """The write that ends the pause is made within the batch of signals that holds the check's row."""
    service = start_server(write_settings(tmp_path / "settings.json", PI), db, **API_ENV)
    for _ in range(3):
        uuid = json.loads(service.get("/api/v3/checks/?slug=pi", headers={"X-Api-Key": KEY})[1])["checks"][0]["uuid"]
        assert service.post(f"/api/v3/checks/{uuid}/pause", b"", headers={"X-Api-Key": KEY})[0] == 200
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(lambda _: service.get("/ping/pi", timeout=20)[0], range(64)))
        assert statuses == [200] * 64
        status, answer = service.get(f"/api/v3/checks/{uuid}", headers={"X-Api-Key": KEY})
        assert json.loads(answer)["status"] == "up"
    assert service.stop() == 0


def test_the_ping_key_may_come_from_the_environment_and_settings_json_s_wins(tmp_path, start_server):
    # runitor -ping-key "$PING_KEY" -slug NAME -create, with the key in the service's environment only.
    env_key = "env-ping-key-0123456789"
    settings = write_settings(tmp_path / "settings.json", PI, defaults={"max_sleep": 60}, auto_provision=True)
    service = start_server(settings, PING_KEY=env_key, **API_ENV)
    assert service.get(f"/ping/{env_key}/pi")[0] == 200
    assert service.get(f"/ping/{env_key}/backup/start?create=1")[0] == 201
    assert service.post(f"/ping/{env_key}/backup/0", b"done\n")[0] == 200
    assert service.get(f"/ping/{env_key[:-1]}x/pi")[0] == 400  # not the key: /ping/NAME/<unknown signal>
    status, answer = service.get("/api/v3/checks/", headers={"X-Api-Key": KEY})
    assert [(check["name"], check["n_pings"]) for check in json.loads(answer)["checks"]] == [("backup", 2), ("pi", 1)]
    # With settings.json's ping_key set, that key is the one: the environment's is a name like any other.
    write_settings(tmp_path / "settings.json", PI, defaults={"max_sleep": 60}, auto_provision=True, ping_key=PING_KEY)
    service.reload()
    wait_until(lambda: service.get(f"/ping/{PING_KEY}/pi")[0] == 200, message="settings.json's ping_key in force")
    assert service.get(f"/ping/{env_key}/pi")[0] == 400
    assert service.stop() == 0
