"""Public status pages and badges: what people without a password may see of the devices settings.json lists.

A page shows only the users its `status_pages` entry names, under the names it gives them: each one's state now,
its uptime over 24 hours to 90 days and day by day (uptime.py), and the outages of the last 90 days; a badge
sums the states of one user or of a tag's users. Nothing else of the service appears: no ping, body, email,
recipient, token, username the page renames, or other user.

Every answer is computed from one Snapshot of the store (the configured users, their outages of the last 90
days and their first pings), taken at most every CACHE_SECONDS, by a thread of its own while the last one
may still be used; a page's answers are kept with it. So a flood of requests costs the store one read every
CACHE_SECONDS whatever the number of readers, and a request but the first after a start or a reload never
waits for one.
"""

import hashlib
import hmac
import html
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import uptime
from config import LiveSettings, Settings, StatusPage
from localtime import duration_in_words, format_local_time, local_time_writer
from records import Outage, StoreError, UserState, is_paused
from rules import (
    ALERTED,
    FAILED,
    FLAPPING,
    LATE,
    MAINTENANCE as RULES_MAINTENANCE,
    SNOOZED,
    SUPPRESSED,
    condition,
    live_state,
)
from store_contract import StoreContract

log = logging.getLogger("ping_listener.status")

# How long a snapshot of the store, and the answers made from it, are used as they are; also the answers'
# Cache-Control max-age. Until STALE_SECONDS, the next one is taken by a thread of its own meanwhile: an answer
# is at most that much behind (and the time it takes to make the next).
CACHE_SECONDS = 10.0
STALE_SECONDS = 30.0
# The page reloads itself this often (a meta refresh: no script needed).
REFRESH_SECONDS = 60
# The states a status page shows. "maintenance" is shown for a user in a maintenance window (see docs).
UP, LATE_STATE, FAILED_STATE, SNOOZED_STATE, PAUSED, MAINTENANCE = (
    "up",
    "late",
    "failed",
    "snoozed",
    "paused",
    "maintenance",
)
# A badge's status, as Healthchecks names them, and the word and colour its SVG and shields.io answer show.
BADGE_UP, BADGE_GRACE, BADGE_DOWN = "up", "grace", "down"
BADGE_WORDS = {BADGE_UP: "up", BADGE_GRACE: "late", BADGE_DOWN: "down"}
BADGE_COLOURS = {BADGE_UP: "#4c1", BADGE_GRACE: "#dfb317", BADGE_DOWN: "#e05d44"}
SHIELDS_COLOURS = {BADGE_UP: "brightgreen", BADGE_GRACE: "yellow", BADGE_DOWN: "red"}
BADGE_SUFFIXES = (".svg", ".json", ".shields")


@dataclass(frozen=True)
class Snapshot:
    """What every status answer is made from, read from the store at `taken`: the configured users by name,
    their alerted outages of the last 90 days as down intervals by user id, and each one's first ping."""

    taken: float
    settings: Settings
    users: dict[str, UserState]
    down: dict[int, list[uptime.Interval]]
    first_pings: dict[int, float | None]
    # The service's own downtime (uptime.downtime), unknown for every device.
    downtime: list[uptime.Interval]
    # Each tag -> the users carrying it, for badges.
    tags: dict[str, list[str]]
    # What was made from it: each page's data (slug -> page_data()) and answers ((slug, form) -> (body, ETag)).
    data: dict[str, dict[str, object]] = field(default_factory=dict)
    answers: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Answer:
    """A status or badge answer: its body, content type and ETag (a digest of the body)."""

    body: bytes
    content_type: str
    etag: str


class StatusPages:
    """The status pages' and badges' answers over `store` and the settings in force. Safe to use from any number
    of threads.

    Answers come from a Snapshot. One at most CACHE_SECONDS old is used as it is; an older one, up to
    STALE_SECONDS, is used while a thread takes the next one and makes every page's answers from it, so that no
    request waits for that; an older one still, or one of other settings (a reload), or none, is replaced
    before answering. One snapshot is taken at a time.
    """

    def __init__(self, store: StoreContract, settings: LiveSettings) -> None:
        """Answer from `store` with the settings in force in `settings`."""
        self._store = store
        self._settings = settings
        self._taking = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._refreshing = threading.Lock()

    def page(self, slug: str, form: str, now: float) -> Answer | None:
        """The status page `slug` as "html" or "json", as of a snapshot taken at most STALE_SECONDS before `now`;
        None if no page has that slug."""
        snapshot = self._current(now)
        page = snapshot.settings.status_pages.get(slug)
        if page is None:
            return None
        body, etag = _page_answer(snapshot, slug, page, form)
        content_type = "text/html; charset=utf-8" if form == "html" else "application/json"
        return Answer(body, content_type, etag)

    def badge(self, key: str, name: str, form: str, now: float) -> Answer | None:
        """The badge of the user or tag `name` as "svg", "json" or "shields" at `now`; None if `key` is not the
        badge_key (or there is none) or no configured user has that name or tag."""
        settings = self._settings.current
        if settings.badge_key is None or not _same(key, settings.badge_key):
            return None
        snapshot = self._current(now)
        covered = [name] if name in snapshot.settings.users else snapshot.tags.get(name, [])
        states = [snapshot.users[user] for user in covered if user in snapshot.users]
        if not states:
            return None
        status, grace, down = badge_status(states, now)
        if form == "svg":
            body = badge_svg(name, status).encode("utf-8")
            content_type = "image/svg+xml"
        else:
            data: dict[str, object] = (
                {"status": status, "total": len(states), "grace": grace, "down": down}
                if form == "json"
                else shields(name, status)
            )
            body = json.dumps(data, separators=(",", ":")).encode("utf-8")
            content_type = "application/json"
        return Answer(body, content_type, _etag(body))

    def _current(self, now: float) -> Snapshot:
        """The snapshot to answer from at `now` (see the class)."""
        settings = self._settings.current
        snapshot = self._snapshot
        age = None if snapshot is None or snapshot.settings is not settings else now - snapshot.taken
        if snapshot is not None and age is not None and 0 <= age < STALE_SECONDS:
            if age >= CACHE_SECONDS and self._refreshing.acquire(blocking=False):
                threading.Thread(target=self._refresh, args=(settings, now), name="status-pages", daemon=True).start()
            return snapshot
        with self._taking:
            snapshot = self._snapshot
            if snapshot is None or snapshot.settings is not settings or not 0 <= now - snapshot.taken < STALE_SECONDS:
                snapshot = self._snapshot = take_snapshot(self._store, settings, now)
            return snapshot

    def _refresh(self, settings: Settings, now: float) -> None:
        """Take the next snapshot and make every page's answers from it, then put it in use."""
        try:
            with self._taking:
                snapshot = take_snapshot(self._store, settings, now)
                for slug, page in settings.status_pages.items():
                    for form in ("html", "json"):
                        _page_answer(snapshot, slug, page, form)
                self._snapshot = snapshot
        except StoreError as error:
            log.error("status pages: cannot read the store, answering from the last snapshot: %s", error)
        finally:
            self._refreshing.release()


def _page_answer(snapshot: Snapshot, slug: str, page: StatusPage, form: str) -> tuple[bytes, str]:
    """The body and ETag of the page `slug` as `form` from `snapshot`, made once and kept with it."""
    kept = snapshot.answers.get((slug, form))
    if kept is None:
        # As of the snapshot's time, so that a page's HTML, JSON and ETag agree until the next one.
        data = snapshot.data.get(slug)
        if data is None:
            data = snapshot.data.setdefault(slug, page_data(page, snapshot, snapshot.taken))
        text = render_page(data) if form == "html" else json.dumps(data, separators=(",", ":"))
        body = text.encode("utf-8")
        kept = snapshot.answers.setdefault((slug, form), (body, _etag(body)))
    return kept


def take_snapshot(store: StoreContract, settings: Settings, now: float) -> Snapshot:
    """A Snapshot of `store` at `now`: four reads, whose cost grows with the users, their outages and the
    service's restarts."""
    users = {user.username: user for user in store.configured_users()}
    outages: dict[int, list[Outage]] = {}
    for outage in store.outages_since(now - uptime.SPANS["90d"]):
        outages.setdefault(outage.user_id, []).append(outage)
    down = {
        user_id: uptime.down_intervals(((o.down_at, o.up_at) for o in found), now) for user_id, found in outages.items()
    }
    downtime = uptime.downtime(store.service_runs(now - uptime.SPANS["90d"]))
    tags: dict[str, list[str]] = {}
    for username, config in settings.users.items():
        for tag in config.tags:
            tags.setdefault(tag, []).append(username)
    return Snapshot(now, settings, users, down, store.first_pings(), downtime, tags)


def page_data(page: StatusPage, snapshot: Snapshot, now: float) -> dict[str, object]:
    """The status page's data at `now`, as its JSON answer gives it: the title, each listed user's shown name,
    state and uptimes (24h to 90d, and each of the last 90 local days, oldest first, after `days`, their
    starts), and the outages of the last 90 days, newest first."""
    days = day_starts(now)
    history_start = days[0]
    devices = []
    incidents = []
    for username in page.users:
        user = snapshot.users.get(username)
        if user is None:
            continue
        name = page.shown_name(username)
        down = snapshot.down.get(user.id, [])
        unknown = _unknown(user, down, snapshot.first_pings.get(user.id), snapshot.downtime)
        devices.append(
            {
                "name": name,
                "state": device_state(user, now),
                "uptime": {
                    span: uptime.uptime(down, unknown, now - seconds, now) for span, seconds in uptime.SPANS.items()
                },
                "daily": _daily(down, unknown, days, now),
            }
        )
        for low, high in uptime.pieces(down, history_start, now):
            incidents.append({"name": name, "began": low, "ended": None if high >= now else high})
    incidents.sort(key=lambda incident: incident["began"], reverse=True)  # type: ignore[arg-type, return-value]
    return {"title": page.title, "updated": now, "days": days, "devices": devices, "incidents": incidents}


def device_state(user: UserState, now: float) -> str:
    """What a status page calls `user`'s state at `now`: paused (monitor off, or paused over the management
    API), in maintenance (a maintenance window snoozes it), snoozed, failed, late (silent or running past its
    deadlines, alerted or not; a flapping user while it is so) or up."""
    if not user.monitor or is_paused(user.snoozed_until):
        return PAUSED
    state = live_state(user, now, user.parent)
    if state == RULES_MAINTENANCE:
        return MAINTENANCE
    if state == SNOOZED:
        return SNOOZED_STATE
    if state == FLAPPING:
        return UP if condition(user, now) is None else LATE_STATE
    if state == FAILED:
        return FAILED_STATE
    if state in (LATE, ALERTED, SUPPRESSED):
        return LATE_STATE
    return UP


def badge_status(users: Iterable[UserState], now: float) -> tuple[str, int, int]:
    """The badge status of `users` at `now` and how many are in grace and down: down if any is failed or in an
    alerted outage, else grace if any is late, else up. A user with monitor off counts as up."""
    grace = down = 0
    for user in users:
        current = condition(user, now)
        if current is None:
            continue
        if current.kind == FAILED or (user.down_since is not None and user.back_at is None):
            down += 1
        else:
            grace += 1
    status = BADGE_DOWN if down else BADGE_GRACE if grace else BADGE_UP
    return status, grace, down


def badge_svg(label: str, status: str) -> str:
    """A shields-style badge: `label` on grey, then the status's word on its colour."""
    word = BADGE_WORDS[status]
    left, right = _text_width(label) + 10, _text_width(word) + 10
    width = left + right
    label_text, word_text = html.escape(label), html.escape(word)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img"'
        f' aria-label="{label_text}: {word_text}"><title>{label_text}: {word_text}</title>'
        f'<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        f'<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{BADGE_COLOURS[status]}"/>'
        f'<rect width="{width}" height="20" fill="url(#s)"/></g>'
        f'<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{left / 2}" y="14">{label_text}</text>'
        f'<text x="{left + right / 2}" y="14">{word_text}</text></g></svg>'
    )


def shields(label: str, status: str) -> dict[str, object]:
    """The shields.io endpoint answer for `label` in `status`."""
    return {"schemaVersion": 1, "label": label, "message": BADGE_WORDS[status], "color": SHIELDS_COLOURS[status]}


def split_badge_name(text: str) -> tuple[str, str] | None:
    """A badge path's last part as (name or tag, form: svg, json or shields); None if it has no such suffix."""
    for suffix in BADGE_SUFFIXES:
        if text.endswith(suffix) and len(text) > len(suffix):
            return text[: -len(suffix)], suffix[1:]
    return None


def day_starts(now: float) -> list[float]:
    """The starts of the last uptime.HISTORY_DAYS local days, today's last, oldest first."""
    today = time.localtime(now)
    return [
        time.mktime((today.tm_year, today.tm_mon, today.tm_mday - back, 0, 0, 0, 0, 0, -1))
        for back in range(uptime.HISTORY_DAYS - 1, -1, -1)
    ]


def render_page(data: dict[str, object]) -> str:
    """A status page's HTML from its data (page_data): every state and uptime written in the page; the daily
    bars are drawn by static/status.js from the JSON answer."""
    title = html.escape(str(data["title"]))
    devices: list[dict[str, object]] = data["devices"]  # type: ignore[assignment]
    incidents: list[dict[str, object]] = data["incidents"]  # type: ignore[assignment]
    states = [str(device["state"]) for device in devices]
    summary = (
        "All devices are up"
        if all(state in (UP, PAUSED, SNOOZED_STATE, MAINTENANCE) for state in states)
        else f"{sum(state in (LATE_STATE, FAILED_STATE) for state in states)} of {len(states)} devices need attention"
    )
    rows = "".join(_device_row(index, device) for index, device in enumerate(devices))
    write = local_time_writer()
    listed = "".join(_incident_row(incident, write) for incident in incidents) or '<li class="none">No incidents.</li>'
    updated = html.escape(format_local_time(float(data["updated"])))  # type: ignore[arg-type]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>{title}</title>"
        '<link rel="stylesheet" href="/static/status.css">'
        '<script src="/static/status.js" defer></script></head>'
        f'<body><main><header><h1>{title}</h1><p class="summary">{html.escape(summary)}</p></header>'
        f'<ul class="devices">{rows}</ul>'
        f'<section class="incidents"><h2>Incidents, last 90 days</h2><ul>{listed}</ul></section>'
        f"<footer>Updated {updated}; this page refreshes itself every minute.</footer>"
        "</main></body></html>\n"
    )


def _device_row(index: int, device: dict[str, object]) -> str:
    state = html.escape(str(device["state"]))
    spans: dict[str, float | None] = device["uptime"]  # type: ignore[assignment]
    figures = "".join(
        f'<span class="span"><span class="figure">{_percent(value)}</span> {name}</span>'
        for name, value in spans.items()
    )
    return (
        f'<li class="device" data-index="{index}"><div class="head">'
        f'<span class="name">{html.escape(str(device["name"]))}</span>'
        f'<span class="state {state}">{state}</span></div>'
        f'<div class="bars" aria-label="daily uptime, last 90 days"></div>'
        f'<p class="day" hidden></p><div class="spans">{figures}</div></li>'
    )


def _incident_row(incident: dict[str, object], write: Callable[[float], str]) -> str:
    began = float(incident["began"])  # type: ignore[arg-type]
    ended = incident["ended"]
    end_text = (
        "ongoing"
        if ended is None
        else f"until {write(float(ended))} ({duration_in_words(round(float(ended) - began))})"  # type: ignore[arg-type]
    )
    return (
        f'<li><span class="name">{html.escape(str(incident["name"]))}</span> down from '
        f"{html.escape(write(began))} {html.escape(end_text)}</li>"
    )


def _percent(value: float | None) -> str:
    if value is None:
        return "–"
    # Never rounds up to 100% a device that was down at all.
    return "100%" if value == 1.0 else f"{min(value * 100, 99.99):.2f}%"


def _unknown(
    user: UserState,
    down: Sequence[uptime.Interval],
    first_ping: float | None,
    downtime: Sequence[uptime.Interval],
) -> list[uptime.Interval]:
    """The time nothing is known of `user`: before its first ping, the start of this run's monitoring and its first
    outage kept, whichever came first; and the service's own downtime."""
    known_from = min(t for t in (first_ping, user.monitored_since, down[0][0] if down else None) if t is not None)
    return uptime.merged([(float("-inf"), known_from), *downtime])


def _daily(
    down: Sequence[uptime.Interval], unknown: Sequence[uptime.Interval], days: Sequence[float], now: float
) -> list[float | None]:
    # Most devices had no outage and were known all along: their days need no arithmetic.
    if not uptime.pieces(down, days[0], now) and not uptime.pieces(unknown, days[0], now):
        return [1.0] * len(days)
    return uptime.daily(down, unknown, [*days, now])


def _text_width(text: str) -> int:
    """Roughly how many pixels `text` takes in 11px Verdana: a badge needs no more than that."""
    width = 0.0
    for character in text:
        width += 7.5 if character.isupper() or character in "mwMW" else 3.5 if character in "il.,:;'|!" else 6.5
    return round(width)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _same(given: str, key: str) -> bool:
    """Whether `given` is `key`, taking the same time whatever the texts."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), key.encode("utf-8"))
