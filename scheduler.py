"""The absence listener and the outbox drain: two thin stoppable loops acting on the rules (rules.py).

The loops run in their own threads so a slow SMTP server never delays detecting absences.
Each step takes `now` from its caller, so tests drive time instead of sleeping. The loops wait
on a monotonic clock (Event.wait); the wall clock only dates things, and the absence listener
restarts monitoring when it sees the wall clock jump.
"""

import logging
import threading
import time
from collections.abc import Callable

import mailer
from config import Settings
from mailer import MailSender
from rules import FAILURE, RUN_TIMEOUT, SILENCE, clock_jump, decide, retry_delay
from store import CheckOutcome, Digest, NewDigest, NewEmail, QueuedEmail, Store, StoreError, UserState

log = logging.getLogger("ping_listener.scheduler")

USERS_PER_STEP = 500
EMAILS_PER_STEP = 100
# A frequency of 0 means "as often as possible", not a busy loop.
MIN_LOOP_DELAY = 0.02
# If deciding about a user fails, look at it again this much later, so one bad row cannot
# stop the listener or make it spin.
BAD_USER_DELAY = 60.0


class Scheduler:
    """Runs the absence listener and the outbox drain over one store, until stopped."""

    def __init__(
        self, store: Store, mail_sender: MailSender, settings: Settings, server_root: str, clock: Callable[[], float]
    ) -> None:
        """Alert about `settings`' users in `store` through `mail_sender`, linking to `server_root`.

        `clock()` gives the wall clock's epoch seconds.
        """
        self._store = store
        self._mailer = mail_sender
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
        suppressed = [outcome.user.username for outcome in outcomes if outcome.suppressed is not None]
        if suppressed:
            log.info(
                "suppressed alerts for %d user(s) whose parent is down: %s", len(suppressed), ", ".join(suppressed[:10])
            )
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

        The emails due for one recipient go as one: a digest if there are several (mailer.digest), sent,
        retried or failed together; one tried again with exactly the rows it carried keeps its
        Message-ID and Date. The emails' next attempts are pushed back and new digests recorded before
        sending, then each result is committed as soon as the SMTP server answers. Returns how many
        emails it tried.
        """
        emails = self._store.due_emails(now, EMAILS_PER_STEP)
        if not emails:
            return 0
        outgoing: dict[int, tuple[tuple[int, ...], float]] = {}
        messages, digests = [], []
        for group in mailer.by_recipient(emails):
            ids = tuple(email.id for email in group)
            previous = _same_digest(group)
            if len(group) == 1:
                message = group[0]
            elif previous is not None:
                message = mailer.digest(group, previous.message_id, previous.created_at)
            else:
                message = mailer.digest(group, self._mailer.new_message_id(), now)
                digests.append(NewDigest(ids, message.recipient, message.subject, message.message_id))
            outgoing[message.id] = (ids, retry_delay(message.attempts + 1))
            messages.append(message)
        self._store.claim_emails(
            {email_id: now + delay for ids, delay in outgoing.values() for email_id in ids}, now, digests
        )
        for message, result in self._mailer.send_all(messages):
            ids, delay = outgoing[message.id]
            finished = self._clock()
            what = f"alert email {ids[0]}" if len(ids) == 1 else f"digest of emails {', '.join(map(str, ids))}"
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

    def start(self) -> None:
        """Start both loops in background threads."""
        for name, step, full_step, delay in (
            ("absence-listener", self._listen, USERS_PER_STEP, self._settings.base_frequency),
            ("outbox-drain", self.drain_once, EMAILS_PER_STEP, self._settings.email_processing_frequency),
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

    def _outcome(self, user: UserState, now: float) -> CheckOutcome:
        decision = decide(user, now, user.parent)
        alert = decision.alert
        emails: tuple[NewEmail, ...] = ()
        recovery: tuple[NewEmail, ...] = ()
        if alert is not None:
            emails = self._emails(user, *self._compose_alert(user, alert.kind))
        if decision.recovery:
            recovery = self._emails(user, *mailer.compose_recovery(user, self._server_root))
        return CheckOutcome(
            user,
            decision.next_due_at,
            emails,
            kind=alert.kind if alert is not None else SILENCE,
            down_since=decision.down_since,
            ends_outage=user.back_at is not None,
            recovery=recovery,
            suppressed=None if decision.suppressed is None else (decision.suppressed.kind, decision.suppressed.down_at),
        )

    def _compose_alert(self, user: UserState, kind: str) -> tuple[str, str]:
        if kind == FAILURE:
            if user.fail_signal is None:
                raise ValueError(f"{user.username} is failed but its fail signal is unknown")
            return mailer.compose_failure(user, self._store.signal(user.fail_signal), self._server_root)
        if kind == RUN_TIMEOUT:
            return mailer.compose_run_timeout(user, self._server_root)
        return mailer.compose_alert(user, self._server_root)

    def _emails(self, user: UserState, subject: str, body: str) -> tuple[NewEmail, ...]:
        recipients = self._settings.users[user.username].recipients
        return tuple(NewEmail(to, subject, body, self._mailer.new_message_id()) for to in recipients)


def _same_digest(emails: list[QueuedEmail]) -> Digest | None:
    """The digest that carried exactly `emails` last time, if it did; else None."""
    previous = emails[0].digest
    if previous is None or previous.emails != len(emails) or any(email.digest != previous for email in emails):
        return None
    return previous
