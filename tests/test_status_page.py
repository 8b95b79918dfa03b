"""A public status page in Debian's Chromium, driven by Playwright, against the real service (a subprocess on
127.0.0.1, the real clock) over a database holding 90 days of pings and alerted outages.

`make screenshots` runs test_status_screenshots with STATUS_SCREENSHOTS=docs, which writes docs/status-*.png
(the four of them; without it, the test runs at each width in one scheme, which checks the same).
"""

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect
from test_browser import browser  # noqa: F401 (a fixture: one Chromium for this module too)

from records import CheckOutcome, NewEmail
from store import Store
from support import make_settings, wait_until, write_settings

DAY = 86400
PING_EVERY = 3 * 3600
USERS = {
    "router": {"monitor": True, "max_sleep": 4 * 3600, "email_frequency": 3600},
    "nas": {"monitor": True, "max_sleep": 4 * 3600, "email_frequency": 3600},
    "backup-cron": {"monitor": True, "max_sleep": 2 * DAY, "email_frequency": 3600},
    # Pinged at the start only, with 2 s to spare: late a moment after the service starts.
    "weather-station": {"monitor": True, "max_sleep": 2, "email_frequency": 3600},
    "camera": {"monitor": True, "max_sleep": 4 * 3600, "email_frequency": 3600},
    "old-printer": {"monitor": False, "max_sleep": 60, "email_frequency": 3600},
    "secret-box": {"monitor": True, "max_sleep": 4 * 3600, "email_frequency": 3600},
}
PAGES = {
    "home": {
        "title": "Home lab",
        "users": ["router", "nas", "backup-cron", "weather-station", "camera", "old-printer"],
        "show_names": {"nas": "Storage (NAS)"},
    }
}
# Each device's outages: (days ago it went down, hours it lasted).
OUTAGES = {
    "router": [(61.3, 5), (12.6, 2)],
    "nas": [(80.2, 30), (44.5, 3), (20.1, 9), (3.4, 1)],
    "backup-cron": [(33.0, 12)],
    "camera": [(70.0, 50), (6.2, 4)],
    "secret-box": [(10.0, 10)],
}
STATES = ["up", "up", "failed", "late", "snoozed", "paused"]


@pytest.fixture(scope="module")
def built_history(tmp_path_factory):
    """A database with 90 days of pings every 3 hours, alerted outages (OUTAGES), a failed backup-cron and a
    snoozed camera, made once for the module; returns its path."""
    path = tmp_path_factory.mktemp("history") / "ping_listener.db"
    now = time.time()
    start = now - 90 * DAY
    store = Store(path)
    store.sync_users(make_settings(USERS).users, start)
    for name, outages in OUTAGES.items():
        downs = sorted((now - days_ago * DAY, now - days_ago * DAY + hours * 3600) for days_ago, hours in outages)
        at = start
        for down_at, up_at in downs:
            with store.ping_batch():
                while at < down_at - 60:
                    store.record_ping(name, at)
                    at += PING_EVERY
            [user] = [user for user in store.configured_users() if user.username == name]
            email = NewEmail("ops@example.com", f"{name} disconnection detected", "b", f"<{name}{down_at}@x>")
            store.save_check_outcomes([CheckOutcome(user, None, (email,), down_since=down_at)], down_at + 60)
            at = up_at
        with store.ping_batch():
            while at < now - 600:
                store.record_ping(name, at)
                at += PING_EVERY
    store.record_ping("router", now - 600)
    store.record_ping("weather-station", now - 1)
    store.record_ping("backup-cron", now - 7200, "fail")
    store.snooze("camera", now + 3600, now - 300)
    store.upkeep(now - 1)  # the service ran all along: its run marked seen until the test's service starts
    store.close()
    return path


@pytest.fixture
def history(built_history, tmp_path):
    """A copy of the module's history database (checkpointed into one file) for one test's service."""
    with sqlite3.connect(built_history) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copy = tmp_path / "history.db"
    shutil.copyfile(built_history, copy)
    return copy


@pytest.fixture
def service(tmp_path, start_server, history):
    settings = write_settings(tmp_path / "settings.json", USERS, status_pages=PAGES, badge_key="b" * 20)
    return start_server(settings, history)


@pytest.fixture
def page_problems():
    return []


@pytest.fixture
def open_page(browser, page_problems, start_server):  # noqa: F811
    """open_page(width, **context options): a fresh tab; the test fails on any console error or dialog (the
    Content-Security-Policy's refusals among them). Tabs close before the service stops."""
    contexts = []

    def open_tab(width, **options):
        context = browser.new_context(viewport={"width": width, "height": 900}, **options)
        contexts.append(context)
        tab = context.new_page()
        tab.on("dialog", lambda dialog: (page_problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
        tab.on(
            "console",
            lambda message: (
                message.type == "error"
                and not message.location.get("url", "").endswith("/favicon.ico")
                and page_problems.append(message.text)
            ),
        )
        return tab

    yield open_tab
    for context in contexts:
        context.close()
    assert page_problems == []


def open_status_page(page, service):
    """Load the home page until weather-station shows late (2 s after the service started; answers are cached
    up to 10 s), as every other device's state already is."""

    def loaded():
        page.goto(service.url + "/status/home")
        return page.locator(".device .state").all_text_contents() == STATES

    wait_until(loaded, timeout=30, interval=0.5, message="weather-station late on the status page")


def test_without_javascript_the_page_shows_every_state_and_uptime(open_page, service):
    page = open_page(1000, java_script_enabled=False)
    open_status_page(page, service)
    expect(page.locator(".device .state")).to_have_text(STATES)
    expect(page.locator(".device .name")).to_have_text(
        ["router", "Storage (NAS)", "backup-cron", "weather-station", "camera", "old-printer"]
    )
    expect(page.locator(".device").first.locator(".figure")).to_have_count(4)
    expect(page.locator(".bars button")).to_have_count(0)
    assert "secret-box" not in page.content()


def test_with_javascript_each_device_gets_90_daily_bars_and_a_tap_tells_the_days_outages(open_page, service):
    page = open_page(390)
    page.goto(service.url + "/status/home")
    nas = page.locator(".device").nth(1)
    expect(nas.locator(".bars button")).to_have_count(90)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # 44.5 days ago nas was down 3 hours: that day's bar is not full, and tapping it says when.
    bars = nas.locator(".bars button")
    titles = bars.evaluate_all("(bars) => bars.map((bar) => bar.title)")
    down_days = [index for index, title in enumerate(titles) if "down" in title]
    assert len(down_days) >= 4
    bars.nth(down_days[-1]).click()
    expect(nas.locator(".day")).to_contain_text("down")
    expect(nas.locator(".day")).to_be_visible()


# `make test` checks each width and each scheme once; `make screenshots` takes all four pictures.
SCREENSHOTS = [(1366, "light"), (390, "dark")]
if os.environ.get("STATUS_SCREENSHOTS"):
    SCREENSHOTS += [(1366, "dark"), (390, "light")]


@pytest.mark.parametrize(("width", "scheme"), SCREENSHOTS)
def test_status_screenshots(open_page, service, tmp_path, width, scheme):
    page = open_page(width, color_scheme=scheme)
    open_status_page(page, service)
    expect(page.locator(".device .state")).to_have_text(STATES)
    expect(page.locator(".bars button")).to_have_count(90 * 6)
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    directory = Path(os.environ.get("STATUS_SCREENSHOTS") or tmp_path)
    page.screenshot(path=directory / f"status-{width}-{scheme}.png", full_page=True)
