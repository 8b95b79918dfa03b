"""Cost of one absence-listener step (`Scheduler.check_once`) as users grow, with 1 % and 0 % of them late;
with no dependencies, or with every user in a chain of CHAIN_LENGTH (each depending on the one before it),
where the late users are whole chains: each step then alerts the heads and suppresses the rest."""

import shutil
import sqlite3
import time
from dataclasses import dataclass
from statistics import median

import config
import mailer
from bench import harness
from config import LiveSettings
from mailer import SmtpMailer
from scheduler import USERS_PER_STEP, Scheduler
from store import Store

MONITORING_START = 1_790_000_000.0
LATE_EVERY = 100  # one user in LATE_EVERY is late: 1 %
LATE_MAX_SLEEP = 60.0
ON_TIME_MAX_SLEEP = 3600.0
CHAIN_LENGTH = 5
# A step is timed at these moments: before anyone's deadline, and once the 1 % are past theirs.
NOBODY_LATE_AT = MONITORING_START + LATE_MAX_SLEEP / 2
SOME_LATE_AT = MONITORING_START + 2 * LATE_MAX_SLEEP


class RecordingMailer(SmtpMailer):
    """The real mailer's Message-IDs, but it only records what it is asked to send: no SMTP in a tick."""

    def __init__(self):
        super().__init__(config.SmtpSettings("127.0.0.1", 9, None, None, "alerts@example.com"))
        self.sent = []

    def send_all(self, emails):
        """Record `emails` as sent, sending nothing."""
        for email in emails:
            self.sent.append(email)
            yield email, mailer.SendResult(mailer.SENT)


@dataclass(frozen=True)
class TickRow:
    """Step times at one number of users, in ms."""

    users: int
    # 1: no dependencies; else the length of the chains of depends_on every user is in.
    chain_length: int
    late: int
    step_late_ms: float
    backlog_late_ms: float
    steps_for_backlog: int
    step_none_late_ms: float


def run(sizes, late_repeats, idle_repeats, log, chain_length=1):
    """Time steps at each number of users in `sizes`, in chains of `chain_length` (1: none); return TickRows."""
    workdir = harness.BUILD_DIR / "tick"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    rows = []
    for size in sizes:
        rows.append(
            _measure(workdir / f"users-{size}-{chain_length}.db", size, late_repeats, idle_repeats, chain_length)
        )
        row = rows[-1]
        chains = f" in chains of {chain_length}" if chain_length > 1 else ""
        log(
            f"  {size:>7} users{chains}: {row.late} late, one step {row.step_late_ms:.2f} ms"
            f" (all late users: {row.backlog_late_ms:.2f} ms in {row.steps_for_backlog} steps);"
            f" nobody late {row.step_none_late_ms * 1000:.0f} µs"
        )
    return rows


def _measure(path, size, late_repeats, idle_repeats, chain_length):
    # Late: one user in LATE_EVERY, or, with chains, one chain in LATE_EVERY (the same share of users).
    users = {
        f"device-{index:06d}": config.UserConfig(
            monitor=True,
            max_sleep=LATE_MAX_SLEEP if index // chain_length % LATE_EVERY == 0 else ON_TIME_MAX_SLEEP,
            email_frequency=3600.0,
            recipients=("oncall@example.com",),
            depends_on=f"device-{index - 1:06d}" if index % chain_length else None,
        )
        for index in range(size)
    }
    settings = config.Settings(1.0, 5.0, None, users, "oncall@example.com")
    store = Store(path)
    try:
        store.sync_users(users, MONITORING_START)
        # check_once takes its time as an argument; the clock is only read when draining the outbox.
        scheduler = Scheduler(store, RecordingMailer(), LiveSettings(settings), "http://127.0.0.1:8080", time.time)
        none_late = [_timed(scheduler.check_once, NOBODY_LATE_AT) for _ in range(idle_repeats)]
        restore = sqlite3.connect(path)
        one_step, backlog, steps = [], [], 0
        try:
            for _ in range(late_repeats):
                _restore_late_users(restore)
                one_step.append(_timed(scheduler.check_once, SOME_LATE_AT))
                _restore_late_users(restore)
                began, steps = time.perf_counter(), 1
                # As the absence listener's loop does: a full step means more are due, so step again.
                while scheduler.check_once(SOME_LATE_AT) == USERS_PER_STEP:
                    steps += 1
                backlog.append(time.perf_counter() - began)
        finally:
            restore.close()
    finally:
        store.close()
    return TickRow(
        users=size,
        chain_length=chain_length,
        late=sum(1 for user in users.values() if user.max_sleep == LATE_MAX_SLEEP),
        step_late_ms=median(one_step) * 1000,
        backlog_late_ms=median(backlog) * 1000,
        steps_for_backlog=steps,
        step_none_late_ms=median(none_late) * 1000,
    )


def _restore_late_users(connection):
    # Bench-only SQL on the bench's own database: the late users are put back as they were before
    # their alert, so every timed step finds the same work.
    with connection:
        connection.execute(
            "UPDATE users SET last_alert = NULL, down_since = NULL, suppressed_kind = NULL,"
            " due_at = monitored_since + max_sleep WHERE max_sleep = ?",
            (LATE_MAX_SLEEP,),
        )
        connection.execute("DELETE FROM outbox")
        connection.execute("DELETE FROM alerts")


def _timed(step, now):
    began = time.perf_counter()
    step(now)
    return time.perf_counter() - began
