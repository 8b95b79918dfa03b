import pytest

from localtime import duration_in_words, every


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
