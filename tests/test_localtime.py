import os
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from localtime import (
    MAX_QUERY_FIELDS,
    QueryError,
    duration_in_words,
    every,
    local_clock_times,
    local_clock_writer,
    query_fields,
    run_length,
    short_duration,
)


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "0 seconds"),
        (0.5, "0.5 seconds"),
        (1, "1 second"),
        (45, "45 seconds"),
        (60, "1 minute"),
        (120, "2 minutes"),
        (90.5, "1 minute 30.5 seconds"),
        (3600, "1 hour"),
        (5400, "1 hour 30 minutes"),
        (3661, "1 hour 1 minute 1 second"),
        (86400, "1 day"),
        (1_209_600, "14 days"),
        (0.1 + 0.2, "0.3 seconds"),
        (1e9, "11574 days 1 hour 46 minutes 40 seconds"),
    ],
)
def test_durations_are_written_in_words_exactly(seconds, words):
    assert duration_in_words(seconds) == words


@pytest.mark.parametrize(
    ("seconds", "written"),
    [
        (0.031, "0.031 s"),
        (0.5, "0.5 s"),
        (42.4, "42 s"),
        (95, "1 min 35 s"),
        (1500, "25 min"),
        (3600, "1 h"),
        (7500, "2 h 5 min"),
        (172800, "2 days"),
    ],
)
def test_the_pages_duration_format_is_short_and_the_same_as_their_scripts(seconds, written):
    assert short_duration(seconds) == written


def test_a_run_or_outage_under_a_second_is_under_a_second():
    assert (run_length(0.031), run_length(0.999), run_length(1.4)) == ("under a second", "under a second", "1 second")


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (3600, "every hour"),
        (60, "every minute"),
        (1, "every second"),
        (600, "every 10 minutes"),
        (5400, "every 1 hour 30 minutes"),
    ],
)
def test_a_repeat_of_one_unit_needs_no_number(seconds, words):
    assert every(seconds) == words


# Queries as clients write them: separators, escapes (valid, truncated and not UTF-8), pluses, raw non-ASCII.
QUERY_PIECES = st.sampled_from(["%", "%2", "%41", "%e9", "%c3%a9", "+", "a", "b", "username", "é", ";", ""])
QUERY_FIELD = st.tuples(QUERY_PIECES, st.sampled_from(["=", "", "=="]), QUERY_PIECES).map("".join)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.lists(QUERY_FIELD, max_size=25).map("&".join))
@example("username=pi&username=other&status=fail")
def test_query_fields_reads_every_query_as_parse_qsl_does(query):
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:  # UnicodeDecodeError included
        with pytest.raises(QueryError):
            query_fields(query)
        return
    assert query_fields(query) == {name: value for name, value in reversed(pairs)}


def test_a_query_without_escapes_may_have_at_most_the_allowed_fields():
    assert len(query_fields("&".join(f"f{n}=1" for n in range(MAX_QUERY_FIELDS)))) == MAX_QUERY_FIELDS
    with pytest.raises(QueryError, match="too many query parameters"):
        query_fields("&".join(f"f{n}=1" for n in range(MAX_QUERY_FIELDS + 1)))


@pytest.fixture
def zone():
    """Sets the process's zone for the test (TZ), then back to the tests' own."""

    def set_zone(name):
        os.environ["TZ"] = name
        time.tzset()

    yield set_zone
    set_zone("Europe/Paris")


# Paris around a daylight saving change; Amsterdam before 1937, 19 minutes 32 seconds ahead of UTC.
@pytest.mark.parametrize(("name", "around"), [("Europe/Paris", 1_792_890_000), ("Europe/Amsterdam", -1_200_000_000)])
# The zone is set again by each example: the fixture only restores it once.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offsets=st.lists(st.floats(min_value=-7_200, max_value=7_200), max_size=50))
def test_the_clock_writer_writes_times_one_at_a_time_as_local_clock_times_does(zone, name, around, offsets):
    zone(name)
    times = sorted(around + offset for offset in offsets)
    write = local_clock_writer()
    assert [write(at) for at in times] == local_clock_times(times)
