"""rules.py's lateness rules restated in SQL, written once for both databases, so that a user's deadline can be
stored and found through an index, and moved by the very statement that records a signal.

Each function mirrors a rule of rules.py and gives its SQL for one database (RulesSql(SQLITE) or
RulesSql(POSTGRESQL)). The two spell "the later of" differently: SQLite's multi-argument max() and min() are NULL
if any argument is, PostgreSQL's GREATEST and LEAST ignore NULLs. The rules are written here with `latest`,
`earliest` and `strict_latest`, which say which arguments may be NULL, and each database gets its spelling.
tests/test_store.py checks with random signals, snoozes and restarts, on both databases, that the SQL and
rules.py agree.
"""

from dataclasses import dataclass

from rules import FAIL, START, SUCCESS


@dataclass(frozen=True, slots=True)
class RulesSql:
    """The rules' SQL for one database: `null_ignoring` if its GREATEST/LEAST skip NULLs (PostgreSQL)."""

    null_ignoring: bool

    def latest(self, *maybe: str, known: tuple[str, ...]) -> str:
        """The latest of the expressions `maybe` (each possibly NULL, then left out) and `known` (never NULL)."""
        return self._extreme("GREATEST", "max", maybe, known)

    def earliest(self, *maybe: str, known: tuple[str, ...]) -> str:
        """The earliest of the expressions `maybe` (each possibly NULL, then left out) and `known` (never NULL)."""
        return self._extreme("LEAST", "min", maybe, known)

    def strict_latest(self, first: str, maybe: str) -> str:
        """NULL if `first` is NULL, else the later of `first` and `maybe` (left out if NULL)."""
        if self.null_ignoring:
            return f"CASE WHEN {first} IS NOT NULL THEN GREATEST({first}, {maybe}) END"
        return f"max({first}, coalesce({maybe}, {first}))"

    def _extreme(self, postgresql: str, sqlite: str, maybe: tuple[str, ...], known: tuple[str, ...]) -> str:
        if self.null_ignoring:
            return f"{postgresql}({', '.join(maybe + known)})"
        # A NULL stands back as an infinity that loses to any time (1e999 is +Inf to SQLite), rather than as
        # a copy of known[0]: these nest, and each copy would double the expression the database evaluates.
        never = "-1e999" if sqlite == "max" else "1e999"
        return f"{sqlite}({', '.join(tuple(f'coalesce({m}, {never})' for m in maybe) + known)})"

    def restarted(
        self, at: str | None = None, silence_from: str = "silence_from", prefix: str = "", monitored_since: str = ""
    ) -> str:
        """rules._restarted_at at the time `at` (None: once any snooze is over), over the columns of `prefix`
        (a table alias and a dot, or ""), reading silence_from (and monitored_since, if given) from the given SQL
        expression instead: the latest of the start of monitoring, the parent's return and the snooze's end."""
        since = monitored_since or f"{prefix}monitored_since"
        snooze_end = (
            f"coalesce({prefix}snoozed_until, {since})"
            if at is None
            else f"CASE WHEN {prefix}snoozed_until <= {at} THEN {prefix}snoozed_until ELSE {since} END"
        )
        return self.latest(silence_from, known=(since, snooze_end))

    def due_at(
        self,
        last_ping: str = "last_ping",
        run_started: str = "run_started",
        failed_at: str = "failed_at",
        back_at: str = "back_at",
        silence_from: str = "silence_from",
        monitored_since: str = "monitored_since",
        fail_count: str = "fail_count",
        too_often_at: str = "too_often_at",
    ) -> str:
        """rules.due_at, reading each of these columns from the given SQL expression instead (a signal's new
        values): at once while a recovery waits; else, if monitored, the earliest of the failure once fail_count
        reached fail_threshold (or the snooze's end, if later), the run's deadline (its start, or the restart of
        its measures if later, plus max_runtime), the silence's deadline (the later of the last ping and that
        restart, plus max_sleep), as they will be once any snooze is over, a TOO_OFTEN notice unless a snooze
        ended after it (rules.pending_notice), and the next maintenance window's start (maintenance_at). A
        scheduled user's deadline needs cronsim: SQL makes it due at the moment its silence is measured from, so
        the absence listener looks at it once after each contact or start and stores its real deadlines
        (rules.due_at says so too)."""
        restarted = self.restarted(silence_from=silence_from, monitored_since=monitored_since)
        late_at = f"{self.latest(last_ping, known=(restarted,))} + CASE WHEN schedule IS NULL THEN max_sleep ELSE 0 END"
        failed = self.strict_latest(self.failing(failed_at, fail_count), "snoozed_until")
        run = f"{self.strict_latest(run_started, restarted)} + max_runtime"
        notice = f"CASE WHEN snoozed_until IS NULL OR {too_often_at} > snoozed_until THEN {too_often_at} END"
        return (
            f"CASE WHEN {back_at} IS NOT NULL THEN {back_at}"
            f" WHEN monitor THEN {self.earliest(failed, run, notice, 'maintenance_at', known=(late_at,))} END"
        )

    def signal_due_at(self, effects: dict[str, str]) -> str:
        """due_at with a signal's `effects` (signal_effects) in place of the columns they move."""
        names = ("last_ping", "run_started", "failed_at", "back_at", "fail_count", "too_often_at")
        return self.due_at(**{name: effects[name] for name in names})

    @staticmethod
    def failing(failed_at: str = "failed_at", fail_count: str = "fail_count", prefix: str = "") -> str:
        """rules.failing: the failure's time (`failed_at`) once `fail_count` reached fail_threshold (over the
        columns of `prefix`), else NULL."""
        return f"CASE WHEN {fail_count} >= {prefix}fail_threshold THEN {failed_at} END"

    @staticmethod
    def counts_as(signal: str, prefix: str = "") -> str:
        """rules.counts_as for the signal of the row `signal` (its kind and duration) and the min_runtime of the
        columns of `prefix`: a success that closed a run shorter than min_runtime counts as a fail."""
        return (
            f"(CASE WHEN {signal}.kind = '{SUCCESS}' AND {signal}.duration < {prefix}min_runtime THEN '{FAIL}'"
            f" ELSE {signal}.kind END)"
        )

    def down(self, at: str, prefix: str) -> str:
        """Whether the user of the columns of `prefix` is in a condition at the time `at`: rules.condition is not
        None (a snooze changes nothing).

        A scheduled user's silence deadline is its next run (plus grace; plus start_grace for its start, while no
        run is open) as the absence listener last stored it, if that was for the moment its silence is measured
        from at `at`; otherwise it is not known here and the user counts as not silent (the listener looks at a
        scheduled user after each of its signals, so this is only so within one step of one)."""
        restarted = self.restarted(at, f"{prefix}silence_from", prefix)
        seen = self.latest(f"{prefix}last_ping", known=(restarted,))
        failing = self.failing(f"{prefix}failed_at", f"{prefix}fail_count", prefix)
        return (
            f"({prefix}monitor AND ({failing} IS NOT NULL"
            f" OR {at} > {self.strict_latest(f'{prefix}run_started', restarted)} + {prefix}max_runtime"
            f" OR CASE WHEN {prefix}schedule IS NULL THEN {at} > {seen} + {prefix}max_sleep"
            f" ELSE {prefix}next_run_after = {seen} AND ({at} > {prefix}next_run + {prefix}grace"
            f" OR {prefix}run_started IS NULL AND {at} > {prefix}next_run + {prefix}start_grace) END))"
        )

    def condition_at(self, now: str) -> str:
        """When the earliest of a monitored user's conditions begins at `now` (rules.condition: the failure once
        failing, the run's deadline, the silence's deadline, each measured as rules.silence_start says at `now`).
        A scheduled user's deadlines need cronsim: rules.condition_at gives them."""
        restarted = self.restarted(now)
        late = f"{self.latest('last_ping', known=(restarted,))} + max_sleep"
        run = f"{self.strict_latest('run_started', restarted)} + max_runtime"
        return f"CASE WHEN monitor THEN {self.earliest(self.failing(), run, known=(late,))} END"

    def signal_effects(self, signal: str) -> dict[str, str]:
        """What the signal of the row `signal` (its kind, at and duration) does to its user's columns (rules.py),
        each as the SQL expression of the column's new value. It does what it counts as (rules.counts_as): a
        success that closed a run shorter than min_runtime does what a fail does. A success closer than
        min_interval to the one before (rules.too_often) is kept as too_often_at, with the time between them."""
        kind, at = self.counts_as(signal), f"{signal}.at"
        # The later of the two keeps last_ping monotonic if signals ever commit out of time order.
        last_ping = self.latest("last_ping", known=(at,))
        too_often = f"{kind} = '{SUCCESS}' AND abs({at} - last_success) < min_interval"
        return {
            "last_ping": f"(CASE {kind} WHEN '{START}' THEN last_ping ELSE {last_ping} END)",
            "run_started": f"(CASE {kind} WHEN '{START}' THEN {at} END)",
            "failed_at": (
                f"(CASE {kind} WHEN '{SUCCESS}' THEN NULL WHEN '{FAIL}' THEN coalesce(failed_at, {at})"
                " ELSE failed_at END)"
            ),
            "back_at": (
                f"(CASE WHEN {kind} = '{SUCCESS}' AND down_since IS NOT NULL THEN coalesce(back_at, {at})"
                " ELSE back_at END)"
            ),
            "fail_count": (
                f"(CASE {kind} WHEN '{SUCCESS}' THEN 0 WHEN '{FAIL}' THEN fail_count + 1 ELSE fail_count END)"
            ),
            "last_success": (
                f"(CASE {kind} WHEN '{SUCCESS}' THEN {self.latest('last_success', known=(at,))} ELSE last_success END)"
            ),
            "too_often_at": f"(CASE WHEN {too_often} THEN {at} ELSE too_often_at END)",
            "too_often_gap": f"(CASE WHEN {too_often} THEN abs({at} - last_success) ELSE too_often_gap END)",
        }

    def parent_return(self, signal: str) -> str:
        """A child's silence_from once its parent, down, sent the success `signal`: restarted from that moment."""
        return self.latest("silence_from", known=(f"{signal}.at",))
