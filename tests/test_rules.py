from rules import ALERTED, LATE, PINGING, SILENT, decide, is_up, late_at, live_state, retry_delay
from store import UserState
from support import T0


def user(monitor=True, max_sleep=60.0, email_frequency=600.0, monitored_since=T0, last_ping=None, last_alert=None):
    return UserState(1, "pi", monitor, max_sleep, email_frequency, monitored_since, last_ping, last_alert, None)


def test_a_silence_of_exactly_max_sleep_is_not_late():
    assert decide(user(last_ping=T0), T0 + 60) == (False, T0 + 60)


def test_a_silence_longer_than_max_sleep_alerts_and_waits_email_frequency():
    assert decide(user(last_ping=T0), T0 + 60.5) == (True, T0 + 660.5)


def test_an_unmonitored_user_never_alerts():
    assert decide(user(monitor=False, last_ping=T0), T0 + 1e9) == (False, None)
    assert late_at(user(monitor=False)) is None


def test_repeats_wait_more_than_email_frequency_since_the_last_alert():
    silent = user(last_ping=T0, last_alert=T0 + 61)
    assert decide(silent, T0 + 661) == (False, T0 + 661)
    assert decide(silent, T0 + 661.01) == (True, T0 + 1261.01)


def test_a_user_that_never_pinged_is_late_max_sleep_after_monitoring_began():
    assert decide(user(), T0 + 60) == (False, T0 + 60)
    assert decide(user(), T0 + 61)[0]


def test_the_services_own_downtime_never_counts_against_a_device():
    # Last ping long ago, but this process only started monitoring at T0 + 5000.
    restarted = user(last_ping=T0, monitored_since=T0 + 5000)
    assert decide(restarted, T0 + 5060) == (False, T0 + 5060)
    assert decide(restarted, T0 + 5061)[0]


def test_an_email_frequency_of_zero_alerts_on_every_step_of_a_silence():
    silent = user(last_ping=T0, email_frequency=0, last_alert=T0 + 61)
    assert decide(silent, T0 + 61) == (False, T0 + 61)
    assert decide(silent, T0 + 62) == (True, T0 + 62)


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
    assert live_state(user(last_ping=T0, last_alert=T0 + 61), T0 + 61) == ALERTED
    # An alert from an earlier silence: the device came back at T0 + 100 and went silent again.
    assert live_state(user(last_ping=T0 + 100, last_alert=T0 + 61), T0 + 161) == LATE


def test_the_live_state_turns_late_exactly_when_the_listener_would_alert():
    for silent in (user(last_ping=T0), user(last_ping=T0, monitored_since=T0 + 30), user(max_sleep=0)):
        deadline = late_at(silent)
        assert live_state(silent, deadline) != LATE and not decide(silent, deadline)[0]
        assert live_state(silent, deadline + 0.01) == LATE and decide(silent, deadline + 0.01)[0]


def test_retries_start_within_ten_seconds_back_off_and_are_capped_at_five_minutes():
    delays = [retry_delay(attempts) for attempts in range(1, 40)]
    assert delays[0] <= 10
    assert delays == sorted(delays)
    assert delays[1] > delays[0]
    assert max(delays) == 300


def test_a_user_is_up_until_strictly_past_its_deadline_and_always_without_one():
    assert is_up(None, T0 + 1e9)
    assert is_up(T0, T0 - 1) and is_up(T0, T0)
    assert not is_up(T0, T0 + 0.001)
