"""Uptime: how much of a span of time a device was up, from its outages as its alerts called them.

Pure functions of the intervals and times they are given: no clock, no I/O. A device is *down* during an
alerted outage, from the moment the condition began (the time its alerts name) until the first success after
it (store.outages_since reads them); it is *up* the rest of the time that is *known*. Time before anything
was known of it, and the service's own downtime, is *unknown*: it counts neither way, so a fraction is
up / (up + down). The work grows with the number of outages, never with the number of pings.
"""

import bisect
from collections.abc import Iterable, Sequence

# The spans a status page reports, in seconds, by the name its JSON gives each.
DAY = 86400.0
SPANS = {"24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY, "90d": 90 * DAY}
HISTORY_DAYS = 90

Interval = tuple[float, float]


def merged(intervals: Iterable[Interval]) -> list[Interval]:
    """`intervals` (start, end) as disjoint intervals in order: overlapping or touching ones joined, empty ones
    dropped."""
    result: list[Interval] = []
    for start, end in sorted(interval for interval in intervals if interval[1] > interval[0]):
        if result and start <= result[-1][1]:
            if end > result[-1][1]:
                result[-1] = (result[-1][0], end)
        else:
            result.append((start, end))
    return result


def down_intervals(outages: Iterable[tuple[float, float | None]], now: float) -> list[Interval]:
    """The merged intervals during which a device was down up to `now`, from its outages as (down at, up at or
    None while it is still down)."""
    return merged((down_at, now if up_at is None else min(up_at, now)) for down_at, up_at in outages)


def overlap(intervals: Sequence[Interval], start: float, end: float) -> float:
    """How long the merged `intervals` cover of [start, end): a binary search, then the intervals in it."""
    if end <= start:
        return 0.0
    first = bisect.bisect_right(intervals, (start, float("inf"))) - 1
    total = 0.0
    for low, high in intervals[max(first, 0) :]:
        if low >= end:
            break
        total += max(0.0, min(high, end) - max(low, start))
    return total


def pieces(intervals: Sequence[Interval], start: float, end: float) -> list[Interval]:
    """The parts of the merged `intervals` within [start, end), in order."""
    first = max(bisect.bisect_right(intervals, (start, float("inf"))) - 1, 0)
    found = []
    for low, high in intervals[first:]:
        if low >= end:
            break
        if min(high, end) > max(low, start):
            found.append((max(low, start), min(high, end)))
    return found


def downtime(runs: Iterable[Interval]) -> list[Interval]:
    """The service's own downtime from its `runs` (started at, last seen running at): the gaps between them, in
    merged. The last run lasts until now (the service is running), and before its first nothing is known. A run
    not yet seen since its start counts too: it is where the gap before it ends."""
    gaps = []
    ordered = sorted(runs)
    end = ordered[0][1] if ordered else 0.0
    for start, seen in ordered[1:]:
        if start > end:
            gaps.append((end, start))
        end = max(end, seen)
    return merged(gaps)


def uptime(down: Sequence[Interval], unknown: Sequence[Interval], start: float, end: float) -> float | None:
    """The share of the known time of [start, end) during which the device was up, from 0.0 to 1.0; None if none
    of it is known.

    `down` and `unknown` are merged intervals (merged()): down time that is also unknown counts as unknown.
    """
    known = (end - start) - overlap(unknown, start, end)
    if known <= 0:
        return None
    down_known = sum(high - low - overlap(unknown, low, high) for low, high in pieces(down, start, end))
    return min(1.0, max(0.0, 1.0 - down_known / known))


def daily(down: Sequence[Interval], unknown: Sequence[Interval], bounds: Sequence[float]) -> list[float | None]:
    """uptime() of each span between consecutive `bounds` (ascending), in one pass over the intervals in them:
    the work grows with the intervals and the spans they touch; the others are 1.0 at once."""
    first, last = bounds[0], bounds[-1]
    unknown_in = pieces(unknown, first, last)
    unknown_by_span = _per_span(unknown_in, bounds)
    down_by_span = _per_span(_minus(pieces(down, first, last), unknown_in), bounds)
    result: list[float | None] = [1.0] * (len(bounds) - 1)
    for index in unknown_by_span.keys() | down_by_span.keys():
        known = bounds[index + 1] - bounds[index] - unknown_by_span.get(index, 0.0)
        down_known = down_by_span.get(index, 0.0)
        result[index] = None if known <= 0 else min(1.0, max(0.0, 1.0 - down_known / known))
    return result


def _minus(intervals: Sequence[Interval], removed: Sequence[Interval]) -> list[Interval]:
    """The parts of the merged `intervals` outside the merged `removed`."""
    result = []
    for low, high in intervals:
        for cut_low, cut_high in pieces(removed, low, high):
            if cut_low > low:
                result.append((low, cut_low))
            low = cut_high
        if high > low:
            result.append((low, high))
    return result


def _per_span(intervals: Sequence[Interval], bounds: Sequence[float]) -> dict[int, float]:
    """How long the disjoint `intervals` (within bounds[0] to bounds[-1]) cover of each span between `bounds` they
    touch, by the span's index."""
    covered: dict[int, float] = {}
    for low, high in intervals:
        index = max(bisect.bisect_right(bounds, low) - 1, 0)
        while index < len(bounds) - 1 and low < high:
            end = min(high, bounds[index + 1])
            covered[index] = covered.get(index, 0.0) + end - low
            low = end
            index += 1
    return covered
