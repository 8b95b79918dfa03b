"""The third release's channels: PagerDuty and Opsgenie (their requests checked against the shapes their
documentation publishes, posted to a real local HTTP server standing in for their API) and Apprise (a real
Apprise in its child process, its self-hostable services pointed at a real local HTTP server)."""

import dataclasses
import itertools
import json
import sys

import prometheus_client.parser
import pytest

import apprise_channel
import config
import webhooks
from config import WebhookConfig
from records import WebhookEvent
from support import SLACK, T0, HttpReceiver, Trickler, free_port, query, run_server, wait_until, write_settings
from webhooks import DELIVERED, FAILED, RETRY, WebhookSender

ROUTING_KEY = "R0ut1ngKeyR0ut1ngKeyR0ut1ngKey12"
API_KEY = "eb243592-faa2-4ba2-a551-1afdf565c889"
# A token in an Apprise URL: it must never show in an error, a log or the database.
TOKEN = "AbCdEfGhIjKlMnOp"

LATE = WebhookEvent(
    id="3f1c2a9e-5b7d-4e61-9a0c-2d8e4f6b1a37",
    event="late",
    username="pi",
    at=T0,
    last_ping=T0 - 130,
    title="pi disconnection detected",
    text="Ping Listener has heard nothing from pi for more than 2 minutes.\n",
    logs_url="https://example.net/logs?username=pi&year=26&month=09&day=21",
    went_down_at=T0 - 10,
)
BACK = dataclasses.replace(
    LATE, id="9d8c7b6a-0000-4000-8000-000000000001", event="back", at=T0 + 300, title="pi is back", text="pi is back.\n"
)
PAGERDUTY = WebhookConfig(webhooks.PAGERDUTY_URL, "pagerduty", routing_key=ROUTING_KEY)
OPSGENIE = WebhookConfig(webhooks.OPSGENIE_URL, "opsgenie", api_key=API_KEY)


class Queued:
    def __init__(self, delivery_id, event=LATE, attempts=0):
        self.id = delivery_id
        self.webhook = "hook"
        self.attempts = attempts
        self.event = event


def sender(deadline=webhooks.WEBHOOK_DEADLINE):
    return WebhookSender(lambda: T0, timeout=5, deadline=deadline)


def posted(endpoint, event):
    """(url, JSON body, headers) of the request `endpoint` gets for `event`."""
    request = webhooks.build_request(endpoint, event)
    return request.full_url, json.loads(request.data), dict(request.header_items())


# --- PagerDuty Events API v2 -----------------------------------------------------------------------------------


def test_an_alert_is_a_pagerduty_trigger_with_the_fields_the_events_api_requires():
    url, body, headers = posted(PAGERDUTY, LATE)
    assert url == "https://events.pagerduty.com/v2/enqueue"
    assert headers["Content-type"] == "application/json"
    # routing_key, event_action, dedup_key; payload.summary, .source and .severity are required for a trigger.
    assert body == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": webhooks.outage_key(LATE),
        "payload": {
            "summary": "pi disconnection detected",
            "source": "pi",
            "severity": "critical",
            "timestamp": "2026-09-21T14:13:20+00:00",
            "custom_details": {"event": "late", "text": LATE.text, "last_ping": "2026-09-21T14:11:10+00:00"},
        },
        "client": "Ping Listener",
        "client_url": LATE.logs_url,
        "links": [{"href": LATE.logs_url, "text": "Signals of that day"}],
    }


def test_the_recovery_resolves_the_pagerduty_incident_of_the_same_outage():
    _, trigger, _ = posted(PAGERDUTY, LATE)
    _, resolve, _ = posted(PAGERDUTY, BACK)
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": trigger["dedup_key"]}


def test_one_outage_has_one_key_and_another_outage_another():
    again = dataclasses.replace(LATE, id="another-alert-of-the-same-outage", at=T0 + 3600)
    assert webhooks.outage_key(again) == webhooks.outage_key(LATE) == webhooks.outage_key(BACK)
    assert webhooks.outage_key(dataclasses.replace(LATE, went_down_at=T0 + 5000)) != webhooks.outage_key(LATE)
    assert webhooks.outage_key(dataclasses.replace(LATE, username="nas")) != webhooks.outage_key(LATE)
    # Within PagerDuty's 255 characters, and safe in Opsgenie's URL path.
    assert len(webhooks.outage_key(LATE)) <= 255 and webhooks.outage_key(LATE).replace("-", "").isalnum()


def test_a_summary_past_pagerdutys_1024_characters_is_cut():
    _, body, _ = posted(PAGERDUTY, dataclasses.replace(LATE, title="x" * 5000))
    assert len(body["payload"]["summary"]) == webhooks.PAGERDUTY_SUMMARY_CHARS


# --- Opsgenie alerts API -----------------------------------------------------------------------------------------


def test_an_alert_creates_an_opsgenie_alert_with_the_outages_alias():
    url, body, headers = posted(OPSGENIE, LATE)
    assert url == "https://api.opsgenie.com/v2/alerts"
    assert headers["Authorization"] == f"GenieKey {API_KEY}"
    assert body == {
        "message": "pi disconnection detected",
        "alias": webhooks.outage_key(LATE),
        "description": LATE.text,
        "entity": "pi",
        "source": "Ping Listener",
        "tags": ["ping-listener", "late"],
        "details": {"logs_url": LATE.logs_url, "event": "late"},
    }


def test_the_recovery_closes_the_opsgenie_alert_by_its_alias():
    eu = dataclasses.replace(OPSGENIE, url="https://api.eu.opsgenie.com/v2/alerts/")
    url, body, headers = posted(eu, BACK)
    assert url == f"https://api.eu.opsgenie.com/v2/alerts/{webhooks.outage_key(LATE)}/close?identifierType=alias"
    assert headers["Authorization"] == f"GenieKey {API_KEY}"
    assert body == {"source": "Ping Listener", "note": "pi is back.\n"}


def test_opsgenies_limits_on_a_message_and_a_description_are_kept():
    _, body, _ = posted(OPSGENIE, dataclasses.replace(LATE, title="t" * 500, text="d" * 50_000))
    assert (len(body["message"]), len(body["description"])) == (130, 15_000)


@pytest.fixture
def api():
    with HttpReceiver() as receiver:
        yield receiver


@pytest.mark.parametrize(
    ("answer", "fate", "retry_after"),
    [(202, DELIVERED, None), ((429, {"Retry-After": "45"}), RETRY, 45.0), (503, RETRY, None), (400, FAILED, None)],
)
def test_pagerduty_and_opsgenie_answers_decide_as_a_webhooks_do(api, answer, fate, retry_after):
    for endpoint in (PAGERDUTY, OPSGENIE):
        api.answers = [answer]
        result = sender().send(dataclasses.replace(endpoint, url=api.url + "/v2/x"), LATE)
        assert (result.status, result.retry_after) == (fate, retry_after)
    assert [path for path in api.paths] == ["/v2/x", "/v2/x"]


def test_an_incident_is_opened_then_closed_at_a_configured_api_base(api):
    for endpoint in (
        dataclasses.replace(PAGERDUTY, url=api.url + "/pd"),
        dataclasses.replace(OPSGENIE, url=api.url + "/og"),
    ):
        settled = list(sender().send_in_order(endpoint, [Queued(1, LATE), Queued(2, BACK)]))
        assert [result.status for _, result in settled] == [DELIVERED, DELIVERED]
    key = webhooks.outage_key(LATE)
    assert api.paths == ["/pd", "/pd", "/og", f"/og/{key}/close?identifierType=alias"]
    bodies = [json.loads(body) for *_, body in api.requests]
    assert [(b["event_action"], b["dedup_key"]) for b in bodies[:2]] == [("trigger", key), ("resolve", key)]
    assert bodies[2]["alias"] == key
    assert api.requests[3][2]["Authorization"] == f"GenieKey {API_KEY}"


def test_a_hanging_incident_api_is_given_up_and_retried(api):
    api.answers = [HttpReceiver.HANG]
    settled = list(
        WebhookSender(lambda: T0, timeout=0.3).send_in_order(
            dataclasses.replace(PAGERDUTY, url=api.url), [Queued(1), Queued(2)]
        )
    )
    assert [(r.status, r.unreachable) for _, r in settled] == [(RETRY, True), (RETRY, True)]
    assert len(api.requests) == 1


# --- Apprise -----------------------------------------------------------------------------------------------------


def apprise_hook(url):
    return WebhookConfig(url, "apprise")


def host_of(receiver):
    return receiver.url.removeprefix("http://")


@pytest.mark.parametrize(
    ("scheme", "path", "token_in"),
    [
        ("json", f"/hook/{TOKEN}", "path"),
        ("ntfy", f"/{TOKEN}", "body"),
        ("gotify", f"/{TOKEN}", "X-Gotify-Key"),
        ("mmost", f"/{TOKEN}", "path"),
    ],
)
def test_each_self_hostable_apprise_service_gets_the_title_and_text(api, scheme, path, token_in):
    hook = apprise_hook(f"{scheme}://{host_of(api)}{path}")
    [(_, result)] = sender().send_in_order(hook, [Queued(1)])
    assert result == webhooks.DeliveryResult(DELIVERED)
    [(method, request_path, headers, body)] = api.requests
    assert method == "POST"
    text = body.decode()
    assert "pi disconnection detected" in text and "Ping Listener has heard nothing from pi" in text
    # Apprise took the token from the URL to where its service expects it.
    assert TOKEN in {"path": request_path, "body": text, "X-Gotify-Key": headers.get("X-Gotify-Key", "")}[token_in]


@pytest.mark.parametrize("answer", [500, 503, (429, {"Retry-After": "30"}), 404, 401])
def test_an_apprise_failure_is_retried_and_its_reason_names_no_token(api, answer):
    api.answers = [answer]
    hook = apprise_hook(f"gotify://{host_of(api)}/{TOKEN}")
    [(_, result)] = sender().send_in_order(hook, [Queued(1)])
    status = answer[0] if isinstance(answer, tuple) else answer
    assert result.status == RETRY
    assert f"error={status}" in result.error
    assert TOKEN not in result.error


def test_an_apprise_service_that_never_answers_is_retried(api):
    api.answers = [HttpReceiver.HANG]
    hook = apprise_hook(f"gotify://{host_of(api)}/{TOKEN}?rto=0.5")
    [(_, result)] = sender().send_in_order(hook, [Queued(1)])
    assert result.status == RETRY
    assert "error occurred sending Gotify notification" in result.error and TOKEN not in result.error


def test_what_apprise_says_of_a_failure_is_kept_with_the_pieces_of_the_url_blotted_out():
    # Apprise names the host it could not reach: as any piece of the URL, it is blotted out.
    hook = apprise_hook(f"json://localhost:{free_port()}/{TOKEN}")
    [(_, result)] = sender().send_in_order(hook, [Queued(1)])
    assert result.status == RETRY
    assert result.error == "A Connection error occurred sending JSON notification to ***."


def test_an_apprise_delivery_is_failed_for_good_at_its_last_attempt(api):
    api.status = 500
    hook = apprise_hook(f"json://{host_of(api)}/{TOKEN}")
    last = webhooks.APPRISE_MAX_ATTEMPTS - 1
    settled = [r for _, r in sender().send_in_order(hook, [Queued(1, attempts=last - 1), Queued(2, attempts=last)])]
    assert [r.status for r in settled] == [RETRY, FAILED]
    assert settled[1].error.endswith(f"(given up after {webhooks.APPRISE_MAX_ATTEMPTS} attempts)")


def test_a_failure_then_a_success_sends_each_once(api):
    api.answers = [503]
    hook = apprise_hook(f"json://{host_of(api)}/hook")
    settled = [r.status for _, r in sender().send_in_order(hook, [Queued(1), Queued(2), Queued(3)])]
    assert settled == [RETRY, DELIVERED, DELIVERED]
    assert len(api.requests) == 3


def test_an_apprise_service_that_trickles_is_given_up_at_the_deadline_and_the_rest_not_tried(monkeypatch):
    monkeypatch.setattr(apprise_channel, "START_DEADLINE", 15.0)
    # A byte every 0.5 s: within Apprise's own read timeout, so only the deadline ends it.
    answer = lambda: itertools.chain([b"HTTP/1.1 200 OK\r\n"], itertools.repeat(b"X-Slow: y\r\n"))  # noqa: E731
    with Trickler(answer, TRICKLE) as slow:
        hook = apprise_hook(f"json://{slow.url.removeprefix('http://')}/{TOKEN}")
        # The first message may also take START_DEADLINE for the child to start.
        settled = list(sender(deadline=1.0).send_in_order(hook, [Queued(1), Queued(2), Queued(3)]))
        sent = slow.sent[0]
    assert [(d.id, r.status) for d, r in settled] == [(1, RETRY), (2, RETRY), (3, RETRY)]
    assert settled[0][1].error == f"no answer from Apprise within the {apprise_channel.START_DEADLINE + 1:g} s deadline"
    assert [r.unreachable for _, r in settled[1:]] == [True, True]
    # Only one message was tried, and the child was killed at its deadline: the service sent no more than it
    # could by then (a piece each TRICKLE s, on a loaded machine SLACK s later).
    pieces = (apprise_channel.START_DEADLINE + 1.0 + SLACK) / TRICKLE
    assert len(slow.sent) == 1 and 0 < sent <= len(b"HTTP/1.1 200 OK\r\n") + pieces * len(b"X-Slow: y\r\n")


def test_an_apprise_answer_past_64_kib_is_not_read_further():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    with Trickler(lambda: itertools.chain([head], itertools.repeat(b"x" * 65536, 1024))) as flooding:
        hook = apprise_hook(f"json://{flooding.url.removeprefix('http://')}/hook")
        [(_, result)] = sender().send_in_order(hook, [Queued(1)])
    # Apprise (requests) reads a 200's body whole: the child's socket refused to read past the limit.
    assert result.status == RETRY
    assert flooding.sent[0] < 1024 * 65536 // 4


def test_the_apprise_child_gets_the_url_on_its_input_never_its_command_line(api, monkeypatch):
    started = []
    real_popen = apprise_channel.subprocess.Popen
    monkeypatch.setattr(
        apprise_channel.subprocess, "Popen", lambda args, **kw: started.append(args) or real_popen(args, **kw)
    )
    hook = apprise_hook(f"gotify://{host_of(api)}/{TOKEN}")
    assert [r.status for _, r in sender().send_in_order(hook, [Queued(1)])] == [DELIVERED]
    assert len(started) == 1 and not any(TOKEN in argument for argument in started[0])


def test_when_apprise_cannot_be_started_its_deliveries_are_retried(monkeypatch):
    def no_process(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(apprise_channel.subprocess, "Popen", no_process)
    settled = list(sender().send_in_order(apprise_hook("json://127.0.0.1:9/hook"), [Queued(1), Queued(2)]))
    assert [(d.id, r.status, r.error) for d, r in settled] == [
        (n, RETRY, "cannot run Apprise: BlockingIOError: [Errno 11] Resource temporarily unavailable") for n in (1, 2)
    ]


def test_scrub_blots_out_every_piece_of_the_url_and_hidden_shows_only_the_scheme():
    url = f"tgram://123456789:{TOKEN}/-100123?format=markdown"
    said = f"Failed to send Telegram notification to 123456789:{TOKEN} (chat -100123): 401"
    scrubbed = apprise_channel.scrub(said, url)
    assert TOKEN not in scrubbed and "123456789" not in scrubbed and "-100123" not in scrubbed
    assert scrubbed.startswith("Failed to send Telegram notification to")
    assert apprise_channel.scrub(f"x {TOKEN[:4]}%2F{TOKEN[4:]}", f"json://h/{TOKEN[:4]}%2F{TOKEN[4:]}") == "x ***"
    assert apprise_channel.hidden(url) == "tgram://…"


TRICKLE = 0.5


# --- settings.json ---------------------------------------------------------------------------------------------


def problems_with(webhook):
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600, "notify": ["webhook:w"]}
    document = {"base_frequency": 1, "email_processing_frequency": 1, "users": {"pi": user}, "webhooks": {"w": webhook}}
    try:
        return config.parse_settings(document).webhooks["w"]
    except config.ConfigError as error:
        return [problem for problem in error.problems if problem.startswith("webhooks.")]


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        (f"tgram://{TOKEN}", TOKEN),
        (f"nosuchscheme://{TOKEN}/x", TOKEN),
        (f"pover://{TOKEN}@", TOKEN),
        (f"json://:{TOKEN}@", TOKEN),
        # Apprise's own log shows this one whole: it must not reach the service's log.
        ("nosuchscheme://secretA", "secretA"),
    ],
)
def test_an_apprise_url_apprise_cannot_read_is_named_without_its_secrets(url, secret, caplog):
    [problem] = problems_with({"format": "apprise", "url": url})
    scheme = url.partition("://")[0]
    assert problem == (
        f"webhooks.w.url: Apprise cannot read this URL ({scheme}://…; the rest is not shown, as it may hold a token)"
    )
    assert secret not in caplog.text


def test_apprise_pagerduty_and_opsgenie_webhooks_are_read_with_their_defaults():
    assert problems_with({"format": "apprise", "url": f"tgram://123456789:{TOKEN}/-100123"}) == WebhookConfig(
        f"tgram://123456789:{TOKEN}/-100123", "apprise"
    )
    assert problems_with({"format": "pagerduty", "routing_key": ROUTING_KEY, "recoveries": False}) == WebhookConfig(
        webhooks.PAGERDUTY_URL, "pagerduty", routing_key=ROUTING_KEY, recoveries=False
    )
    assert problems_with(
        {"format": "opsgenie", "api_key": API_KEY, "url": "https://api.eu.opsgenie.com/v2/alerts"}
    ) == (WebhookConfig("https://api.eu.opsgenie.com/v2/alerts", "opsgenie", api_key=API_KEY))
    # Apprise was asked in a child process: the service itself never loads it.
    assert "apprise" not in sys.modules
    # Secrets stay out of a settings' repr (a log line, a traceback).
    assert ROUTING_KEY not in repr(problems_with({"format": "pagerduty", "routing_key": ROUTING_KEY}))


def test_an_apprise_that_does_not_answer_in_time_stops_startup(monkeypatch):
    monkeypatch.setattr(apprise_channel, "CHECK_DEADLINE", 0.001)
    assert problems_with({"format": "apprise", "url": f"tgram://123456789:{TOKEN}/-100123"}) == [
        "webhooks.w.url: Apprise did not say within 0.001 s whether it can read this URL"
    ]


def test_each_bad_channel_key_is_named_and_no_secret_shown():
    assert problems_with({"format": "pagerduty"}) == ["webhooks.w.routing_key: missing"]
    assert problems_with({"format": "opsgenie", "api_key": f"{TOKEN} x", "routing_key": TOKEN}) == [
        "webhooks.w.routing_key: only pagerduty webhooks take one",
        "webhooks.w.api_key: must be a non-empty string of visible ASCII characters",
    ]
    assert problems_with({"format": "json", "url": "https://example.net", "recoveries": "no"}) == [
        'webhooks.w.recoveries: must be true or false, got "no"'
    ]
    assert problems_with({"format": "apprise", "url": "json://example.net", "headers": {"X": "y"}}) == [
        "webhooks.w.headers: the apprise format takes none (an Apprise URL says it all)"
    ]
    assert problems_with({"format": "apprise"}) == ["webhooks.w.url: missing"]


# --- the service, end to end -----------------------------------------------------------------------------------

METRICS_TOKEN = "metrics-token-for-prometheus"
LATE_USER = {"monitor": True, "max_sleep": 0.3, "email_frequency": 3600}


def delivery_counts(service):
    text = service.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})[1]
    families = {family.name: family for family in prometheus_client.parser.text_string_to_metric_families(text)}
    return {
        (sample.labels["channel_kind"], sample.labels["outcome"]): sample.value
        for sample in families["ping_listener_deliveries"].samples
        if sample.name == "ping_listener_deliveries_total" and sample.value
    }


def test_every_channel_kind_is_delivered_counted_and_no_apprise_token_is_logged_or_stored(tmp_path, start_server):
    with HttpReceiver() as gotify, HttpReceiver() as pagerduty, HttpReceiver() as opsgenie:
        gotify.answers = [500]
        opsgenie.answers = [(429, {"Retry-After": "1"})]
        settings = write_settings(
            tmp_path / "settings.json",
            {"pi": {**LATE_USER, "notify": ["email", "webhook:tg", "webhook:pd", "webhook:og"]}},
            webhooks={
                "tg": {"format": "apprise", "url": f"gotify://{host_of(gotify)}/{TOKEN}"},
                "pd": {"format": "pagerduty", "routing_key": ROUTING_KEY, "url": pagerduty.url + "/v2/enqueue"},
                "og": {"format": "opsgenie", "api_key": API_KEY, "url": opsgenie.url + "/v2/alerts"},
            },
        )
        service = start_server(settings, METRICS_TOKEN=METRICS_TOKEN)
        counted = wait_until(
            lambda: (
                (counts := delivery_counts(service)).get(("apprise", "sent"))
                and counts.get(("opsgenie", "sent"))
                and counts
            ),
            timeout=30,
            message="every channel's delivery sent",
        )
        assert service.stop() == 0
    assert counted == {
        ("email", "sent"): 1.0,
        ("apprise", "retried"): 1.0,
        ("apprise", "sent"): 1.0,
        ("pagerduty", "sent"): 1.0,
        ("opsgenie", "retried"): 1.0,
        ("opsgenie", "sent"): 1.0,
    }
    assert [json.loads(body)["event_action"] for *_, body in pagerduty.requests] == ["trigger"]
    assert [path for path in opsgenie.paths] == ["/v2/alerts", "/v2/alerts"]
    db_path = tmp_path / "ping_listener.db"
    # Apprise's reason for the failure is logged, scrubbed.
    assert "late webhook 1 (pi) to tg not delivered (Failed to send Gotify notification" in service.log()
    assert TOKEN not in service.log() and TOKEN not in db_path.read_bytes().decode(errors="replace")


def test_an_apprise_delivery_killed_mid_retry_is_delivered_after_a_restart(tmp_path, start_server):
    with HttpReceiver() as json_service:
        json_service.answers = [503, HttpReceiver.HANG]
        settings = write_settings(
            tmp_path / "settings.json",
            {"pi": {**LATE_USER, "notify": ["webhook:tg"]}},
            webhooks={"tg": {"format": "apprise", "url": f"json://{host_of(json_service)}/hook"}},
        )
        db_path = tmp_path / "ping_listener.db"
        service = start_server(settings)
        # Refused once, then retried: that attempt never answered.
        json_service.wait_for_requests(2, timeout=30)
        assert query(db_path, "SELECT status, attempts FROM webhook_outbox") == [("queued", 1)]
        service.kill()
        restarted = start_server(settings)
        json_service.wait_for_requests(3, timeout=30)
        wait_until(lambda: query(db_path, "SELECT status, attempts FROM webhook_outbox") == [("sent", 2)], timeout=30)
        assert restarted.stop() == 0
    assert len({body for *_, body in json_service.requests}) == 1 and len(json_service.requests) == 3


def test_an_apprise_url_apprise_cannot_read_stops_startup_naming_the_key_and_no_token(tmp_path):
    settings = write_settings(
        tmp_path / "settings.json",
        {"pi": {**LATE_USER, "notify": ["webhook:tg"]}},
        webhooks={
            "tg": {"format": "apprise", "url": f"tgram://{TOKEN}"},
            # Apprise's own log would show this one whole.
            "odd": {"format": "apprise", "url": "nosuchscheme://secretA"},
        },
    )
    finished = run_server("--settings", str(settings), "--db", str(tmp_path / "ping_listener.db"))
    assert finished.returncode == 2
    assert [line for line in finished.stderr.splitlines() if line.startswith("webhooks.")] == [
        "webhooks.tg.url: Apprise cannot read this URL (tgram://…; the rest is not shown, as it may hold a token)",
        "webhooks.odd.url: Apprise cannot read this URL (nosuchscheme://…; the rest is not shown, as it may hold a"
        " token)",
    ]
    output = finished.stdout + finished.stderr
    assert TOKEN not in output and "secretA" not in output
