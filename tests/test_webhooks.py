"""webhooks.py: each format's request, how an answer decides a delivery's fate, and POSTs to a real local
HTTP(S) server."""

import contextlib
import email.header
import email.utils
import itertools
import json

import pytest

import outbound
import webhooks
from config import WebhookConfig
from records import WebhookEvent
from support import T0, HttpReceiver, Trickler, free_port, wait_until
from webhooks import DELIVERED, FAILED, RETRY, WebhookSender

EVENT = WebhookEvent(
    id="3f1c2a9e-5b7d-4e61-9a0c-2d8e4f6b1a37",
    event="late",
    username="pi",
    at=T0,
    last_ping=T0 - 130,
    title="pi disconnection detected",
    text="Ping Listener has heard nothing from pi for more than 2 minutes.\n",
    logs_url="https://example.net/logs?username=pi&year=26&month=09&day=21",
)


def body_of(format_, event=EVENT):
    body, headers = webhooks.COMPOSERS[format_](event)
    return json.loads(body), headers


def test_the_json_format_posts_exactly_the_documented_fields():
    document, headers = body_of("json")
    assert document == {
        "id": EVENT.id,
        "event": "late",
        "username": "pi",
        "at": T0,
        "last_ping": T0 - 130,
        "text": EVENT.text,
        "logs_url": EVENT.logs_url,
    }
    assert headers == {"Content-Type": "application/json"}


def test_the_json_format_says_null_for_a_user_that_never_pinged():
    event = WebhookEvent(EVENT.id, "back", "pi", T0, None, "pi is back", "pi is back.\n", EVENT.logs_url)
    document, _ = body_of("json", event)
    assert (document["event"], document["last_ping"]) == ("back", None)


def test_the_ntfy_format_sends_the_text_with_a_title_tag_priority_and_the_logs_link_on_tap():
    body, headers = webhooks.compose_ntfy(EVENT)
    assert body == EVENT.text.encode()
    assert headers == {
        "Content-Type": "text/plain; charset=utf-8",
        "Title": "pi disconnection detected",
        "Tags": "warning",
        "Priority": "high",
        "Click": EVENT.logs_url,
    }
    back = WebhookEvent(EVENT.id, "back", "pi", T0, T0, "pi is back", "pi is back.\n", EVENT.logs_url)
    assert (webhooks.compose_ntfy(back)[1]["Tags"], webhooks.compose_ntfy(back)[1]["Priority"]) == (
        "white_check_mark",
        "default",
    )


def test_an_ntfy_title_beyond_ascii_is_an_encoded_word_that_decodes_back():
    event = WebhookEvent(EVENT.id, "late", "café-pi", T0, None, "café-pi disconnection detected", "x", EVENT.logs_url)
    title = webhooks.compose_ntfy(event)[1]["Title"]
    assert title.isascii() and title.startswith("=?utf-8?")
    assert str(email.header.make_header(email.header.decode_header(title))) == "café-pi disconnection detected"


def test_the_slack_format_is_bold_title_and_text_with_mentions_and_links_escaped():
    event = WebhookEvent(EVENT.id, "failed", "<!channel>", T0, T0, "<!channel> failure reported", "a & b", "u")
    assert body_of("slack", event)[0] == {"text": "*&lt;!channel&gt; failure reported*\na &amp; b"}


def test_the_discord_format_mentions_nobody_and_is_cut_to_discords_limit():
    document, _ = body_of("discord")
    assert document == {"content": f"**{EVENT.title}**\n{EVENT.text}", "allowed_mentions": {"parse": []}}
    long = WebhookEvent(EVENT.id, "failed", "pi", T0, T0, "pi failure reported", "x" * 5000, EVENT.logs_url)
    content = body_of("discord", long)[0]["content"]
    assert len(content) == webhooks.DISCORD_MAX_CHARS and content.endswith("x…")


def test_the_gotify_format_has_a_title_message_priority_and_click_url():
    assert body_of("gotify")[0] == {
        "title": EVENT.title,
        "message": EVENT.text,
        "priority": 8,
        "extras": {"client::notification": {"click": {"url": EVENT.logs_url}}},
    }


def test_the_teams_format_is_an_adaptive_card_with_the_title_text_and_a_button_to_the_logs():
    document, headers = body_of("teams")
    assert headers == {"Content-Type": "application/json"}
    assert document["type"] == "message"
    [attachment] = document["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert [block["text"] for block in card["body"]] == [EVENT.title, EVENT.text]
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "That day's signals", "url": EVENT.logs_url}]


def test_every_request_carries_the_idempotency_key_and_the_webhooks_own_headers_cannot_replace_it():
    endpoint = WebhookConfig(
        "https://hooks.example.net/x", "json", (("Authorization", "Bearer tk"), ("Idempotency-Key", "mine"))
    )
    request = webhooks.build_request(endpoint, EVENT)
    assert request.get_method() == "POST"
    assert request.get_header("Idempotency-key") == EVENT.id
    assert request.get_header("Authorization") == "Bearer tk"
    assert request.get_header("Content-type") == "application/json"


@pytest.mark.parametrize(
    ("status", "fate"),
    [
        (200, DELIVERED),
        (201, DELIVERED),
        (204, DELIVERED),
        (408, RETRY),
        (429, RETRY),
        (500, RETRY),
        (502, RETRY),
        (503, RETRY),
        (301, FAILED),
        (302, FAILED),
        (307, FAILED),
        (400, FAILED),
        (401, FAILED),
        (403, FAILED),
        (404, FAILED),
        (410, FAILED),
    ],
)
def test_2xx_is_delivered_408_429_and_5xx_are_retried_and_the_rest_fail_for_good(status, fate):
    result = webhooks.outcome(status, None, T0)
    assert result.status == fate
    assert result.error == (None if fate == DELIVERED else f"HTTP {status}")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        (email.utils.formatdate(T0 + 90, usegmt=True), 90.0),
        (email.utils.formatdate(T0 - 90, usegmt=True), 0.0),
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header, seconds):
    assert webhooks.retry_after_seconds(header, T0) == seconds
    assert webhooks.outcome(429, header, T0).retry_after == seconds


@pytest.fixture
def https_hook(ca):
    server = HttpReceiver(ca)
    yield server
    server.stop()


def sender(timeout=5):
    return WebhookSender(lambda: T0, timeout=timeout)


@contextlib.contextmanager
def trust(ca):
    """Trust `ca` for the WebhookSenders made meanwhile (they read SSL_CERT_FILE when made)."""
    with ca.cert_pem.tempfile() as path, pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", path)
        yield


@pytest.mark.usefixtures("trust_test_ca")
@pytest.mark.parametrize("format_", webhooks.COMPOSERS)
def test_each_format_is_posted_over_https_as_composed(https_hook, format_):
    endpoint = WebhookConfig(https_hook.url + "/hook?token=t", format_, (("X-Team", "ops"),))
    assert sender().send(endpoint, EVENT) == webhooks.DeliveryResult(DELIVERED)
    [(method, path, headers, body)] = https_hook.requests
    expected_body, expected_headers = webhooks.COMPOSERS[format_](EVENT)
    assert (method, path, body) == ("POST", "/hook?token=t", expected_body)
    assert {name: headers[name] for name in expected_headers} == expected_headers
    assert (headers["Idempotency-Key"], headers["X-Team"], headers["User-Agent"]) == (EVENT.id, "ops", "ping-listener")


@pytest.mark.usefixtures("trust_test_ca")
def test_an_error_answer_is_retried_with_its_retry_after_or_failed_with_the_start_of_its_body(https_hook):
    https_hook.answers = [(429, {"Retry-After": "30"}), 404]
    endpoint = WebhookConfig(https_hook.url, "json")
    assert sender().send(endpoint, EVENT) == webhooks.DeliveryResult(RETRY, "HTTP 429: ok", 30.0)
    assert sender().send(endpoint, EVENT) == webhooks.DeliveryResult(FAILED, "HTTP 404: ok")


@pytest.mark.usefixtures("trust_test_ca")
def test_a_redirect_is_not_followed_and_fails_for_good(https_hook):
    https_hook.answers = [(302, {"Location": https_hook.url + "/elsewhere"})]
    result = sender().send(WebhookConfig(https_hook.url, "json"), EVENT)
    assert (result.status, result.error) == (FAILED, "HTTP 302: ok")
    assert len(https_hook.requests) == 1


def test_a_certificate_the_system_does_not_trust_is_refused_and_retried(https_hook, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    result = sender().send(WebhookConfig(https_hook.url, "json"), EVENT)
    assert (result.status, result.unreachable) == (RETRY, True)
    assert "CERTIFICATE_VERIFY_FAILED" in result.error
    assert https_hook.requests == []


def test_a_refused_connection_is_retried():
    result = sender().send(WebhookConfig(f"http://127.0.0.1:{free_port()}/", "json"), EVENT)
    assert (result.status, result.unreachable) == (RETRY, True)
    assert "ConnectionRefusedError" in result.error


@pytest.mark.usefixtures("trust_test_ca")
def test_a_server_that_never_answers_is_given_up_after_the_timeout_and_retried(https_hook):
    https_hook.answers = [HttpReceiver.HANG]
    result = sender(timeout=0.3).send(WebhookConfig(https_hook.url, "json"), EVENT)
    assert (result.status, result.unreachable) == (RETRY, True)
    assert "timed out" in result.error


class Queued:
    def __init__(self, delivery_id, webhook):
        self.id = delivery_id
        self.webhook = webhook
        self.event = EVENT


def test_once_a_webhook_does_not_answer_its_other_deliveries_are_retried_without_being_tried():
    with HttpReceiver(ca=None) as hung:
        hung.answers = [HttpReceiver.HANG]
        endpoint = WebhookConfig(hung.url, "json")
        settled = [
            (d.id, r.status, r.unreachable)
            for d, r in sender(timeout=0.5).send_in_order(endpoint, [Queued(1, "hung"), Queued(2, "hung")])
        ]
    assert settled == [(1, RETRY, True), (2, RETRY, True)]
    assert len(hung.requests) == 1


def test_a_webhook_removed_from_the_settings_fails_its_deliveries():
    [(_, result)] = sender().send_in_order(None, [Queued(5, "gone")])
    assert (result.status, result.error) == (FAILED, "webhook gone is no longer in settings.json")


def trickled(answer):
    """The pieces of `answer`, a byte each."""
    return lambda: (answer[i : i + 1] for i in range(len(answer)))


# An answer whose bytes come every TRICKLE_INTERVAL s: whole, it takes about 5 s, five times the deadline below.
TRICKLED_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
TRICKLE_INTERVAL = 5.0 / len(TRICKLED_ANSWER)


def test_a_webhook_that_trickles_its_answer_is_given_up_at_its_deadline_and_retried(ca):
    deadline, timeout = 1.0, 5.0
    # Each byte comes well within the per-operation timeout: only the whole-operation deadline can end it.
    assert timeout > TRICKLE_INTERVAL
    with Trickler(trickled(TRICKLED_ANSWER), TRICKLE_INTERVAL, ca) as trickling, trust(ca):
        result = WebhookSender(lambda: T0, timeout=timeout, deadline=deadline).send(
            WebhookConfig(trickling.url, "json"), EVENT
        )
        # Given up before the webhook had finished its answer (which would have been a 200).
        assert wait_until(lambda: trickling.closed_by_client == 1)
        assert trickling.sent[0] < len(TRICKLED_ANSWER)
    assert (result.status, result.unreachable) == (RETRY, True)
    assert result.error.startswith("no whole answer within the 1 s deadline")


def test_a_webhook_answering_200_with_an_endless_body_is_delivered_and_its_body_left_unread():
    endless = 1024 * outbound.ANSWER_LIMIT
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    chunk = b"x" * outbound.ANSWER_LIMIT
    with Trickler(lambda: itertools.chain([head], itertools.repeat(chunk, 1024))) as flooding:
        result = sender().send(WebhookConfig(flooding.url, "json"), EVENT)
        assert wait_until(lambda: flooding.closed_by_client == 1)
    assert result == webhooks.DeliveryResult(DELIVERED)
    # What the webhook managed to send before the connection was closed: what the kernel's buffers hold,
    # a few MiB at most, never the 64 MiB of the body.
    assert flooding.sent[0] < endless // 4


def test_an_answer_whose_headers_never_end_is_read_no_further_than_64_kib_and_retried():
    head = b"HTTP/1.1 200 OK\r\n"
    # 100 header lines of 60 KiB each would be 6 MB read before http.client itself gave up.
    line = b"X-Padding: " + b"x" * 60_000 + b"\r\n"
    with Trickler(lambda: itertools.chain([head], itertools.repeat(line, 200))) as flooding:
        result = sender().send(WebhookConfig(flooding.url, "json"), EVENT)
    assert (result.status, result.unreachable) == (RETRY, True)
    assert result.error == f"AnswerTooLarge: the answer went on past {outbound.ANSWER_LIMIT} bytes"
