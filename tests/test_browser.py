"""The testing page in Debian's Chromium, driven by Playwright, against the real service (a subprocess on
127.0.0.1) and a real SMTP-over-TLS server."""

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from support import LIBFAKETIME, wait_until, write_settings

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


def switch_on(page, username):
    """Turn on `username`'s simulated pings and wait until the server sees it pinging."""
    device = card(page, username)
    device.get_by_role("switch").check()
    expect(device.locator(".state")).to_have_text("pinging")
    return device


def test_a_wrong_password_gets_a_clear_message_and_the_right_one_lists_every_user(page, service):
    page.goto(service.url)
    unlock(page, "guess")
    expect(page.get_by_role("alert")).to_have_text(
        "Wrong password: it is not the TESTING_PASSWORD this server was started with."
    )
    expect(page.locator("#devices")).to_be_hidden()
    unlock(page, PASSWORD)
    expect(page.get_by_role("heading", level=3)).to_have_text(["pi", HOSTILE_NAME])
    expect(card(page, "pi")).to_contain_text("max_sleep1 s")
    expect(page.get_by_label("Testing password")).to_be_hidden()


def test_every_switch_starts_off_and_no_ping_is_sent_until_one_is_turned_on(page, service):
    pings = []
    page.route("**/ping?**", lambda route: (pings.append(route.request.url), route.continue_()))
    page.goto(service.url)
    unlock(page, PASSWORD)
    for username in USERS:
        expect(card(page, username).get_by_role("switch")).not_to_be_checked()
    # Both devices go late unpinged, as real silent devices would: the page pinged neither.
    for username in USERS:
        expect(card(page, username).locator(".state")).to_have_text(re.compile("^(late|alerted)$"))
    assert pings == []
    expect(page.locator("#summary")).to_contain_text("2 devices: ")
    expect(page.locator("#summary")).to_contain_text("simulated pings: none")
    switch_on(page, "pi")
    assert pings and all("username=pi" in url for url in pings)
    log = page.locator("#log")
    expect(log).to_contain_text(
        "pi: simulated pings on, every 0.5 s: real pings, recorded in pi's history; while on, they hide a real"
        " outage of pi"
    )
    expect(page.locator("#summary")).to_contain_text("simulated pings: pi")


def test_the_log_is_in_the_order_of_the_servers_clock(page, service):
    page.goto(service.url)
    unlock(page, PASSWORD)
    pi = switch_on(page, "pi")
    pi.get_by_role("switch").uncheck()
    expect(pi.locator(".state")).to_have_text("alerted")
    expect(page.locator("#log")).to_contain_text("pi: late → alerted")
    epochs = page.locator("#log li").evaluate_all("lines => lines.map(line => Number(line.dataset.epoch))")
    assert len(epochs) > 5 and epochs == sorted(epochs, reverse=True)
    stamps = [stamp for stamp in page.locator("#log time").all_text_contents() if stamp]
    assert stamps == sorted(stamps, reverse=True)  # one day: clock times sort as strings


def test_an_alert_held_back_by_email_frequency_says_until_when(page, tmp_path, start_server):
    users = {"nas": {"monitor": True, "max_sleep": 1, "email_frequency": 3600}}
    service = start_server(write_settings(tmp_path / "settings.json", users), TESTING_PASSWORD=PASSWORD)
    page.goto(service.url)
    unlock(page, PASSWORD)
    nas = card(page, "nas")
    expect(nas.locator(".state")).to_have_text("alerted")  # never pinged: alerted a second after start
    expect(nas.locator(".next-alert")).to_have_text(re.compile(r"^reminder not before .* \(email_frequency\)$"))
    switch_on(page, "nas")
    nas.get_by_role("switch").uncheck()
    expect(nas.locator(".state")).to_have_text("late")
    held = re.compile(r"^alert not before \d{4}-\d\d-\d\d (\d\d:\d\d:\d\d) \S+ \(email_frequency\)$")
    expect(nas.locator(".next-alert")).to_have_text(held)
    until = held.match(nas.locator(".next-alert").text_content()).group(1)
    expect(page.locator("#log")).to_contain_text(
        f"nas: pinging → late (silent for more than its max_sleep of 1 s); next alert not before {until}"
        " (email_frequency holds it back)"
    )
    expect(page.locator("#summary")).to_contain_text("1 device: 1 late")


def test_the_test_email_button_sends_one_to_the_configured_recipient(page, service, smtp_server):
    page.goto(service.url)
    unlock(page, PASSWORD)
    expect(page.locator("#email")).to_contain_text("to the configured recipient, oncall@example.com")
    page.get_by_role("button", name="Send test email").click()
    expect(page.locator("#test-email-result")).to_have_text(
        "Test email to oncall@example.com accepted by the SMTP server."
    )
    tests = [m for _, to, m in smtp_server.messages if m["Subject"] == "Ping Listener test email"]
    assert [message["To"] for message in tests] == ["oncall@example.com"]


def test_without_a_recipient_the_page_says_so_and_sends_no_test_email(page, tmp_path, start_server, smtp_server):
    users = {"pi": {**USERS["pi"], "device_email": "pi-owner@example.com"}}
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"base_frequency": 0.05, "email_processing_frequency": 0.05, "users": users}))
    page.goto(start_server(settings, TESTING_PASSWORD=PASSWORD).url)
    unlock(page, PASSWORD)
    expect(page.locator("#email")).to_contain_text("the configured recipient, none (settings.json has no recipient)")
    page.get_by_role("button", name="Send test email").click()
    expect(page.locator("#test-email-result")).to_have_text(
        "Test email not sent: 409: settings.json has no recipient to send a test email to"
    )
    assert [m for _, _, m in smtp_server.messages if m["Subject"] == "Ping Listener test email"] == []


def test_a_device_switched_off_goes_late_and_its_alert_email_leaves(page, service, smtp_server, tmp_path):
    page.goto(service.url)
    unlock(page, PASSWORD)
    pi = switch_on(page, "pi")
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
    switch_on(page, HOSTILE_NAME)
    expect(page.locator("#log")).to_contain_text(f"ping from {HOSTILE_NAME}: 200")
    expect(page.locator("img")).to_have_count(0)
    assert page_problems == []


def test_the_page_fits_a_phone_screen(page, service):
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(service.url)
    unlock(page, PASSWORD)
    pi = switch_on(page, "pi")
    switch_on(page, HOSTILE_NAME)
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


def test_signal_buttons_show_running_and_failed_and_the_log_shows_the_recovery_email(
    page, tmp_path, start_server, smtp_server
):
    users = {"job": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}}
    service = start_server(write_settings(tmp_path / "settings.json", users), TESTING_PASSWORD=PASSWORD)
    page.goto(service.url)
    unlock(page, PASSWORD)
    job = card(page, "job")
    expect(job.locator(".state")).to_have_text("silent")  # switches start off: nothing sent yet
    job.get_by_role("button", name="send a success signal from job").click()
    expect(job.locator(".state")).to_have_text("pinging")
    job.get_by_role("button", name="send a start signal from job").click()
    expect(job.locator(".state")).to_have_text("running")
    expect(job.locator(".run-started")).to_have_text(re.compile(r"\d\d:\d\d:\d\d"))
    job.get_by_role("button", name="send a fail signal from job").click()
    expect(job.locator(".state")).to_have_text("failed")
    expect(job.locator(".last-duration")).to_have_text(re.compile(r"^\d+(\.\d+)? s$"))
    log = page.locator("#log")
    expect(log).to_contain_text("job: running → failed (failure reported)")
    expect(
        log.get_by_text(re.compile(r"^failure email #\d+ about job .* sent to oncall@example\.com$"))
    ).to_be_visible()
    job.get_by_role("button", name="send a success signal from job").click()
    expect(job.locator(".state")).to_have_text("pinging")
    expect(
        log.get_by_text(re.compile(r"^recovery email #\d+ about job .* sent to oncall@example\.com$"))
    ).to_be_visible()
    assert [message["Subject"] for _, _, message in smtp_server.messages] == ["job failure reported", "job is back"]


def test_a_scheduled_device_shows_its_schedule_and_its_switch_pings_at_each_expected_run(page, tmp_path, start_server):
    # The service's clock starts 10 s before the nightly 02:30 run in Paris (libfaketime): time for Chromium
    # to start and the page to be unlocked before the run.
    users = {
        "backup": {"monitor": True, "schedule": "30 2 * * *", "tz": "Europe/Paris", "grace": 5, "email_frequency": 60}
    }
    service = start_server(
        write_settings(tmp_path / "settings.json", users),
        TESTING_PASSWORD=PASSWORD,
        LD_PRELOAD=LIBFAKETIME,
        FAKETIME="@2026-11-30 02:29:50",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        TZ="Europe/Paris",
    )
    pings = []
    page.route("**/ping?**", lambda route: (pings.append(route.request.url), route.continue_()))
    page.goto(service.url)
    unlock(page, PASSWORD)
    backup = card(page, "backup")
    expect(backup).to_contain_text("schedule30 2 * * * in Europe/Paris, grace 5 s")
    expect(backup.locator(".expected-at")).to_have_text("2026-11-30 02:30:00 CET")
    expect(backup.locator(".state")).to_have_text("silent")  # still before the run
    switch_on(page, "backup")
    expect(page.locator("#log")).to_contain_text(
        "backup: simulated pings on, one at each expected time of its schedule"
    )
    # Pinged at once, then again at 02:30 (at the page's first poll after it, within its 5 s of grace):
    # tomorrow's run is expected next, and it never went late.
    expect(backup.locator(".expected-at")).to_have_text("2026-12-01 02:30:00 CET")
    assert len(pings) == 2
    expect(backup.locator(".state")).to_have_text("pinging")
    expect(page.locator("#log")).not_to_contain_text("backup: pinging → late")


def test_suppressed_and_snoozed_devices_and_a_digest_show_on_the_cards_and_in_the_log(
    page, tmp_path, start_server, smtp_server
):
    user = {"monitor": True, "max_sleep": 1, "email_frequency": 3600}
    users = {"router": user, "cam": {**user, "depends_on": "router"}, "nas": user}
    service = start_server(write_settings(tmp_path / "settings.json", users), TESTING_PASSWORD=PASSWORD)
    page.goto(service.url)
    unlock(page, PASSWORD)
    # None of them pings: a second after the start the router and nas are alerted in one digest, and the
    # camera behind the router is suppressed.
    cam = card(page, "cam")
    expect(cam.locator(".state")).to_have_text("suppressed")
    expect(cam.locator(".next-alert")).to_have_text("none while router is down (suppressed)")
    log = page.locator("#log")
    expect(log).to_contain_text(re.compile(r"cam(: \w+ → | is )suppressed"))
    expect(log).to_contain_text("in digest #1 “2 devices need attention: nas, router”")
    [(_, _, message)] = smtp_server.wait_for_messages(1)
    assert message["Subject"] == "2 devices need attention: nas, router"
    snooze = json.dumps({"username": "nas", "minutes": 5, "password": PASSWORD}).encode()
    assert service.post("/snooze", snooze, headers={"Content-Type": "application/json"})[0] == 200
    nas = card(page, "nas")
    expect(nas.locator(".state")).to_have_text("snoozed")
    expect(nas.locator(".next-alert")).to_have_text(re.compile(r"^none while snoozed \(until .*\)$"))
    expect(log).to_contain_text(re.compile(r"nas: alerted → snoozed \(until \d\d:\d\d:\d\d: no alert meanwhile\)"))


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
    expect(card(page, "nas").locator(".state")).to_have_text("silent")  # its switch starts off too
    expect(page.locator("#log")).to_contain_text(f"{HOSTILE_NAME}: no longer in the server's settings")
