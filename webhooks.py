"""Webhook notifications: the request each format sends (pure functions of the event) and sending it over HTTP(S).

One event (an alert or a recovery) becomes one POST per webhook channel, made within a whole-operation deadline
(WEBHOOK_DEADLINE), of whose answer at most outbound.ANSWER_LIMIT bytes are read. Every format carries the
`Idempotency-Key` header, equal to the event's id, which stays the same on every retry, so a service
that knows the header can drop a duplicate left by an at-least-once delivery. The answer decides
the delivery's fate (`outcome`): 2xx delivered; 408, 429, 5xx and connection problems retried (the
`Retry-After` answer header is honoured); redirects and other 4xx failed for good, since sending
the same request again would get the same answer.

Two formats open and close an incident: `pagerduty` (PagerDuty's Events API v2) and `opsgenie` (Opsgenie's
alerts API). An alert opens one (a PagerDuty trigger, an Opsgenie create) and the recovery closes it (a
resolve, a close), both naming the outage by outage_key, so a device that is back never leaves a page open.

The `apprise` format hands each event to Apprise (apprise_channel.py), which knows about 150 services; its
url is an Apprise URL. Apprise only says whether a notification went, so its failures are all retried, up
to APPRISE_MAX_ATTEMPTS attempts.

This module imports nothing else of the project but outbound.py, apprise_channel.py and records.py (its
WebhookEvent): config.py reads FORMATS from it.
"""

import datetime
import email.header
import email.utils
import hashlib
import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import apprise_channel
import outbound
from records import WebhookEvent

log = logging.getLogger("ping_listener.webhooks")

# How long each network operation of a POST may take (connecting, sending, each read of the answer).
WEBHOOK_TIMEOUT = 10.0
# How long a whole POST may take, from connecting to the end of the answer's headers, however its
# webhook trickles: then it is given up and retried.
WEBHOOK_DEADLINE = 30.0
# The most of an error answer's body kept in last_error: enough for "invalid_token" and the like.
ANSWER_EXCERPT_CHARS = 200
# Discord refuses a message longer than this.
DISCORD_MAX_CHARS = 2000
USER_AGENT = "ping-listener"
# Where the incident formats post unless their webhook's `url` says otherwise (an EU account's Opsgenie is
# https://api.eu.opsgenie.com/v2/alerts).
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
OPSGENIE_URL = "https://api.opsgenie.com/v2/alerts"
# The longest texts PagerDuty (a summary) and Opsgenie (a message, a description, a note) take.
PAGERDUTY_SUMMARY_CHARS = 1024
OPSGENIE_MESSAGE_CHARS = 130
OPSGENIE_DESCRIPTION_CHARS = 15_000
OPSGENIE_NOTE_CHARS = 25_000
# How the service names itself to PagerDuty and Opsgenie.
SOURCE = "Ping Listener"
# An Apprise delivery is given up (failed) after this many attempts: Apprise does not tell a refusal for good
# from a passing failure, so each is retried, with the usual back-off (about an hour and a half in all).
APPRISE_MAX_ATTEMPTS = 24

DELIVERED = "sent"
RETRY = "retry"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The fate of one POST: DELIVERED, RETRY (try again later) or FAILED (for good).

    `retry_after` is the delay the webhook asked for (its Retry-After header), in seconds;
    `unreachable` says that the webhook did not answer at all (a connection problem, a timeout or its
    deadline), so its other deliveries need not be tried now.
    """

    status: str
    error: str | None = None
    retry_after: float | None = None
    unreachable: bool = False


class Endpoint(Protocol):
    """Where and how to POST (config.WebhookConfig has it); `routing_key` (pagerduty) and `api_key` (opsgenie)
    are None for the other formats."""

    @property
    def url(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def api_key(self) -> str | None: ...


class Delivery(Protocol):
    """A queued webhook delivery (store.QueuedWebhook has it): its webhook's name, its attempts so far and its
    event."""

    @property
    def webhook(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def event(self) -> WebhookEvent: ...


_D = TypeVar("_D", bound=Delivery)


def new_event_id() -> str:
    """A fresh event id: unique, and kept with the queued delivery so that every retry sends the same one."""
    return str(uuid.uuid4())


def compose_json(event: WebhookEvent) -> tuple[bytes, dict[str, str]]:
    """The `json` format: {id, event, username, at, last_ping, text, logs_url}, for a service of your own."""
    document = {
        "id": event.id,
        "event": event.event,
        "username": event.username,
        "at": event.at,
        "last_ping": event.last_ping,
        "text": event.text,
        "logs_url": event.logs_url,
    }
    return _json_body(document)


def compose_ntfy(event: WebhookEvent) -> tuple[bytes, dict[str, str]]:
    """The `ntfy` format, for a topic URL (https://ntfy.sh/TOPIC): the text as the message, the title, a
    tag and priority by event, and the logs link opened by a tap."""
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "Title": _header_text(event.title),
        "Tags": "white_check_mark" if event.event == "back" else "warning",
        "Priority": "default" if event.event == "back" else "high",
        "Click": event.logs_url,
    }
    return event.text.encode(), headers


def compose_slack(event: WebhookEvent) -> tuple[bytes, dict[str, str]]:
    """The `slack` format, for a Slack incoming webhook (or anything that takes {"text": ...}, such as
    Mattermost or Matrix's hookshot): the title in bold, then the text, with &, < and > escaped so
    that nothing in them becomes a mention or a link."""
    return _json_body({"text": f"*{_slack_escape(event.title)}*\n{_slack_escape(event.text)}"})


def compose_discord(event: WebhookEvent) -> tuple[bytes, dict[str, str]]:
    """The `discord` format, for a Discord channel webhook: the title in bold, then the text, cut to
    Discord's DISCORD_MAX_CHARS, and no mentions (an @everyone in a job's output pings nobody)."""
    content = f"**{event.title}**\n{event.text}"
    if len(content) > DISCORD_MAX_CHARS:
        content = content[: DISCORD_MAX_CHARS - 1] + "…"
    return _json_body({"content": content, "allowed_mentions": {"parse": []}})


def compose_gotify(event: WebhookEvent) -> tuple[bytes, dict[str, str]]:
    """The `gotify` format, for a Gotify server's /message?token=APP_TOKEN: title, text, a high priority
    for alerts (8: the Android app makes a sound) and a normal one for recoveries, the logs link on tap."""
    return _json_body(
        {
            "title": event.title,
            "message": event.text,
            "priority": 5 if event.event == "back" else 8,
            "extras": {"client::notification": {"click": {"url": event.logs_url}}},
        }
    )


def compose_teams(event: WebhookEvent) -> tuple[bytes, dict[str, str]]:
    """The `teams` format, for a Microsoft Teams Workflows webhook ("post to a channel when a webhook
    request is received"): a message with one Adaptive Card holding the title, the text and a button
    opening the logs link."""
    card = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": event.title, "weight": "Bolder", "size": "Medium", "wrap": True},
            {"type": "TextBlock", "text": event.text, "wrap": True},
        ],
        "actions": [{"type": "Action.OpenUrl", "title": "That day's signals", "url": event.logs_url}],
    }
    return _json_body(
        {
            "type": "message",
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
        }
    )


def outage_key(event: WebhookEvent) -> str:
    """The name of the outage `event` belongs to, the same for each of its alerts and its recovery and
    different for any other outage: PagerDuty's dedup_key and Opsgenie's alias.

    "ping-listener-" and 40 hex digits of a hash of the user and the moment its outage went down (well
    within PagerDuty's 255 characters and Opsgenie's 512, and safe in a URL path); for a delivery queued
    before outages were named, the event's own id.
    """
    if event.went_down_at is None:
        return f"ping-listener-{event.id}"
    outage = f"{event.username}\0{event.went_down_at!r}".encode("utf-8", "surrogatepass")
    return "ping-listener-" + hashlib.sha256(outage).hexdigest()[:40]


def compose_pagerduty(endpoint: Endpoint, event: WebhookEvent) -> tuple[str, bytes, dict[str, str]]:
    """The `pagerduty` format (PagerDuty Events API v2): an alert is a `trigger` (the title as the summary, the
    user as the source, severity critical, the text and the logs link as details), a recovery a `resolve`;
    both carry the webhook's routing_key and the outage's dedup_key (outage_key). Posted to the endpoint's url."""
    key = outage_key(event)
    if event.event == "back":
        document: dict[str, Any] = {"routing_key": endpoint.routing_key, "event_action": "resolve", "dedup_key": key}
    else:
        payload: dict[str, Any] = {
            "summary": _cut(event.title, PAGERDUTY_SUMMARY_CHARS),
            "source": event.username,
            "severity": "critical",
            "custom_details": {"event": event.event, "text": event.text, "last_ping": _iso(event.last_ping)},
        }
        if event.at is not None:
            payload["timestamp"] = _iso(event.at)
        document = {
            "routing_key": endpoint.routing_key,
            "event_action": "trigger",
            "dedup_key": key,
            "payload": payload,
            "client": SOURCE,
            "client_url": event.logs_url,
            "links": [{"href": event.logs_url, "text": "Signals of that day"}],
        }
    return (endpoint.url, *_json_body(document))


def compose_opsgenie(endpoint: Endpoint, event: WebhookEvent) -> tuple[str, bytes, dict[str, str]]:
    """The `opsgenie` format (Opsgenie's alerts API, authorized by `GenieKey <api_key>`): an alert creates one
    (POST to the url: the title as the message, the outage's alias (outage_key), the text as the description,
    the user as the entity, the logs link in the details), a recovery closes it (POST to
    url/<alias>/close?identifierType=alias, with the text as a note)."""
    key = outage_key(event)
    url = endpoint.url
    if event.event == "back":
        parts = urllib.parse.urlsplit(url)
        url = parts._replace(path=f"{parts.path.rstrip('/')}/{key}/close", query="identifierType=alias").geturl()
        document: dict[str, Any] = {"source": SOURCE, "note": _cut(event.text, OPSGENIE_NOTE_CHARS)}
    else:
        document = {
            "message": _cut(event.title, OPSGENIE_MESSAGE_CHARS),
            "alias": key,
            "description": _cut(event.text, OPSGENIE_DESCRIPTION_CHARS),
            "entity": event.username,
            "source": SOURCE,
            "tags": ["ping-listener", event.event],
            "details": {"logs_url": event.logs_url, "event": event.event},
        }
    body, headers = _json_body(document)
    return url, body, {**headers, "Authorization": f"GenieKey {endpoint.api_key}"}


# Each format's composer: the body and the headers it needs. settings.json's `format` is one of these keys,
# of INCIDENT_COMPOSERS' (which also say where to post) or APPRISE.
COMPOSERS: dict[str, Callable[[WebhookEvent], tuple[bytes, dict[str, str]]]] = {
    "json": compose_json,
    "ntfy": compose_ntfy,
    "slack": compose_slack,
    "discord": compose_discord,
    "gotify": compose_gotify,
    "teams": compose_teams,
}
INCIDENT_COMPOSERS: dict[str, Callable[[Endpoint, WebhookEvent], tuple[str, bytes, dict[str, str]]]] = {
    "pagerduty": compose_pagerduty,
    "opsgenie": compose_opsgenie,
}
APPRISE = "apprise"
FORMATS = (*COMPOSERS, *INCIDENT_COMPOSERS, APPRISE)
# The default url of the formats that have one.
DEFAULT_URLS = {"pagerduty": PAGERDUTY_URL, "opsgenie": OPSGENIE_URL}


def build_request(endpoint: Endpoint, event: WebhookEvent) -> urllib.request.Request:
    """The POST for `event` to `endpoint` (of any format but APPRISE): its format's url, body and headers,
    then the endpoint's own headers (an Authorization, say), then Idempotency-Key, which nothing overrides."""
    if endpoint.format in INCIDENT_COMPOSERS:
        url, body, headers = INCIDENT_COMPOSERS[endpoint.format](endpoint, event)
    else:
        url = endpoint.url
        body, headers = COMPOSERS[endpoint.format](event)
    headers = {"User-Agent": USER_AGENT, **headers, **dict(endpoint.headers), "Idempotency-Key": event.id}
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


def apprise_outcome(error: str | None, attempts: int) -> DeliveryResult:
    """The fate of an Apprise notification that failed with `error` (None: it went) after `attempts` earlier
    attempts: DELIVERED, RETRY, or FAILED once this was attempt APPRISE_MAX_ATTEMPTS."""
    if error is None:
        return DeliveryResult(DELIVERED)
    if attempts + 1 >= APPRISE_MAX_ATTEMPTS:
        return DeliveryResult(FAILED, f"{error} (given up after {APPRISE_MAX_ATTEMPTS} attempts)")
    return DeliveryResult(RETRY, error)


def outcome(status: int, retry_after: str | None, now: float, answer: str = "") -> DeliveryResult:
    """The fate of a delivery answered with HTTP `status` at `now` (and `retry_after`, its Retry-After header).

    2xx: DELIVERED. 408, 429 and 5xx: RETRY, after the delay Retry-After asks for if it gives one
    (seconds, or an HTTP date). Anything else (a redirect, another 4xx): FAILED. `answer` (the start
    of the answer's body) goes into the error.
    """
    if 200 <= status < 300:
        return DeliveryResult(DELIVERED)
    error = f"HTTP {status}" + (f": {answer}" if answer else "")
    if status in (408, 429) or 500 <= status < 600:
        return DeliveryResult(RETRY, error, retry_after_seconds(retry_after, now))
    return DeliveryResult(FAILED, error)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """How long a Retry-After header value asks to wait from `now`, in seconds (>= 0); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(moment.timestamp() - now, 0.0)


class WebhookSender:
    """POSTs events to webhooks over HTTP or HTTPS (certificates checked against the system CAs; SSL_CERT_FILE
    is honoured), each POST within its deadline, reading at most outbound.ANSWER_LIMIT bytes of its answer."""

    def __init__(
        self, clock: Callable[[], float], timeout: float = WEBHOOK_TIMEOUT, deadline: float = WEBHOOK_DEADLINE
    ) -> None:
        """`timeout` bounds each network operation of a POST and `deadline` the whole POST, in seconds;
        `clock()` dates Retry-After answers."""
        self._clock = clock
        self._timeout = timeout
        self._deadline = deadline
        # Built once: it reads SSL_CERT_FILE and the system's CA store.
        self._tls = outbound.tls_context()

    def send(self, endpoint: Endpoint, event: WebhookEvent) -> DeliveryResult:
        """POST `event` to `endpoint` once and say what became of it (see `outcome`), within the deadline.

        The answer's status decides; of a 2xx answer nothing more is read, of an error its start.
        """
        deadline = outbound.Deadline(self._deadline)
        # Redirects are not followed: a webhook URL that redirects is a wrong URL, and following it would
        # turn the POST into a GET.
        opener = outbound.opener(deadline, self._tls, _NoRedirects())
        try:
            with opener.open(build_request(endpoint, event), timeout=self._timeout) as answer:
                return outcome(answer.status, None, self._clock())
        except urllib.error.HTTPError as error:
            excerpt = _excerpt(error)
            error.close()
            return outcome(error.code, error.headers.get("Retry-After"), self._clock(), excerpt)
        except urllib.error.URLError as error:
            reason = error.reason
            problem = _describe(reason) if isinstance(reason, BaseException) else str(reason)
            return DeliveryResult(RETRY, _past(deadline, problem), unreachable=True)
        except (OSError, http.client.HTTPException) as error:
            return DeliveryResult(RETRY, _past(deadline, _describe(error)), unreachable=True)

    def send_in_order(self, endpoint: Endpoint | None, deliveries: Iterable[_D]) -> Iterator[tuple[_D, DeliveryResult]]:
        """Send `deliveries` (all for one webhook, at `endpoint`) in turn; yield (delivery, result) as each is
        settled, exactly one result each.

        Once the webhook does not answer (a connection problem, a timeout, its deadline), its remaining
        deliveries are retried later without being tried now. Without an endpoint (the webhook was removed
        from the settings) each fails.
        """
        if endpoint is not None and endpoint.format == APPRISE:
            yield from self._notify_in_order(endpoint.url, list(deliveries))
            return
        down: DeliveryResult | None = None
        for delivery in deliveries:
            if endpoint is None:
                result = DeliveryResult(FAILED, f"webhook {delivery.webhook} is no longer in settings.json")
            elif down is not None:
                result = down
            else:
                try:
                    result = self.send(endpoint, delivery.event)
                except Exception as error:  # a bug must not leave the delivery unsettled
                    log.exception("sending to webhook %s failed", delivery.webhook)
                    result = DeliveryResult(RETRY, _describe(error))
                if result.unreachable:
                    down = result
            yield delivery, result

    def _notify_in_order(self, url: str, deliveries: Sequence[_D]) -> Iterator[tuple[_D, DeliveryResult]]:
        """send_in_order for an Apprise URL: all of `deliveries` handed to one Apprise process, each within
        the deadline; once one is not answered in time, the rest are retried later without being tried."""
        messages = [
            apprise_channel.Message(d.event.title, d.event.text, "success" if d.event.event == "back" else "failure")
            for d in deliveries
        ]
        errors = apprise_channel.notify_each(url, messages, self._deadline)
        done = 0
        rest = DeliveryResult(RETRY, "not tried: Apprise did not answer in time", unreachable=True)
        try:
            for delivery, error in zip(deliveries, errors, strict=False):
                done += 1
                yield delivery, apprise_outcome(error, delivery.attempts)
        except Exception as error:  # Apprise could not be started (no memory, no process left, ...)
            log.exception("cannot run Apprise for webhook %s", deliveries[done].webhook)
            rest = DeliveryResult(RETRY, f"cannot run Apprise: {_describe(error)}", unreachable=True)
        finally:
            errors.close()
        for delivery in deliveries[done:]:
            yield delivery, rest


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx


def _json_body(document: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(document, ensure_ascii=False).encode(), {"Content-Type": "application/json"}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


def _header_text(text: str) -> str:
    """`text` fit for an HTTP header: as is if ASCII, else an RFC 2047 encoded word (which ntfy decodes)."""
    text = " ".join(text.split())
    return text if text.isascii() else email.header.Header(text, "utf-8").encode(maxlinelen=100_000)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _excerpt(answer: urllib.error.HTTPError) -> str:
    try:
        text = answer.read(ANSWER_EXCERPT_CHARS * 4).decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return ""
    return " ".join(text.split())[:ANSWER_EXCERPT_CHARS]


def _past(deadline: outbound.Deadline, problem: str) -> str:
    """`problem`, saying first that the POST ran out of time if its deadline has passed."""
    if deadline.expired():
        return f"no whole answer within the {deadline.seconds:g} s deadline ({problem})"
    return problem


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
