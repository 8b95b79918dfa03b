"""The /metrics exporter's kept text (metrics.Exporter) on both databases: whatever changed the users between two
scrapes (a reload, a check created or deleted over the API or by a signal with create=1, a first ping), a scrape
answers exactly what a new exporter, which keeps nothing, answers."""

import prometheus_client.parser
import webtest

import metrics
from checks import Checks
from config import LiveSettings
from store import Store
from support import BACKENDS, T0, Clock, make_settings, make_test_app

KEY = "rw-api-key-0123456789"
USER = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
# Names whose label sets need the text format's escapes, or hold what a printf-style template would read.
ODD = ['say "hi"', "back\\slash", "100%", "%s%d%r", "caf\u00e9"]


def samples(answer):
    """(family, username) -> value of each per-user sample of a scrape's answer."""
    text = answer.decode()
    return {
        (sample.name, sample.labels["user"]): sample.value
        for family in prometheus_client.parser.text_string_to_metric_families(text)
        for sample in family.samples
        if "user" in sample.labels
    }


@BACKENDS
def test_a_scrape_after_a_reload_or_a_check_created_by_program_is_what_a_new_exporter_answers(store):
    clock = Clock(T0)
    fleet = {"defaults": {"max_sleep": 300}, "auto_provision": True}
    first = make_settings({"pi": USER, "old": USER} | {name: USER for name in ODD}, **fleet)
    store.sync_users(first.users, T0 - 3600)
    live = LiveSettings(first)
    client = webtest.TestApp(make_test_app(store, live, clock, checks=Checks(store, live), api_key=KEY))
    kept = metrics.Exporter(store, clock)

    def scrape():
        answer = kept.scrape()
        assert answer == metrics.Exporter(store, clock).scrape()
        return samples(answer)

    def users():
        return {name for family, name in scrape() if family == "ping_listener_up"}

    assert users() == {"pi", "old", *ODD}
    # A first ping: the last ping's family gains a line; then a new value for it.
    client.get("/ping?username=pi", status=200)
    assert scrape()[("ping_listener_last_ping_timestamp_seconds", "pi")] == T0
    clock.now = T0 + 30
    client.get("/ping?username=100%25", status=200)
    client.get("/ping?username=pi", status=200)
    got = scrape()
    assert got[("ping_listener_last_ping_timestamp_seconds", "pi")] == T0 + 30
    assert got[("ping_listener_pings_total", "100%")] == 1.0
    # A reload that removes a user and adds another: as many users as before, not the same.
    second = make_settings({"pi": USER, "new": USER} | {name: USER for name in ODD}, **fleet)
    store.reload_users(second.users, T0 + 40)
    live.replace(second)
    assert users() == {"pi", "new", *ODD}
    # Checks created by program: over the API, and by a signal with create=1.
    created = client.post_json("/api/v3/checks/", {"name": "backup"}, headers={"X-Api-Key": KEY}, status=201)
    assert users() == {"pi", "new", "backup", *ODD}
    client.get("/ping/cam-1?create=1", status=201)
    got = scrape()
    assert got[("ping_listener_pings_total", "cam-1")] == 1.0
    assert got[("ping_listener_last_ping_timestamp_seconds", "cam-1")] == T0 + 30
    client.delete(f"/api/v3/checks/{created.json['uuid']}", headers={"X-Api-Key": KEY}, status=200)
    assert users() == {"pi", "new", "cam-1", *ODD}
    # pi's silence is past max_sleep: down, with nothing else changed.
    clock.now = T0 + 95
    assert scrape()[("ping_listener_up", "pi")] == 0.0


@BACKENDS
def test_a_scrape_of_a_store_without_users_has_the_families_headers_only(store):
    answer = metrics.Exporter(store, Clock(T0)).scrape().decode()
    assert "# TYPE ping_listener_up gauge\n# HELP ping_listener_last_ping_timestamp_seconds" in answer
    assert samples(answer.encode()) == {}


class ScheduledAddedBetweenReads(Store):
    """A store whose users' rows are read before a reload adds a scheduled user, and whose scheduled users are
    read after it, as a scrape's two statements may see them (each its own snapshot)."""

    added = None

    def user_counts(self, now):
        counts = super().user_counts(now)
        if self.added is None:
            return counts
        self.reload_users(self.added.users, now)
        self.added = None
        return counts._replace(scheduled=super().user_counts(now).scheduled)


def test_a_scheduled_user_added_between_a_scrapes_two_reads_waits_for_the_next_scrape(tmp_path):
    store = ScheduledAddedBetweenReads(tmp_path / "ping_listener.db")
    try:
        store.sync_users(make_settings({"pi": USER}).users, T0)
        job = {"monitor": True, "schedule": "0 17 * * *", "tz": "Europe/Paris", "grace": 600, "email_frequency": 60}
        store.added = make_settings({"pi": USER, "job": job})
        exporter = metrics.Exporter(store, Clock(T0))
        assert {name for family, name in samples(exporter.scrape()) if family == "ping_listener_up"} == {"pi"}
        assert samples(exporter.scrape())[("ping_listener_up", "job")] == 1.0
    finally:
        store.close()
