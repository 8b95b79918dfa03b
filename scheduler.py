"""The service's background loops: the absence listener, the outbox drain and the webhook delivery acting on
the rules (rules.py), retention, the heartbeat, and the loop that runs a reload when one is asked for.

Each loop runs in its own thread, so a slow SMTP server never delays detecting absences, email and
webhooks never wait for each other, and a slow heartbeat URL delays nothing. Each webhook is posted to
in a thread of its own that the delivery loop does not wait for, so a slow webhook delays only itself.
Each step takes `now` from its caller, so tests drive time instead of sleeping. The loops wait on a monotonic clock
(Event.wait); the wall clock only dates things, and the absence listener restarts monitoring when it
sees the wall clock jump. Settings are read from the LiveSettings at each step, so a reload is
followed at once.
"""

import http.client
import logging
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Histogram

import mailer
import outbound
import webhooks
from config import EMAIL_CHANNEL, WEBHOOK_CHANNEL_PREFIX, LiveSettings, UserConfig
from localtime import logs_link
from mailer import MailSender
from records import (
    CheckOutcome,
    Digest,
    NewDigest,
    NewEmail,
    NewWebhook,
    QueuedEmail,
    QueuedWebhook,
    StoreError,
    UserState,
)
from rules import (
    BACK,
    FAILURE,
    FLAPPING,
    RUN_TIMEOUT,
    SILENCE,
    START_LATE,
    TOO_OFTEN,
    clock_jump,
    decide,
    in_maintenance,
    maintenance_window,
    next_maintenance,
    retry_delay,
)
from store_contract import StoreContract
from webhooks import WebhookSender

log = logging.getLogger("ping_listener.scheduler")

# A step's cost grows with the due users it handles (deciding, composing, one row written each: see
# bench/results.md), never with the users in all; its write transaction holds the write lock that pings wait for. A
# step bounded to this many keeps that wait short, and a full step is followed at once by the next.
USERS_PER_STEP = 100
EMAILS_PER_STEP = 100
WEBHOOKS_PER_STEP = 100
# A frequency of 0 means "as often as possible", not a busy loop.
MIN_LOOP_DELAY = 0.02
# If deciding about a user fails, look at it again this much later, so one bad row cannot
# stop the listener or make it spin.
BAD_USER_DELAY = 60.0
# Retention deletes at most this many rows of each kind per write transaction (a few ms of the write
# lock: bench/operations.py, retention), pauses RETENTION_PAUSE between full batches so pings and the other loops
# get the lock and the CPU, and looks for old rows again every RETENTION_INTERVAL once none are left.
RETENTION_BATCH = 500
RETENTION_PAUSE = 0.02
RETENTION_INTERVAL = 60.0
# How often the store's upkeep runs (StoreContract.upkeep): on SQLite the WAL is copied into the database file
# (commits never do it, so that a ping never waits for a checkpoint's fsync; every second keeps the WAL to
# about a second of writes); on PostgreSQL the instance's lease is renewed (pg_store.CLAIM_TIMEOUT).
STORE_UPKEEP_INTERVAL = 1.0
# How long a heartbeat GET may take in all (however its server trickles) before it counts as failed.
HEARTBEAT_TIMEOUT = 10.0
# A webhook still posting earlier deliveries has its due ones looked at again this much later (no attempt
# counted), rather than posted to twice at once or left in the way of other webhooks' deliveries.
BUSY_WEBHOOK_DELAY = 5.0
# How often a loop that waits for a request (a reload) looks whether the service is stopping.
REQUEST_POLL = 0.5
# How long a database check of /healthz or the heartbeat (StoreContract.check_writable: a commit of 64 KiB) answers for:
# within it, another check reuses its result, so that a client requesting /healthz in a loop makes the service
# write at most that much a second.
HEALTH_CHECK_REUSE = 1.0
# The loops whose running the heartbeat and /healthz vouch for.
LOOPS = ("absence-listener", "outbox-drain", "webhook-delivery")
# ping_listener_deliveries_total's outcome of each result of mailer.py and webhooks.py.
DELIVERY_OUTCOMES = {
    mailer.SENT: "sent",
    mailer.RETRY: "retried",
    mailer.REJECTED: "failed",
    webhooks.DELIVERED: "sent",
    webhooks.RETRY: "retried",
    webhooks.FAILED: "failed",
}
# The channel_kind of a delivery to a webhook no longer in settings.json (its format is unknown).
REMOVED_WEBHOOK_KIND = "webhook"
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Scheduler:
    """Runs the absence listener, the outbox drain and the webhook delivery over one store, until stopped."""

    def __init__(
        self,
        store: StoreContract,
        mail_sender: MailSender,
        settings: LiveSettings,
        default_root: str,
        clock: Callable[[], float],
        webhook_sender: WebhookSender | None = None,
    ) -> None:
        """Alert about the users of `settings` in `store` through `mail_sender` and `webhook_sender` (by
        default a WebhookSender).

        Emails link to the settings' server_root, or `default_root` without one. `clock()` gives the
        wall clock's epoch seconds.
        """
        self._store = store
        self._mailer = mail_sender
        self._webhooks = webhook_sender or WebhookSender(clock)
        self._settings = settings
        # The root of links in emails when the settings have no server_root (server.py sets it to the
        # address bound, once the socket is bound).
        self.default_root = default_root
        self._clock = clock
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._last_clock_reading: tuple[float, float] | None = None
        # Webhook name -> the thread posting its deliveries (deliver_once), while it runs.
        self._posting: dict[str, threading.Thread] = {}
        self._posting_lock = threading.Lock()
        # Built once: it reads SSL_CERT_FILE and the system's CA store.
        self._heartbeat_tls = outbound.tls_context()
        # The last database check of health_problem: (when, its problem or None); one check at a time.
        self._database_check: tuple[float, str | None] | None = None
        self._database_check_lock = threading.Lock()
        # Not registered anywhere: metrics.py collects it for /metrics.
        self.absence_step_seconds = Histogram(
            "ping_listener_absence_step_seconds",
            "How long a step of the absence listener took (finding due users, deciding, queueing alerts).",
            buckets=STEP_BUCKETS,
            registry=None,
        )
        # Not registered anywhere either. A digest counts once, as it is one email.
        self.deliveries = Counter(
            "ping_listener_deliveries",
            "Emails and webhook POSTs tried since the service started, by channel_kind (email, or the webhook's"
            " format) and outcome (sent, retried, failed).",
            ["channel_kind", "outcome"],
            registry=None,
        )
        for outcome in ("sent", "retried", "failed"):
            self.deliveries.labels(EMAIL_CHANNEL, outcome)

    def check_once(self, now: float) -> int:
        """One step of the absence listener: queue alerts and recoveries for up to USERS_PER_STEP due users.

        Returns how many due users it looked at.
        """
        users = self._store.due_users(now, USERS_PER_STEP)
        if not users:
            # The usual step: nothing is due, so no write transaction competes with the pings.
            return 0
        outcomes = []
        for user in users:
            try:
                outcomes.append(self._outcome(user, now))
            except Exception:
                log.exception("cannot decide about user %r; looking again in %g s", user.username, BAD_USER_DELAY)
                outcomes.append(CheckOutcome(user, now + BAD_USER_DELAY))
        alerts = self._store.save_check_outcomes(outcomes, now)
        if alerts:
            log.info("queued alerts for %d late user(s)", alerts)
        suppressed = [outcome.user.username for outcome in outcomes if outcome.suppressed is not None]
        if suppressed:
            log.info(
                "suppressed alerts for %d user(s) whose parent is down: %s", len(suppressed), ", ".join(suppressed[:10])
            )
        return len(users)

    def follow_clock(self, now: float, monotonic_now: float) -> float:
        """Restart monitoring if the wall clock jumped since the last call (unless other instances run on the
        database: StoreContract.restart_monitoring_after_clock_jump); return the jump in seconds (0.0 if none).

        `now` is the wall clock and `monotonic_now` a clock that never jumps (time.monotonic()).
        Without this, a jump forward would make every device look late at once, and a jump back
        would leave last pings in the future, silencing alerts until the clock caught up.
        """
        reading = (now, monotonic_now)
        jump = clock_jump(self._last_clock_reading, reading) if self._last_clock_reading else 0.0
        if jump and self._store.restart_monitoring_after_clock_jump(now):
            log.warning("the wall clock jumped by %+.1f s; monitoring restarted as after a restart", jump)
        elif jump:
            log.error(
                "the wall clock jumped by %+.1f s while other instances run on this database: monitoring not"
                " restarted; this host's clock now disagrees with theirs, set it right (NTP)",
                jump,
            )
        # Only once the store answered: if it refused, the next call sees the same jump again.
        self._last_clock_reading = reading
        return jump

    def drain_once(self, now: float) -> int:
        """One step of the outbox drain: try every email due by `now` (up to EMAILS_PER_STEP).

        The emails due for one recipient go as one: first collapsed (mailer.collapse: a reminder adds
        nothing to an unsent alert, an outage already over is told by its recovery), then a digest if
        several are left (mailer.digest); all the rows go sent, retried or failed together, and a digest
        tried again with exactly the rows it carried keeps its Message-ID and Date. The emails' next
        attempts are pushed back and new digests recorded before sending (only those the store still lets
        this instance send go: StoreContract.claim_emails), then each result is committed as soon as the SMTP
        server answers. Returns how many emails were due.
        """
        emails = self._store.due_emails(now, EMAILS_PER_STEP)
        if not emails:
            return 0
        # Message id -> the rows it carries, their retry delay, and what it is (for the log).
        outgoing: dict[int, tuple[tuple[int, ...], float, str]] = {}
        messages, digests = [], []
        for group in mailer.by_recipient(emails):
            ids = tuple(sorted(email.id for email in group))
            written = [email for email, _ in mailer.collapse(group)]
            previous = _same_digest(group)
            if len(written) == 1:
                message = written[0]
                what = (
                    f"alert email {ids[0]}"
                    if len(ids) == 1
                    else f"email {message.id} (for emails {', '.join(map(str, ids))})"
                )
            elif previous is not None:
                message = mailer.digest(written, previous.message_id, previous.created_at)
            else:
                message = mailer.digest(written, self._mailer.new_message_id(), now)
                digests.append(NewDigest(ids, message.recipient, message.subject, message.message_id))
            if len(written) > 1:
                what = f"digest of emails {', '.join(map(str, ids))}"
            outgoing[message.id] = (ids, retry_delay(message.attempts + 1), what)
            messages.append(message)
        claimed = self._store.claim_emails(
            {email_id: now + delay for ids, delay, _ in outgoing.values() for email_id in ids}, now, digests
        )
        # Another instance may have taken over some claims meanwhile (this one was frozen): they are its to send.
        messages = [message for message in messages if claimed.issuperset(outgoing[message.id][0])]
        for message, result in self._mailer.send_all(messages):
            ids, delay, what = outgoing[message.id]
            finished = self._clock()
            self.deliveries.labels(EMAIL_CHANNEL, DELIVERY_OUTCOMES[result.status]).inc()
            if result.status == mailer.SENT:
                self._store.mark_sent(ids, finished)
                log.info("sent %s to %s", what, message.recipient)
            elif result.status == mailer.REJECTED:
                self._store.mark_failed(ids, finished, result.error)
                log.error("%s to %s rejected for good: %s", what, message.recipient, result.error)
            else:
                self._store.schedule_retry(ids, finished + delay, result.error)
                log.warning("%s to %s not sent (%s); retrying in %g s", what, message.recipient, result.error, delay)
        return len(emails)

    def deliver_once(self, now: float) -> int:
        """One step of the webhook delivery: start posting every delivery due by `now` (up to WEBHOOKS_PER_STEP),
        each webhook's in order in a thread of its own, and return how many were due, without waiting.

        As drain_once does for emails: the deliveries' next attempts are pushed back before posting (only
        those the store still lets this instance post go), then each webhook's thread commits each answer
        as it comes. A retry waits as long as an email's would, or longer if the webhook's Retry-After asks
        for it, never more than rules.MAX_RETRY_DELAY. A webhook whose thread still runs (a slow one: each
        POST ends within webhooks.WEBHOOK_DEADLINE) gets its due deliveries pushed back by
        BUSY_WEBHOOK_DELAY instead, so a slow webhook delays only its own deliveries.
        """
        deliveries = self._store.due_webhooks(now, WEBHOOKS_PER_STEP)
        if not deliveries:
            return 0
        busy = self._busy_webhooks()
        claimed = self._store.claim_webhooks(
            {d.id: now + (BUSY_WEBHOOK_DELAY if d.webhook in busy else retry_delay(d.attempts + 1)) for d in deliveries}
        )
        by_webhook: dict[str, list[QueuedWebhook]] = {}
        for delivery in deliveries:
            if delivery.id in claimed and delivery.webhook not in busy:
                by_webhook.setdefault(delivery.webhook, []).append(delivery)
        endpoints = self._settings.current.webhooks
        for name, queued in by_webhook.items():
            thread = threading.Thread(
                target=self._post_in_order, args=(endpoints.get(name), queued), name=f"webhook-{name}", daemon=True
            )
            with self._posting_lock:
                self._posting[name] = thread
            thread.start()
        return len(deliveries)

    def wait_for_deliveries(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the webhook deliveries being posted to be settled and recorded;
        True if none is left."""
        deadline = time.monotonic() + timeout
        with self._posting_lock:
            threads = list(self._posting.values())
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        return not self._busy_webhooks()

    def store_upkeep_once(self, now: float) -> int:
        """The store's upkeep at `now` (StoreContract.upkeep: a WAL checkpoint on SQLite, the instance's lease on
        PostgreSQL); return 0, as there is never more to do at once."""
        self._store.upkeep(now)
        return 0

    def retain_once(self, now: float) -> int:
        """One step of retention: delete a batch of pings, and of alerts and finished emails, older than
        retention_days before `now`. Returns how many rows it deleted (0 without retention_days)."""
        retention_days = self._settings.current.retention_days
        if retention_days is None:
            return 0
        cutoff = now - retention_days * 86400
        return self._store.delete_pings_before(cutoff, RETENTION_BATCH) + self._store.delete_history_before(
            cutoff, RETENTION_BATCH
        )

    def health_problem(self) -> str | None:
        """Why the service is not healthy now, or None: a loop that is not running, or a database where a
        write cannot commit (StoreContract.check_writable: its reason, such as "database is full"), as a check at most
        HEALTH_CHECK_REUSE seconds old found."""
        for name in LOOPS:
            thread = self._threads.get(name)
            if thread is None or not thread.is_alive():
                return f"the {name.replace('-', ' ')} is not running"
        with self._database_check_lock:
            now = self._clock()
            if self._database_check is not None and 0 <= now - self._database_check[0] < HEALTH_CHECK_REUSE:
                return self._database_check[1]
            try:
                self._store.check_writable(now)
                problem = None
            except StoreError as error:
                problem = f"the database cannot commit a write: {error}"
            self._database_check = (now, problem)
            return problem

    def beat_once(self) -> bool:
        """One heartbeat: GET heartbeat_url if one is set and the service is healthy; True if it was answered 2xx.

        A failure is logged (naming the URL's host, never the URL: it often holds a secret) and
        changes nothing else; an unhealthy service sends no heartbeat, which is the point.
        """
        url = self._settings.current.heartbeat_url
        if url is None:
            return False
        problem = self.health_problem()
        if problem is not None:
            log.warning("no heartbeat sent: %s", problem)
            return False
        host = urllib.parse.urlsplit(url).hostname
        opener = outbound.opener(outbound.Deadline(HEARTBEAT_TIMEOUT), self._heartbeat_tls)
        try:
            # The status says it all: nothing of the answer's body is read.
            with opener.open(url, timeout=HEARTBEAT_TIMEOUT):
                return True
        except urllib.error.HTTPError as error:
            log.warning("heartbeat to %s failed: HTTP %d", host, error.code)
        # URLError, timeouts, the deadline, connection refused, a garbled answer; ValueError: a bad URL.
        except (OSError, http.client.HTTPException, ValueError) as error:
            log.warning("heartbeat to %s failed: %s", host, getattr(error, "reason", None) or error)
        return False

    def start(self) -> None:
        """Start the absence listener, the outbox drain, the webhook delivery, retention, the store's upkeep
        and the heartbeat in background threads."""
        settings = self._settings
        for name, step, full_step, delay, pause in (
            ("absence-listener", self._listen, USERS_PER_STEP, lambda: settings.current.base_frequency, 0.0),
            (
                "outbox-drain",
                self.drain_once,
                EMAILS_PER_STEP,
                lambda: settings.current.email_processing_frequency,
                0.0,
            ),
            (
                "webhook-delivery",
                self.deliver_once,
                WEBHOOKS_PER_STEP,
                lambda: settings.current.email_processing_frequency,
                0.0,
            ),
            ("retention", self.retain_once, RETENTION_BATCH, lambda: RETENTION_INTERVAL, RETENTION_PAUSE),
            # Never "full": one upkeep, then a wait.
            ("store-upkeep", self.store_upkeep_once, 1, lambda: STORE_UPKEEP_INTERVAL, 0.0),
            # Never "full": one GET, then a wait of heartbeat_frequency.
            ("heartbeat", lambda now: int(self.beat_once()), 2, lambda: settings.current.heartbeat_frequency, 0.0),
        ):
            self._start_thread(name, self._loop, step, full_step, delay, pause)

    def on_request(self, name: str, requested: threading.Event, action: Callable[[], object]) -> None:
        """Run `action` in a thread of its own each time `requested` is set (e.g. from a signal handler),
        until the scheduler stops. The event is cleared before `action` runs, so a request made
        meanwhile runs it again."""
        self._start_thread(name, self._serve_requests, requested, action)

    def run_loop(self, name: str, step: Callable[[float], int], full_step: int, delay: float) -> None:
        """Run `step(now)` in a thread of its own until the scheduler stops, as its own loops run: again at
        once after a step that returns `full_step` or more (more work waits), else after `delay` seconds.
        A step that raises is logged and counts as an empty one."""
        self._start_thread(name, self._loop, step, full_step, lambda: delay, 0.0)

    def stop(self, timeout: float) -> bool:
        """Ask every loop (and every webhook's posting thread, after its current POST) to stop and wait up to
        `timeout` seconds for them; True if they stopped."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads.values():
            thread.join(max(deadline - time.monotonic(), 0))
        delivered = self.wait_for_deliveries(max(deadline - time.monotonic(), 0))
        return delivered and not any(thread.is_alive() for thread in self._threads.values())

    def _start_thread(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads[name] = thread

    def _loop(
        self, step: Callable[[float], int], full_step: int, delay: Callable[[], float], pause_when_full: float
    ) -> None:
        while not self._stop.is_set():
            try:
                done = step(self._clock())
            except StoreError as error:
                log.error("%s: %s", threading.current_thread().name, error)
                done = 0
            except Exception:
                log.exception("%s step failed", threading.current_thread().name)
                done = 0
            # A full step means more work is waiting: go on after `pause_when_full` (0: at once).
            self._stop.wait(max(delay(), MIN_LOOP_DELAY) if done < full_step else pause_when_full)

    def _serve_requests(self, requested: threading.Event, action: Callable[[], object]) -> None:
        while not self._stop.is_set():
            if not requested.wait(REQUEST_POLL):
                continue
            requested.clear()
            try:
                action()
            except Exception:
                log.exception("%s failed", threading.current_thread().name)

    def _listen(self, now: float) -> int:
        started = time.perf_counter()
        try:
            self.follow_clock(now, time.monotonic())
            return self.check_once(now)
        finally:
            self.absence_step_seconds.observe(time.perf_counter() - started)

    def _busy_webhooks(self) -> set[str]:
        """The webhooks whose posting thread still runs (the others are forgotten)."""
        with self._posting_lock:
            for name in [name for name, thread in self._posting.items() if not thread.is_alive()]:
                del self._posting[name]
            return set(self._posting)

    def _post_in_order(self, endpoint: webhooks.Endpoint | None, deliveries: Sequence[QueuedWebhook]) -> None:
        """Post `deliveries` (all for one webhook) in order and record each result as it comes; stop early if
        the scheduler stops (the rest are posted after their claim's back-off, by this start or the next)."""
        kind = endpoint.format if endpoint is not None else REMOVED_WEBHOOK_KIND
        for delivery, result in self._webhooks.send_in_order(endpoint, deliveries):
            self.deliveries.labels(kind, DELIVERY_OUTCOMES[result.status]).inc()
            try:
                self._record_delivery(delivery, result, self._clock())
            except StoreError as error:
                log.error("cannot record webhook delivery %d (posted again later): %s", delivery.id, error)
            except Exception:
                log.exception("cannot record webhook delivery %d (posted again later)", delivery.id)
            if self._stop.is_set():
                return

    def _record_delivery(self, delivery: QueuedWebhook, result: webhooks.DeliveryResult, finished: float) -> None:
        label = f"{delivery.event.event} webhook {delivery.id} ({delivery.event.username}) to {delivery.webhook}"
        if result.status == webhooks.DELIVERED:
            self._store.finish_webhook(delivery.id, "sent", finished, None)
            log.info("delivered %s", label)
        elif result.status == webhooks.FAILED:
            self._store.finish_webhook(delivery.id, "failed", finished, result.error)
            log.error("%s refused for good: %s", label, result.error)
        else:
            delay = retry_delay(delivery.attempts + 1, result.retry_after)
            self._store.retry_webhook(delivery.id, finished + delay, result.error)
            log.warning("%s not delivered (%s); retrying in %g s", label, result.error, delay)

    def _outcome(self, user: UserState, now: float) -> CheckOutcome:
        settings = self._settings.current
        config = settings.users.get(user.username)
        if config is None:
            # Removed by a reload that has not reached the store yet: not alerted now, but looked at again,
            # in case that reload fails and the user stays (a reload that succeeds unwatches it itself).
            return CheckOutcome(user, now + BAD_USER_DELAY)
        server_root = settings.server_root or self.default_root
        # A maintenance window open now snoozes the user until its end, as /snooze would (rules.in_maintenance);
        # the user is looked at again when its next window opens.
        window = maintenance_window(config.maintenance, now)
        watched = user if window is None else in_maintenance(user, window[1])
        maintenance_until = None if watched is user else window and window[1]
        maintenance_at = next_maintenance(config.maintenance, now)
        decision = decide(watched, now, user.parent)
        next_due_at = decision.next_due_at
        if maintenance_at is not None and (next_due_at is None or maintenance_at < next_due_at):
            next_due_at = maintenance_at
        alert, flap = decision.alert, decision.flap
        emails: tuple[NewEmail, ...] = ()
        hooks: tuple[NewWebhook, ...] = ()
        recovery: tuple[NewEmail, ...] = ()
        recovery_hooks: tuple[NewWebhook, ...] = ()
        if alert is not None:
            emails, hooks = self._notices(user, alert.kind, config, server_root)
        if decision.recovery:
            recovery, recovery_hooks = self._notices(user, BACK, config, server_root)
        return CheckOutcome(
            user,
            next_due_at,
            emails,
            kind=alert.kind if alert is not None else SILENCE,
            down_since=decision.down_since,
            ends_outage=user.back_at is not None,
            recovery=recovery,
            webhooks=hooks,
            recovery_webhooks=recovery_hooks,
            suppressed=None if decision.suppressed is None else (decision.suppressed.kind, decision.suppressed.down_at),
            next_run=decision.next_run,
            maintenance_until=maintenance_until,
            maintenance_at=maintenance_at,
            flap=None if flap is None else (flap.window_start, flap.count, flap.outage_at, flap.flapping_since),
        )

    def _notices(
        self, user: UserState, kind: str, config: UserConfig, server_root: str
    ) -> tuple[tuple[NewEmail, ...], tuple[NewWebhook, ...]]:
        """The emails and webhook deliveries telling `user`'s channels (its `notify` in `config`) about `kind`;
        a recovery (BACK) is emailed only if `email_recoveries` is true, and goes to no webhook whose `recoveries`
        is false."""
        signal = None
        if kind == FAILURE:
            if user.fail_signal is None:
                raise ValueError(f"{user.username} is failed but its fail signal is unknown")
            signal = self._store.signal(user.fail_signal)
            subject, body = mailer.compose_failure(user, signal, server_root)
        elif kind == RUN_TIMEOUT:
            subject, body = mailer.compose_run_timeout(user, server_root)
        elif kind == START_LATE:
            subject, body = mailer.compose_start_late(user, server_root)
        elif kind == TOO_OFTEN:
            subject, body = mailer.compose_too_often(user, server_root)
        elif kind == FLAPPING:
            subject, body = mailer.compose_flapping(user, server_root)
        elif kind == BACK:
            subject, body = mailer.compose_recovery(user, server_root)
        else:
            subject, body = mailer.compose_alert(user, server_root)
        emails: tuple[NewEmail, ...] = ()
        if EMAIL_CHANNEL in config.notify and (kind != BACK or self._settings.current.email_recoveries):
            emails = tuple(NewEmail(to, subject, body, self._mailer.new_message_id()) for to in config.recipients)
        names = [
            channel[len(WEBHOOK_CHANNEL_PREFIX) :]
            for channel in config.notify
            if channel.startswith(WEBHOOK_CHANNEL_PREFIX)
        ]
        if not names:
            return emails, ()
        logs_url = logs_link(server_root, user.username, mailer.event_moment(user, kind, signal))
        endpoints = self._settings.current.webhooks
        hooks = tuple(
            NewWebhook(name, webhooks.new_event_id(), subject, body, logs_url)
            for name in names
            if kind != BACK or name not in endpoints or endpoints[name].recoveries
        )
        return emails, hooks


def _same_digest(emails: list[QueuedEmail]) -> Digest | None:
    """The digest that carried exactly `emails` last time, if it did; else None."""
    previous = emails[0].digest
    if previous is None or previous.emails != len(emails) or any(email.digest != previous for email in emails):
        return None
    return previous
