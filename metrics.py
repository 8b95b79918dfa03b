"""What GET /metrics answers: the service's metrics in the Prometheus text format (web.py guards the endpoint).

A scrape costs O(users), never O(pings): one row per configured user, whose counters the store keeps
as pings and alerts are recorded, and the outbox counted along its indexes. prometheus-client's
registry formats the scheduler's histogram and deliveries counter and the outbox gauge; the four
per-user families, 10 000 lines each at 10 000 users, are written here, each user's lines kept from one
scrape to the next while its row does not change, because prometheus-client formats about 5 µs a sample, which
alone would be 200 ms at that size. Tests parse the whole answer with prometheus-client's own parser.
"""

from collections.abc import Callable, Iterator
from itertools import chain

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from rules import condition_at, is_up
from store_contract import StoreContract

# The classic text format, which every Prometheus reads; generate_latest writes it by default.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_HELP = {
    "ping_listener_up": (
        "gauge",
        "1 if the user is up or not monitored; 0 while it is down (late, failed or past its max_runtime),"
        " alerted, snoozed or suppressed alike.",
    ),
    "ping_listener_last_ping_timestamp_seconds": (
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
        # username -> its last ping and counters at the last scrape, and its lines then (_user_lines); rebuilt
        # from the users of each scrape, so that a user whose row did not change is not written again.
        self._lines: dict[str, tuple[tuple[float | None, int, int], tuple[str, str, str, str, str]]] = {}

    def scrape(self) -> bytes:
        """Every metric, in the Prometheus text format (CONTENT_TYPE)."""
        now = self._clock()
        rows = self._store.user_counts(now)
        cached = self._lines
        self._lines = kept = {}
        # One pass over the rows, one list of lines per family.
        up, last_ping, pings, alerts = families = [[_header(name)] for name in _HELP]
        for username, deadline, seen, count, alerted, scheduled in rows:
            values = (seen, count, alerted)
            known = cached.get(username)
            if known is None or known[0] != values:
                known = (values, _user_lines(username, *values))
            kept[username] = known
            lines = known[1]
            if scheduled is not None:
                deadline = condition_at(scheduled, now)
            up.append(lines[0] if is_up(deadline, now) else lines[1])
            if seen is not None:
                last_ping.append(lines[2])
            pings.append(lines[3])
            alerts.append(lines[4])
        text = "".join(chain.from_iterable(families))
        return text.encode() + generate_latest(self._registry)


def _user_lines(username: str, last_ping: float | None, pings: int, alerts: int) -> tuple[str, str, str, str, str]:
    """A user's samples: its ping_listener_up line when up and when down (rules.is_up), then its last ping's (if
    any), pings' and alerts' lines."""
    label = _label_set(username)
    return (
        f"ping_listener_up{label} 1.0\n",
        f"ping_listener_up{label} 0.0\n",
        f"ping_listener_last_ping_timestamp_seconds{label} {last_ping!r}\n",
        f"ping_listener_pings_total{label} {pings}.0\n",
        f"ping_listener_alerts_total{label} {alerts}.0\n",
    )


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
