"""Times and durations for people, in the local time zone (TZ), and the query that names a local day.

The `/logs?username=NAME&year=YY&month=MM&day=DD` query is built here for alert emails (logs_link)
and parsed here for the /logs endpoint (query_fields, local_day_bounds), so the two cannot drift.
Pure functions of their arguments and the process's time zone: no clock, no I/O.
"""

import datetime
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from zoneinfo import ZoneInfo

MAX_QUERY_FIELDS = 20
# The units a duration is written in, largest first; what is left below a minute is seconds.
_DURATION_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60))
_TWO_DIGITS = tuple(f"{number:02d}" for number in range(60))


class QueryError(ValueError):
    """A query string that cannot be understood; the message names the problem, fit for a 400 answer."""


def format_local_time(epoch: float) -> str:
    """`epoch` as a local date and time with its zone, for people: 2026-11-24 14:03:05 CET."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def format_email_time(epoch: float, zone: str | None) -> str:
    """`epoch` as an email shows it, in the IANA zone `zone` (None: the local one), the zone left to
    zone_sentence(): 2026-11-24 14:03:05."""
    if zone is None:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    return datetime.datetime.fromtimestamp(epoch, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


def format_email_clock(epoch: float, zone: str | None) -> str:
    """`epoch`'s hour and minute in the IANA zone `zone` (None: the local one): 02:30."""
    return format_email_time(epoch, zone)[11:16]


def zone_sentence(epoch: float, zone: str | None) -> str:
    """The one sentence of an email that names the zone of its times (format_email_time's), as at `epoch`:
    "All times are in CET (Europe/Paris)." for a zone ("All times are in UTC." where the abbreviation is the
    zone's name), else "All times are in CET, the service's time zone."."""
    if zone is None:
        return f"All times are in {time.strftime('%Z', time.localtime(epoch))}, the service's time zone."
    abbreviation = datetime.datetime.fromtimestamp(epoch, ZoneInfo(zone)).strftime("%Z")
    return f"All times are in {abbreviation}." if abbreviation == zone else f"All times are in {abbreviation} ({zone})."


def format_ping_time(epoch: float) -> str:
    """`epoch` as a ping's answer shows it, in local time: 26/11/24 14:03:05."""
    return time.strftime("%y/%m/%d %H:%M:%S", time.localtime(epoch))


def duration_in_words(seconds: float) -> str:
    """`seconds` written for people, exactly: "2 minutes", "1 hour 30 minutes", "0.5 seconds", "14 days"."""
    parts = []
    rest = seconds
    for name, size in _DURATION_UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count:.0f} {name}" + ("s" if count != 1 else ""))
    if rest or not parts:
        # Ten significant digits: tidies 0.30000000000000004 to 0.3 and never turns to "1.2e+06".
        parts.append(f"{rest:.10g} second" + ("s" if rest != 1 else ""))
    return " ".join(parts)


def run_length(seconds: float) -> str:
    """How long a run or an outage lasted, for people, to the second: "under a second", "1 hour 2 minutes 5 seconds"."""
    return "under a second" if seconds < 1 else duration_in_words(round(seconds))


def short_duration(seconds: float) -> str:
    """`seconds` as the pages write a duration (static/common.js's duration() writes the same): "0.031 s",
    "42 s", "1 min 35 s", "25 min", "1 h", "2 h 5 min", "3 days"."""
    if seconds < 60:
        return f"{round(seconds, 3 if seconds < 10 else None):g} s"
    minutes = math.floor(seconds / 60)
    rest = round(seconds - minutes * 60)
    if minutes < 10 and 0 < rest < 60:
        return f"{minutes} min {rest} s"
    if minutes < 60:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60} min" if minutes % 60 else f"{hours} h"
    return f"{hours // 24} days"


def every(seconds: float) -> str:
    """How often something that repeats every `seconds` does, in words: "every hour", "every 2 minutes"."""
    words = duration_in_words(seconds)
    # "every 1 hour" reads oddly; a single unit of one needs no number.
    return "every " + (words.removeprefix("1 ") if re.fullmatch(r"1 [a-z]+", words) else words)


def local_clock_times(times: Iterable[float]) -> list[str]:
    """Each epoch time in `times` as a local "%H:%M:%S".

    A busy day holds 86 400 pings, and strftime(localtime()) for each would be most of the cost
    of /logs: the "%H:%M:" part is computed once a minute instead. UTC offsets have been whole
    minutes everywhere since 1972; where one is not, each time is formatted on its own.
    """
    clock_times = []
    minute = prefix = None
    for at in times:
        second = math.floor(at)
        if second // 60 != minute:
            minute = second // 60
            minute_start = time.localtime(minute * 60)
            prefix = time.strftime("%H:%M:", minute_start) if minute_start.tm_sec == 0 else None
        if prefix is None:
            clock_times.append(time.strftime("%H:%M:%S", time.localtime(at)))
        else:
            clock_times.append(prefix + _TWO_DIGITS[second % 60])
    return clock_times


def local_clock_writer() -> Callable[[float], str]:
    """A function that writes epochs exactly as local_clock_times does, for a caller that writes them one at a
    time: each minute's "%H:%M:" is computed once."""
    minutes: dict[int, str | None] = {}

    def write(epoch: float) -> str:
        second = math.floor(epoch)
        minute = second // 60
        if minute not in minutes:
            start = time.localtime(minute * 60)
            minutes[minute] = time.strftime("%H:%M:", start) if start.tm_sec == 0 else None
        prefix = minutes[minute]
        if prefix is None:
            return time.strftime("%H:%M:%S", time.localtime(epoch))
        return prefix + _TWO_DIGITS[second % 60]

    return write


def local_time_writer() -> Callable[[float], str]:
    """A function that writes epochs exactly as format_local_time does, made for writing many at once.

    The overview writes two times for each of thousands of users: as in local_clock_times, each
    minute's date, hour, minute and zone are computed once, and only the seconds for each time.
    """
    minutes: dict[int, tuple[str, str] | None] = {}

    def write(epoch: float) -> str:
        second = math.floor(epoch)
        minute = second // 60
        if minute not in minutes:
            start = time.localtime(minute * 60)
            minutes[minute] = (
                (time.strftime("%Y-%m-%d %H:%M:", start), time.strftime(" %Z", start)) if start.tm_sec == 0 else None
            )
        parts = minutes[minute]
        if parts is None:
            return format_local_time(epoch)
        return parts[0] + _TWO_DIGITS[second % 60] + parts[1]

    return write


def logs_link(server_root: str, username: str, epoch: float) -> str:
    """The link to `username`'s pings on the local day of `epoch`: {server_root}/logs?username=...&year=YY&..."""
    day = time.localtime(epoch)
    # Only the username needs encoding; urlencode() over all four fields would cost most of the alert's
    # composition, which runs once per late user in the absence listener's step.
    return (
        f"{server_root}/logs?username={urllib.parse.quote_plus(username)}"
        f"&year={day.tm_year % 100:02d}&month={day.tm_mon:02d}&day={day.tm_mday:02d}"
    )


def query_fields(query_string: str) -> dict[str, str]:
    """The query string's fields (first value of each), decoded as UTF-8; QueryError if it is not.

    What urllib.parse.parse_qsl(keep_blank_values=True, errors="strict") reads, with at most
    MAX_QUERY_FIELDS fields. A ping's query has nothing to decode: it is split here without
    parse_qsl's generic work (a third of a ping's parsing time), and tests/test_localtime.py checks
    that both read every query alike.
    """
    if "%" in query_string or "+" in query_string:
        return _decoded_query_fields(query_string)
    if query_string.count("&") >= MAX_QUERY_FIELDS:
        raise QueryError(f"too many query parameters (at most {MAX_QUERY_FIELDS})")
    fields: dict[str, str] = {}
    for field in query_string.split("&"):
        if field:
            name, _, value = field.partition("=")
            fields.setdefault(name, value)
    return fields


def _decoded_query_fields(query_string: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            query_string,
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except UnicodeDecodeError:
        raise QueryError("query string is not valid UTF-8") from None
    except ValueError:
        raise QueryError(f"too many query parameters (at most {MAX_QUERY_FIELDS})") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


def local_day_bounds(query: Mapping[str, str]) -> tuple[float, float]:
    """Epoch bounds [start, end) of the local date named by year, month and day; QueryError if invalid.

    `year` is 2 digits (26 is 2026) or 4; `month` and `day` are 1 or 2 digits.
    """
    parts = {}
    for name, lengths in (("year", (2, 4)), ("month", (1, 2)), ("day", (1, 2))):
        value = query.get(name)
        if not value:
            raise QueryError(f"missing {name}")
        if not (value.isascii() and value.isdigit() and len(value) in lengths):
            expected = " or ".join(map(str, lengths)) + " digits"
            raise QueryError(f"invalid {name} {value[:20]!r}: expected {expected}")
        parts[name] = int(value)
    year = parts["year"] + 2000 if len(query["year"]) == 2 else parts["year"]
    try:
        day = datetime.date(year, parts["month"], parts["day"])
        start = time.mktime((day.year, day.month, day.day, 0, 0, 0, 0, 0, -1))
        following = day + datetime.timedelta(days=1)
        end = time.mktime((following.year, following.month, following.day, 0, 0, 0, 0, 0, -1))
    except (ValueError, OverflowError):
        raise QueryError(f"invalid date {year:04d}-{parts['month']:02d}-{parts['day']:02d}") from None
    return start, end
