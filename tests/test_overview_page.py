"""The overview page in Debian's Chromium, driven by Playwright, against the real service (a subprocess on
127.0.0.1, the real clock) over a database holding a day of history, and a real SMTP-over-TLS server.

`make screenshots` runs test_screenshots with OVERVIEW_SCREENSHOTS=docs, which writes docs/overview-*.png and
docs/testing-page-*.png: the overview's list and day view, and the testing page, at 1366 and 390 px, light and
dark, over a day with a failed, an alerted, a never-pinged, a scheduled and a dependent device. Without it,
test_screenshots runs at each width in one scheme, which checks the same.
"""

import dataclasses
import datetime
import http.client
import json
import os
import re
import time
import urllib.parse
import urllib.request
import zoneinfo
from pathlib import Path

import pytest
from playwright.sync_api import expect
from test_browser import HOSTILE_NAME, browser  # noqa: F401 (a fixture: one Chromium for this module too)

from overview import SLOT_SECONDS, SLOTS
from records import CheckOutcome, NewEmail, NewWebhook
from store import Store
from support import LIBFAKETIME, make_settings, wait_until, write_settings

PASSWORD = "a look, not a touch"
USERS = {
    "backup-server": {"monitor": True, "max_sleep": 600, "email_frequency": 3600},
    "camera": {"monitor": True, "max_sleep": 300, "email_frequency": 3600},
    "weather-station": {"monitor": True, "max_sleep": 1200, "email_frequency": 3600},
    # Never pinged since the start, and 2 s is short: late (then alerted) a moment after the service starts.
    "pi": {"monitor": True, "max_sleep": 2, "email_frequency": 3600},
    "nas": {"monitor": False, "max_sleep": 60, "email_frequency": 60},
    HOSTILE_NAME: {"monitor": False, "max_sleep": 60, "email_frequency": 60},
}
# backup-server pinged every 5 minutes for the last 24 hours but for these two hours.
GAP = (6 * 3600, 4 * 3600)
# How long before the timelines move by a slot the service's clock starts, in the test of that move.
SLIDE_AFTER = 15
CONSOLE_ALLOWED = re.compile(r"^Failed to load resource: the server responded with a status of 401")


@pytest.fixture
def page_problems():
    return []


@pytest.fixture
def open_page(browser, page_problems, start_server):  # noqa: F811
    """open_page(width, **context options): a fresh tab; the test fails on any console error or dialog.

    The tabs are closed before the services the test started are stopped (this fixture asks for
    start_server so that it is set up after it, then torn down before it): an open tab's refresh that
    met a stopped service would be logged as a console error.
    """
    contexts = []

    def open_tab(width, **options):
        context = browser.new_context(viewport={"width": width, "height": 900}, **options)
        contexts.append(context)
        tab = context.new_page()
        tab.on("dialog", lambda dialog: (page_problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
        tab.on("console", lambda message: _console_problem(message, page_problems))
        return tab

    yield open_tab
    for context in contexts:
        context.close()
    assert page_problems == []


def _console_problem(message, problems):
    # Chromium asks for /favicon.ico too: the service has one, so that it is no error either.
    if message.type == "error" and not CONSOLE_ALLOWED.match(message.text):
        problems.append(message.text)


@pytest.fixture
def history(tmp_path):
    """A database with a day of pings and an alert; returns (path, now, (gap start, gap end))."""
    path = tmp_path / "ping_listener.db"
    now = time.time()
    return path, now, write_history(path, now, USERS)


def write_history(path, now, users):
    """Write a day of pings of USERS up to `now`, and an alert, into a database of `users`; return backup-server's
    gap (its last ping before, its first ping after)."""
    store = Store(path)
    store.sync_users(make_settings(users).users, now - 86400)
    gap = (now - GAP[0], now - GAP[1])
    last_before_gap = None
    for at in range(int(now - 86400), int(now), 300):
        if gap[0] < at < gap[1]:
            continue
        if at <= gap[0]:
            last_before_gap = at
        store.record_ping("backup-server", at)
    for minute, at in enumerate(range(int(now - 86400), int(now), 60)):
        if not (now - 15 * 3600 < at < now - 13 * 3600) or minute % 4 == 0:  # fewer pings for two hours
            store.record_ping("camera", at + 7)
    for at in range(int(now - 86400), int(now), 600):
        store.record_ping("weather-station", at + 20)
    [backup] = [user for user in store.configured_users() if user.username == "backup-server"]
    backup = dataclasses.replace(backup, last_ping=last_before_gap)  # as the absence listener saw it then
    hook = NewWebhook("pager", "event-1", "s", "b", "https://example.net/logs")
    store.save_check_outcomes(
        [CheckOutcome(backup, None, (NewEmail("ops@example.com", "s", "b", "<m@x>"),), webhooks=(hook,))], gap[0] + 700
    )
    store.mark_sent([1], gap[0] + 702)
    store.finish_webhook(1, "sent", gap[0] + 703, None)
    store.close()
    return last_before_gap, min(at for at in range(int(now - 86400), int(now), 300) if at >= gap[1])


# USERS, and a device of each kind a person should tell apart at a glance: a job that failed (exit code 23, with
# its output), a cron job watched by its schedule, a device that depends on another, and one never pinged
# that is not late yet.
SHOWCASE = {
    **USERS,
    "backup-job": {"monitor": True, "max_sleep": 7200, "email_frequency": 3600},
    "nightly-cron": {
        "monitor": True,
        "schedule": "0 2 * * *",
        "tz": "Europe/Paris",
        "grace": 3600,
        "email_frequency": 3600,
    },
    "old-printer": {"monitor": True, "max_sleep": 1800, "email_frequency": 3600, "depends_on": "backup-server"},
    "new-sensor": {"monitor": True, "max_sleep": 86400, "email_frequency": 3600},
}
FAILURE_OUTPUT = (
    "sending incremental file list\n"
    "photos/2026/IMG_0042.jpg\n"
    'rsync: write failed on "/mnt/backup/photos.tar": No space left on device (28)\n'
    "rsync error: error in file IO (code 11) at receiver.c(378) [receiver=3.2.7]\n"
    "backup-job: giving up after 1 attempt\n"
)


@pytest.fixture
def showcase(tmp_path, start_server):
    """The service over a day of SHOWCASE's history, with both passwords; returns (service, now, failure time)."""
    path = tmp_path / "ping_listener.db"
    now = time.time()
    write_history(path, now, SHOWCASE)
    store = Store(path)
    failed_at = now - 1800
    for at in range(int(now - 86400), int(failed_at), 3600):
        store.record_ping("backup-job", at)
    store.record_ping("backup-job", failed_at - 95, "start")
    store.record_ping("backup-job", failed_at, "fail", 23, FAILURE_OUTPUT)
    [job] = [user for user in store.configured_users() if user.username == "backup-job"]
    store.save_check_outcomes(
        [CheckOutcome(job, None, (NewEmail("ops@example.com", "s", "b", "<f@x>"),), kind="failed")], failed_at + 5
    )
    store.mark_sent([2], failed_at + 6)
    # nightly-cron ran at 02:00 in Paris each day, for about a minute and a half.
    today = datetime.datetime.fromtimestamp(now, zoneinfo.ZoneInfo("Europe/Paris"))
    for days in (2, 1, 0):
        run = (today - datetime.timedelta(days=days)).replace(hour=2, minute=1, second=30).timestamp()
        if run < now:
            store.record_ping("nightly-cron", run)
    for at in range(int(now - 86400), int(now), 600):
        store.record_ping("old-printer", at + 45)
    store.close()
    settings = write_settings(tmp_path / "settings.json", SHOWCASE)
    service = start_server(settings, path, OVERVIEW_PASSWORD=PASSWORD, TESTING_PASSWORD=PASSWORD)
    return service, now, failed_at


@pytest.fixture
def service(tmp_path, start_server, history):
    return start_server(write_settings(tmp_path / "settings.json", USERS), history[0], OVERVIEW_PASSWORD=PASSWORD)


def unlock(page, password=PASSWORD):
    page.get_by_label("Overview password").fill(password)
    page.get_by_role("button", name="Unlock").click()


def wait_for_state(page, condition, **options):
    """Wait until the page's last /overview/state answer (its `latest`) meets the JavaScript `condition`.

    `latest` is null until the first answer arrives, some time after unlock() has clicked: a condition that
    read it before then would throw, and a thrown error ends Playwright's wait at once.
    """
    page.wait_for_function(f"() => latest !== null && ({condition})", **options)


def row(page, username):
    return page.locator(".row").filter(has=page.get_by_role("button", name=f"{username}: ", exact=False))


def test_it_unlocks_and_shows_the_summary_the_badges_and_a_known_gap_where_it_was(open_page, service, history):
    page = open_page(1366)
    page.goto(service.url + "/overview")
    unlock(page, "guess")
    expect(page.get_by_role("alert")).to_contain_text("Wrong password")
    unlock(page)
    expect(page.locator("#summary")).to_have_text("1 alerted · 2 silent · 3 pinging")
    expect(page.locator(".row .badge")).to_have_text(["alerted", "silent", "silent", "pinging", "pinging", "pinging"])
    expect(page.locator(".row .name")).to_have_text(
        ["pi", HOSTILE_NAME, "nas", "backup-server", "camera", "weather-station"]
    )
    timeline = row(page, "backup-server").locator("svg.timeline")
    expect(timeline.locator("rect.silence")).to_have_count(1)  # once the service has loaded the history
    [shade] = timeline.locator("rect.silence").all()
    start, end = float(timeline.get_attribute("data-start")), float(timeline.get_attribute("data-end"))
    gap_start, gap_end = history[2]
    x, width = float(shade.get_attribute("x")), float(shade.get_attribute("width"))
    assert x == pytest.approx((gap_start - start) / (end - start) * 960, abs=0.01)
    assert x + width == pytest.approx((gap_end - start) / (end - start) * 960, abs=0.01)
    alert_x = float(timeline.locator("line.alert").get_attribute("x1"))
    assert alert_x == pytest.approx((history[1] - GAP[0] + 700 - start) / (end - start) * 960, abs=0.01)
    assert float(timeline.locator("line.recovery").get_attribute("x1")) == pytest.approx(x + width, abs=0.01)
    expect(shade.locator("title")).to_have_text(re.compile(r"^silent 2 h 5 min: \d\d:\d\d:\d\d CES?T → "))
    expect(page.locator("img")).to_have_count(0)


def test_the_day_view_lists_the_gap_and_the_alert_and_is_keyboard_navigable(open_page, service, history):
    page = open_page(1366)
    page.goto(service.url + "/overview")
    unlock(page)
    button = page.get_by_role("button", name="backup-server: pinging; show its day")
    button.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#day-title")).to_be_focused()
    today = time.strftime("%Y-%m-%d", time.localtime(history[1]))
    expect(page.locator("#day-date")).to_have_value(today)
    gap_day = time.strftime("%Y-%m-%d", time.localtime(history[2][0]))
    page.locator("#day-date").fill(gap_day)
    gap_from, gap_to = (time.strftime("%H:%M:%S", time.localtime(at)) for at in history[2])
    silence = re.compile(rf"^silent 2 h 5 min: {gap_from} CES?T → {gap_to} CES?T$")
    expect(page.locator("#day-silences li").filter(has_text=silence)).to_have_count(1)
    expect(page.locator("#day-alerts")).to_contain_text("sent email to ops@example.com")
    expect(page.locator("#day-alerts")).to_contain_text("sent webhook:pager at")
    expect(page.locator("#day-alerts .badge")).to_have_text(["sent", "sent"])
    year, month, day = gap_day.split("-")
    logs = f"/logs?username=backup-server&year={year[2:]}&month={month}&day={day}"
    expect(page.locator("#day-logs")).to_have_attribute("href", logs)
    page.keyboard.press("Escape")
    expect(page.locator("#day")).to_be_hidden()
    expect(button).to_be_focused()


def test_a_device_going_late_shows_without_a_reload(open_page, service):
    page = open_page(1366)
    page.goto(service.url + "/overview")
    unlock(page)
    page.evaluate("window.notReloaded = true")
    asked = []
    page.on(
        "request",
        lambda request: asked.append(request.post_data_json.get("since")) if request.url.endswith("/state") else None,
    )
    badge = row(page, "pi").locator(".badge")
    expect(badge).to_have_text("alerted")
    deadline = time.monotonic() + 10
    # Each row's name and badge, read at once: pi turns late again a few seconds after its ping.
    shown = (
        "[...document.querySelectorAll('.row')]"
        ".map((r) => [r.querySelector('.name').textContent, r.querySelector('.badge').textContent])"
    )
    while dict(rows := page.evaluate(shown))["pi"] != "pinging":
        assert time.monotonic() < deadline, "pi never showed as pinging"
        assert service.get("/ping?username=pi")[0] == 200
        page.wait_for_timeout(500)
    # Rows sort problems first, in answers that hold only what changed too.
    assert [name for name, _ in rows] == [HOSTILE_NAME, "nas", "backup-server", "camera", "pi", "weather-station"]
    names = page.locator(".row .name")
    expect(badge).to_have_text(re.compile("^(late|alerted)$"))
    expect(page.locator("#summary")).to_contain_text(re.compile(r"1 (late|alerted)"))
    expect(names.first).to_have_text("pi")
    assert page.evaluate("window.notReloaded") is True
    assert asked and all(isinstance(since, str) for since in asked)  # each refresh asks for what changed


def test_a_snoozed_device_shows_until_when_without_a_reload(open_page, service):
    page = open_page(1366)
    page.goto(service.url + "/overview")
    unlock(page)
    expect(row(page, "camera").locator(".badge")).to_have_text("pinging")
    snooze = json.dumps({"username": "camera", "minutes": 90, "password": PASSWORD}).encode()
    status, until = service.post("/snooze", snooze, headers={"Content-Type": "application/json"})
    assert status == 200
    camera = row(page, "camera")
    expect(camera.locator(".badge")).to_have_text("snoozed")
    # The answer is "%y/%m/%d %H:%M:%S"; the page shows the local date and time in full.
    expect(camera.locator(".deadline")).to_have_text(re.compile(rf"^snoozed until 20{until.replace('/', '-')} CES?T$"))


def guess_from(service, source, password):
    """POST `password` to /overview/state from the local address `source` (any of 127.0.0.0/8); the status."""
    host, port = urllib.parse.urlsplit(service.url).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        body = json.dumps({"password": password})
        connection.request("POST", "/overview/state", body, {"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_open_page_goes_on_while_others_guess_from_its_own_address_and_many_more(open_page, service):
    page = open_page(1366)
    page.goto(service.url + "/overview")
    unlock(page)
    status = page.locator("#connection")
    expect(status).to_contain_text("Updated")
    # Five wrong passwords from the page's own address (as from behind one NAT), then fifteen from others:
    # that address and then every address are refused, even with the right password.
    sources = ["127.0.0.1"] * 5 + [f"127.0.0.{n}" for n in range(2, 17)]
    assert [guess_from(service, source, "guess") for source in sources] == [401] * 20
    assert guess_from(service, "127.0.0.1", PASSWORD) == 429
    assert guess_from(service, "127.0.0.99", PASSWORD) == 429
    # The page's session cookie keeps its refreshes answered (the fixture fails the test on any console error).
    for _ in range(2):
        shown = status.text_content()
        expect(status).not_to_have_text(shown)
        expect(status).to_have_text(re.compile("^Updated"))


def test_when_the_timelines_move_by_a_slot_the_page_moves_them_itself_as_a_fresh_load_draws_them(
    open_page, tmp_path, start_server
):
    # The service's clock (libfaketime, UTC) starts SLIDE_AFTER s before a slot begins: the open page's
    # refreshes see the window move, and get only the rows in which more than that changed (none here).
    slide_at = (int(time.time()) // SLOT_SECONDS + 2) * SLOT_SECONDS
    clock_start = slide_at - SLIDE_AFTER
    path = tmp_path / "ping_listener.db"
    store = Store(path)
    store.sync_users(make_settings(USERS).users, clock_start - 86400)
    for at in range(clock_start - 86400, clock_start, 300):  # pings in every slot, the first one too
        store.record_ping("backup-server", at)
    for at in range(clock_start - 86400, clock_start - 43200, 60):
        store.record_ping("camera", at)
    store.close()
    service = start_server(
        write_settings(tmp_path / "settings.json", USERS),
        path,
        OVERVIEW_PASSWORD=PASSWORD,
        LD_PRELOAD=LIBFAKETIME,
        FAKETIME=time.strftime("@%Y-%m-%d %H:%M:%S", time.gmtime(clock_start)),
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        TZ="UTC",
    )
    page = open_page(1366)
    page.goto(service.url + "/overview")
    unlock(page)
    wait_for_state(page, "latest.history_loading === 0")
    window_start = slide_at - SLOTS * SLOT_SECONDS
    assert page.evaluate("latest.window.start") == window_start, "the page began after the slide: too slow"
    wait_for_state(page, f"latest.window.start === {window_start + SLOT_SECONDS}", timeout=SLIDE_AFTER * 2000)
    sent = page.evaluate("[latest.complete, latest.users.map((user) => user.username)]")
    assert sent[0] is False and not {"backup-server", "camera"} & set(sent[1])
    fresh = open_page(1366)
    fresh.goto(service.url + "/overview")
    unlock(fresh)
    wait_for_state(fresh, f"latest.window.start === {window_start + SLOT_SECONDS} && latest.history_loading === 0")
    # Each row's ticks, where they are and how tall, and how many silences.
    drawn = (
        "[...document.querySelectorAll('.row')].map((row) => [row.dataset.username,"
        " [...row.querySelectorAll('rect.tick')].map((tick) => ['x', 'y', 'width', 'height'].map((name) =>"
        " tick.getAttribute(name))), row.querySelectorAll('rect.silence').length])"
    )
    moved = page.evaluate(drawn)
    assert moved == fresh.evaluate(drawn)
    assert len(dict((name, ticks) for name, ticks, _ in moved)["backup-server"]) == SLOTS - 1


def test_while_the_history_loads_the_page_says_so_in_words_and_draws_no_ticks(open_page, service):
    page = open_page(390)
    page.goto(service.url + "/overview")

    def still_loading(route):
        # The service's own answer, as it is while its upkeep has not loaded the last 24 hours yet.
        answer = route.fetch()
        state = answer.json()
        state["history_loading"] = len(state["users"])
        state["version"] = None  # the next answer then holds every row, as they really are
        for user in state["users"]:
            user["pings"] = None
        route.fulfill(response=answer, json=state)

    page.route("**/overview/state", still_loading)
    unlock(page)
    status = page.locator("#connection")
    expect(status).to_contain_text("The last 24 hours of 6 devices are still loading: their timelines follow.")
    expect(page.locator("svg.timeline.loading")).to_have_count(len(USERS))
    expect(row(page, "backup-server").locator("svg.timeline")).to_have_attribute(
        "aria-label", re.compile(r"^backup-server's last 24 hours \(still loading\): ")
    )
    expect(page.locator("svg.timeline rect.tick")).to_have_count(0)
    page.unroute("**/overview/state")
    expect(status).not_to_contain_text("loading")
    expect(page.locator("svg.timeline.loading")).to_have_count(0)
    expect(page.locator("svg.timeline rect.tick")).not_to_have_count(0)


def test_a_503_or_a_lost_connection_is_said_and_the_page_keeps_refreshing(open_page, page_problems, service):
    page = open_page(390)
    page.goto(service.url + "/overview")
    unlock(page)
    status = page.locator("#connection")
    expect(status).to_contain_text("Updated")
    answers = []

    def fail_twice(route):
        answers.append(route.request.url)
        if len(answers) == 1:
            route.fulfill(status=503, content_type="text/plain", body="storage unavailable: the disk is full")
        elif len(answers) == 2:
            route.abort("connectionrefused")
        else:
            route.continue_()

    page.route("**/overview/state", fail_twice)
    expect(status).to_have_text(
        re.compile(r"^The server answered 503: storage unavailable: the disk is full\. Showing")
    )
    expect(status).to_have_text(re.compile(r"^The server does not answer \(.*\)\. Showing what it said at .* Retrying"))
    expect(status).to_have_text(re.compile("^Updated"))
    expect(page.locator(".row")).to_have_count(len(USERS))
    # Chromium logs each failed load; those two were the point of this test.
    page_problems[:] = [
        problem for problem in page_problems if "503" not in problem and "CONNECTION_REFUSED" not in problem
    ]


def test_without_either_password_the_page_says_the_overview_is_disabled(open_page, tmp_path, start_server):
    service = start_server(write_settings(tmp_path / "settings.json", USERS))
    page = open_page(390)
    page.goto(service.url + "/overview")
    expect(
        page.get_by_text("overview is disabled: neither OVERVIEW_PASSWORD nor TESTING_PASSWORD is set")
    ).to_be_visible()
    expect(page.get_by_label("Overview password")).to_have_count(0)


def test_the_testing_password_alone_unlocks_the_overview_and_its_history_loads(tmp_path, start_server, history):
    service = start_server(write_settings(tmp_path / "settings.json", USERS), history[0], TESTING_PASSWORD=PASSWORD)

    def loading():
        request = urllib.request.Request(
            service.url + "/overview/state",
            json.dumps({"password": PASSWORD}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.load(answer)["history_loading"]

    wait_until(lambda: loading() == 0, timeout=20, interval=0.2, message="the history loaded by the upkeep loop")


PURPLE = "rgb(123, 31, 162)"  # the light palette's failed and failure colour (static/common.css)


def open_day(page, username, epoch):
    """Open `username`'s day view on the local day of `epoch`, written in the date field as a person would."""
    row(page, username).get_by_role("button").click()
    expect(page.locator("#day-title")).to_have_text(username)
    page.locator("#day-date").fill(time.strftime("%Y-%m-%d", time.localtime(epoch)))
    expect(page.locator("#day-summary")).to_contain_text(time.strftime("%Y-%m-%d: ", time.localtime(epoch)))


def test_a_failure_is_drawn_purple_and_its_day_shows_its_exit_code_run_time_and_output(open_page, showcase):
    service, _, failed_at = showcase
    page = open_page(1366)
    page.goto(service.url + "/overview")
    unlock(page)
    job = row(page, "backup-job")
    expect(job.locator(".badge")).to_have_text("failed")
    assert job.locator(".badge").evaluate("(badge) => getComputedStyle(badge).backgroundColor") == PURPLE
    assert job.evaluate("(row) => getComputedStyle(row).borderLeftColor") == PURPLE
    # The fail signal and its alert's email, both failures; nothing of it drawn as an alert.
    marks = job.locator("svg.timeline line.failure")
    expect(marks).to_have_count(2)
    expect(job.locator("svg.timeline line.alert")).to_have_count(0)
    assert {mark.evaluate("(line) => getComputedStyle(line).stroke") for mark in marks.all()} == {PURPLE}
    open_day(page, "backup-job", failed_at)
    [failure] = page.locator("#day-failures > li").all()
    hour = time.strftime("%H:%M:%S", time.localtime(failed_at))
    expect(failure).to_contain_text(re.compile(rf"^failure at {hour} CES?T · exit code 23 · run time 1 min 35 s"))
    lines = FAILURE_OUTPUT.splitlines()
    assert failure.locator("pre.output").first.text_content() == "\n".join(lines[:3])
    whole = failure.locator("details pre")
    expect(whole).to_be_hidden()
    failure.locator("summary").click()
    expect(whole).to_be_visible()
    assert whole.text_content() == FAILURE_OUTPUT
    chart = page.locator("#day-chart")
    expect(chart.locator("line.failure")).to_have_count(2)
    expect(chart.locator("line.alert")).to_have_count(0)
    expect(page.locator("#day-alerts > li")).to_have_text([re.compile(r"^failure alert at ")])


def test_a_device_never_pinged_or_not_watched_has_no_silence_band(open_page, showcase):
    service, _, _ = showcase
    page = open_page(1366)
    page.goto(service.url + "/overview")
    unlock(page)
    wait_for_state(page, "latest.history_loading === 0")
    sensor = row(page, "new-sensor")
    expect(sensor.locator(".badge")).to_have_text("silent")
    expect(sensor.locator(".last-ping")).to_have_text("never pinged")
    expect(sensor.locator(".deadline")).to_have_text(re.compile(r"^within (23|24) h"))
    expect(sensor.locator("rect.silence")).to_have_count(0)
    expect(row(page, "nas").locator("rect.silence")).to_have_count(0)
    expect(row(page, "nas").locator(".deadline")).to_have_text("never: not watched")
    # pi, never pinged and late: shaded only since the service began watching it, seconds ago, not all day.
    expect(row(page, "pi").locator(".badge")).to_have_text("alerted")
    shade = row(page, "pi").locator("rect.silence")
    expect(shade).to_have_count(1)
    assert float(shade.get_attribute("x")) > 950
    expect(shade.locator("title")).to_have_text(re.compile(r"^never pinged; watched since \d\d:\d\d:\d\d"))


# Each device name's line breaks, as (name, index of the first character on a new line), but those after a
# space or a hyphen: a break inside a word.
BREAKS_INSIDE_WORDS = """(selector) => [...document.querySelectorAll(selector)].flatMap((element) => {
  const text = element.firstChild;
  if (!text) return [];
  const tops = [...text.textContent].map((_, index) => {
    const range = document.createRange();
    range.setStart(text, index);
    range.setEnd(text, index + 1);
    return range.getBoundingClientRect().top;
  });
  return tops.flatMap((top, index) => index > 0 && top > tops[index - 1] + 1
    && !" -".includes(text.textContent[index - 1]) && text.textContent[index] !== " "
    ? [[text.textContent, index]] : []);
})"""


def test_at_390_px_no_device_name_breaks_inside_a_word_and_each_row_says_what_it_needs(open_page, showcase):
    service, now, _ = showcase
    page = open_page(390)
    page.goto(service.url + "/overview")
    unlock(page)
    expect(page.locator(".row")).to_have_count(len(SHOWCASE))
    assert page.evaluate(BREAKS_INSIDE_WORDS, ".row .name") == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    expect(row(page, "old-printer").locator(".parent")).to_have_text("depends on backup-server")
    expect(row(page, "nightly-cron").locator(".deadline-label")).to_have_text("next run's ping due")
    expect(row(page, "backup-job").locator(".deadline-label")).to_have_text("next ping due")
    expect(row(page, "backup-job").locator(".deadline")).to_have_text(re.compile(r"^within (1 h 59 min|2 h)$"))
    # The date field shows the date as every other date on the page, and one ping is a short bar.
    row(page, "nightly-cron").get_by_role("button").click()
    expect(page.locator("#day-date")).to_have_value(re.compile(r"^\d{4}-\d\d-\d\d$"))
    assert page.locator("#day-date").input_value() == time.strftime("%Y-%m-%d", time.localtime(now))
    page.locator("#day-before").click()
    yesterday = time.strftime("%Y-%m-%d", time.localtime(now - 86400))
    expect(page.locator("#day-summary")).to_have_text(re.compile(rf"^{yesterday}: 1 ping; expected on schedule "))
    [bar] = page.locator("#day-chart rect.tick").all()
    assert float(bar.get_attribute("height")) < 120 / 4
    tab = open_page(390)
    tab.goto(service.url + "/")
    tab.get_by_label("Testing password").fill(PASSWORD)
    tab.get_by_role("button", name="Unlock").click()
    expect(tab.locator(".user")).to_have_count(len(SHOWCASE))
    assert tab.evaluate(BREAKS_INSIDE_WORDS, ".user .name") == []
    printer = tab.locator(".user").filter(has=tab.get_by_role("heading", name="old-printer", exact=True))
    expect(printer.locator(".parent")).to_have_text("depends on backup-server")
    job = tab.locator(".user").filter(has=tab.get_by_role("heading", name="backup-job", exact=True))
    expect(job.locator(".state")).to_have_text("failed")
    assert job.locator(".state").evaluate("(badge) => getComputedStyle(badge).backgroundColor") == PURPLE
    assert job.evaluate("(card) => getComputedStyle(card).borderLeftColor") == PURPLE
    expect(job.locator(".max-sleep")).to_have_text("2 h")


# `make test` checks each width and each scheme once; `make screenshots` takes all four sets of pictures.
SCREENSHOTS = [(1366, "light"), (390, "dark")]
if os.environ.get("OVERVIEW_SCREENSHOTS"):
    SCREENSHOTS += [(1366, "dark"), (390, "light")]


@pytest.mark.parametrize(("width", "scheme"), SCREENSHOTS)
def test_screenshots(open_page, showcase, tmp_path, width, scheme):
    service, _, failed_at = showcase
    directory = Path(os.environ.get("OVERVIEW_SCREENSHOTS") or tmp_path)
    page = open_page(width, color_scheme=scheme)
    page.goto(service.url + "/overview")
    unlock(page)
    wait_for_state(page, "latest.history_loading === 0")
    expect(row(page, "pi").locator(".badge")).to_have_text("alerted")
    expect(row(page, "backup-job").locator(".badge")).to_have_text("failed")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for timeline in page.locator("svg.timeline").all():
        box = timeline.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width
    page.screenshot(path=directory / f"overview-{width}-{scheme}.png", full_page=True)
    open_day(page, "backup-job", failed_at)
    page.locator("#day-failures summary").click()
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.screenshot(path=directory / f"overview-day-{width}-{scheme}.png", full_page=True)
    tab = open_page(width, color_scheme=scheme)
    tab.goto(service.url + "/")
    tab.get_by_label("Testing password").fill(PASSWORD)
    tab.get_by_role("button", name="Unlock").click()
    expect(tab.locator(".user .state")).not_to_contain_text(["…"])
    assert tab.evaluate("document.documentElement.scrollWidth") <= width
    tab.screenshot(path=directory / f"testing-page-{width}-{scheme}.png", full_page=True)
