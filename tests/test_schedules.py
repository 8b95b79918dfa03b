import datetime
import zoneinfo

import hypothesis
import hypothesis.strategies as st
import pytest
from cronsim import CronSim

import schedules
from schedules import expression_problem, local_zone_name, next_time, zone_problem


def at(zone, *fields, fold=0):
    """The epoch of a wall-clock time in `zone` (fold=1: the second pass of a repeated hour)."""
    return datetime.datetime(*fields, tzinfo=zoneinfo.ZoneInfo(zone), fold=fold).timestamp()


def utc(*fields):
    return datetime.datetime(*fields, tzinfo=datetime.UTC).timestamp()


def walk(expression, zone, start, count):
    """The first `count` times `expression` is expected after `start`, each after the one before."""
    times = []
    for _ in range(count):
        start = next_time(expression, zone, start)
        times.append(start)
    return times


@pytest.mark.parametrize(
    "expression",
    ["0 2 * * *", "*/15 * * * *", "30 2 * * 1-5", "0 9 * JAN,jul MON-FRI", "0 0 L * *", "0 3 * * 5L", "0 3 * * MON#2"],
)
def test_the_usual_cron_syntax_is_accepted(expression):
    assert expression_problem(expression) is None


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("61 * * * *", "is not a valid cron expression (bad minute)"),
        ("0 24 * * *", "is not a valid cron expression (bad hour)"),
        ("0 0 30 2 *", "is not a valid cron expression (bad day-of-month)"),
        ("*/0 * * * *", "is not a valid cron expression (bad minute)"),
        ("0 0 * * 1#6", "is not a valid cron expression (bad day-of-week)"),
        ("@daily", "must be a cron expression of 5 fields (minute hour day-of-month month day-of-week)"),
        ("0 0 2 * * *", "must be a cron expression of 5 fields (minute hour day-of-month month day-of-week)"),
        (7, "must be a cron expression of 5 fields (minute hour day-of-month month day-of-week)"),
    ],
)
def test_a_bad_expression_is_refused_with_a_reason(expression, problem):
    assert expression_problem(expression) == problem


@hypothesis.given(st.text(alphabet="0123456789*/-,LW#?MONJANSAT \t", max_size=30))
def test_any_text_is_either_an_expression_or_a_problem_never_a_crash(text):
    problem = expression_problem(text)
    if problem is None:
        next_time(text, "Europe/Paris", 1_790_000_000.0)  # a valid expression can be evaluated
    else:
        assert problem.startswith(("must be", "is not"))


@pytest.mark.parametrize("name", ["Europe/Paris", "America/New_York", "Australia/Sydney", "UTC"])
def test_iana_zones_are_accepted(name):
    assert zone_problem(name) is None


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "europe/paris", "", "../../etc/passwd", "/etc/localtime", 1])
def test_anything_else_is_not_a_zone(name):
    assert zone_problem(name) is not None


@pytest.mark.parametrize(
    ("tz", "name"),
    [("America/New_York", "America/New_York"), (":Australia/Sydney", "Australia/Sydney"), ("CET-1CEST", None)],
)
def test_the_local_zone_is_named_by_tz(monkeypatch, tz, name):
    monkeypatch.setenv("TZ", tz)
    assert local_zone_name() == name


def test_without_tz_the_local_zone_is_where_etc_localtime_points(monkeypatch, tmp_path):
    monkeypatch.delenv("TZ")
    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/Asia/Tokyo")
    monkeypatch.setattr(schedules, "_LOCALTIME", link)
    assert local_zone_name() == "Asia/Tokyo"
    monkeypatch.setattr(schedules, "_LOCALTIME", tmp_path / "missing")
    assert local_zone_name() is None


def test_the_next_time_is_strictly_after_the_given_one():
    assert next_time("0 2 * * *", "Europe/Paris", at("Europe/Paris", 2026, 11, 30, 2)) == at(
        "Europe/Paris", 2026, 12, 1, 2
    )
    assert next_time("0 2 * * *", "Europe/Paris", at("Europe/Paris", 2026, 11, 30, 2) - 0.5) == at(
        "Europe/Paris", 2026, 11, 30, 2
    )


def test_weekdays_only_skip_the_weekend():
    friday = at("Europe/Paris", 2026, 11, 27, 3)
    assert next_time("30 2 * * 1-5", "Europe/Paris", friday) == at("Europe/Paris", 2026, 11, 30, 2, 30)


def test_the_zone_decides_the_wall_clock():
    assert next_time("0 9 * * *", "America/New_York", utc(2026, 11, 30, 0)) == utc(2026, 11, 30, 14)
    assert next_time("0 9 * * *", "Australia/Sydney", utc(2026, 11, 30, 0)) == utc(2026, 11, 30, 22)


# Daylight-saving walks (Debian cron's rules, as cronsim evaluates them). In 2026 clocks go forward
# on 29 March (Paris, 02:00 -> 03:00), 8 March (New York, 02:00 -> 03:00) and 4 October (Sydney,
# 02:00 -> 03:00), and back on 25 October (Paris, 03:00 -> 02:00), 1 November (New York,
# 02:00 -> 01:00) and 5 April (Sydney, 03:00 -> 02:00). The expected times are written in UTC.
SKIPPED = [
    # zone, a job in the skipped hour, the day before, expected right after the gap, then the next day's
    ("Europe/Paris", "30 2 * * *", utc(2026, 3, 28, 12), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)),
    ("America/New_York", "30 2 * * *", utc(2026, 3, 7, 12), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)),
    ("Australia/Sydney", "30 2 * * *", utc(2026, 10, 3, 0), utc(2026, 10, 3, 16), utc(2026, 10, 4, 15, 30)),
]
REPEATED = [
    # zone, a job in the repeated hour, the day before, its first occurrence only, then the next day's
    ("Europe/Paris", "30 2 * * *", utc(2026, 10, 24, 12), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)),
    ("America/New_York", "30 1 * * *", utc(2026, 10, 31, 12), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)),
    ("Australia/Sydney", "30 2 * * *", utc(2026, 4, 4, 0), utc(2026, 4, 4, 15, 30), utc(2026, 4, 5, 16, 30)),
]


@pytest.mark.parametrize(("zone", "expression", "before", "gap_end", "next_day"), SKIPPED)
def test_a_job_in_the_skipped_hour_is_expected_once_right_after_the_gap(zone, expression, before, gap_end, next_day):
    assert walk(expression, zone, before, 2) == [gap_end, next_day]


@pytest.mark.parametrize(("zone", "expression", "before", "first", "next_day"), REPEATED)
def test_a_job_in_the_repeated_hour_is_expected_once_at_its_first_occurrence(zone, expression, before, first, next_day):
    assert walk(expression, zone, before, 2) == [first, next_day]
    # From any moment after the first occurrence, the second pass of that hour included, the next day's.
    for after in (first, first + 1800, first + 3600, first + 3600 + 1800):
        assert next_time(expression, zone, after) == next_day


@pytest.mark.parametrize(
    ("zone", "spring_midnight", "autumn_midnight"),
    [
        ("Europe/Paris", utc(2026, 3, 28, 23), utc(2026, 10, 24, 22)),
        ("America/New_York", utc(2026, 3, 8, 5), utc(2026, 11, 1, 4)),
        ("Australia/Sydney", utc(2026, 10, 3, 14), utc(2026, 4, 4, 13)),
    ],
)
def test_an_hourly_job_runs_on_elapsed_time_across_both_changes(zone, spring_midnight, autumn_midnight):
    # Every hour of elapsed time: 23 runs on the day clocks go forward, 25 (both repeated hours) when they go back.
    for midnight, runs in ((spring_midnight, 23), (autumn_midnight, 25)):
        times = walk("0 * * * *", zone, midnight, runs + 1)
        assert times == [midnight + 3600 * hour for hour in range(1, runs + 2)]
        assert datetime.datetime.fromtimestamp(times[-1], zoneinfo.ZoneInfo(zone)).hour == 1  # the next day's 01:00


ZONES = sorted(zoneinfo.available_timezones() - {"localtime", "Factory"})
FIELD_VALUES = {
    "minute": st.sampled_from(["*", "0", "30", "*/15", "5,35", "0-10/5", "59"]),
    "hour": st.sampled_from(["*", "0", "1", "2", "3", "*/2", "1-3", "23", "2,14"]),
    "day": st.sampled_from(["*", "1", "15", "L", "28-31", "*/10"]),
    "month": st.sampled_from(["*", "1", "3", "10,11", "APR-JUN"]),
    "weekday": st.sampled_from(["*", "0", "1-5", "SAT,SUN", "5L", "MON#1"]),
}
EXPRESSIONS = st.tuples(*FIELD_VALUES.values()).map(" ".join).filter(lambda text: expression_problem(text) is None)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    expression=EXPRESSIONS,
    zone=st.sampled_from(ZONES),
    after=st.floats(min_value=1_700_000_000, max_value=1_900_000_000),
    fraction=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_the_next_time_is_cronsims_first_run_after_it_and_stays_put_until_then(expression, zone, after, fraction):
    expected = next_time(expression, zone, after)
    # cronsim from three hours earlier (before any daylight-saving change near `after`): its first run
    # strictly after `after`.
    runs = CronSim(expression, datetime.datetime.fromtimestamp(after - 3 * 3600, zoneinfo.ZoneInfo(zone)))
    assert expected == next(t for t in (run.timestamp() for run in runs) if t > after)
    # Any last contact between `after` and that run expects the same run.
    later = after + (expected - after) * fraction
    hypothesis.assume(later < expected)
    assert next_time(expression, zone, later) == expected
