"""The overview's data (overview.py) over a real store: the 24-hour summary, its upkeep, and one user's day."""

import json
import random
import threading
import time

import pytest

import overview
from overview import SLOT_SECONDS, SLOTS, Overview, overview_day
from records import CheckOutcome, NewEmail, NewWebhook, StoreUnavailableError
from support import BACKENDS, T0, make_settings

USERS = {
    "backup": {"monitor": True, "max_sleep": 600, "email_frequency": 3600},
    "pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600},
    "nas": {"monitor": False, "max_sleep": 60, "email_frequency": 60},
}
# The window of T0: its last slot holds T0.
WINDOW_START = (T0 // SLOT_SECONDS - SLOTS + 1) * SLOT_SECONDS


def synced(store, users=USERS, now=T0 - 2 * 86400):
    store.sync_users(make_settings(users).users, now)
    return store


def ping_every(store, username, start, end, step):
    at = start
    while at < end:
        store.record_ping(username, at)
        at += step


def loaded(store, now=T0):
    """A new Overview of `store` whose background upkeep has loaded every history at `now`."""
    overview = Overview(store)
    while overview.keep_up(now):
        pass
    return overview


def overview_state(store, overview, now):
    """The overview's answer at `now`, read as JSON."""
    return json.loads(overview.state(now))


def by_name(state):
    return {user["username"]: user for user in state["users"]}


def alert(store, username, now):
    [user] = [user for user in store.configured_users() if user.username == username]
    store.save_check_outcomes([CheckOutcome(user, None, (NewEmail("ops@example.com", "s", "b", "<m@x>"),))], now)


@BACKENDS
def test_a_gap_longer_than_max_sleep_is_a_silence_with_its_alert_and_recovery(store):
    synced(store)
    gap = (T0 - 6 * 3600, T0 - 4 * 3600)
    unalerted = (T0 - 20 * 3600, T0 - 19 * 3600)
    ping_every(store, "backup", T0 - 86400, unalerted[0] + 1, 300)
    ping_every(store, "backup", unalerted[1], gap[0] + 1, 300)
    ping_every(store, "backup", gap[1], T0, 300)
    alert(store, "backup", gap[0] + 700)
    backup = by_name(overview_state(store, loaded(store, T0), T0))["backup"]
    last_before_gap = unalerted[1] + ((gap[0] - unalerted[1]) // 300) * 300
    assert [(silence["start"], silence["end"]) for silence in backup["silences"]] == [
        (unalerted[0], unalerted[1]),
        (last_before_gap, gap[1]),
    ]
    assert [event["at"] for event in backup["alerts"]] == [gap[0] + 700]
    assert [event["at"] for event in backup["recoveries"]] == [gap[1]]
    assert backup["state"] == "pinging"


@BACKENDS
def test_slots_count_pings_as_the_bit_length_of_their_number(store):
    synced(store)
    last_slot_start = WINDOW_START + (SLOTS - 1) * SLOT_SECONDS
    ping_every(store, "pi", last_slot_start, last_slot_start + 5 * 60, 60)  # 5 pings: "3"
    store.record_ping("pi", WINDOW_START)  # 1 ping in the first slot: "1"
    store.record_ping("pi", WINDOW_START - 1)  # before the window: not shown
    pi = by_name(overview_state(store, loaded(store, T0), T0))["pi"]
    assert pi["pings"] == "1" + "0" * (SLOTS - 2) + "3"
    # 255 pings: "8"; 256: "9", and 300 as many (a count is kept up to 255, the level tells the rest).
    for slot, count in ((1, 255), (2, 256), (3, 300)):
        ping_every(store, "pi", WINDOW_START + slot * SLOT_SECONDS, WINDOW_START + slot * SLOT_SECONDS + count, 1)
    assert by_name(overview_state(store, loaded(store, T0), T0))["pi"]["pings"][:5] == "18990"


@BACKENDS
def test_rows_sort_problems_first_and_the_summary_counts_each_state(store):
    synced(store, now=T0 - 1000)  # backup: late, pi: pinging, nas: silent
    store.record_ping("pi", T0 - 10)
    state = overview_state(store, loaded(store, T0), T0)
    assert [(user["username"], user["state"]) for user in state["users"]] == [
        ("backup", "late"),
        ("nas", "silent"),
        ("pi", "pinging"),
    ]
    assert state["summary"] == [
        {"state": "late", "users": 1},
        {"state": "silent", "users": 1},
        {"state": "pinging", "users": 1},
    ]
    backup = by_name(state)["backup"]
    assert (backup["late_at"], backup["late_at_local"]) == (T0 - 400, "2026-09-21 16:06:40 CEST")
    # Never pinged: silent since monitoring began (not since before the window), as it is late.
    start = {"start": T0 - 1000, "start_local": "2026-09-21 15:56:40 CEST", "end": None, "end_local": None}
    assert backup["silences"] == [start]


@BACKENDS
def test_a_device_never_pinged_and_not_yet_late_or_not_monitored_has_no_silence(store):
    synced(store, now=T0 - 100)  # backup (600 s) is not late yet; nas is not monitored
    ping_every(store, "nas", T0 - 86400, T0 - 43200, 60)  # then silent for half a day: it is not watched
    store.record_ping("nas", T0 - 100)
    state = by_name(overview_state(store, loaded(store, T0), T0))
    assert (state["backup"]["state"], state["backup"]["last_ping"], state["backup"]["silences"]) == ("silent", None, [])
    assert (state["nas"]["state"], state["nas"]["silences"]) == ("silent", [])
    assert state["backup"]["parent"] is None


@BACKENDS
def test_a_failure_is_drawn_as_a_failure_not_an_alert_and_a_dependent_row_names_its_parent(store):
    users = {**USERS, "cam": {"monitor": True, "max_sleep": 600, "email_frequency": 3600, "depends_on": "pi"}}
    synced(store, users, now=T0 - 3600)
    store.record_ping("pi", T0 - 120, "fail", 23, "disk full")
    [pi] = [user for user in store.configured_users() if user.username == "pi"]
    store.save_check_outcomes(
        [CheckOutcome(pi, None, (NewEmail("ops@example.com", "s", "b", "<m@x>"),), kind="failed")], T0 - 110
    )
    state = by_name(overview_state(store, loaded(store, T0), T0))
    assert state["pi"]["state"] == "failed"
    assert [event["at"] for event in state["pi"]["failures"]] == [T0 - 120, T0 - 110]
    assert state["pi"]["alerts"] == []
    assert state["cam"]["parent"] == "pi"


def test_a_state_from_a_newer_rule_sorts_after_the_known_problems():
    ranks = [overview._state_rank(state) for state in ("failed", "alerted", "late", "new-state", "silent", "pinging")]
    assert ranks == sorted(ranks)


@BACKENDS
def test_later_reads_add_only_new_pings_and_find_a_silence_that_ended_meanwhile(store):
    synced(store)
    recent = loaded(store)
    ping_every(store, "pi", T0 - 600, T0, 30)
    first = by_name(overview_state(store, recent, T0))["pi"]
    assert first["silences"] == []
    store.record_ping("pi", T0 + 500)  # after 530 s of silence: longer than max_sleep (60 s)
    later = by_name(overview_state(store, recent, T0 + 501))["pi"]
    assert [(silence["start"], silence["end"]) for silence in later["silences"]] == [(T0 - 30, T0 + 500)]
    # The same as a summary read afresh.
    assert later == by_name(overview_state(store, loaded(store, T0 + 501), T0 + 501))["pi"]


@BACKENDS
def test_a_ping_recorded_in_the_next_slot_after_an_answer_read_its_clock_is_counted_once_the_window_reaches_it(store):
    synced(store)
    recent = loaded(store)
    boundary = (T0 // SLOT_SECONDS + 1) * SLOT_SECONDS
    store.record_ping("pi", boundary + 1)  # after the next answer took its clock, before it read the store
    assert by_name(overview_state(store, recent, boundary - 0.5))["pi"]["pings"][-1] == "0"
    after = by_name(overview_state(store, recent, boundary + 2))["pi"]
    assert after["pings"][-1] == "1"
    assert after == by_name(overview_state(store, loaded(store, boundary + 2), boundary + 2))["pi"]


def test_the_window_slides_and_forgets_what_left_it(store):
    synced(store)
    recent = loaded(store)
    store.record_ping("pi", WINDOW_START + 10)
    store.record_ping("pi", WINDOW_START + 10 + 3600)  # a silence of an hour
    assert by_name(overview_state(store, recent, T0))["pi"]["pings"][:5] == "10001"
    later = T0 + 2 * SLOT_SECONDS
    slid = by_name(overview_state(store, recent, later))["pi"]
    assert slid["pings"][:3] == "001"
    assert slid == by_name(overview_state(store, loaded(store, later), later))["pi"]
    a_day_later = T0 + 86400 + 3600 + 1000
    assert by_name(overview_state(store, recent, a_day_later))["pi"]["pings"] is None  # loaded again
    while recent.keep_up(a_day_later):
        pass
    gone = by_name(overview_state(store, recent, a_day_later))["pi"]
    assert gone["pings"] == "0" * SLOTS
    assert [silence["end"] for silence in gone["silences"]] == [None]


@BACKENDS
def test_the_day_lists_its_silences_with_their_length_and_its_alerts_with_their_emails(store):
    synced(store)
    day_start = time.mktime((2026, 9, 21, 0, 0, 0, 0, 0, -1))
    store.record_ping("backup", day_start - 100)  # the day begins silent: 700 s > 600 s
    store.record_ping("backup", day_start + 600)
    ping_every(store, "backup", day_start + 600, day_start + 3600, 60)
    alert(store, "backup", day_start + 3600 + 700)
    day = overview_day(store, "backup", day_start, day_start + 86400, T0)
    assert day["pings"] == 51
    assert sum(day["columns"]) == 51 and len(day["columns"]) == 288
    # Columns of 5 minutes: the two pings at 00:10:00 and those to 00:14:00, then five each; 00:15:00 opens the next.
    assert day["columns"][:13] == [0, 0, 6, 5, 5, 5, 5, 5, 5, 5, 5, 5, 0]
    assert [(silence["start"], silence["end"], silence["seconds"]) for silence in day["silences"]] == [
        (day_start - 100, day_start + 600, 700),
        (day_start + 3540, None, T0 - day_start - 3540),  # still silent at T0
    ]
    assert day["silences"][0]["start_local"] == "2026-09-20 23:58:20 CEST"
    [alerted] = day["alerts"]
    assert alerted["at_local"] == "2026-09-21 01:11:40 CEST"
    assert [(email["recipient"], email["status"]) for email in alerted["emails"]] == [("ops@example.com", "queued")]
    assert day["logs_url"] == "/logs?username=backup&year=26&month=09&day=21"


@BACKENDS
def test_the_day_lists_each_webhook_delivery_of_an_alert_as_it_lists_emails(store):
    synced(store)
    day_start = time.mktime((2026, 9, 21, 0, 0, 0, 0, 0, -1))
    [user] = [user for user in store.configured_users() if user.username == "pi"]
    email = NewEmail("ops@example.com", "s", "b", "<m@x>")
    hooks = tuple(NewWebhook(name, f"event-{name}", "s", "b", "https://example.net/logs") for name in ("pager", "tg"))
    store.save_check_outcomes([CheckOutcome(user, None, (email,), webhooks=hooks)], day_start + 100)
    [delivery] = [d for d in store.due_webhooks(day_start + 100, 10) if d.webhook == "tg"]
    store.finish_webhook(delivery.id, "sent", day_start + 130, None)
    [alerted] = overview_day(store, "pi", day_start, day_start + 86400, T0)["alerts"]
    assert [(email["recipient"], email["status"]) for email in alerted["emails"]] == [("ops@example.com", "queued")]
    assert alerted["deliveries"] == [
        {
            "channel": "webhook:pager",
            "status": "queued",
            "attempts": 0,
            "queued_at_local": "2026-09-21 00:01:40 CEST",
            "finished_at_local": None,
        },
        {
            "channel": "webhook:tg",
            "status": "sent",
            "attempts": 1,
            "queued_at_local": "2026-09-21 00:01:40 CEST",
            "finished_at_local": "2026-09-21 00:02:10 CEST",
        },
    ]


@BACKENDS
def test_a_day_of_too_many_pings_is_cut_and_says_so(store, monkeypatch):
    monkeypatch.setattr(overview, "DAY_MAX_PINGS", 10)
    synced(store)
    day_start = time.mktime((2026, 9, 21, 0, 0, 0, 0, 0, -1))
    ping_every(store, "pi", day_start, day_start + 20 * 30, 30)
    day = overview_day(store, "pi", day_start, day_start + 86400, T0)
    assert (day["pings"], day["truncated"], day["silences"]) == (10, True, [])


@BACKENDS
def test_a_row_kept_from_the_previous_answer_follows_the_clock(store):
    synced(store, now=T0 - 1000)
    overview = loaded(store)
    store.record_ping("pi", T0 - 10)
    assert by_name(overview_state(store, overview, T0))["pi"]["silences"] == []
    pi = by_name(overview_state(store, overview, T0 + 55))["pi"]  # silent for 65 s: more than max_sleep
    assert pi["state"] == "late"
    assert [(silence["start"], silence["end"]) for silence in pi["silences"]] == [(T0 - 10, None)]
    unmonitored = {"pi": {**USERS["pi"], "monitor": False}}
    synced(store, unmonitored, now=T0 + 60)
    store.record_ping("pi", T0 + 60)
    overview = loaded(store)
    pi = by_name(overview_state(store, overview, T0 + 61))["pi"]
    assert (pi["state"], pi["silences"]) == ("pinging", [])  # not watched: no deadline, so no silence past it
    pi = by_name(overview_state(store, overview, T0 + 200))["pi"]  # silent, never late: only the clock moved
    assert (pi["state"], pi["silences"]) == ("silent", [])


def test_a_snoozed_users_row_says_until_when_and_stops_saying_it_when_the_snooze_ends(store):
    synced(store, now=T0 - 1000)
    overview = loaded(store)
    store.record_ping("pi", T0 - 10)
    store.snooze("pi", T0 + 300, T0)
    pi = by_name(overview_state(store, overview, T0 + 1))["pi"]
    assert (pi["state"], pi["snoozed_until"], pi["snoozed_until_local"]) == (
        "snoozed",
        T0 + 300,
        "2026-09-21 16:18:20 CEST",
    )
    assert by_name(overview_state(store, overview, T0 + 2))["backup"]["snoozed_until"] is None
    pi = by_name(overview_state(store, overview, T0 + 300))["pi"]  # only the clock moved
    assert (pi["state"], pi["snoozed_until"], pi["snoozed_until_local"]) == ("silent", None, None)


@BACKENDS
def test_a_row_kept_from_the_previous_answer_follows_a_reload_of_its_settings(store):
    synced(store, now=T0 - 1000)
    overview = loaded(store)
    store.record_ping("pi", T0 - 10)
    assert by_name(overview_state(store, overview, T0))["pi"]["max_sleep"] == 60
    store.reload_users(make_settings({**USERS, "pi": {**USERS["pi"], "max_sleep": 3600}}).users, T0 + 1)
    pi = by_name(overview_state(store, overview, T0 + 2))["pi"]
    assert (pi["max_sleep"], pi["late_at"]) == (3600, T0 - 10 + 3600)


@BACKENDS
def test_a_new_overview_answers_at_once_while_the_upkeep_loads_the_history_in_bounded_steps(store, monkeypatch):
    monkeypatch.setattr(overview, "HISTORY_USERS_PER_STEP", 2)
    synced(store, {**USERS, "nas": {**USERS["nas"], "monitor": True}})
    ping_every(store, "nas", T0 - 3600, T0 - 1800, 60)  # nas: the last user, in the last step
    store.record_ping("nas", T0 - 100)  # after a silence of 1 760 s, found in the history
    fresh = Overview(store)
    state = overview_state(store, fresh, T0)
    assert state["history_loading"] == 3
    assert [user["pings"] for user in state["users"]] == [None, None, None]
    assert [silence["end"] for silence in by_name(state)["nas"]["silences"]] == [None]  # only the one going on
    assert fresh.keep_up(T0) == 2  # a full step: more waits
    assert overview_state(store, fresh, T0)["history_loading"] == 1
    assert fresh.keep_up(T0) == 1
    written = count_rows_written(monkeypatch)
    assert fresh.keep_up(T0) == 0  # nothing left: it adds new pings instead
    state = overview_state(store, fresh, T0)
    assert written == []  # the step that loaded the last history wrote the rows that changed
    assert state["history_loading"] == 0
    assert [(silence["start"], silence["end"]) for silence in by_name(state)["nas"]["silences"]] == [
        (T0 - 1860, T0 - 100),
        (T0 - 100, None),
    ]
    assert by_name(state) == by_name(overview_state(store, loaded(store), T0))


def count_rows_written(monkeypatch):
    """The names of the users whose row the overview writes from now on, in order."""
    written = []
    row_head = overview._row_head

    def counted(user, *args):
        written.append(user.username)
        return row_head(user, *args)

    monkeypatch.setattr(overview, "_row_head", counted)
    return written


@BACKENDS
def test_pings_recorded_while_a_history_loads_are_counted_once(store, monkeypatch):
    synced(store)
    last_slot_start = WINDOW_START + (SLOTS - 1) * SLOT_SECONDS
    fresh = Overview(store)
    fresh.state(last_slot_start)  # the histories are to load
    store.record_ping("pi", last_slot_start + 1)
    assert by_name(overview_state(store, fresh, last_slot_start + 1))["pi"]["pings"] is None  # it waits
    recent_pings = store.recent_pings

    def pings_come_while_the_load_reads(*args):
        rows = recent_pings(*args)  # holds the ping above: it was recorded before the load began
        store.record_ping("pi", last_slot_start + 2)
        store.record_ping("pi", last_slot_start + 3)
        assert by_name(overview_state(store, fresh, last_slot_start + 3))["pi"]["pings"] is None
        return rows

    monkeypatch.setattr(store, "recent_pings", pings_come_while_the_load_reads)
    while fresh.keep_up(last_slot_start + 3):
        pass
    pi = by_name(overview_state(store, fresh, last_slot_start + 4))["pi"]
    # Three pings: "2". The first counted twice (four) would be "3"; the two others lost (one), "1".
    assert pi["pings"] == "0" * (SLOTS - 1) + "2"


def random_history(store, seed):
    """Pings of USERS over the last 25 hours from a seeded random: bursts, some of one time, gaps of hours, and
    backup silent across the window's start until its first slot."""
    chance = random.Random(seed)
    for username in USERS:
        at = T0 - 25 * 3600
        while at < T0:
            if not (username == "backup" and WINDOW_START - 3600 <= at < WINDOW_START + 60):
                for _ in range(chance.choice((1, 1, 1, 2, 3))):  # some pings share their time
                    store.record_ping(username, at)
            at += chance.choice((1, 30, 59, 61, 300, 601, 2 * 3600))
    store.record_ping("backup", WINDOW_START + 60)  # a silence that ends in the first slot


def users_loaded_in_reads_of(store, monkeypatch, pings_per_read, now, moved_during_load=None):
    """The overview's users at `now` once loaded at T0 with HISTORY_PINGS_PER_READ = `pings_per_read`, the most
    pings the loading asked of one read of the store and was given, and how many reads it made; with
    `moved_during_load`, an answer at that time while the loading reads moves the window."""
    monkeypatch.setattr(overview, "HISTORY_PINGS_PER_READ", pings_per_read)
    fresh = Overview(store)
    asked, given = [], []
    recent_pings = store.recent_pings

    def counted(*args):
        asked.append(args[-1])
        rows = recent_pings(*args)
        given.append(len(rows))
        if len(given) == 1 and moved_during_load is not None:
            fresh.state(moved_during_load)
        return rows

    monkeypatch.setattr(store, "recent_pings", counted)
    while fresh.keep_up(T0):
        pass
    monkeypatch.setattr(store, "recent_pings", recent_pings)
    return overview_state(store, fresh, now)["users"], max(asked), max(given), len(given)


@BACKENDS
@pytest.mark.parametrize("slots_moved_during_load", [0, 2])
def test_the_history_loads_in_bounded_reads_to_what_one_read_would_load(store, monkeypatch, slots_moved_during_load):
    synced(store)
    random_history(store, seed=slots_moved_during_load)
    now = T0 + slots_moved_during_load * SLOT_SECONDS
    one_read = users_loaded_in_reads_of(store, monkeypatch, 10**9, now)
    assert one_read[3] == 1
    users, asked, given, reads = users_loaded_in_reads_of(store, monkeypatch, 7, now, moved_during_load=now)
    assert (asked, given) == (7, 7)
    assert reads > 10
    assert users == one_read[0]
    assert any(user["silences"] for user in users) and all(user["pings"] for user in users)


@BACKENDS
def test_the_history_loading_waits_while_an_answer_is_written(store, monkeypatch):
    synced(store)
    fresh = Overview(store)
    fresh.state(T0)  # the three histories are to load
    answering, answered = threading.Event(), threading.Event()
    rows = store.configured_user_rows

    def slow_rows():
        if not answering.is_set():  # only the answer below waits
            answering.set()
            answered.wait(10)
        return rows()

    monkeypatch.setattr(store, "configured_user_rows", slow_rows)
    answer = threading.Thread(target=fresh.state, args=(T0,))
    answer.start()
    assert answering.wait(10)
    loads = []
    upkeep = threading.Thread(target=lambda: loads.append(fresh.keep_up(T0)))
    upkeep.start()
    upkeep.join(0.3)
    assert loads == []  # still waiting for the answer
    answered.set()
    answer.join(10)
    upkeep.join(10)
    assert loads == [3]


@BACKENDS
def test_a_refresh_writes_again_only_the_rows_that_changed(store, monkeypatch):
    synced(store, now=T0 - 1000)
    kept = loaded(store, T0)
    written = count_rows_written(monkeypatch)
    overview_state(store, kept, T0)
    assert written == []
    store.record_ping("pi", T0 + 1)
    state = overview_state(store, kept, T0 + 2)
    assert written == ["pi"]
    assert by_name(state) == by_name(overview_state(store, loaded(store, T0 + 2), T0 + 2))
    # The window moves by a slot: every row's slots move, no row is written again.
    next_slot = (T0 // SLOT_SECONDS + 1) * SLOT_SECONDS
    store.record_ping("pi", next_slot - 5)
    written.clear()
    state = overview_state(store, kept, next_slot)
    assert written == ["pi"]
    assert by_name(state) == by_name(overview_state(store, loaded(store, next_slot), next_slot))


@BACKENDS
def test_a_row_is_json_whatever_the_name_and_schedule(store):
    name = 'a "quoted" \\ name </script> é 🙂'
    users = {
        name: {"monitor": True, "schedule": "0 3 * * *", "tz": "Europe/Paris", "grace": 600, "email_frequency": 60}
    }
    synced(store, users)
    store.record_ping(name, T0 - 10)
    [row] = overview_state(store, loaded(store), T0)["users"]
    assert (row["username"], row["schedule"], row["monitor"], row["last_ping"]) == (name, "0 3 * * *", True, T0 - 10)
    assert row["last_ping_local"] == "2026-09-21 16:13:10 CEST"
    assert list(row) == [
        "username",
        "state",
        "monitor",
        "max_sleep",
        "schedule",
        "parent",
        "last_ping",
        "last_ping_local",
        "late_at",
        "late_at_local",
        "snoozed_until",
        "snoozed_until_local",
        "silences",
        "alerts",
        "failures",
        "recoveries",
        "pings",
    ]


@BACKENDS
def test_an_answer_since_an_earlier_one_holds_the_rows_that_changed_and_the_order_if_it_changed(store):
    synced(store, now=T0 - 1000)
    kept = loaded(store, T0)
    first = overview_state(store, kept, T0)
    assert first["complete"] is True
    assert [(user["username"], user["state"]) for user in first["users"]] == [
        ("backup", "late"),
        ("pi", "late"),
        ("nas", "silent"),
    ]
    same = json.loads(kept.state(T0 + 1, first["version"]))
    assert (same["complete"], same["users"], "order" in same) == (False, [], False)
    assert same["version"] != first["version"]
    store.record_ping("pi", T0 + 2)  # pi: pinging, after nas
    changed = json.loads(kept.state(T0 + 3, same["version"]))
    assert (changed["complete"], changed["order"]) == (False, ["backup", "nas", "pi"])
    assert [user["username"] for user in changed["users"]] == ["pi"]
    assert changed["users"] == [by_name(overview_state(store, loaded(store, T0 + 3), T0 + 3))["pi"]]
    store.record_ping("pi", T0 + 4)  # its slots change, not its place
    again = json.loads(kept.state(T0 + 5, changed["version"]))
    assert ([user["username"] for user in again["users"]], "order" in again) == (["pi"], False)
    # A change the row does not show (here, a setting) sends nothing.
    store.reload_users(make_settings({**USERS, "pi": {**USERS["pi"], "email_frequency": 7200}}).users, T0 + 5)
    unseen = json.loads(kept.state(T0 + 5, again["version"]))
    assert unseen["users"] == []
    # An answer since the first has every row that changed since then.
    since_first = json.loads(kept.state(T0 + 5, first["version"]))
    assert ([user["username"] for user in since_first["users"]], since_first["order"]) == (
        ["pi"],
        ["backup", "nas", "pi"],
    )


@BACKENDS
def test_a_version_not_of_this_overview_or_from_before_a_user_was_added_gets_every_row(store):
    synced(store, now=T0 - 1000)
    kept = loaded(store, T0)
    version = overview_state(store, kept, T0)["version"]
    foreign = overview_state(store, loaded(store, T0), T0)["version"]  # as from before a restart
    instance, number = version.split(":")
    for since in [foreign, "x", f"{instance}:", f"{instance}:²", f"{instance}:{int(number) + 1000}", f"-{version}"]:
        answer = json.loads(kept.state(T0 + 1, since))
        assert (answer["complete"], len(answer["users"])) == (True, 3), since
    version = overview_state(store, kept, T0 + 1)["version"]
    synced(store, {**USERS, "camera": USERS["pi"]}, now=T0 + 2)
    answer = json.loads(kept.state(T0 + 3, version))
    assert (answer["complete"], sorted(user["username"] for user in answer["users"])) == (
        True,
        ["backup", "camera", "nas", "pi"],
    )


@BACKENDS
def test_pages_that_follow_only_what_changed_end_as_a_complete_answer_despite_pings_and_other_pages(store):
    names = [f"device-{index}" for index in range(40)]
    synced(
        store,
        {name: {"monitor": True, "max_sleep": 30 + index, "email_frequency": 60} for index, name in enumerate(names)},
    )
    chosen = random.Random(15)
    for index in range(1500):
        store.record_ping(chosen.choice(names), T0 - 86400 + index * 50)
    shared = Overview(store)
    clock, stop = [T0], threading.Event()

    def upkeep():
        while not stop.wait(0.001):
            shared.keep_up(clock[0])

    def pings():
        while not stop.wait(0.0005):
            clock[0] += chosen.random() * 20
            store.record_ping(chosen.choice(names), clock[0])

    def follow(page, now):
        answer = json.loads(shared.state(now, page["version"]))
        follow_answer(page, answer)

    def refresh_often(page):
        for _ in range(150):
            follow(page, clock[0])

    pages = [new_page() for _ in range(3)]
    writers = [threading.Thread(target=upkeep), threading.Thread(target=pings)]
    readers = [threading.Thread(target=refresh_often, args=(page,)) for page in pages]
    for thread in writers + readers:
        thread.start()
    for thread in readers:
        thread.join(60)
    stop.set()
    for thread in writers:
        thread.join(10)
    # Then the window moves by a slot, and by two, with no ping: only the slots move, which the pages do
    # themselves, one of them as it skips a refresh.
    for now in (clock[0] + 1, clock[0] + 1 + SLOT_SECONDS, clock[0] + 1 + 3 * SLOT_SECONDS):
        for page in pages[1:] if now == clock[0] + 1 + SLOT_SECONDS else pages:
            follow(page, now)
            complete = json.loads(shared.state(now))["users"]
            assert [page["rows"][name] for name in page["order"]] == complete


def new_page():
    """What the page keeps of the answers it had: its version, window, rows and their order."""
    return {"version": None, "window": None, "rows": {}, "order": []}


def follow_answer(page, answer):
    """Take `answer` as the page does (static/overview.js's show()): every row if it is complete, else the rows
    it holds, the order if it changed, and every other row's slots moved with the window if it moved."""
    if answer["complete"]:
        page.update(rows={}, order=[user["username"] for user in answer["users"]])
    elif answer["window"]["start"] != page["window"]["start"]:
        moved = (answer["window"]["start"] - page["window"]["start"]) // SLOT_SECONDS
        for row in page["rows"].values():
            if row["pings"] is not None:
                row["pings"] = row["pings"][moved:] + "0" * moved
    page["order"] = answer.get("order", page["order"])
    page["rows"].update((user["username"], user) for user in answer["users"])
    page["version"], page["window"] = answer["version"], answer["window"]


@BACKENDS
def test_when_the_window_slides_an_answer_holds_only_the_rows_that_changed_more_than_their_slots_moving(store):
    synced(store, {**USERS, "nas": {**USERS["nas"], "monitor": True}}, now=T0 - 1000)
    next_slot = (T0 // SLOT_SECONDS + 1) * SLOT_SECONDS
    # backup: pings in the window's first slot, which leave it at the next slide; nas: a silence of two hours
    # that ended in the first slot; pi: a ping every 50 s, the last one 10 s before the slide.
    ping_every(store, "backup", WINDOW_START + 10, WINDOW_START + SLOT_SECONDS, 300)
    store.record_ping("nas", WINDOW_START - 7200)
    store.record_ping("nas", WINDOW_START + 60)
    ping_every(store, "pi", T0 - 3600, next_slot - 10, 50)
    kept = loaded(store, T0)
    page = new_page()
    follow_answer(page, json.loads(kept.state(next_slot - 5, page["version"])))
    assert [silence["end"] for silence in page["rows"]["nas"]["silences"]] == [WINDOW_START + 60, None]
    # By a slot: nas's ended silence left the window; then by two more: pi went late meanwhile.
    for now, sent in ((next_slot + 1, ["nas"]), (next_slot + 2 * SLOT_SECONDS + 1, ["pi"])):
        answer = json.loads(kept.state(now, page["version"]))
        assert (answer["complete"], [user["username"] for user in answer["users"]]) == (False, sent)
        follow_answer(page, answer)
        assert [page["rows"][name] for name in page["order"]] == overview_state(store, loaded(store, now), now)["users"]
    assert page["rows"]["backup"]["pings"] == "0" * SLOTS
    # A window moved by a whole window is every row again (every history loads again).
    answer = json.loads(kept.state(next_slot + 2 * SLOT_SECONDS + 86400 + 1, page["version"]))
    assert (answer["complete"], len(answer["users"])) == (True, 3)


@BACKENDS
def test_a_refresh_makes_the_state_only_of_the_users_that_changed_or_reached_a_deadline(store, monkeypatch):
    synced(store, now=T0 - 1000)
    store.record_ping("pi", T0 - 30)  # late at T0 + 30
    store.record_ping("backup", T0 - 30)  # late at T0 + 570
    kept = loaded(store, T0)
    made = []
    live_state = overview.rules.live_state
    monkeypatch.setattr(
        overview.rules, "live_state", lambda user, *args: made.append(user.username) or live_state(user, *args)
    )
    assert by_name(overview_state(store, kept, T0 + 10))["pi"]["state"] == "pinging"
    assert made == []
    store.record_ping("nas", T0 + 20)
    kept.state(T0 + 20)
    assert made == ["nas"]
    made.clear()
    assert by_name(overview_state(store, kept, T0 + 31))["pi"]["state"] == "late"  # by the clock alone
    assert made == ["pi"]


def test_a_child_is_suppressed_once_its_parent_is_late_too_by_the_clock_alone(store):
    users = {
        "router": {"monitor": True, "max_sleep": 100, "email_frequency": 3600},
        "camera": {"monitor": True, "max_sleep": 50, "email_frequency": 3600, "depends_on": "router"},
    }
    synced(store, users, now=T0 - 1000)
    store.record_ping("router", T0)
    store.record_ping("camera", T0)
    kept = loaded(store, T0)
    assert by_name(overview_state(store, kept, T0 + 60))["camera"]["state"] == "late"
    assert by_name(overview_state(store, kept, T0 + 101))["camera"]["state"] == "suppressed"


def test_a_clock_set_back_makes_every_state_again(store):
    synced(store, now=T0 - 1000)
    store.record_ping("pi", T0)
    kept = loaded(store, T0)
    assert by_name(overview_state(store, kept, T0 + 100))["pi"]["state"] == "late"
    assert by_name(overview_state(store, kept, T0 + 10))["pi"]["state"] == "pinging"


@BACKENDS
def test_a_user_whose_row_changed_when_a_read_failed_is_written_by_the_next_answer(store, monkeypatch):
    synced(store, now=T0 - 1000)
    kept = loaded(store, T0)
    overview_state(store, kept, T0)
    store.reload_users(make_settings({**USERS, "pi": {**USERS["pi"], "max_sleep": 3600}}).users, T0 + 1)
    pings_after_id = store.pings_after_id

    def unavailable(after_id):
        monkeypatch.setattr(store, "pings_after_id", pings_after_id)
        raise StoreUnavailableError("the disk is full")

    monkeypatch.setattr(store, "pings_after_id", unavailable)
    with pytest.raises(StoreUnavailableError):
        kept.state(T0 + 2)
    assert by_name(overview_state(store, kept, T0 + 3))["pi"]["max_sleep"] == 3600


@BACKENDS
def test_a_user_added_later_has_its_history_loaded_too(store):
    synced(store, now=T0 - 1000)
    kept = loaded(store, T0)
    overview_state(store, kept, T0)
    synced(store, {**USERS, "camera": USERS["pi"]}, now=T0 + 1)
    store.record_ping("camera", T0 + 2)
    assert by_name(overview_state(store, kept, T0 + 3))["camera"]["pings"] is None  # to load
    while kept.keep_up(T0 + 4):
        pass
    camera = by_name(overview_state(store, kept, T0 + 5))["camera"]
    assert (camera["pings"], camera["last_ping"]) == ("0" * (SLOTS - 1) + "1", T0 + 2)
