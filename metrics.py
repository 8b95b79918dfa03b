"""What GET /metrics answers: the service's metrics in the Prometheus text format (web.py guards the endpoint).

A scrape costs O(users), never O(pings): one row per configured user, whose counters the store keeps
as pings and alerts are recorded, and the outbox counted along its indexes. prometheus-client's
registry formats the histogram and the outbox gauge; the four per-user families, 10 000 lines each
at 10 000 users, are written here with each user's label escaped once and kept, because
prometheus-client formats about 5 µs a sample, which alone would be 200 ms at that size. Tests parse
the whole answer with prometheus-client's own parser.
"""

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from rules import is_up
from store import Store, UserCounts

# The classic text format, which every Prometheus reads; generate_latest writes it by default.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# name, type, help, sample value of a user's row at `now` (None: no sample for that user).
_PER_USER: tuple[tuple[str, str, str, Callable[[UserCounts, float], float | None]], ...] = (
    (
        "ping_listener_up",
        "gauge",
        "1 if the user is not late (or not monitored), 0 while it is late, alerted or not.",
        lambda row, now: 1.0 if is_up(row.user, now) else 0.0,
    ),
    (
        "ping_listener_last_ping_timestamp_seconds",
        "gauge",
        "When the user's last ping was recorded, UTC epoch seconds (no sample before its first ping).",
        lambda row, now: row.user.last_ping,
    ),
    (
        "ping_listener_pings_total",
        "counter",
        "Pings recorded for the user since it was first configured (retention does not lower it).",
        lambda row, now: float(row.pings),
    ),
    (
        "ping_listener_alerts_total",
        "counter",
        "Alerts decided about the user since it was first configured (one per silence and email_frequency).",
        lambda row, now: float(row.alerts),
    ),
)


class Exporter:
    """Scrapes of one store: the per-user families, the outbox by status and the absence step histogram."""

    def __init__(self, store: Store, clock: Callable[[], float], absence_step_seconds: Histogram) -> None:
        """Metrics of `store` at `clock()` (epoch seconds), with the scheduler's `absence_step_seconds`."""
        self._store = store
        self._clock = clock
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(absence_step_seconds)
        self._registry.register(_OutboxCollector(store))
        # username -> its escaped label set, e.g. {user="pi"}; rebuilt from the users of each scrape.
        self._labels: dict[str, str] = {}

    def scrape(self) -> bytes:
        """Every metric, in the Prometheus text format (CONTENT_TYPE)."""
        rows = self._store.user_counts()
        now = self._clock()
        labels = {
            row.user.username: self._labels.get(row.user.username) or _label_set(row.user.username) for row in rows
        }
        self._labels = labels
        lines = []
        for name, kind, help_text, value in _PER_USER:
            lines.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
            for row in rows:
                sample = value(row, now)
                if sample is not None:
                    lines.append(f"{name}{labels[row.user.username]} {sample!r}\n")
        return "".join(lines).encode() + generate_latest(self._registry)


def _label_set(username: str) -> str:
    # The text format's escapes for a label value: backslash, double quote and line feed.
    escaped = username.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{{user="{escaped}"}}'


class _OutboxCollector:
    """ping_listener_outbox_emails{status}, read from the store at each scrape."""

    def __init__(self, store: Store) -> None:
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
