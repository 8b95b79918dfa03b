"""Detection (SPEC "Detection"): fail_threshold, min_runtime, min_interval and start_grace, each as rules.py decides
and the absence listener acts, over a real store on both databases, time driven by the test.

The property tests that pin each rule's SQL to rules.py are in tests/test_store.py; one end-to-end test per rule
through the real SMTP sink is in tests/test_e2e_detection.py.
"""

import dataclasses
import json

import pytest

import config
import rules
from config import LiveSettings
from overview import Overview
from records import UserState
from scheduler import Scheduler
from store import Store
from support import BACKENDS, T0, Clock, db_of, make_settings, query

# T0 is 14:13:20 UTC: an hourly job ("0 * * * *" in UTC) is next expected at 15:00:00.
NEXT_HOUR = T0 + 2800


class RecordingMailer:
    """Stands in for SmtpMailer; these tests read the outbox, not what was sent."""

    def new_message_id(self):
        return "<m@test>"

    def send_all(self, emails):
        return iter(())


def listener(store, users, now=T0):
    """A scheduler over `store` with `users` synced at `now` (a start of the service)."""
    settings = make_settings(users)
    store.sync_users(settings.users, now)
    return Scheduler(store, RecordingMailer(), LiveSettings(settings), "https://example.net", Clock(now))


def emails(store):
    """(subject, body) of every email queued, oldest first."""
    return query(db_of(store), "SELECT subject, body FROM outbox ORDER BY id")


def subjects(store):
    return [subject for subject, _ in emails(store)]


def pi(**settings):
    return {"pi": {"monitor": True, "max_sleep": 3600, "email_frequency": 600, **settings}}


def hourly(**settings):
    return {
        "pi": {"monitor": True, "schedule": "0 * * * *", "tz": "UTC", "grace": 3600, "email_frequency": 600, **settings}
    }


# fail_threshold


@BACKENDS
def test_fails_below_fail_threshold_send_nothing_and_the_third_in_a_row_says_how_many_quoting_its_output(store):
    steps = listener(store, pi(fail_threshold=3))
    store.record_ping("pi", T0 + 10, "fail", body="first error")
    steps.check_once(T0 + 11)
    store.record_ping("pi", T0 + 20, "fail", body="second error")
    steps.check_once(T0 + 21)
    assert emails(store) == []
    assert rules.live_state(store.user("pi"), T0 + 21) == rules.PINGING
    store.record_ping("pi", T0 + 30, "fail", exit_code=2, body="third error")
    steps.check_once(T0 + 31)
    [(subject, body)] = emails(store)
    assert subject == "pi failed 3 times in a row"
    assert "3 failures in a row since its last success (alerts wait for 3 in a row)" in body
    assert body.endswith("third error\n")
    # The outage went down at the first fail of the row; its next success ends it with a recovery.
    store.record_ping("pi", T0 + 40)
    steps.check_once(T0 + 41)
    assert subjects(store)[-1] == "pi is back"


@BACKENDS
def test_a_success_resets_the_count_of_fails_in_a_row(store):
    steps = listener(store, pi(fail_threshold=2))
    for at, kind in ((10, "fail"), (20, "success"), (30, "fail"), (40, "start"), (50, "log")):
        store.record_ping("pi", T0 + at, kind)
        steps.check_once(T0 + at + 1)
    assert emails(store) == []
    store.record_ping("pi", T0 + 60, "fail")
    steps.check_once(T0 + 61)
    assert subjects(store) == ["pi failed 2 times in a row"]


@BACKENDS
def test_a_fail_threshold_of_one_keeps_the_failure_email_as_it_was(store):
    steps = listener(store, pi())
    store.record_ping("pi", T0 + 10, "fail")
    steps.check_once(T0 + 11)
    assert subjects(store) == ["pi failure reported"]


@BACKENDS
def test_a_reload_that_lowers_fail_threshold_to_the_fails_already_counted_alerts_at_once(store):
    steps = listener(store, pi(fail_threshold=5))
    store.record_ping("pi", T0 + 10, "fail")
    store.record_ping("pi", T0 + 20, "fail")
    steps.check_once(T0 + 21)
    assert emails(store) == []
    settings = make_settings(pi(fail_threshold=2))
    store.reload_users(settings.users, T0 + 30)
    steps = Scheduler(store, RecordingMailer(), LiveSettings(settings), "https://example.net", Clock(T0 + 30))
    steps.check_once(T0 + 31)
    assert subjects(store) == ["pi failed 2 times in a row"]


def test_fails_in_a_row_are_counted_across_a_restart(tmp_path):
    first = Store(tmp_path / "db")
    listener(first, pi(fail_threshold=2))
    first.record_ping("pi", T0 + 10, "fail")
    first.close()
    store = Store(tmp_path / "db")
    steps = listener(store, pi(fail_threshold=2), now=T0 + 100)
    store.record_ping("pi", T0 + 110, "fail")
    steps.check_once(T0 + 111)
    assert subjects(store) == ["pi failed 2 times in a row"]
    store.close()


@BACKENDS
def test_a_failure_reaching_its_threshold_while_snoozed_waits_for_the_snooze_to_end(store):
    steps = listener(store, pi(fail_threshold=2))
    store.snooze("pi", T0 + 600, T0)
    store.record_ping("pi", T0 + 10, "fail")
    store.record_ping("pi", T0 + 20, "fail")
    steps.check_once(T0 + 599)
    assert emails(store) == []
    steps.check_once(T0 + 601)
    assert subjects(store) == ["pi failed 2 times in a row"]


@BACKENDS
def test_a_childs_fails_in_a_row_are_suppressed_while_its_parent_is_down(store):
    users = {**pi(), "cam": {"monitor": True, "max_sleep": 3600, "email_frequency": 600, "depends_on": "pi"}}
    users["cam"]["fail_threshold"] = 2
    steps = listener(store, users)
    store.record_ping("pi", T0 + 5, "fail")
    store.record_ping("cam", T0 + 10, "fail")
    store.record_ping("cam", T0 + 20, "fail")
    steps.check_once(T0 + 21)
    assert subjects(store) == ["pi failure reported"]
    suppressed = "SELECT username, kind FROM alerts JOIN users ON users.id = user_id WHERE suppressed"
    assert query(db_of(store), suppressed) == [("cam", "failed")]


# min_runtime


@BACKENDS
def test_a_run_shorter_than_min_runtime_is_a_failure_saying_how_long_it_took(store):
    steps = listener(store, pi(min_runtime=60))
    store.record_ping("pi", T0 + 10, "start")
    store.record_ping("pi", T0 + 12, "success", body="backed up 0 files")
    steps.check_once(T0 + 13)
    [(subject, body)] = emails(store)
    assert subject == "pi finished too fast"
    assert "after a run of 2 seconds, expected at least 1 minute" in body
    assert body.endswith("backed up 0 files\n")
    assert rules.live_state(store.user("pi"), T0 + 13) == rules.FAILED
    # A run long enough is its success: the outage ends with a recovery.
    store.record_ping("pi", T0 + 100, "start")
    store.record_ping("pi", T0 + 161, "success")
    steps.check_once(T0 + 162)
    assert subjects(store) == ["pi finished too fast", "pi is back"]


@BACKENDS
def test_a_run_of_exactly_min_runtime_and_a_success_that_closes_no_run_are_successes(store):
    steps = listener(store, pi(min_runtime=60))
    store.record_ping("pi", T0 + 10, "start")
    store.record_ping("pi", T0 + 70, "success")
    store.record_ping("pi", T0 + 75, "success")
    steps.check_once(T0 + 76)
    assert emails(store) == []


@BACKENDS
def test_runs_too_fast_count_towards_fail_threshold(store):
    steps = listener(store, pi(min_runtime=60, fail_threshold=2))
    store.record_ping("pi", T0 + 10, "start")
    store.record_ping("pi", T0 + 11, "success")
    steps.check_once(T0 + 12)
    assert emails(store) == []
    store.record_ping("pi", T0 + 20, "start")
    store.record_ping("pi", T0 + 21, "success")
    steps.check_once(T0 + 22)
    [(subject, body)] = emails(store)
    assert subject == "pi failed 2 times in a row"
    assert "expected at least 1 minute" in body


@BACKENDS
def test_a_run_too_fast_of_a_parent_does_not_bring_back_its_children(store):
    users = {**pi(min_runtime=60), "cam": {"monitor": True, "max_sleep": 60, "email_frequency": 600}}
    users["cam"]["depends_on"] = "pi"
    steps = listener(store, users)
    store.record_ping("pi", T0 + 10, "fail")
    steps.check_once(T0 + 11)
    store.record_ping("pi", T0 + 20, "start")
    store.record_ping("pi", T0 + 21, "success")
    assert store.user("cam").silence_from is None
    store.record_ping("pi", T0 + 30, "start")
    store.record_ping("pi", T0 + 100, "success")
    assert store.user("cam").silence_from == T0 + 100
    steps.check_once(T0 + 101)


# min_interval


@BACKENDS
def test_two_successes_closer_than_min_interval_send_one_notice_per_email_frequency_and_no_recovery(store):
    steps = listener(store, pi(min_interval=3600, max_sleep=86400))
    store.record_ping("pi", T0)
    store.record_ping("pi", T0 + 40)
    steps.check_once(T0 + 41)
    [(subject, body)] = emails(store)
    assert subject == "pi pinged too often"
    assert "pi pinged twice within 40 seconds, expected at most once every 1 hour" in body
    # More of the same within email_frequency: nothing more until it has passed, then one notice.
    for at in (100, 200, 300):
        store.record_ping("pi", T0 + at)
        steps.check_once(T0 + at + 1)
    assert len(emails(store)) == 1
    steps.check_once(T0 + 642)
    assert subjects(store) == ["pi pinged too often"] * 2
    # Nothing more once it stops; it was never an outage, so no recovery either.
    steps.check_once(T0 + 5000)
    store.record_ping("pi", T0 + 9000)
    steps.check_once(T0 + 9001)
    assert subjects(store) == ["pi pinged too often"] * 2
    assert rules.live_state(store.user("pi"), T0 + 9001) == rules.PINGING


@BACKENDS
def test_fails_and_starts_are_not_successes_for_min_interval(store):
    steps = listener(store, pi(min_interval=3600))
    for at, kind in ((0, "success"), (10, "start"), (20, "log"), (3600, "success")):
        store.record_ping("pi", T0 + at, kind)
        steps.check_once(T0 + at + 1)
    assert emails(store) == []


@BACKENDS
def test_successes_too_close_during_a_snooze_are_forgotten_when_it_ends(store):
    steps = listener(store, pi(min_interval=3600))
    store.snooze("pi", T0 + 300, T0)
    store.record_ping("pi", T0 + 10)
    store.record_ping("pi", T0 + 20)
    steps.check_once(T0 + 21)
    steps.check_once(T0 + 301)
    assert emails(store) == []


@BACKENDS
def test_a_child_pinging_too_often_is_told_even_while_its_parent_is_down(store):
    users = {**pi(), "cam": {"monitor": True, "max_sleep": 3600, "email_frequency": 600, "min_interval": 60}}
    users["cam"]["depends_on"] = "pi"
    steps = listener(store, users)
    store.record_ping("pi", T0, "fail")
    store.record_ping("cam", T0 + 10)
    store.record_ping("cam", T0 + 20)
    steps.check_once(T0 + 21)
    assert sorted(subjects(store)) == ["cam pinged too often", "pi failure reported"]


# start_grace


@BACKENDS
def test_a_scheduled_run_not_started_within_start_grace_alerts_long_before_grace(store):
    steps = listener(store, hourly(start_grace=300))
    steps.check_once(T0 + 1)
    steps.check_once(NEXT_HOUR + 300)
    assert emails(store) == []
    steps.check_once(NEXT_HOUR + 301)
    [(subject, body)] = emails(store)
    assert subject == "pi did not start on time"
    assert "pi has not started its " in body and "run within 5 minutes of its time" in body
    # The grace still bounds the whole run: once past it, the run is missed, a new condition alerted at once.
    steps.check_once(NEXT_HOUR + 3601)
    assert len(emails(store)) == 2 and subjects(store)[0] == "pi did not start on time"


@BACKENDS
def test_a_run_started_in_time_is_no_alert_and_a_late_start_ends_the_alert_until_its_success_recovers(store):
    steps = listener(store, hourly(start_grace=300))
    steps.check_once(T0 + 1)
    store.record_ping("pi", NEXT_HOUR + 60, "start")
    steps.check_once(NEXT_HOUR + 61)
    steps.check_once(NEXT_HOUR + 400)
    store.record_ping("pi", NEXT_HOUR + 900)
    steps.check_once(NEXT_HOUR + 901)
    assert emails(store) == []
    # The next run (16:00) starts late: alerted, then its start and success end the outage.
    steps.check_once(NEXT_HOUR + 3600 + 301)
    assert subjects(store) == ["pi did not start on time"]
    store.record_ping("pi", NEXT_HOUR + 3600 + 400, "start")
    steps.check_once(NEXT_HOUR + 3600 + 401)
    assert rules.live_state(store.user("pi"), NEXT_HOUR + 3600 + 401) == rules.RUNNING
    store.record_ping("pi", NEXT_HOUR + 3600 + 500)
    steps.check_once(NEXT_HOUR + 3600 + 501)
    assert subjects(store) == ["pi did not start on time", "pi is back"]


@BACKENDS
def test_a_late_start_is_not_alerted_while_snoozed_and_is_measured_from_the_snooze_end(store):
    steps = listener(store, hourly(start_grace=300))
    steps.check_once(T0 + 1)
    store.snooze("pi", NEXT_HOUR + 600, T0 + 2)
    steps.check_once(NEXT_HOUR + 301)
    steps.check_once(NEXT_HOUR + 601)
    assert emails(store) == []
    # Measured from the snooze's end (15:10), the next run is 16:00.
    steps.check_once(NEXT_HOUR + 3600 + 301)
    assert subjects(store) == ["pi did not start on time"]


def test_start_grace_after_a_restart_counts_from_the_restart(tmp_path):
    store = Store(tmp_path / "db")
    listener(store, hourly(start_grace=300))
    store.close()
    store = Store(tmp_path / "db")
    steps = listener(store, hourly(start_grace=300), now=NEXT_HOUR + 200)
    steps.check_once(NEXT_HOUR + 400)
    assert emails(store) == []
    steps.check_once(NEXT_HOUR + 3600 + 301)
    assert subjects(store) == ["pi did not start on time"]
    store.close()


# Settings


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"fail_threshold": 0}, "users.pi.fail_threshold: must be an integer >= 1, got 0"),
        ({"fail_threshold": 2.5}, "users.pi.fail_threshold: must be an integer >= 1, got 2.5"),
        ({"fail_threshold": True}, "users.pi.fail_threshold: must be an integer >= 1, got true"),
        ({"fail_threshold": 10**7}, "users.pi.fail_threshold: must be at most 1000000, got 10000000"),
        ({"min_runtime": 0}, "users.pi.min_runtime: must be a number > 0, got 0"),
        ({"min_interval": "1h"}, 'users.pi.min_interval: must be a number > 0, got "1h"'),
        ({"start_grace": 60}, "users.pi.start_grace: only for a user with a schedule (this one has max_sleep)"),
    ],
)
def test_bad_detection_settings_are_refused_naming_the_key(settings, problem):
    with pytest.raises(config.ConfigError) as raised:
        make_settings(pi(**settings))
    assert raised.value.problems == [problem]


def test_start_grace_must_be_a_number_of_seconds_for_a_scheduled_user():
    with pytest.raises(config.ConfigError) as raised:
        make_settings(hourly(start_grace=-1))
    assert raised.value.problems == ["users.pi.start_grace: must be a number >= 0, got -1"]
    assert make_settings(hourly(start_grace=0)).users["pi"].start_grace == 0.0


def test_detection_settings_default_to_no_rule_and_a_threshold_of_one():
    user = make_settings(pi()).users["pi"]
    assert (user.fail_threshold, user.min_runtime, user.min_interval, user.start_grace) == (1, None, None, None)


# The rules themselves (rules.py), where the listener's steps above cannot show an edge.


def state(**fields):
    base = UserState(1, "pi", True, 60.0, 600.0, T0, None, None, None)
    return dataclasses.replace(base, **fields)


def test_a_success_counts_as_a_fail_only_if_it_closed_a_run_shorter_than_min_runtime():
    assert rules.counts_as(rules.SUCCESS, 59.9, 60.0) == rules.FAIL
    assert rules.counts_as(rules.SUCCESS, 60.0, 60.0) == rules.SUCCESS
    assert rules.counts_as(rules.SUCCESS, None, 60.0) == rules.SUCCESS
    assert rules.counts_as(rules.SUCCESS, 1.0, None) == rules.SUCCESS
    assert rules.counts_as(rules.START, 1.0, 60.0) == rules.START


def test_too_often_is_closer_than_min_interval_either_way():
    assert rules.too_often(T0, T0 + 59.9, 60.0)
    assert rules.too_often(T0, T0 - 1, 60.0)
    assert not rules.too_often(T0, T0 + 60, 60.0)
    assert not rules.too_often(None, T0, 60.0)
    assert not rules.too_often(T0, T0 + 1, None)


def test_a_failed_user_is_failing_only_from_its_threshold_on():
    assert not rules.failing(state(failed_at=T0, fail_count=2, fail_threshold=3))
    assert rules.failing(state(failed_at=T0, fail_count=3, fail_threshold=3))
    assert rules.condition(state(failed_at=T0, fail_count=2, fail_threshold=3, last_ping=T0), T0 + 1) is None


def test_a_notice_opens_no_outage_and_waits_for_its_throttle():
    noisy = state(too_often_at=T0 + 5, last_ping=T0 + 5, min_interval=60.0, max_sleep=86400.0)
    decision = rules.decide(noisy, T0 + 6)
    assert decision.alert == rules.Condition(rules.TOO_OFTEN, T0 + 5)
    assert decision.down_since is None
    throttled = dataclasses.replace(noisy, last_alert=T0, last_alert_kind=rules.TOO_OFTEN)
    assert rules.decide(throttled, T0 + 6).alert is None
    assert rules.decide(throttled, T0 + 6).next_due_at == T0 + 600


# Maintenance windows: every day 15:00-16:00 UTC (T0 is 14:13:20 UTC).

DAILY_WINDOW = [{"schedule": "0 15 * * *", "duration": 3600, "tz": "UTC"}]
WINDOW_START = T0 + 2800
WINDOW_END = WINDOW_START + 3600


@BACKENDS
def test_no_alert_inside_a_maintenance_window_and_the_silence_is_measured_from_its_end(store):
    steps = listener(store, pi(max_sleep=3000, maintenance=DAILY_WINDOW))
    store.record_ping("pi", T0)
    steps.check_once(T0 + 1)
    # Looked at when the window opens: maintenance, until its end.
    assert store.user("pi").due_at == WINDOW_START
    steps.check_once(WINDOW_START + 0.5)
    assert rules.live_state(store.user("pi"), WINDOW_START + 1) == rules.MAINTENANCE
    steps.check_once(T0 + 3001)
    steps.check_once(WINDOW_END - 1)
    steps.check_once(WINDOW_END + 2999)
    assert emails(store) == []
    steps.check_once(WINDOW_END + 3001)
    assert subjects(store) == ["pi disconnection detected"]


@BACKENDS
def test_top_level_maintenance_covers_every_user_so_a_maintained_parents_child_stays_quiet(store):
    users = {**pi(max_sleep=3000), "cam": {"monitor": True, "max_sleep": 3000, "email_frequency": 600}}
    users["cam"]["depends_on"] = "pi"
    settings = make_settings(users, maintenance=DAILY_WINDOW)
    store.sync_users(settings.users, T0)
    steps = Scheduler(store, RecordingMailer(), LiveSettings(settings), "https://example.net", Clock(T0))
    store.record_ping("pi", T0)
    store.record_ping("cam", T0)
    for at in (T0 + 1, WINDOW_START + 1, T0 + 3001, WINDOW_END - 1):
        steps.check_once(at)
    assert emails(store) == []
    assert {user.username: rules.live_state(user, WINDOW_END - 1) for user in store.configured_users()} == {
        "cam": rules.MAINTENANCE,
        "pi": rules.MAINTENANCE,
    }


@BACKENDS
def test_a_reload_that_adds_a_window_makes_the_user_looked_at_when_it_opens(store):
    steps = listener(store, pi(max_sleep=3000))
    store.record_ping("pi", T0)
    steps.check_once(T0 + 1)
    settings = make_settings(pi(max_sleep=3000, maintenance=DAILY_WINDOW))
    store.reload_users(settings.users, T0 + 10)
    steps = Scheduler(store, RecordingMailer(), LiveSettings(settings), "https://example.net", Clock(T0 + 10))
    steps.check_once(T0 + 11)
    assert store.user("pi").due_at == WINDOW_START
    steps.check_once(WINDOW_START + 1)
    steps.check_once(T0 + 3001)
    assert emails(store) == []


def test_maintenance_windows_survive_a_restart(tmp_path):
    store = Store(tmp_path / "db")
    listener(store, pi(max_sleep=3000, maintenance=DAILY_WINDOW)).check_once(T0 + 1)
    store.close()
    store = Store(tmp_path / "db")
    steps = listener(store, pi(max_sleep=3000, maintenance=DAILY_WINDOW), now=T0 + 100)
    steps.check_once(T0 + 101)
    steps.check_once(WINDOW_START + 1)
    steps.check_once(WINDOW_END - 1)
    assert emails(store) == []
    assert rules.live_state(store.user("pi"), WINDOW_END - 1) == rules.MAINTENANCE
    store.close()


@BACKENDS
def test_an_outage_alerted_before_a_window_is_not_alerted_again_after_it(store):
    steps = listener(store, pi(max_sleep=60, maintenance=DAILY_WINDOW))
    store.record_ping("pi", T0)
    steps.check_once(T0 + 61)
    assert subjects(store) == ["pi disconnection detected"]
    steps.check_once(WINDOW_START + 1)
    steps.check_once(WINDOW_END + 61)
    # The window acknowledged it, as a snooze does: its next success ends it with its recovery.
    assert subjects(store) == ["pi disconnection detected"]
    store.record_ping("pi", WINDOW_END + 100)
    steps.check_once(WINDOW_END + 101)
    assert subjects(store) == ["pi disconnection detected", "pi is back"]


def test_a_window_opens_when_its_schedule_fires_in_its_zone_across_daylight_saving_changes():
    window = config.MaintenanceWindow("0 3 * * *", 3600.0, "Europe/Paris")
    # 2026-03-28 03:00 CET is 02:00 UTC; the next day, after the change, 03:00 CEST is 01:00 UTC.
    before, after = 1774663200.0, 1774746000.0
    assert rules.maintenance_window([window], before) == (before, before + 3600)
    assert rules.maintenance_window([window], before - 1) is None
    assert rules.maintenance_window([window], before + 3600) is None
    assert rules.next_maintenance([window], before) == after
    assert rules.maintenance_window([window], after + 10) == (after, after + 3600)


@pytest.mark.parametrize(
    ("windows", "problem"),
    [
        ({}, 'users.pi.maintenance: must be a list of {"schedule", "duration", "tz"}, got {}'),
        ([{"schedule": "0 3 * * *"}], "users.pi.maintenance[0].duration: missing"),
        ([{"schedule": "0 3 * * 8", "duration": 60}], "users.pi.maintenance[0].schedule: is not a valid cron"),
        ([{"schedule": "0 3 * * *", "duration": 0}], "users.pi.maintenance[0].duration: must be a number > 0, got 0"),
    ],
)
def test_bad_maintenance_windows_are_refused_naming_the_key(windows, problem):
    with pytest.raises(config.ConfigError) as raised:
        make_settings(pi(maintenance=windows))
    [reported] = raised.value.problems
    assert reported.startswith(problem)


@BACKENDS
def test_the_overview_shows_a_user_in_its_maintenance_window_as_maintenance(store):
    steps = listener(store, pi(max_sleep=3000, maintenance=DAILY_WINDOW))
    store.record_ping("pi", T0)
    steps.check_once(T0 + 1)
    steps.check_once(WINDOW_START + 1)
    page = Overview(store)
    while page.keep_up(WINDOW_START + 2):
        pass
    [row] = json.loads(page.state(WINDOW_START + 2))["users"]
    assert (row["username"], row["state"], row["snoozed_until"]) == ("pi", "maintenance", WINDOW_END)
    # A snooze by hand is a snooze, not maintenance.
    store.snooze("pi", WINDOW_END + 600, WINDOW_START + 3)
    assert rules.live_state(store.user("pi"), WINDOW_START + 4) == rules.SNOOZED


# Flapping: max_sleep 60, so each silence of more than a minute is an outage.


def flappy(**settings):
    return pi(max_sleep=60, email_frequency=0, flap_threshold=4, flap_quiet=600, **settings)


def flap(store, steps, times):
    """Each (ping, check) in `times` (offsets from T0): a ping, then a listener step."""
    for ping, check in times:
        if ping is not None:
            store.record_ping("pi", T0 + ping)
        steps.check_once(T0 + check)


@BACKENDS
def test_more_state_changes_than_flap_threshold_in_an_hour_send_one_flapping_notice_then_nothing(store):
    steps = listener(store, flappy())
    # Outages at 60, 130, 200 and 270 s, each over after 10 s: 1, 3, 5 and 7 state changes counted.
    flap(store, steps, [(0, 1), (None, 61), (70, 71), (None, 131), (140, 141), (None, 201), (210, 211)])
    flap(store, steps, [(None, 271), (280, 281)])
    assert subjects(store) == [
        "pi disconnection detected",
        "pi is back",
        "pi disconnection detected",
        "pi is back",
        "pi is flapping",
    ]
    assert rules.live_state(store.user("pi"), T0 + 282) == rules.FLAPPING
    # Stable (pinging) until flap_quiet after its last outage: flapping ends and its count starts again, so a
    # new outage is alerted.
    flap(store, steps, [(at, at + 1) for at in range(300, 900, 30)])
    assert len(subjects(store)) == 5
    assert rules.live_state(store.user("pi"), T0 + 900) == rules.PINGING
    steps.check_once(T0 + 971)
    assert subjects(store)[5:] == ["pi disconnection detected"]


@BACKENDS
def test_a_user_down_when_its_flapping_ends_is_alerted_then(store):
    steps = listener(store, flappy())
    flap(store, steps, [(0, 1), (None, 61), (70, 71), (None, 131), (140, 141), (None, 201), (210, 211)])
    # Silent from 210: its outage at 270 is counted, not alerted, until flap_quiet after it.
    flap(store, steps, [(None, 271), (None, 869)])
    assert subjects(store)[-1] == "pi is flapping"
    steps.check_once(T0 + 871)
    assert subjects(store)[-1] == "pi disconnection detected"


@BACKENDS
def test_a_child_of_a_flapping_parent_stays_quiet(store):
    users = {**flappy(), "cam": {"monitor": True, "max_sleep": 100, "email_frequency": 0, "depends_on": "pi"}}
    steps = listener(store, users)
    flap(store, steps, [(0, 1), (None, 61), (70, 71), (None, 131), (140, 141)])
    store.record_ping("cam", T0 + 150)
    flap(store, steps, [(None, 201), (210, 211), (240, 241), (270, 271), (300, 301)])
    # pi's return at 210 restarted cam's silence: cam is late at 310, while pi is up but flapping.
    steps.check_once(T0 + 311)
    assert subjects(store)[-1] == "pi is flapping"
    assert query(db_of(store), "SELECT kind FROM alerts JOIN users ON users.id = user_id WHERE suppressed") == [
        ("late",)
    ]


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"flap_threshold": 1}, "users.pi.flap_threshold: must be an integer >= 2, got 1"),
        ({"flap_quiet": 0}, "users.pi.flap_quiet: must be a number > 0, got 0"),
    ],
)
def test_bad_flapping_settings_are_refused_naming_the_key(settings, problem):
    with pytest.raises(config.ConfigError) as raised:
        make_settings(pi(**settings))
    assert raised.value.problems == [problem]


def test_a_state_change_is_counted_once_per_outage_within_an_hour_of_the_first():
    down = rules.Condition(rules.SILENCE, T0)
    first = rules.count_outage(state(), down, T0 + 1)
    assert first == rules.Flap(T0, 1, T0, None)
    counted = state(flap_window_start=T0, flap_count=1, last_outage_at=T0, flap_quiet=7200.0)
    assert rules.count_outage(counted, down, T0 + 2) is None
    assert rules.count_outage(counted, rules.Condition(rules.SILENCE, T0 + 3600), T0 + 3601).count == 2
    assert rules.count_outage(counted, rules.Condition(rules.SILENCE, T0 + 3601), T0 + 3602).count == 1
