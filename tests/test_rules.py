import dataclasses

from records import UserState
from rules import (
    ALERTED,
    FAILED,
    FAILURE,
    LATE,
    PINGING,
    RUN_TIMEOUT,
    RUNNING,
    SILENCE,
    SILENT,
    SNOOZED,
    SUPPRESSED,
    Condition,
    condition,
    deadline_after,
    decide,
    due_at,
    expected_after,
    expected_at,
    held_back_until,
    is_up,
    late_at,
    live_state,
    retry_delay,
    signal_kind,
    silence_start,
    silences,
)
from support import T0


def user(
    monitor=True, max_sleep=60.0, email_frequency=600.0, monitored_since=T0, last_ping=None, last_alert=None, **more
):
    # An alert given without its kind was about a silence, as every alert before signals.
    more.setdefault("last_alert_kind", None if last_alert is None else SILENCE)
    # A user given as failed has one fail in a row, as every failed user had before fail_threshold.
    more.setdefault("fail_count", 0 if more.get("failed_at") is None else 1)
    state = UserState(1, "pi", monitor, max_sleep, email_frequency, monitored_since, last_ping, last_alert, None)
    return dataclasses.replace(state, **more)


def alerts_and_next(user, now):
    """decide()'s answer as before signals: (whether it alerts, when to look again)."""
    decision = decide(user, now)
    return decision.alert is not None, decision.next_due_at


def test_a_silence_of_exactly_max_sleep_is_not_late():
    assert alerts_and_next(user(last_ping=T0), T0 + 60) == (False, T0 + 60)


def test_a_silence_longer_than_max_sleep_alerts_and_waits_email_frequency():
    assert alerts_and_next(user(last_ping=T0), T0 + 60.5) == (True, T0 + 660.5)


def test_an_unmonitored_user_never_alerts():
    assert alerts_and_next(user(monitor=False, last_ping=T0), T0 + 1e9) == (False, None)
    assert late_at(user(monitor=False)) is None


def test_repeats_wait_more_than_email_frequency_since_the_last_alert():
    silent = user(last_ping=T0, last_alert=T0 + 61)
    assert alerts_and_next(silent, T0 + 661) == (False, T0 + 661)
    assert alerts_and_next(silent, T0 + 661.01) == (True, T0 + 1261.01)


def test_a_user_that_never_pinged_is_late_max_sleep_after_monitoring_began():
    assert alerts_and_next(user(), T0 + 60) == (False, T0 + 60)
    assert alerts_and_next(user(), T0 + 61)[0]


def test_the_services_own_downtime_never_counts_against_a_device():
    # Last ping long ago, but this process only started monitoring at T0 + 5000.
    restarted = user(last_ping=T0, monitored_since=T0 + 5000)
    assert alerts_and_next(restarted, T0 + 5060) == (False, T0 + 5060)
    assert alerts_and_next(restarted, T0 + 5061)[0]


def test_an_email_frequency_of_zero_alerts_on_every_step_of_a_silence():
    silent = user(last_ping=T0, email_frequency=0, last_alert=T0 + 61)
    assert alerts_and_next(silent, T0 + 61) == (False, T0 + 61)
    assert alerts_and_next(silent, T0 + 62) == (True, T0 + 62)


def test_a_user_that_pinged_within_max_sleep_is_pinging():
    assert live_state(user(last_ping=T0), T0 + 60) == PINGING


def test_a_user_without_a_ping_since_monitoring_began_is_silent_until_late():
    assert live_state(user(), T0 + 60) == SILENT
    assert live_state(user(), T0 + 60.5) == LATE


def test_an_unmonitored_user_is_silent_after_max_sleep_but_never_late():
    assert live_state(user(monitor=False, last_ping=T0), T0 + 60) == PINGING
    assert live_state(user(monitor=False, last_ping=T0), T0 + 1e9) == SILENT


def test_a_late_user_is_alerted_once_an_alert_was_recorded_during_this_silence():
    assert live_state(user(last_ping=T0), T0 + 61) == LATE
    assert live_state(user(last_ping=T0, last_alert=T0 + 61, down_since=T0 + 60), T0 + 61) == ALERTED
    # An alert from an earlier silence: the device came back at T0 + 100 (its outage closed) and went
    # silent again.
    assert live_state(user(last_ping=T0 + 100, last_alert=T0 + 61), T0 + 161) == LATE


def test_the_live_state_turns_late_exactly_when_the_listener_would_alert():
    for silent in (user(last_ping=T0), user(last_ping=T0, monitored_since=T0 + 30), user(max_sleep=0)):
        deadline = late_at(silent)
        assert live_state(silent, deadline) != LATE and not alerts_and_next(silent, deadline)[0]
        assert live_state(silent, deadline + 0.01) == LATE and alerts_and_next(silent, deadline + 0.01)[0]


def test_retries_start_within_ten_seconds_back_off_and_are_capped_at_five_minutes():
    delays = [retry_delay(attempts) for attempts in range(1, 40)]
    assert delays[0] <= 10
    assert delays == sorted(delays)
    assert delays[1] > delays[0]
    assert max(delays) == 300


def test_a_late_user_alerted_during_an_earlier_silence_is_held_back_until_email_frequency_has_passed():
    # Alerted at T0 + 61, pinged at T0 + 100, silent again: late at T0 + 160, alertable after T0 + 661.
    again = user(last_ping=T0 + 100, last_alert=T0 + 61)
    assert live_state(again, T0 + 200) == LATE
    assert held_back_until(again, T0 + 200) == T0 + 661
    assert held_back_until(again, T0 + 661.5) is None  # the next step alerts it
    assert held_back_until(again, T0 + 150) is None  # not late yet


def test_an_alerted_users_reminder_is_held_back_and_a_first_alert_is_not():
    assert held_back_until(user(last_ping=T0, last_alert=T0 + 61), T0 + 100) == T0 + 661
    assert held_back_until(user(last_ping=T0), T0 + 100) is None
    assert held_back_until(user(monitor=False, last_ping=T0, last_alert=T0), T0 + 100) is None


def test_silences_are_the_gaps_longer_than_max_sleep_also_from_the_ping_before():
    assert silences([T0 + 10, T0 + 20, T0 + 90, T0 + 100], user(), T0 - 100) == [
        (T0 - 100, T0 + 10),
        (T0 + 20, T0 + 90),
    ]
    assert silences([T0 + 60], user(), T0) == []  # exactly max_sleep is no silence
    assert silences([T0, T0 + 100], user(), None) == [(T0, T0 + 100)]
    assert silences([], user(), T0) == []


def test_an_exit_code_of_zero_is_a_success_and_any_other_a_failure():
    assert [signal_kind(code) for code in (0, 1, 255)] == ["success", "fail", "fail"]


def test_a_failure_is_alerted_at_once_whatever_max_sleep_says_and_went_down_at_the_fail():
    failed = user(max_sleep=3600, last_ping=T0 + 10, failed_at=T0 + 10)
    assert condition(failed, T0 + 10) == Condition(FAILURE, T0 + 10)
    assert due_at(failed) == T0 + 10
    decision = decide(failed, T0 + 10.5)
    assert (decision.alert, decision.down_since, decision.next_due_at) == (
        Condition(FAILURE, T0 + 10),
        T0 + 10,
        T0 + 610.5,
    )


def test_a_failure_repeats_at_most_every_email_frequency_while_it_lasts():
    failed = user(last_ping=T0, failed_at=T0, last_alert=T0 + 1, last_alert_kind=FAILURE, down_since=T0)
    assert alerts_and_next(failed, T0 + 601) == (False, T0 + 601)
    assert alerts_and_next(failed, T0 + 601.5) == (True, T0 + 1201.5)


def test_a_run_past_max_runtime_is_late_and_went_down_at_its_deadline():
    running = user(max_sleep=3600, max_runtime=30, last_ping=T0, run_started=T0 + 5)
    assert live_state(running, T0 + 35) == RUNNING and condition(running, T0 + 35) is None
    assert due_at(running) == T0 + 35
    assert condition(running, T0 + 35.5) == Condition(RUN_TIMEOUT, T0 + 35)
    assert live_state(running, T0 + 35.5) == LATE


def test_a_run_without_max_runtime_never_times_out_but_a_start_is_no_sign_of_life():
    running = user(max_sleep=60, last_ping=T0, run_started=T0 + 50)
    assert due_at(running) == T0 + 60
    assert live_state(running, T0 + 59) == RUNNING
    assert condition(running, T0 + 61) == Condition(SILENCE, T0 + 60)
    assert live_state(running, T0 + 61) == LATE


def test_a_run_started_before_a_restart_gets_a_full_max_runtime_from_the_restart():
    running = user(max_runtime=30, max_sleep=3600, run_started=T0 - 100, monitored_since=T0)
    assert due_at(running) == T0 + 30


def test_the_priority_is_failed_then_run_past_max_runtime_then_silence():
    everything = user(max_sleep=10, max_runtime=20, last_ping=T0, run_started=T0, failed_at=T0)
    assert condition(everything, T0 + 100).kind == FAILURE
    assert condition(dataclasses.replace(everything, failed_at=None), T0 + 100).kind == RUN_TIMEOUT
    assert condition(dataclasses.replace(everything, failed_at=None, run_started=None), T0 + 100).kind == SILENCE


def test_a_change_to_another_condition_alerts_at_once_despite_the_throttle():
    # Silent and alerted at T0 + 61; a run opened meanwhile overruns at T0 + 100.
    silent = user(max_runtime=50, last_ping=T0, run_started=T0 + 50, last_alert=T0 + 61, down_since=T0 + 60)
    assert decide(silent, T0 + 99).next_due_at == T0 + 100
    decision = decide(silent, T0 + 100.5)
    assert decision.alert == Condition(RUN_TIMEOUT, T0 + 100)
    assert decision.down_since == T0 + 60  # the same outage


def test_a_success_after_an_alerted_outage_gets_one_recovery_and_closes_it():
    back = user(last_ping=T0 + 200, last_alert=T0 + 61, down_since=T0 + 60, back_at=T0 + 200)
    assert due_at(back) == T0 + 200
    decision = decide(back, T0 + 200.5)
    assert (decision.alert, decision.recovery, decision.down_since, decision.next_due_at) == (
        None,
        True,
        None,
        T0 + 260,
    )


def test_no_recovery_email_when_notify_recovery_or_monitor_is_off_but_the_outage_still_ends():
    for off in ({"notify_recovery": False}, {"monitor": False}):
        back = user(last_ping=T0 + 200, last_alert=T0 + 61, down_since=T0 + 60, back_at=T0 + 200, **off)
        assert due_at(back) == T0 + 200
        decision = decide(back, T0 + 201)
        assert (decision.recovery, decision.down_since) == (False, None)


def test_a_failure_right_after_a_recovery_is_a_new_outage_alerted_in_the_same_step():
    back_then_failed = user(
        last_ping=T0 + 210, last_alert=T0 + 61, down_since=T0 + 60, back_at=T0 + 200, failed_at=T0 + 210
    )
    decision = decide(back_then_failed, T0 + 211)
    assert (decision.recovery, decision.alert, decision.down_since) == (True, Condition(FAILURE, T0 + 210), T0 + 210)


def test_an_outage_that_was_never_alerted_gets_no_recovery():
    # Late again within email_frequency of the last silence alert: throttled, so not alerted.
    throttled = user(last_ping=T0 + 100, last_alert=T0 + 61)
    decision = decide(throttled, T0 + 161)
    assert (decision.alert, decision.down_since) == (None, None)
    assert live_state(throttled, T0 + 161) == LATE


def test_failed_and_running_states():
    assert live_state(user(last_ping=T0, failed_at=T0), T0 + 1) == FAILED
    assert live_state(user(monitor=False, last_ping=T0, failed_at=T0), T0 + 1e6) == FAILED
    alerted_failure = user(last_ping=T0, failed_at=T0, last_alert=T0 + 1, last_alert_kind=FAILURE, down_since=T0)
    assert live_state(alerted_failure, T0 + 2) == FAILED
    assert live_state(user(last_ping=T0, run_started=T0 + 1), T0 + 2) == RUNNING


# T0 is Monday 2026-09-21 16:13:20 in Paris (CEST, UTC+2); the job runs at 02:30 Paris time on weekdays.
NIGHTLY = {"schedule": "30 2 * * 1-5", "tz": "Europe/Paris", "grace": 900.0, "max_sleep": 0.0}
TUESDAY_0230 = T0 + 10 * 3600 + 16 * 60 + 40  # 2026-09-22 02:30:00 CEST


def test_a_scheduled_user_is_expected_at_the_first_run_after_its_last_contact_and_late_after_the_grace():
    nightly = user(**NIGHTLY, last_ping=T0)
    assert expected_at(nightly) == TUESDAY_0230
    assert late_at(nightly) == TUESDAY_0230 + 900
    assert condition(nightly, TUESDAY_0230 + 900) is None  # exactly the grace is not late
    assert condition(nightly, TUESDAY_0230 + 900.5) == Condition(SILENCE, TUESDAY_0230 + 900)
    # A ping after that run expects the next one: Wednesday's.
    assert expected_at(user(**NIGHTLY, last_ping=TUESDAY_0230 + 60)) == TUESDAY_0230 + 86400


def test_before_its_first_ping_a_scheduled_user_is_expected_after_the_start_of_monitoring():
    assert late_at(user(**NIGHTLY, monitored_since=T0)) == TUESDAY_0230 + 900
    # A ping before the start of monitoring counts from the start: downtime never counts.
    assert late_at(user(**NIGHTLY, monitored_since=TUESDAY_0230 + 1, last_ping=T0)) == TUESDAY_0230 + 86400 + 900


def test_expected_after_is_max_sleep_later_or_the_schedules_next_run():
    assert expected_after(user(), T0) == T0 + 60
    assert deadline_after(user(), T0) == T0 + 60
    assert expected_after(user(**NIGHTLY), T0) == TUESDAY_0230
    assert deadline_after(user(**NIGHTLY), T0) == TUESDAY_0230 + 900


def test_a_scheduled_users_stored_deadline_is_its_last_contact_until_the_listener_computes_the_real_one():
    nightly = user(**NIGHTLY, last_ping=T0 + 5)
    assert due_at(nightly) == T0 + 5
    assert due_at(dataclasses.replace(nightly, failed_at=T0 + 1, fail_count=1)) == T0 + 1
    decision = decide(nightly, T0 + 6)
    assert (decision.alert, decision.next_due_at) == (None, TUESDAY_0230 + 900)
    late = decide(nightly, TUESDAY_0230 + 901)
    assert (late.alert, late.down_since, late.next_due_at) == (
        Condition(SILENCE, TUESDAY_0230 + 900),
        TUESDAY_0230 + 900,
        TUESDAY_0230 + 901 + 600,
    )


def test_a_scheduled_user_is_pinging_until_its_deadline_then_late_and_its_missed_runs_are_silences():
    nightly = user(**NIGHTLY, last_ping=T0)
    assert live_state(nightly, TUESDAY_0230 + 900) == PINGING
    assert live_state(nightly, TUESDAY_0230 + 901) == LATE
    # Pings at 02:31 each night, then none on Thursday (expected by 02:45) until Thursday 10:00.
    nights = [TUESDAY_0230 + 60, TUESDAY_0230 + 86400 + 60, TUESDAY_0230 + 2 * 86400 + 27000]
    assert silences(nights, nightly, T0) == [(nights[1], nights[2])]


# Storm control: a router (the parent) and a device behind it, both with max_sleep 60.


def test_a_device_late_while_its_router_is_late_is_suppressed_once_with_no_outage_opened():
    router = user(last_ping=T0)
    device = user(last_ping=T0)
    decision = decide(device, T0 + 61, router)
    assert (decision.alert, decision.suppressed, decision.down_since, decision.next_due_at) == (
        None,
        Condition(SILENCE, T0 + 60),
        None,
        None,
    )
    recorded = dataclasses.replace(device, suppressed_kind=SILENCE)
    assert decide(recorded, T0 + 61, router).suppressed is None
    assert live_state(recorded, T0 + 61, router) == SUPPRESSED
    # The same device with no parent is alerted.
    assert decide(device, T0 + 61).alert == Condition(SILENCE, T0 + 60)


def test_a_device_whose_silence_went_down_after_its_routers_last_ping_waits_for_the_routers_deadline():
    router = user(last_ping=T0 + 30)
    device = user(last_ping=T0)
    decision = decide(device, T0 + 61, router)
    assert (decision.alert, decision.suppressed, decision.next_due_at) == (None, None, T0 + 90)
    assert held_back_until(device, T0 + 61, router) == T0 + 90
    assert live_state(device, T0 + 61, router) == LATE
    # Heard from after the device went down, the router is up: the device is alerted.
    assert decide(device, T0 + 61, user(last_ping=T0 + 60.5)).alert == Condition(SILENCE, T0 + 60)


def test_a_devices_own_failure_does_not_wait_for_its_router_but_is_suppressed_while_the_router_is_down():
    device = user(last_ping=T0, failed_at=T0 + 10)
    assert decide(device, T0 + 11, user(last_ping=T0 + 5)).alert == Condition(FAILURE, T0 + 10)
    assert decide(device, T0 + 11, user(last_ping=T0, failed_at=T0 + 1)).suppressed == Condition(FAILURE, T0 + 10)


def test_a_snoozed_user_is_not_alerted_and_its_silence_counts_from_the_snoozes_end():
    snoozed = user(last_ping=T0, snoozed_until=T0 + 600)
    assert live_state(snoozed, T0 + 100) == SNOOZED
    assert condition(snoozed, T0 + 100) == Condition(SILENCE, T0 + 60)  # late all the same, for its children
    assert (decide(snoozed, T0 + 100).alert, decide(snoozed, T0 + 100).next_due_at) == (None, T0 + 600)
    assert held_back_until(snoozed, T0 + 100) == T0 + 600
    assert (silence_start(snoozed, T0 + 100), silence_start(snoozed, T0 + 600), silence_start(snoozed)) == (
        T0,
        T0 + 600,
        T0 + 600,
    )
    assert late_at(snoozed) == due_at(snoozed) == T0 + 660
    assert condition(snoozed, T0 + 660) is None
    assert decide(snoozed, T0 + 660.5).alert == Condition(SILENCE, T0 + 660)


def test_a_failure_during_a_snooze_is_due_when_the_snooze_ends():
    assert due_at(user(last_ping=T0, failed_at=T0 + 5, snoozed_until=T0 + 300)) == T0 + 300
    assert due_at(user(last_ping=T0, max_sleep=3600, failed_at=T0 + 500, snoozed_until=T0 + 300)) == T0 + 500


def test_an_outage_alerted_before_a_snooze_is_muted_until_it_ends():
    muted = user(last_ping=T0, last_alert=T0 + 61, down_since=T0 + 60, muted_outage=T0 + 60, snoozed_until=T0 + 100)
    decision = decide(muted, T0 + 5000)
    assert (decision.alert, decision.next_due_at) == (None, None)
    assert live_state(muted, T0 + 5000) == ALERTED
    assert held_back_until(muted, T0 + 5000) is None
    # Another outage (down at another time) is alerted as usual.
    assert decide(dataclasses.replace(muted, down_since=None), T0 + 5000).alert == Condition(SILENCE, T0 + 160)


def test_the_routers_return_restarts_the_devices_silence():
    device = user(last_ping=T0, silence_from=T0 + 200)
    assert (silence_start(device), late_at(device), condition(device, T0 + 260)) == (T0 + 200, T0 + 260, None)
    running = user(last_ping=T0, run_started=T0 + 10, max_runtime=30.0, silence_from=T0 + 200)
    assert due_at(running) == T0 + 230


def test_a_user_is_up_until_strictly_past_its_deadline_and_always_without_one():
    assert is_up(None, T0 + 1e9)
    assert is_up(T0, T0 - 1) and is_up(T0, T0)
    assert not is_up(T0, T0 + 0.001)
