"""The store's contract: what every layer of Ping Listener may ask of its database, whichever one runs.

store.Store (SQLite) and pg_store.PgStore (PostgreSQL) both satisfy StoreContract, and database.open_store()
returns it, so mypy checks each caller against this contract, never against one backend. A backend's own
tools (SQLite's query plans, pragmas, checkpoints, fault-injection seams) are not part of it: tests that need
them use the concrete class. The records it passes are in records.py.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from config import UserConfig
from records import (
    AlertHistory,
    CheckId,
    CheckOutcome,
    EmailEvent,
    NewDigest,
    Outage,
    ProgramCheck,
    QueuedEmail,
    QueuedWebhook,
    Signal,
    UserCounts,
    UsersChange,
    UserState,
    WebhookHistory,
)
from rules import SUCCESS


class StoreContract(Protocol):
    """Ping Listener's database; safe to use from any number of threads. All times are UTC epoch seconds passed
    in by the caller: a store never reads a clock. Failures are records.StoreError's subclasses."""

    # The schema version the database had before this start upgraded it, or None if it did not.
    upgraded_from: int | None
    # Whether sync_users restarted monitoring (no other instance was running on the database).
    started_alone: bool

    def close(self) -> None:
        """Close every connection, then let go of the database's lock if this store holds it; waits for a
        write in progress to finish first."""

    def use_durability(self, durability: str) -> None:
        """Commit as settings.json's `durability` says from now on (see SYNCHRONOUS): each thread's connection
        follows at its next use outside a transaction, so a batch already begun ends as it began."""

    def sync_users(self, users: Mapping[str, UserConfig], now: float) -> None:
        """Make the configured users exactly `users` (username -> its config), and restart monitoring at `now`.

        Users missing from `users` stop being monitored but keep their history. See
        restart_monitoring for what a restart does.
        """

    def reload_users(self, users: Mapping[str, UserConfig], now: float) -> UsersChange:
        """Make the configured users exactly `users` without restarting anyone's monitoring, as a reload does.

        A user added (or configured again) is monitored from `now`; a user removed stops being
        monitored and keeps its history; a user whose monitor, max_sleep or email_frequency changed
        gets its deadline moved at once (and, if its monitor was just turned on, is monitored from
        `now`); every other user is left exactly as it was. Returns what changed.
        """

    def restart_monitoring(self, now: float) -> None:
        """Monitor every configured user afresh from `now`, as a restart of the service does.

        Each gets a full max_sleep (and an open run a full max_runtime) from `now` before it can be
        late, so neither the service's downtime nor a jump of the wall clock counts against a device;
        a failure or an alerted outage stays what it was. Times left in the future by a wall clock that
        went back are made harmless: a last ping becomes the last success or fail recorded at or before
        `now` (or none), the alert throttle counts from `now`, and a run's start, a failure or a
        recovery waiting to be queued are moved back to `now`. Queued emails and webhook deliveries are
        due at once, so fixing the SMTP setup (or a webhook) and restarting sends them without waiting
        out their back-off.
        """

    def restart_monitoring_after_clock_jump(self, now: float) -> bool:
        """Restart monitoring at `now` (restart_monitoring) after this instance's wall clock jumped, unless other
        instances run on the database, their clocks unmoved; return whether it restarted."""

    def record_ping(
        self,
        username: str,
        now: float,
        kind: str = SUCCESS,
        exit_code: int | None = None,
        body: str | None = None,
    ) -> None:
        """Record a signal of `kind` (rules.SIGNAL_KINDS) from `username` at `now`: committed before
        returning, or, inside ping_batch() on this thread, committed with the batch.

        A plain ping is a success. `exit_code` is the one it reported, if any; `body` is kept as given
        (the caller cuts it). Its effect on the user is what rules.py describes. Raises
        UnknownUserError if the user is not configured.
        """

    def ping_batch(self) -> AbstractContextManager[None]:
        """Record the pings of this thread's record_ping() calls inside the block in one transaction.

        The transaction commits when the block ends; until then no other thread can write. If it
        cannot commit (or a ping's failure rolled it back), this raises StoreUnavailableError and
        none of the block's pings is recorded: their callers must not have told anyone they were.
        One commit for a poll round's pings instead of one each: under a burst that is most of a
        ping's cost.
        """

    def pings_between(self, username: str, start: float, end: float, limit: int | None = None) -> list[float]:
        """Times of `username`'s pings with start <= time < end, ascending; only the first `limit` if given.

        Raises UnknownUserError if the user was never configured.
        """

    def user(self, username: str) -> UserState:
        """`username`'s state, configured or not; raises UnknownUserError if it was never configured."""

    def pings_around(self, user_id: int, start: float, end: float) -> tuple[float | None, float | None]:
        """The user's last ping before `start` and its first ping at or after `end` (None where there is none)."""

    def alerts_between(self, user: UserState, start: float, end: float, limit: int) -> list[AlertHistory]:
        """`user`'s alerts decided with start <= time < end, oldest first, each with its emails and its webhook
        deliveries.

        At most `limit` emails in all are read, and `limit` deliveries; an alert whose emails or deliveries were
        cut off shows those read.
        """

    def failures_between(self, user_id: int, start: float, end: float, limit: int) -> list[Signal]:
        """The user's fail signals with start <= time < end, oldest first, with their bodies: the latest `limit`."""

    def newest_ping_id(self) -> int:
        """The id of the newest ping recorded (0 if none): pings recorded later have greater ids."""

    def recent_pings(
        self, start: float, upto_id: int, user_ids: tuple[int, int], after: tuple[int, float, int] | None, limit: int
    ) -> list[tuple[int, float, int]]:
        """(user id, time, ping id) of the pings from `start` on with ids up to `upto_id` of the configured users
        whose ids are in the range `user_ids` (first, last), by user, time then id: the first `limit` of them, or
        with `after` (the last row of an earlier answer to the same question) the first `limit` after it."""

    def last_pings_before(self, start: float, user_ids: tuple[int, int]) -> dict[int, float | None]:
        """Each configured user's id in the range `user_ids` (first, last) -> the time of its last ping before
        `start` (None if none)."""

    def configured_user_rows(self) -> list[tuple[Any, ...]]:
        """Every configured user's row, in username order: UserState(*row[:-1]) is its state, row[-1] its
        parent's id (None if none). For a reader that keeps the states it made and compares rows."""

    def listed_check_rows(self) -> list[tuple[Any, ...]]:
        """Every configured user's name, count of signals (as pings_total) and records.LISTED_FIELDS, in username
        order: records.listed_state(row) is what its status depends on. For the management API's listing, which
        compares rows to tell the checks that changed."""

    def pings_after_id(self, after_id: int) -> list[tuple[int, int, float]]:
        """(id, user id, time) of every ping whose id is greater than `after_id`, in id order."""

    def recent_alerts(self, start: float) -> list[tuple[int, float, str]]:
        """(user id, time, kind) of configured users' alerts decided at or after `start`, by user then time; the
        kind is the alerts table's ('late', 'failed', 'run_timeout', or 'back' for a recovery)."""

    def signals_between(
        self, username: str, start: float, end: float, limit: int, max_size: int, encode: Callable[[Signal], bytes]
    ) -> tuple[list[bytes], bool]:
        """`username`'s signals with start <= time < end, ascending, each as `encode(signal)`, and whether there
        were more.

        Stops after `limit` signals, or before the one whose encoding would take the encodings' lengths past
        `max_size` bytes in all. Raises UnknownUserError if the user was never configured.
        """

    def signal(self, signal_id: int) -> Signal:
        """The recorded signal with id `signal_id` (a UserState's fail_signal)."""

    def configured_users(self) -> list[UserState]:
        """Every configured user's state with its parent's, in username order."""

    def outages_since(self, start: float) -> list[Outage]:
        """Every alerted outage (suppressed alerts aside) of which an alert or recovery was decided at or after
        `start`, by user id then start, each with the first success after its start: its end (None: none yet).

        Costs the number of alerts since `start` (and a seek of the pings each), never the number of pings.
        """

    def first_pings(self) -> dict[int, float | None]:
        """Each configured user's id -> the time of its first ping kept (None if none)."""

    def service_runs(self, start: float) -> list[tuple[float, float]]:
        """(started at, last seen running at) of each run of the service (of each instance) seen running at or
        after `start`, and of the last one before it, by start: sync_users begins a run, upkeep marks it seen
        every sql_store.RUN_MARK_SECONDS. The gaps between them are the service's downtime."""

    def recent_emails(self, limit: int) -> list[EmailEvent]:
        """The `limit` most recently queued alert emails, newest first."""

    def due_users(self, now: float, limit: int) -> list[UserState]:
        """Up to `limit` configured users whose due_at is before `now`, earliest first, each with its parent
        as it is now (read in the same statement)."""

    def snooze(self, username: str, until: float, now: float) -> float:
        """Snooze the configured user `username` until `until`, or, with `until` <= `now`, end its snooze at
        `now` if it is snoozed (else change nothing); return when its snooze ends (`now` if it is not snoozed).

        A snooze that begins during an alerted outage mutes it (muted_outage): rules.decide alerts it no
        more. The deadline moves with the snooze, as rules.due_at says. Raises UnknownUserError if the user
        is not configured.
        """

    def pause(self, username: str, paused: bool, now: float) -> None:
        """Pause the configured check `username` (a snooze until records.PAUSED_UNTIL), or with `paused` false end
        any snooze it has at `now`; count it as a change of checks by program (program_change). Raises
        UnknownUserError if it is not configured."""

    def program_change(self) -> int:
        """The checks-by-program change counter: it grows whenever a check is created, changed, paused, resumed or
        deleted by program, or taken over by settings.json. One index seek."""

    def check_ids(self) -> list[CheckId]:
        """Every configured check's name, UUID and whether it is paused (records.PAUSED_UNTIL)."""

    def program_checks(self) -> list[ProgramCheck]:
        """Every configured check that a program created and settings.json does not declare, by name."""

    def create_check(
        self, username: str, user: UserConfig, program: str, created_by: str, limit: int | None, now: float
    ) -> str:
        """Configure the check `username` as a program created it (`program`: its definition as JSON; `created_by`
        'api' or 'ping'), monitored from `now`, and return its UUID, all in one transaction. A name with history
        keeps it, and its UUID. Raises CheckExistsError if it is configured already, CheckLimitError if `limit`
        is given and that many checks created by signals are configured."""

    def change_check(self, username: str, user: UserConfig, program: str, now: float) -> None:
        """Change the check `username` that a program created to `user` and `program`, as a reload changes a
        user. Raises UnknownUserError if it is not configured, DeclaredCheckError if settings.json declares it."""

    def delete_check(self, username: str) -> None:
        """Stop monitoring the check `username` that a program created, keeping its history and UUID, as settings
        removed from settings.json are. Raises as change_check."""

    def recent_signals(self, username: str, limit: int) -> list[Signal]:
        """`username`'s `limit` newest signals, newest first. Raises UnknownUserError if it was never configured."""

    def alert_kinds(self, username: str, start: float, end: float, limit: int) -> list[tuple[float, str, float | None]]:
        """(time, kind, when its outage went down) of `username`'s first `limit` alerts and recoveries ('back') with
        start <= time < end, oldest first. Raises UnknownUserError if it was never configured."""

    def pings_total(self, username: str) -> int | None:
        """The configured user `username`'s count of signals (as metrics count them), None if it is not
        configured: one row read, no ping."""

    def save_check_outcomes(self, outcomes: Iterable[CheckOutcome], now: float) -> int:
        """Apply the absence listener's decisions in one transaction; return how many alerts were recorded.

        Each outcome applies only if its user is still as it was read (its due_at and last signal are
        unchanged: no signal came in meanwhile). An alert records its time and kind, its alerts row and
        one outbox row per email and one webhook_outbox row per webhook; a recovery records its alerts
        row (kind 'back'), its emails and its webhooks.
        """

    def due_emails(self, now: float, limit: int) -> list[QueuedEmail]:
        """Up to `limit` queued emails whose next attempt is at or before `now`, oldest due first, each with
        its user, kind and the digest that carried it last."""

    def claim_emails(self, retry_times: Mapping[int, float], now: float, digests: Sequence[NewDigest] = ()) -> set[int]:
        """Before sending: set each email's next attempt from `retry_times` (email id -> epoch seconds), and
        record each new digest (made at `now`) with the rows it carries; return the ids of the emails this
        instance may send (all of `retry_times` unless another instance took some over meanwhile).

        Committed before the SMTP conversation, so an email whose result cannot be recorded (the
        service is killed, or the database refuses the write) is sent again only after this
        back-off; and while the database refuses writes, nothing is sent at all.
        """

    def mark_sent(self, email_ids: Iterable[int], now: float) -> None:
        """Record that the SMTP server accepted the emails (one, or a digest's) at `now`; they leave the queue."""

    def mark_failed(self, email_ids: Iterable[int], now: float, error: str | None) -> None:
        """Record a permanent rejection of the emails (one, or a digest's); they leave the queue as 'failed'."""

    def schedule_retry(self, email_ids: Iterable[int], next_attempt_at: float, error: str | None) -> None:
        """Record a failed attempt of the emails (one, or a digest's); they stay queued until `next_attempt_at`."""

    def due_webhooks(self, now: float, limit: int) -> list[QueuedWebhook]:
        """Up to `limit` queued webhook deliveries whose next attempt is at or before `now`, oldest due first."""

    def claim_webhooks(self, retry_times: Mapping[int, float]) -> set[int]:
        """Before posting: set each delivery's next attempt from `retry_times` (delivery id -> epoch seconds);
        return the ids of the deliveries this instance may post (as claim_emails).

        As claim_emails: committed before the POST, so a delivery whose answer cannot be recorded is
        tried again only after this back-off (or at the next start).
        """

    def finish_webhook(self, delivery_id: int, status: str, now: float, error: str | None) -> None:
        """Record that the delivery left the queue at `now`: `status` 'sent' (answered 2xx) or 'failed' (for good)."""

    def retry_webhook(self, delivery_id: int, next_attempt_at: float, error: str | None) -> None:
        """Record a failed attempt; the delivery stays queued until `next_attempt_at`."""

    def recent_webhooks(self, limit: int) -> list[WebhookHistory]:
        """The `limit` most recently queued webhook deliveries, newest first."""

    def user_counts(self, now: float) -> UserCounts:
        """Every configured user's condition time at `now` and counters, for a metrics scrape: one entry per
        user in each column, no ping read."""

    def outbox_counts(self) -> dict[str, int]:
        """How many emails the outbox holds by status (queued, sent, failed), each present, 0 if none."""

    def delete_pings_before(self, cutoff: float, limit: int) -> int:
        """Delete up to `limit` pings older than `cutoff`; return how many were deleted.

        A failed user's fail signal is kept whatever its age: its alerts quote it.
        """

    def delete_history_before(self, cutoff: float, limit: int) -> int:
        """Delete up to `limit` sent or failed emails finished before `cutoff`, as many webhook deliveries,
        and up to `limit` digests and `limit` alerts made before it that no email or delivery refers to any
        more; return how many rows were deleted.

        Queued emails and deliveries, and the alerts they belong to, are kept whatever their age.
        """

    def upkeep(self, now: float) -> None:
        """What the store needs done every second while the service runs (the scheduler's store-upkeep loop):
        a WAL checkpoint on SQLite, the instance's lease renewed until after `now` on PostgreSQL; and on both,
        every sql_store.RUN_MARK_SECONDS, the service's run marked seen at `now` (service_runs)."""

    def check_writable(self, now: float) -> None:
        """Return once a real write has committed: the health table's one row set to `now`, in a transaction
        of its own. Raise StoreUnavailableError if it cannot commit, its message the reason (store.DATABASE_FULL
        when there is no room for it), or if another process holds the database's write lock for longer
        than store.HEALTH_TIMEOUT_MS.

        This is what a ping needs: the write lock, then a commit. The write replaces one row, so checks
        never make the database grow; and a health check waits less than a ping would for another process.
        """
