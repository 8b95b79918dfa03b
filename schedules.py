"""Cron schedules in a time zone: whether an expression and a zone are usable, and when a job is next expected.

Pure functions of their arguments (local_zone_name() also reads the environment and /etc/localtime):
no clock, no I/O beyond the zone database. cronsim (written by the Healthchecks project for exactly
this) parses and evaluates the expressions; it follows Debian cron across daylight-saving changes:

- a job at a fixed time (or a granularity coarser than an hour) whose wall-clock time falls in the
  hour skipped when clocks go forward runs once, right after the gap (02:30 -> 03:00 in Paris);
- such a job whose time falls in the hour repeated when clocks go back runs once, at its first
  occurrence (the earlier, summer-time 02:30);
- a job with a wildcard minute or hour (`0 * * * *`, `*/15 * * * *`) runs on elapsed time, so it
  runs in both repeated hours and not in the skipped one.
"""

import functools
import os
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

# The fields of the expressions accepted: cronsim also takes a sixth, seconds, which cron does not have.
FIELDS = 5
_LOCALTIME = Path("/etc/localtime")
# next_time's answers kept: after a start every user's last contact is the same moment, so users that
# share a schedule share one evaluation; and an alert's email asks again what its decision just did.
NEXT_TIMES_KEPT = 4096


def expression_problem(expression: object) -> str | None:
    """Why `expression` is not a usable 5-field cron expression (a short phrase), or None if it is one.

    The usual syntax: numbers, `*`, ranges, lists, `*/n` steps, names of months and days (JAN, MON),
    `L` for the last day of the month and `#` for the n-th weekday, as cronsim supports them.
    """
    if not isinstance(expression, str) or len(expression.split()) != FIELDS:
        return f"must be a cron expression of {FIELDS} fields (minute hour day-of-month month day-of-week)"
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as error:
        return f"is not a valid cron expression ({str(error).lower()})"
    return None


def zone_problem(name: object) -> str | None:
    """Why `name` is not an IANA time zone name known here (a short phrase), or None if it is one."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\x00" in name:
        return "must be an IANA time zone name such as Europe/Paris"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return "is not a time zone known here (an IANA name such as Europe/Paris or America/New_York)"
    return None


def local_zone_name() -> str | None:
    """The IANA name of this process's local time zone: TZ if it holds one, else where /etc/localtime points.

    None if neither names a zone (TZ set to a POSIX rule such as "CET-1CEST", or no /etc/localtime).
    """
    configured = os.environ.get("TZ")
    if configured is not None:
        name = configured.removeprefix(":")
        return name if zone_problem(name) is None else None
    try:
        target = _LOCALTIME.resolve(strict=True)
    except OSError:
        return None
    parts = target.parts
    # /usr/share/zoneinfo/Europe/Paris -> Europe/Paris: the longest tail that is a zone's name.
    for start in range(len(parts) - 1, 0, -1):
        if parts[start - 1] == "zoneinfo":
            name = "/".join(parts[start:])
            return name if zone_problem(name) is None else None
    return None


@functools.lru_cache(maxsize=NEXT_TIMES_KEPT)
def next_time(expression: str, zone: str, after: float) -> float | None:
    """The first time (epoch seconds) strictly after `after` at which `expression` fires in `zone`.

    None if it never fires again (cronsim looks 50 years ahead). `expression` and `zone` must be valid
    (expression_problem and zone_problem say None): this is the rule that a scheduled user's deadline,
    storm control's fresh period and the pages' next expected time all use.
    """
    start = datetime.fromtimestamp(after, ZoneInfo(zone))
    for fire in CronSim(expression, start):
        at = fire.timestamp()
        # cronsim walks a fixed-time job in wall-clock time: from a start in the second pass of a repeated
        # hour, it can name that hour's first pass, which is earlier; that run has gone, the next one counts.
        if at > after:
            return at
    return None
