"""The absence listener, the outbox drain and the webhook delivery: thin stoppable loops acting on the rules
(rules.py).

The loops run in their own threads so a slow SMTP server never delays detecting absences, and email
and webhooks never wait for each other.
Each step takes `now` from its caller, so tests drive time instead of sleeping. The loops wait
on a monotonic clock (Event.wait); the wall clock only dates things, and the absence listener
restarts monitoring when it sees the wall clock jump.
"""

import logging
import threading
import time
from collections.abc import Callable

import mailer
import webhooks
from config import EMAIL_CHANNEL, WEBHOOK_CHANNEL_PREFIX, Settings
from localtime import logs_link
from mailer import MailSender
from rules import BACK, FAILURE, RUN_TIMEOUT, SILENCE, clock_jump, decide, retry_delay
from store import CheckOutcome, NewEmail, NewWebhook, QueuedWebhook, Store, StoreError, UserState
from webhooks import WebhookSender

log = logging.getLogger("ping_listener.scheduler")

USERS_PER_STEP = 500
EMAILS_PER_STEP = 100
WEBHOOKS_PER_STEP = 100
# A frequency of 0 means "as often as possible", not a busy loop.
MIN_LOOP_DELAY = 0.02
# If deciding about a user fails, look at it again this much later, so one bad row cannot
# stop the listener or make it spin.
BAD_USER_DELAY = 60.0


class Scheduler:
    """Runs the absence listener, the outbox drain and the webhook delivery over one store, until stopped."""

    def __init__(
        self,
        store: Store,
        mail_sender: MailSender,
        settings: Settings,
        server_root: str,
        clock: Callable[[], float],
        webhook_sender: WebhookSender | None = None,
    ) -> None:
        """Alert about `settings`' users in `store` through `mail_sender` and `webhook_sender` (by default
        a WebhookSender), linking to `server_root`.

        `clock()` gives the wall clock's epoch seconds.
        """
        self._store = store
        self._mailer = mail_sender
        self._webhooks = webhook_sender or WebhookSender(clock)
        self._settings = settings
        self._server_root = server_root
        self._clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_clock_reading: tuple[float, float] | None = None

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
        return len(users)

    def follow_clock(self, now: float, monotonic_now: float) -> float:
        """Restart monitoring if the wall clock jumped since the last call; return the jump in seconds (0.0 if none).

        `now` is the wall clock and `monotonic_now` a clock that never jumps (time.monotonic()).
        Without this, a jump forward would make every device look late at once, and a jump back
        would leave last pings in the future, silencing alerts until the clock caught up.
        """
        reading = (now, monotonic_now)
        jump = clock_jump(self._last_clock_reading, reading) if self._last_clock_reading else 0.0
        if jump:
            self._store.restart_monitoring(now)
            log.warning("the wall clock jumped by %+.1f s; monitoring restarted as after a restart", jump)
        # Only once restarted: if the store refused, the next call sees the same jump again.
        self._last_clock_reading = reading
        return jump

    def drain_once(self, now: float) -> int:
        """One step of the outbox drain: try every email due by `now` (up to EMAILS_PER_STEP).

        The emails' next attempts are pushed back before sending, then each result is committed
        as soon as the SMTP server answers. Returns how many it tried.
        """
        emails = self._store.due_emails(now, EMAILS_PER_STEP)
        if not emails:
            return 0
        delays = {email.id: retry_delay(email.attempts + 1) for email in emails}
        self._store.claim_emails({email_id: now + delay for email_id, delay in delays.items()})
        for email, result in self._mailer.send_all(emails):
            finished = self._clock()
            if result.status == mailer.SENT:
                self._store.mark_sent(email.id, finished)
                log.info("sent alert email %d to %s", email.id, email.recipient)
            elif result.status == mailer.REJECTED:
                self._store.mark_failed(email.id, finished, result.error)
                log.error("alert email %d to %s rejected for good: %s", email.id, email.recipient, result.error)
            else:
                delay = delays[email.id]
                self._store.schedule_retry(email.id, finished + delay, result.error)
                log.warning(
                    "alert email %d to %s not sent (%s); retrying in %g s",
                    email.id,
                    email.recipient,
                    result.error,
                    delay,
                )
        return len(emails)

    def deliver_once(self, now: float) -> int:
        """One step of the webhook delivery: POST every delivery due by `now` (up to WEBHOOKS_PER_STEP).

        As drain_once does for emails: the deliveries' next attempts are pushed back before posting,
        then each answer is committed as it comes. A retry waits as long as an email's would, or
        longer if the webhook's Retry-After asks for it, never more than rules.MAX_RETRY_DELAY. Each
        webhook is posted to in a thread of its own. Returns how many it tried.
        """
        deliveries = self._store.due_webhooks(now, WEBHOOKS_PER_STEP)
        if not deliveries:
            return 0
        self._store.claim_webhooks({d.id: now + retry_delay(d.attempts + 1) for d in deliveries})
        for delivery, result in self._webhooks.send_all(deliveries, self._settings.webhooks):
            self._record_delivery(delivery, result, self._clock())
        return len(deliveries)

    def start(self) -> None:
        """Start the loops in background threads."""
        for name, step, full_step, delay in (
            ("absence-listener", self._listen, USERS_PER_STEP, self._settings.base_frequency),
            ("outbox-drain", self.drain_once, EMAILS_PER_STEP, self._settings.email_processing_frequency),
            ("webhook-delivery", self.deliver_once, WEBHOOKS_PER_STEP, self._settings.email_processing_frequency),
        ):
            thread = threading.Thread(target=self._loop, args=(step, full_step, delay), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float) -> bool:
        """Ask both loops to stop and wait up to `timeout` seconds for them; True if they stopped."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        return not any(thread.is_alive() for thread in self._threads)

    def _loop(self, step: Callable[[float], int], full_step: int, delay: float) -> None:
        while not self._stop.is_set():
            try:
                done = step(self._clock())
            except StoreError as error:
                log.error("%s: %s", threading.current_thread().name, error)
                done = 0
            except Exception:
                log.exception("%s step failed", threading.current_thread().name)
                done = 0
            # A full step means more work is waiting: go on at once.
            if done < full_step:
                self._stop.wait(max(delay, MIN_LOOP_DELAY))

    def _listen(self, now: float) -> int:
        self.follow_clock(now, time.monotonic())
        return self.check_once(now)

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
        decision = decide(user, now)
        alert = decision.alert
        emails: tuple[NewEmail, ...] = ()
        hooks: tuple[NewWebhook, ...] = ()
        recovery: tuple[NewEmail, ...] = ()
        recovery_hooks: tuple[NewWebhook, ...] = ()
        if alert is not None:
            emails, hooks = self._notices(user, alert.kind)
        if decision.recovery:
            recovery, recovery_hooks = self._notices(user, BACK)
        return CheckOutcome(
            user,
            decision.next_due_at,
            emails,
            kind=alert.kind if alert is not None else SILENCE,
            down_since=decision.down_since,
            ends_outage=user.back_at is not None,
            recovery=recovery,
            webhooks=hooks,
            recovery_webhooks=recovery_hooks,
        )

    def _notices(self, user: UserState, kind: str) -> tuple[tuple[NewEmail, ...], tuple[NewWebhook, ...]]:
        """The emails and webhook deliveries telling `user`'s channels (its `notify`) about `kind`."""
        signal = None
        if kind == FAILURE:
            if user.fail_signal is None:
                raise ValueError(f"{user.username} is failed but its fail signal is unknown")
            signal = self._store.signal(user.fail_signal)
            subject, body = mailer.compose_failure(user, signal, self._server_root)
        elif kind == RUN_TIMEOUT:
            subject, body = mailer.compose_run_timeout(user, self._server_root)
        elif kind == BACK:
            subject, body = mailer.compose_recovery(user, self._server_root)
        else:
            subject, body = mailer.compose_alert(user, self._server_root)
        config = self._settings.users[user.username]
        emails: tuple[NewEmail, ...] = ()
        if EMAIL_CHANNEL in config.notify:
            emails = tuple(NewEmail(to, subject, body, self._mailer.new_message_id()) for to in config.recipients)
        logs_url = logs_link(self._server_root, user.username, mailer.event_moment(user, kind, signal))
        hooks = tuple(
            NewWebhook(channel[len(WEBHOOK_CHANNEL_PREFIX) :], webhooks.new_event_id(), subject, body, logs_url)
            for channel in config.notify
            if channel.startswith(WEBHOOK_CHANNEL_PREFIX)
        )
        return emails, hooks
