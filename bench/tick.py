"""Cost of one absence-listener step (`Scheduler.check_once`) as users grow, with 1 % and 0 % of them late;
with no dependencies, or with every user in a chain of CHAIN_LENGTH (each depending on the one before it),
where the late users are whole chains: each step then alerts the heads and suppresses the rest; or with
every user watched by a schedule instead of max_sleep. Every user has detection's rules on (DETECTION, and
start_grace if scheduled), as a fleet that uses them would."""

import contextlib
import shutil
import sqlite3
import time
from dataclasses import dataclass
from statistics import median

import psycopg

import config
import mailer
from bench import harness
from config import LiveSettings
from database import open_store
from mailer import SmtpMailer
from scheduler import USERS_PER_STEP, Scheduler
from schedules import next_time

MONITORING_START = 1_790_000_000.0
LATE_EVERY = 100  # one user in LATE_EVERY is late: 1 %
LATE_MAX_SLEEP = 60.0
ON_TIME_MAX_SLEEP = 3600.0
CHAIN_LENGTH = 5
# Scheduled users: the 1 % every minute without grace (late at 16:14:00, 40 s after the start at
# 16:13:20 Paris time), the others at 03:00 each night with an hour's grace.
LATE_SCHEDULE = "* * * * *"
ON_TIME_SCHEDULE = "0 3 * * *"
ZONE = "Europe/Paris"
# A step is timed at these moments: before anyone's deadline, and once the 1 % are past theirs.
NOBODY_LATE_AT = MONITORING_START + LATE_MAX_SLEEP / 2
# Detection's rules (SPEC "Detection") on every user; a scheduled one also gets a start_grace (the late ones
# none beyond their grace of 0, so that they are late as before).
DETECTION = {"fail_threshold": 3, "min_runtime": 1.0, "min_interval": 30.0, "flap_threshold": 4}
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
    # Whether the users are watched by schedules (else by max_sleep).
    scheduled: bool = False
    # Scheduled users only: the listener's back-to-back steps after a start, which store every user's
    # real deadline (each is due at once after a start), in ms, and how many steps.
    settle_ms: float | None = None
    steps_to_settle: int | None = None


def run(sizes, late_repeats, idle_repeats, log, chain_length=1, scheduled=False, database=None):
    """Time steps at each number of users in `sizes`, in chains of `chain_length` (1: none), watched by
    schedules if `scheduled` (else by max_sleep), on a new SQLite file, or on the empty PostgreSQL database
    whose URL is `database` (one size only); return TickRows."""
    workdir = harness.BUILD_DIR / "tick"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    rows = []
    for size in sizes:
        rows.append(
            _measure(
                database or workdir / f"users-{size}-{chain_length}-{scheduled}.db",
                size,
                late_repeats,
                idle_repeats,
                chain_length,
                scheduled,
            )
        )
        row = rows[-1]
        chains = f" in chains of {chain_length}" if chain_length > 1 else ""
        kind = " scheduled" if scheduled else ""
        settled = (
            "" if row.settle_ms is None else f"; after a start, {row.settle_ms:.0f} ms in {row.steps_to_settle} steps"
        )
        log(
            f"  {size:>7}{kind} users{chains}: {row.late} late, one step {row.step_late_ms:.2f} ms"
            f" (all late users: {row.backlog_late_ms:.2f} ms in {row.steps_for_backlog} steps);"
            f" nobody late {row.step_none_late_ms * 1000:.0f} µs{settled}"
        )
    return rows


def _user(index, chain_length, scheduled):
    # Late: one user in LATE_EVERY, or, with chains, one chain in LATE_EVERY (the same share of users).
    late = index // chain_length % LATE_EVERY == 0
    watch = (
        {"max_sleep": None, "schedule": LATE_SCHEDULE if late else ON_TIME_SCHEDULE, "tz": ZONE}
        | {"grace": 0.0 if late else 3600.0, "start_grace": 0.0 if late else 600.0}
        if scheduled
        else {"max_sleep": LATE_MAX_SLEEP if late else ON_TIME_MAX_SLEEP}
    )
    return config.UserConfig(
        monitor=True,
        email_frequency=3600.0,
        recipients=("oncall@example.com",),
        depends_on=f"device-{index - 1:06d}" if index % chain_length else None,
        **DETECTION,
        **watch,
    )


def _measure(db, size, late_repeats, idle_repeats, chain_length, scheduled):
    users = {f"device-{index:06d}": _user(index, chain_length, scheduled) for index in range(size)}
    late_users = [
        name for name, user in users.items() if user.schedule == LATE_SCHEDULE or user.max_sleep == LATE_MAX_SLEEP
    ]
    settings = config.Settings(1.0, 5.0, None, users, "oncall@example.com")
    store = open_store(str(db))
    settle_ms = steps_to_settle = None
    try:
        store.sync_users(users, MONITORING_START)
        # check_once takes its time as an argument; the clock is only read when draining the outbox.
        scheduler = Scheduler(store, RecordingMailer(), LiveSettings(settings), "http://127.0.0.1:8080", time.time)
        if scheduled:
            # Each late user pinged at its own moment, as real ones do: no two share an evaluation of
            # their next run (schedules.next_time keeps recent answers).
            for index, name in enumerate(late_users):
                store.record_ping(name, MONITORING_START + index / size)
            # Once, untimed by the steps below: every scheduled user is due at once after a start.
            began, steps_to_settle = time.perf_counter(), 1
            while scheduler.check_once(MONITORING_START + 1) == USERS_PER_STEP:
                steps_to_settle += 1
            settle_ms = (time.perf_counter() - began) * 1000
        none_late = [_timed(scheduler.check_once, NOBODY_LATE_AT) for _ in range(idle_repeats)]
        one_step, backlog, steps = [], [], 0
        with _transactions(db) as transaction:
            for _ in range(late_repeats):
                _restore_late_users(transaction, scheduled)
                one_step.append(_timed(scheduler.check_once, SOME_LATE_AT))
                _restore_late_users(transaction, scheduled)
                began, steps = time.perf_counter(), 1
                # As the absence listener's loop does: a full step means more are due, so step again.
                while scheduler.check_once(SOME_LATE_AT) == USERS_PER_STEP:
                    steps += 1
                backlog.append(time.perf_counter() - began)
    finally:
        store.close()
    return TickRow(
        users=size,
        chain_length=chain_length,
        late=len(late_users),
        step_late_ms=median(one_step) * 1000,
        backlog_late_ms=median(backlog) * 1000,
        steps_for_backlog=steps,
        step_none_late_ms=median(none_late) * 1000,
        scheduled=scheduled,
        settle_ms=settle_ms,
        steps_to_settle=steps_to_settle,
    )


@contextlib.contextmanager
def _transactions(db):
    """A function opening a transaction (a context manager yielding a connection) on `db`, a SQLite path or
    a PostgreSQL URL, through a connection of its own, for the bench's own SQL."""
    if str(db).startswith("postgresql://"):
        with psycopg.connect(str(db), autocommit=True) as connection:

            @contextlib.contextmanager
            def transaction():
                with connection.transaction():
                    yield connection

            yield transaction
        return
    connection = sqlite3.connect(db)
    try:

        @contextlib.contextmanager
        def transaction():
            with connection:
                yield connection

        yield transaction
    finally:
        connection.close()


def _restore_late_users(transaction, scheduled):
    # Bench-only SQL on the bench's own database: the late users are put back as they were before
    # their alert, so every timed step finds the same work. Values are written in the SQL (bench
    # constants), which both SQLite and PostgreSQL read alike.
    with transaction() as connection:
        if scheduled:
            # Nothing remembered from an earlier step: a real late user's last evaluation is long gone.
            next_time.cache_clear()
            due_at = next_time(LATE_SCHEDULE, ZONE, MONITORING_START + 1)
            connection.execute(
                "UPDATE users SET last_alert = NULL, last_alert_kind = NULL, down_since = NULL,"
                f" suppressed_kind = NULL, due_at = {due_at!r} WHERE schedule = '{LATE_SCHEDULE}'"
            )
        else:
            connection.execute(
                "UPDATE users SET last_alert = NULL, down_since = NULL, suppressed_kind = NULL,"
                f" due_at = monitored_since + max_sleep WHERE max_sleep = {LATE_MAX_SLEEP!r}"
            )
        connection.execute("DELETE FROM outbox")
        connection.execute("DELETE FROM alerts")


def _timed(step, now):
    began = time.perf_counter()
    step(now)
    return time.perf_counter() - began
