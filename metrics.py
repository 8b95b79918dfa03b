"""What GET /metrics answers: the service's metrics in the Prometheus text format (web.py guards the endpoint).

A scrape costs O(users), never O(pings): one row per configured user, whose counters the store keeps
as pings and alerts are recorded, and the outbox counted along its indexes. prometheus-client's
registry formats the scheduler's histogram and deliveries counter and the outbox gauge; the four
per-user families, 10 000 lines each at 10 000 users, are written here. All of their text but the values
(the names, each user's escaped label set) is kept from one scrape to the next while the list of users does
not change, as a template of the answer; each value's text is kept too, and written again only when the
value changed (each column is compared with the last scrape's in C); a scrape fills the template in one
operation, which makes the answer and its only copy of 2 MB. Writing 40 000 lines in Python at each scrape
would cost more than reading them. Tests parse the whole answer with prometheus-client's own parser.
"""

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress, repeat
from operator import is_not, ne
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from rules import condition_at, is_up
from store_contract import StoreContract

# The classic text format, which every Prometheus reads; generate_latest writes it by default.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_LAST_PING = "ping_listener_last_ping_timestamp_seconds"
_HELP = {
    "ping_listener_up": (
        "gauge",
        "1 if the user is up or not monitored; 0 while it is down (late, failed or past its max_runtime),"
        " alerted, snoozed or suppressed alike.",
    ),
    _LAST_PING: (
        "gauge",
        "When the user's last ping was recorded, UTC epoch seconds (no sample before its first ping).",
    ),
    "ping_listener_pings_total": (
        "counter",
        "Signals recorded for the user since it was first configured: successes (pings, exit code 0), starts and"
        " failures (fail, exit codes 1-255), not log signals (retention does not lower it).",
    ),
    "ping_listener_alerts_total": (
        "counter",
        "Alerts decided about the user since it was first configured (one per silence and email_frequency).",
    ),
}


class Exporter:
    """Scrapes of one store: the per-user families, the outbox by status, and the scheduler's own metrics."""

    def __init__(self, store: StoreContract, clock: Callable[[], float], *scheduler_metrics: Collector) -> None:
        """Metrics of `store` at `clock()` (epoch seconds), with `scheduler_metrics` (the scheduler's
        absence_step_seconds histogram and deliveries counter)."""
        self._store = store
        self._clock = clock
        self._registry = CollectorRegistry(auto_describe=False)
        for collector in scheduler_metrics:
            self._registry.register(collector)
        self._registry.register(_OutboxCollector(store))
        # The families of the users of the last scrape, replaced when a scrape finds other users (a reload, a
        # check created or deleted by program) or the same ones in another order. One scrape at a time writes
        # its kept texts: two at once would each keep some of the other's.
        self._users = _UserFamilies(())
        self._users_lock = threading.Lock()

    def scrape(self) -> bytes:
        """Every metric, in the Prometheus text format (CONTENT_TYPE)."""
        now = self._clock()
        counts = self._store.user_counts(now)
        rest = generate_latest(self._registry)
        with self._users_lock:
            users = self._users
            if users.usernames != counts.usernames:
                self._users = users = _UserFamilies(counts.usernames)
            deadlines: Sequence[float | None] = counts.condition_at
            if counts.scheduled:
                deadlines = list(deadlines)
                for username, state in counts.scheduled.items():
                    # Read after the rows, a scheduled user may be one they do not have yet: the next scrape has it.
                    position = users.positions.get(username)
                    if position is not None:
                        deadlines[position] = condition_at(state, now)
            up = tuple(map(is_up, deadlines, repeat(now)))
            return users.answer(up, counts.last_ping, counts.pings, counts.alerts, rest)


class _UserFamilies:
    """The four per-user families of one list of users, in its order, as one template of the answer: its
    text with a %s for each value (and one for the rest of the answer), filled in one operation that makes
    the answer, the only copy of its 2 MB at 10 000 users."""

    def __init__(self, usernames: tuple[str, ...]) -> None:
        self.usernames = usernames
        self.positions = {username: position for position, username in enumerate(usernames)}
        # A % in a username is doubled: the values are the template's only conversions.
        self._label_sets = [_label_set(username).replace("%", "%%") for username in usernames]
        self._up = _Texts(len(usernames), _up_text)
        self._pings = _Texts(len(usernames), _count_text)
        self._alerts = _Texts(len(usernames), _count_text)
        # The users with a last ping, those with a line in the last ping's family (and the template).
        self._pinged: tuple[bool, ...] | None = None
        self._last_ping = _Texts(0, _float_text)
        self._template = b""

    def answer(
        self,
        up: Sequence[bool],
        last_pings: Sequence[float | None],
        pings: Sequence[int],
        alerts: Sequence[int],
        rest: bytes,
    ) -> bytes:
        """The families' text for these columns (one entry per user; rules.is_up; a last ping None has no
        sample), followed by `rest`."""
        pinged = tuple(map(is_not, last_pings, repeat(None)))
        if pinged != self._pinged:
            self._template = _template(self._label_sets, pinged)
            self._last_ping = _Texts(sum(pinged), _float_text)
            self._pinged = pinged
        return self._template % (
            *self._up.texts(up),
            *self._last_ping.texts(tuple(compress(last_pings, pinged))),
            *self._pings.texts(pings),
            *self._alerts.texts(alerts),
            rest,
        )


class _Texts:
    """The texts of a column of values, each written again only when its value differs from the last call's
    (most users have not pinged between two scrapes, and a float's repr is the dearest part of a scrape)."""

    def __init__(self, count: int, text: Callable[[Any], bytes]) -> None:
        """Texts of `count` values, each written by `text`."""
        self._text = text
        # None differs from every value: the first call writes each of them.
        self._values: Sequence[Any] = (None,) * count
        self._texts = [b""] * count

    def texts(self, values: Sequence[Any]) -> list[bytes]:
        """The texts of `values` (as many as the count given)."""
        texts, text = self._texts, self._text
        for position in compress(range(len(values)), map(ne, values, self._values)):
            texts[position] = text(values[position])
        self._values = values
        return texts


def _template(label_sets: Sequence[str], pinged: Iterable[bool]) -> bytes:
    """The per-user families for `label_sets` (% doubled) with a %s for each value, in the last ping's family
    only for the users `pinged`, then a %s for the rest of the answer."""
    families = [
        ("ping_listener_up", label_sets),
        (_LAST_PING, compress(label_sets, pinged)),
        ("ping_listener_pings_total", label_sets),
        ("ping_listener_alerts_total", label_sets),
    ]
    text = "".join(
        _header(name).replace("%", "%%") + "".join([f"{name}{labels} %s\n" for labels in sets])
        for name, sets in families
    )
    return (text + "%s").encode()


def _up_text(up: bool) -> bytes:
    return b"1.0" if up else b"0.0"


def _count_text(count: int) -> bytes:
    return b"%d.0" % count


def _float_text(value: float) -> bytes:
    return repr(value).encode()


def _header(name: str) -> str:
    kind, help_text = _HELP[name]
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


def _label_set(username: str) -> str:
    # The text format's escapes for a label value: backslash, double quote and line feed.
    escaped = username.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{{user="{escaped}"}}'


class _OutboxCollector:
    """ping_listener_outbox_emails{status}, read from the store at each scrape."""

    def __init__(self, store: StoreContract) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "ping_listener_outbox_emails",
            "Alert emails in the outbox by status: queued, sent, failed.",
            labels=["status"],
        )
        for status, count in self._store.outbox_counts().items():
            family.add_metric([status], count)
        yield family
