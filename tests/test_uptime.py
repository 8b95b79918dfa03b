"""uptime.py's promises, as properties over random outages and unknown spans, checked against a second-by-second
count of the same whole-second intervals."""

import hypothesis
import hypothesis.strategies as st
import pytest

import uptime

HORIZON = 200
INTERVALS = st.lists(st.tuples(st.integers(0, HORIZON), st.integers(0, HORIZON)).map(sorted).map(tuple), max_size=8)
OUTAGES = st.lists(
    st.tuples(st.integers(0, HORIZON), st.one_of(st.none(), st.integers(0, HORIZON))).filter(
        lambda outage: outage[1] is None or outage[1] >= outage[0]
    ),
    max_size=8,
)
WINDOWS = st.tuples(st.integers(0, HORIZON), st.integers(0, HORIZON)).map(sorted)


def seconds(intervals):
    """The whole seconds the intervals cover, each second s standing for [s, s + 1)."""
    return {second for start, end in intervals for second in range(start, end)}


@hypothesis.given(OUTAGES, st.integers(0, HORIZON))
def test_down_time_is_each_outage_from_its_start_until_its_success_or_now(outages, now):
    down = uptime.down_intervals(outages, now)
    expected = seconds((start, now if end is None else min(end, now)) for start, end in outages)
    assert seconds((int(low), int(high)) for low, high in down) == expected
    assert all(high > low for low, high in down)
    assert all(previous[1] < following[0] for previous, following in zip(down, down[1:], strict=False))


@hypothesis.given(OUTAGES, INTERVALS, WINDOWS, st.integers(0, HORIZON))
def test_uptime_is_the_share_of_known_seconds_without_an_outage(outages, unknown, window, now):
    start, end = window
    down = uptime.down_intervals(outages, now)
    fraction = uptime.uptime(down, uptime.merged(unknown), start, end)
    known = set(range(start, end)) - seconds(unknown)
    if not known:
        assert fraction is None
        return
    down_seconds = known & seconds((int(low), int(high)) for low, high in down)
    assert fraction == pytest.approx(1 - len(down_seconds) / len(known), abs=1e-9)
    assert 0.0 <= fraction <= 1.0


@hypothesis.given(OUTAGES, WINDOWS, st.integers(0, HORIZON))
def test_the_services_downtime_over_every_outage_leaves_the_device_fully_up(outages, window, now):
    start, end = window
    down = uptime.down_intervals(outages, now)
    rest = uptime.uptime(down, down, start, end)
    assert rest is None or rest == 1.0


@hypothesis.given(OUTAGES, INTERVALS, st.integers(0, HORIZON), st.integers(0, HORIZON), st.integers(0, HORIZON))
def test_down_time_adds_up_over_consecutive_windows(outages, unknown, a, b, c):
    a, b, c = sorted((a, b, c))
    down = uptime.down_intervals(outages, HORIZON)
    whole = uptime.overlap(down, a, c)
    assert abs(whole - uptime.overlap(down, a, b) - uptime.overlap(down, b, c)) < 1e-9
    found = uptime.pieces(down, a, c)
    assert all(a <= low < high <= c for low, high in found)
    assert abs(sum(high - low for low, high in found) - whole) < 1e-9


def test_no_outage_is_fully_up_and_an_outage_all_along_is_fully_down():
    assert uptime.uptime([], [], 0, 100) == 1.0
    assert uptime.uptime(uptime.down_intervals([(0, None)], 100), [], 0, 100) == 0.0
    assert uptime.uptime(uptime.down_intervals([(25, 50)], 100), [(0, 50)], 0, 100) == 1.0
    assert uptime.uptime(uptime.down_intervals([(50, 75)], 100), [(0, 50)], 0, 100) == 0.5
    assert uptime.uptime([], [(0, 100)], 0, 100) is None


@hypothesis.given(OUTAGES, INTERVALS, st.lists(st.integers(0, HORIZON), min_size=2, max_size=6, unique=True))
def test_daily_is_uptime_of_each_span(outages, unknown, bounds):
    bounds = sorted(bounds)
    down = uptime.down_intervals(outages, HORIZON)
    merged_unknown = uptime.merged(unknown)
    expected = [uptime.uptime(down, merged_unknown, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    found = uptime.daily(down, merged_unknown, bounds)
    assert [f is None for f in found] == [e is None for e in expected]
    assert [f for f in found if f is not None] == pytest.approx([e for e in expected if e is not None], abs=1e-9)


@hypothesis.given(INTERVALS)
@hypothesis.example([(0, 5), (7, 7), (9, 12)])
def test_the_services_downtime_is_every_second_between_its_first_and_last_starts_in_no_run(runs):
    found = uptime.downtime(runs)
    if not runs:
        assert found == []
        return
    first, last = min(start for start, _ in runs), max(start for start, _ in runs)
    expected = {second for second in range(first, last) if not any(a <= second < b for a, b in runs)}
    assert seconds((int(low), int(high)) for low, high in found) == expected
    assert found == uptime.merged(found)
