"""The testing page in Debian's Chromium, driven by Playwright, against the real service (a subprocess on
127.0.0.1) and a real SMTP-over-TLS server."""

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from support import wait_until, write_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000
PASSWORD = "correct horse battery staple"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
# A max_sleep of 1 s: the page pings every 0.5 s, and a device switched off is late a second later.
USERS = {
    "pi": {"monitor": True, "max_sleep": 1, "email_frequency": 1},
    HOSTILE_NAME: {"monitor": True, "max_sleep": 1, "email_frequency": 60},
}


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page_problems():
    """Dialogs opened and Content-Security-Policy violations seen by `page`."""
    return []


@pytest.fixture
def page(browser, page_problems):
    """A fresh desktop-sized tab; the test fails if a dialog opens or the CSP blocks anything."""
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.on("dialog", lambda dialog: (page_problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    tab.on(
        "console",
        lambda message: "Content Security Policy" in message.text and page_problems.append(message.text),
    )
    yield tab
    context.close()
    assert page_problems == []


@pytest.fixture
def service(tmp_path, start_server):
    return start_server(write_settings(tmp_path / "settings.json", USERS), TESTING_PASSWORD=PASSWORD)


def unlock(page, password):
    page.get_by_label("Testing password").fill(password)
    page.get_by_role("button", name="Unlock").click()


def card(page, username):
    return page.locator(".user").filter(has=page.get_by_role("heading", name=username, exact=True))


def test_a_wrong_password_gets_a_clear_message_and_the_right_one_lists_every_user(page, service):
    page.goto(service.url)
    unlock(page, "guess")
    expect(page.get_by_role("alert")).to_have_text(
        "Wrong password: it is not the TESTING_PASSWORD this server was started with."
    )
    expect(page.locator("#devices")).to_be_hidden()
    unlock(page, PASSWORD)
    expect(page.get_by_role("heading", level=3)).to_have_text(["pi", HOSTILE_NAME])
    for username in USERS:
        expect(card(page, username).locator(".state")).to_have_text("pinging")
    expect(card(page, "pi")).to_contain_text("max_sleep1 s")
    expect(page.get_by_label("Testing password")).to_be_hidden()


def test_a_device_switched_off_goes_late_and_its_alert_email_leaves(page, service, smtp_server, tmp_path):
    page.goto(service.url)
    unlock(page, PASSWORD)
    pi = card(page, "pi")
    expect(pi.locator(".state")).to_have_text("pinging")
    pi.get_by_role("switch").uncheck()
    expect(pi.locator(".state")).to_have_text(re.compile("^(late|alerted)$"))

    # Only an alert about this silence names a last ping: the page had not pinged pi before it was unlocked.
    def alerts_after_a_ping():
        return [
            message
            for _, _, message in list(smtp_server.messages)
            if message["Subject"] == "pi disconnection detected" and "Last ping:" in message.get_content()
        ]

    wait_until(alerts_after_a_ping, message="an alert about pi's silence reaching the SMTP server")
    expect(pi.locator(".state")).to_have_text("alerted")
    log = page.locator("#log")
    expect(log).to_contain_text("pi: pinging → late (silent for more than its max_sleep of 1 s)")
    sent = re.compile(r"^alert email #\d+ about pi \(last ping \d\d:\d\d:\d\d\) sent to oncall@example\.com$")
    expect(log.get_by_text(sent).first).to_be_visible()
    page.screenshot(path=tmp_path / "testing-page.png")


def test_a_username_made_of_html_is_shown_as_text(page, page_problems, service):
    page.goto(service.url)
    unlock(page, PASSWORD)
    hostile = card(page, HOSTILE_NAME)
    expect(hostile.get_by_role("heading")).to_have_text(HOSTILE_NAME)
    # It pings under its own name, so the name was URL-encoded, and the answer is logged as text.
    expect(hostile.locator(".state")).to_have_text("pinging")
    expect(page.locator("#log")).to_contain_text(f"ping from {HOSTILE_NAME}: 200")
    expect(page.locator("img")).to_have_count(0)
    assert page_problems == []


def test_the_page_fits_a_phone_screen(page, service):
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(service.url)
    unlock(page, PASSWORD)
    pi = card(page, "pi")
    expect(pi.locator(".state")).to_have_text("pinging")
    expect(page.locator("#log")).to_contain_text(f"ping from {HOSTILE_NAME}: 200")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    switch = pi.get_by_role("switch").bounding_box()
    assert switch["x"] >= 0 and switch["x"] + switch["width"] <= 375


def test_without_a_testing_password_the_page_says_testing_mode_is_disabled(page, tmp_path, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", USERS))
    page.goto(service.url)
    expect(page.get_by_text("testing mode is disabled: TESTING_PASSWORD is not set")).to_be_visible()
    expect(page.get_by_label("Testing password")).to_have_count(0)
    assert service.get("/ping?username=pi")[0] == 200


def test_a_storage_problem_is_logged_and_the_page_keeps_watching(page, service):
    refusals = []

    def refuse_once(route):
        if refusals:
            route.continue_()
        else:
            refusals.append(route.request.url)
            route.fulfill(status=503, content_type="text/plain", body="storage unavailable: the disk is full")

    page.goto(service.url)
    unlock(page, PASSWORD)
    clock = page.locator("#server-time span")
    expect(clock).not_to_be_empty()
    page.route("**/testing/state", refuse_once)
    expect(page.locator("#log")).to_contain_text("state: 503: storage unavailable: the disk is full")
    shown_after_refusal = clock.text_content()
    expect(clock).not_to_have_text(shown_after_refusal)  # the next polls still arrive
    expect(page.get_by_role("heading", level=3)).to_have_text(["pi", HOSTILE_NAME])


def test_testing_mode_disabled_while_the_page_is_open_locks_it(page, service):
    # The page recognises it by the server's header, whatever the message says.
    disabled = {"Ping-Listener-Testing": "disabled"}
    page.goto(service.url)
    unlock(page, PASSWORD)
    expect(page.locator("#server-time span")).not_to_be_empty()
    page.route(
        "**/testing/state",
        lambda route: route.fulfill(status=503, content_type="text/plain", headers=disabled, body="switched off"),
    )
    expect(page.locator("#log")).to_contain_text("locked: 503: switched off")
    expect(page.get_by_label("Testing password")).to_be_visible()


def test_the_page_follows_a_reload_of_the_settings_without_a_reload_of_its_own(page, service, tmp_path):
    page.goto(service.url)
    unlock(page, PASSWORD)
    expect(page.get_by_role("heading", level=3)).to_have_text(["pi", HOSTILE_NAME])
    write_settings(
        tmp_path / "settings.json",
        {
            "pi": {"monitor": True, "max_sleep": 30, "email_frequency": 1},
            "nas": {"monitor": True, "max_sleep": 2, "email_frequency": 1},
        },
    )
    service.reload()
    expect(page.get_by_role("heading", level=3)).to_have_text(["pi", "nas"])
    expect(card(page, "pi")).to_contain_text("max_sleep30 s")
    expect(card(page, "nas").locator(".state")).to_have_text("pinging")
    expect(page.locator("#log")).to_contain_text(f"{HOSTILE_NAME}: no longer in the server's settings")
