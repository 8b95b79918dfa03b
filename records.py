"""The records every layer of Ping Listener passes around, and the store's errors: what a user's state is,
what the absence listener decided, what waits in the email and webhook queues and what their history shows.

No backend owns this module (store.py for SQLite and pg_store.py for PostgreSQL both build these records), and
it imports nothing of the project but rules.py, so the mail, webhook, web and data layers share them without
knowing each other.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from rules import SILENCE


class StoreError(Exception):
    """Base of the store's errors; the message is fit to show a person."""


class StoreOpenError(StoreError):
    """The database cannot be used (not a Ping Listener database, read-only, newer schema, ...)."""


class StoreUnavailableError(StoreError):
    """The database refused a read or write for now (disk full, I/O error, locked too long, server gone)."""


class UnknownUserError(StoreError):
    """No such user: not configured (for pings) or never known (for history)."""


class CheckExistsError(StoreError):
    """A program asked to create a check under a name that is configured already."""


class CheckLimitError(StoreError):
    """A signal asked to create a check while auto_provision_limit checks created that way exist."""


class DeclaredCheckError(StoreError):
    """A program asked to change or delete a check that settings.json declares: only the file changes it."""


# The snooze of a check paused by the management API: one that no wall clock reaches (the year 3000). The next
# success or fail of such a check ends it, unless the check asks for manual_resume.
PAUSED_UNTIL = 32_503_680_000.0


def is_paused(snoozed_until: float | None) -> bool:
    """Whether a user snoozed until `snoozed_until` is paused (PAUSED_UNTIL: a snooze without an end)."""
    return snoozed_until is not None and snoozed_until >= PAUSED_UNTIL


# The fields of a user's state that its status as the management API shows it depends on (rules.snoozed,
# condition, run_deadline, late_at, expected_at, start_deadline), and the duration of its last run: all that
# the API's listing reads of each check's row (StoreContract.listed_check_rows).
LISTED_FIELDS = (
    "monitor",
    "max_sleep",
    "monitored_since",
    "last_ping",
    "max_runtime",
    "run_started",
    "last_duration",
    "failed_at",
    "fail_count",
    "fail_threshold",
    "silence_from",
    "snoozed_until",
    "schedule",
    "tz",
    "grace",
    "start_grace",
)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """What a webhook is told about one alert or recovery.

    `id` is stable for this event and channel (the Idempotency-Key); `event` is late, failed,
    run_timeout or back; `at` is when it was decided and `last_ping` the user's last ping then (UTC
    epoch seconds, or None); `title` and `text` are the email's subject and plain text; `logs_url`
    links to the signals of the day it is about. `went_down_at` is when the outage it belongs to went
    down (the same for its alerts and its recovery; None for a row from before it was kept), which names
    the outage for the services that open and close an incident (webhooks.outage_key).
    """

    id: str
    event: str
    username: str
    at: float | None
    last_ping: float | None
    title: str
    text: str
    logs_url: str
    went_down_at: float | None = None


@dataclass(frozen=True, slots=True)
class UserState:
    """A user's configuration mirror and monitoring state, as the absence listener sees it."""

    id: int
    username: str
    monitor: bool
    max_sleep: float
    email_frequency: float
    monitored_since: float
    last_ping: float | None
    last_alert: float | None
    due_at: float | None
    max_runtime: float | None = None
    notify_recovery: bool = True
    run_started: float | None = None
    last_duration: float | None = None
    failed_at: float | None = None
    fail_signal: int | None = None
    last_alert_kind: str | None = None
    down_since: float | None = None
    back_at: float | None = None
    last_signal: int | None = None
    silence_from: float | None = None
    snoozed_until: float | None = None
    muted_outage: float | None = None
    suppressed_kind: str | None = None
    schedule: str | None = None
    tz: str | None = None
    grace: float | None = None
    # Detection (settings.json's fail_threshold, min_runtime, min_interval, start_grace), and what its signals
    # made of them: fails in a row since its last success, its last success, and the success that came too
    # soon after the one before it (with the gap between them), until alerted.
    fail_threshold: int = 1
    min_runtime: float | None = None
    min_interval: float | None = None
    start_grace: float | None = None
    fail_count: int = 0
    last_success: float | None = None
    too_often_at: float | None = None
    too_often_gap: float | None = None
    # Maintenance windows (settings.json's maintenance): the next one's start as the absence listener last
    # worked it out, and the end of the last one that snoozed it.
    maintenance_at: float | None = None
    maintenance_until: float | None = None
    # Flapping (settings.json's flap_threshold and flap_quiet), and the absence listener's count of its outages
    # (rules.count_outage): its window's start, the outages in it, the last one's start; when it began flapping.
    flap_threshold: int = 10
    flap_quiet: float = 3600.0
    flap_window_start: float | None = None
    flap_count: int = 0
    last_outage_at: float | None = None
    flapping_since: float | None = None
    # The user it depends on, read in the same statement (its own parent is not read); None if none.
    parent: "UserState | None" = None


def listed_state(row: tuple[Any, ...]) -> UserState:
    """The state of the user of a row of StoreContract.listed_check_rows (username, signal count, then
    LISTED_FIELDS): its LISTED_FIELDS as stored, the others as a user just configured has them (id 0)."""
    return UserState(
        0, row[0], email_frequency=0.0, last_alert=None, due_at=None, **dict(zip(LISTED_FIELDS, row[2:], strict=True))
    )


@dataclass(frozen=True, slots=True)
class Signal:
    """One recorded signal: its time, kind, exit code, the duration of the run it closed, and its body."""

    at: float
    kind: str
    exit_code: int | None
    duration: float | None
    body: str | None


class UserCounts(NamedTuple):
    """Every configured user's deadline (when its first condition begins, as rules.condition says at the time
    asked about, a snooze changing nothing; None if not monitored), last ping and counters, as columns: the
    i-th entry of each is the i-th user's, in the store's order.

    The counters, pings and alerts recorded since the user was first configured, never go down:
    retention deletes old pings and alerts, not what was counted. Columns, not a record per user: a metrics
    scrape reads every user, and compares each column with the last scrape's in one operation.
    """

    usernames: tuple[str, ...]
    condition_at: tuple[float | None, ...]
    last_ping: tuple[float | None, ...]
    pings: tuple[int, ...]
    alerts: tuple[int, ...]
    # The scheduled users' whole states, by username: their deadline needs their schedule, which SQL cannot
    # evaluate, so their condition_at above counts their silence from their last contact (rules.condition_at
    # gives the real one).
    scheduled: Mapping[str, UserState]


@dataclass(frozen=True, slots=True)
class UsersChange:
    """What a reload changed among the configured users: usernames added, removed and with new parameters, and
    those of the added that were checks created by program, which settings.json now declares (history kept)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    taken_over: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NewEmail:
    """An alert email to queue for one recipient."""

    recipient: str
    subject: str
    body: str
    message_id: str


@dataclass(frozen=True, slots=True)
class NewWebhook:
    """A webhook delivery to queue: the webhook's name, the event's id (its Idempotency-Key) and what it says."""

    webhook: str
    event_id: str
    title: str
    text: str
    logs_url: str


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """What the absence listener decided about one due user.

    `emails` and `webhooks` both empty means no alert now; otherwise they alert about the condition `kind`
    (rules.SILENCE, FAILURE, RUN_TIMEOUT, START_LATE, or the notice TOO_OFTEN), through the user's channels.
    `next_due_at` is when to look at the user again. `ends_outage` says that the success ending the user's alerted
    outage (its back_at) was dealt with, with the `recovery` emails and `recovery_webhooks` (none if notify_recovery
    is off). `down_since` is the user's alerted outage after this step, written when the outcome alerts or ends an
    outage. `suppressed`, if not None, is a condition (its kind and when it went down) whose alert the user's
    parent's outage suppressed: recorded, with no email or webhook. `next_run`, for a scheduled user: (the moment
    its silence is measured from, its schedule's next run after it), as rules.decide worked it out
    (Decision.next_run), kept so that SQL can tell whether it is down when it is a parent.
    """

    user: UserState
    next_due_at: float | None
    emails: tuple[NewEmail, ...] = ()
    kind: str = SILENCE
    down_since: float | None = None
    ends_outage: bool = False
    recovery: tuple[NewEmail, ...] = ()
    suppressed: tuple[str, float] | None = None
    webhooks: tuple[NewWebhook, ...] = ()
    recovery_webhooks: tuple[NewWebhook, ...] = ()
    next_run: tuple[float, float | None] | None = None
    # Maintenance (rules.in_maintenance): the end of the window that snoozes the user from now (None: none
    # began), and when its next window opens (None: it has none).
    maintenance_until: float | None = None
    maintenance_at: float | None = None
    # A new outage counted for flapping (rules.Decision.flap): (window start, count, outage start, flapping since).
    flap: tuple[float, int, float, float | None] | None = None


@dataclass(frozen=True, slots=True)
class QueuedEmail:
    """An outbox row waiting to be sent, or a digest of several (mailer.digest builds those).

    `username` and `kind` say whom and what it is about (rules.BACK for a recovery). `digest` is the
    latest digest that carried it, if one did.
    """

    id: int
    recipient: str
    subject: str
    body: str
    message_id: str
    queued_at: float
    attempts: int
    username: str = ""
    kind: str = SILENCE
    digest: "Digest | None" = None


@dataclass(frozen=True, slots=True)
class Digest:
    """A digest as recorded: its id, Message-ID, when it was made (its Date) and how many emails it carried."""

    id: int
    message_id: str
    created_at: float
    emails: int


@dataclass(frozen=True, slots=True)
class NewDigest:
    """A digest about to be tried for the first time: the ids of the outbox rows it carries, its subject and
    Message-ID (the drain's `now` is its Date)."""

    email_ids: tuple[int, ...]
    recipient: str
    subject: str
    message_id: str


@dataclass(frozen=True, slots=True)
class QueuedWebhook:
    """A webhook_outbox row waiting to be delivered: its id, its webhook's name, its attempts so far and its event."""

    id: int
    webhook: str
    attempts: int
    event: WebhookEvent


@dataclass(frozen=True, slots=True)
class EmailEvent:
    """An alert or recovery email as its history shows it: queued, sent or failed, and when.

    `last_ping` is the user's last ping when the alert was decided (None: none since monitoring
    began); `finished_at` is when it was sent or failed (None while queued); `kind` is what it is
    about (rules.SILENCE, FAILURE, RUN_TIMEOUT or BACK).
    """

    id: int
    username: str
    recipient: str
    status: str
    attempts: int
    last_ping: float | None
    queued_at: float
    finished_at: float | None
    kind: str = SILENCE
    # The latest digest that carried it, and that digest's subject; None if none did.
    digest_id: int | None = None
    digest_subject: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookHistory:
    """A webhook delivery as its history shows it: the channel ("webhook:NAME"), queued, sent or failed, and when."""

    id: int
    username: str
    channel: str
    status: str
    attempts: int
    last_ping: float | None
    queued_at: float
    finished_at: float | None
    kind: str


@dataclass(frozen=True, slots=True)
class AlertHistory:
    """An alert and its emails: when it was decided, the user's last ping then, each email's history and each
    webhook delivery's."""

    at: float
    last_ping: float | None
    emails: tuple[EmailEvent, ...]
    deliveries: tuple[WebhookHistory, ...] = ()
    kind: str = SILENCE  # the alerts table's kind


@dataclass(frozen=True, slots=True, order=True)
class Outage:
    """An alerted outage of the user `user_id`, as its alerts called it: down from `down_at` (the condition's
    start, which every alert of the outage names) until `up_at`, the first success after it (None: none yet)."""

    user_id: int
    down_at: float
    up_at: float | None


class CheckId(NamedTuple):
    """A configured check's name and UUID, and whether the management API paused it (PAUSED_UNTIL).

    A NamedTuple: a start reads one for every configured check, and a frozen dataclass costs more to make."""

    username: str
    uuid: str
    paused: bool


@dataclass(frozen=True, slots=True)
class ProgramCheck:
    """A configured check that a program created: its name, UUID, definition (JSON text: its settings keys and
    the management API's own fields) and who created it ('api' or 'ping')."""

    username: str
    uuid: str
    program: str
    created_by: str
