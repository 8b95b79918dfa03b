"""The checks in force: those settings.json declares and those programs created (the management API, or a signal
with create=1), which live in the database beside them, and every check's UUID.

Checks owns the one view of both that the rest reads: it puts settings.json's users plus the checks created by
program in force in LiveSettings (a name in settings.json wins), so the web layer, the scheduler, the channels
and the overview treat both alike. It keeps in memory, replaced whole, each check's UUID (for /ping/<uuid>) and
the paused checks a signal resumes, so a ping costs no extra query. What another instance changed is read again
when the store's change counter moves (refresh(), which the scheduler runs every REFRESH_INTERVAL seconds).
"""

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from config import ConfigError, LiveSettings, Settings, UserConfig, parse_check
from records import CheckExistsError, DeclaredCheckError, ProgramCheck, StoreError, UnknownUserError
from rules import FAIL, SUCCESS
from store_contract import StoreContract

log = logging.getLogger("ping_listener.checks")

# How often each instance looks at the store's change counter (one index seek) for checks another instance
# created, changed, paused or deleted: the longest such a change takes to reach this one.
REFRESH_INTERVAL = 1.0
# The kinds of signal that end a pause (as in Healthchecks, a start or a log leaves a paused check paused).
RESUMING_KINDS = (SUCCESS, FAIL)


@dataclass(frozen=True)
class Definition:
    """A check that a program created: its own settings keys (defaults fill in the rest) and the management
    API's fields that settings.json has no key for. Stored as JSON (to_json) in the check's row."""

    settings: Mapping[str, Any]
    desc: str = ""
    manual_resume: bool = False
    # The part of max_sleep that the API calls grace (timeout + grace = max_sleep); None: no grace.
    grace: float | None = None
    created_by: str = "api"
    uuid: str = ""

    def to_json(self) -> str:
        """This definition as its row keeps it (without created_by and uuid, which have their own columns)."""
        return json.dumps(
            {
                "settings": dict(self.settings),
                "desc": self.desc,
                "manual_resume": self.manual_resume,
                "grace": self.grace,
            }
        )

    @classmethod
    def of(cls, check: ProgramCheck) -> "Definition":
        """The definition of a stored check created by program."""
        document = json.loads(check.program)
        return cls(
            settings=document.get("settings", {}),
            desc=document.get("desc", ""),
            manual_resume=bool(document.get("manual_resume", False)),
            grace=document.get("grace"),
            created_by=check.created_by,
            uuid=check.uuid,
        )


@dataclass(frozen=True)
class _View:
    """What Checks knows, replaced whole so that each reader sees one version."""

    change: int | None = None
    programs: Mapping[str, Definition] = field(default_factory=dict)
    # Program checks' parsed configs (those that are valid with the settings in force).
    users: Mapping[str, UserConfig] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)  # uuid -> name
    uuids: Mapping[str, str] = field(default_factory=dict)  # name -> uuid
    resumed_by_signal: frozenset[str] = frozenset()
    paused: frozenset[str] = frozenset()


class Checks:
    """The checks in force over `store`, kept in `live` (see the module's docstring); safe to use from any thread."""

    def __init__(self, store: StoreContract, live: LiveSettings) -> None:
        """Take `live`'s settings as settings.json's, read the checks created by program, and put both in force."""
        self._store = store
        self._live = live
        self._file = live.current
        self._view = _View()
        self._lock = threading.Lock()
        self.refresh(force=True)

    @property
    def file_settings(self) -> Settings:
        """The settings as settings.json gives them, without the checks created by program."""
        return self._file

    def merged_with(self, settings: Settings) -> Settings:
        """`settings` (settings.json's) with the checks created by program that it does not declare."""
        programs = {name: user for name, user in self._view.users.items() if name not in settings.users}
        return dataclasses.replace(settings, users={**programs, **settings.users})

    def use_file_settings(self, settings: Settings) -> None:
        """Put settings.json's `settings` (just reloaded, and applied to the store) in force with the checks created
        by program, read again."""
        self._file = settings
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        """Read the checks created by program and every check's UUID again if the store's change counter moved
        since the last read (or `force`), and put them in force; return whether it read them."""
        with self._lock:
            change = self._store.program_change()
            if not force and change == self._view.change:
                return False
            programs = {check.username: Definition.of(check) for check in self._store.program_checks()}
            ids = self._store.check_ids()
            file = self._file
            users = self._parse(programs, file)
            names = {check.uuid: check.username for check in ids if check.uuid is not None}
            paused = frozenset(check.username for check in ids if check.paused)
            resumed = frozenset(name for name in paused if name not in programs or not programs[name].manual_resume)
            self._view = _View(change, programs, users, names, {v: k for k, v in names.items()}, resumed, paused)
            self._live.replace(self.merged_with(file))
            return True

    def refresh_step(self, now: float) -> int:
        """refresh() as a step of a scheduler loop (`now` unused): 0, as no more work waits."""
        self.refresh()
        return 0

    def version(self) -> tuple[object, object]:
        """What definition(), uuid_of() and name_of() answer from, as opaque objects: while each of the two is the
        same object (`is`) as at an earlier call, those answer exactly as they did then."""
        return self._file, self._view

    def name_of(self, uuid: str) -> str | None:
        """The name of the configured check whose UUID is `uuid`, or None."""
        return self._view.names.get(uuid)

    def uuid_of(self, name: str) -> str | None:
        """The UUID of the configured check `name`, or None."""
        return self._view.uuids.get(name)

    def definition(self, name: str) -> Definition | None:
        """The definition of `name` if a program created it (and settings.json does not declare it), else None."""
        return None if name in self._file.users else self._view.programs.get(name)

    def paused(self, name: str) -> bool:
        """Whether the management API paused the check `name` (and no signal or resume has ended it)."""
        return name in self._view.paused

    def after_signal(self, name: str, kind: str, now: float) -> None:
        """End the pause of `name` if the signal of `kind` just recorded at `now` ends it (a success or fail of a
        paused check without manual_resume). Costs a set lookup for every other signal."""
        if name in self._view.resumed_by_signal and kind in RESUMING_KINDS:
            # The signal is recorded whatever happens here: its answer must not tell the client otherwise.
            try:
                self.pause(name, False, now)
            except StoreError as error:
                log.error("%s not resumed by its %s signal: %s; resume it over the API", name, kind, error)
                return
            log.info("%s resumed by its %s signal", name, kind)

    def pause(self, name: str, paused: bool, now: float) -> None:
        """Pause the configured check `name`, or resume it (StoreContract.pause), and put that in force."""
        before = self._store.program_change()
        self._store.pause(name, paused, now)

        def update(view: _View) -> _View:
            manual = name in view.programs and view.programs[name].manual_resume
            return dataclasses.replace(
                view,
                paused=view.paused | {name} if paused else view.paused - {name},
                resumed_by_signal=(
                    view.resumed_by_signal | {name} if paused and not manual else view.resumed_by_signal - {name}
                ),
            )

        self._follow(before, update)

    def create(self, name: str, definition: Definition, limit: int | None, now: float) -> str:
        """Create the check `name` as `definition` says, monitored from `now`; return its UUID. Raises ConfigError
        (its problems naming fields) if it is invalid, CheckExistsError if a check of that name is configured,
        CheckLimitError past `limit` (checks created by signals)."""
        if name in self._live.current.users:
            raise CheckExistsError(f"a check named {name} exists already")
        user = parse_check(name, definition.settings, self._file, self._live.current.users)
        before = self._store.program_change()
        check_uuid = self._store.create_check(name, user, definition.to_json(), definition.created_by, limit, now)
        stored = dataclasses.replace(definition, uuid=check_uuid)
        self._follow(
            before,
            lambda view: dataclasses.replace(
                view,
                programs={**view.programs, name: stored},
                users={**view.users, name: user},
                names={**view.names, check_uuid: name},
                uuids={**view.uuids, name: check_uuid},
            ),
        )
        log.info(
            "check %s created by %s (uuid %s)",
            name,
            "a signal" if definition.created_by == "ping" else "API",
            check_uuid,
        )
        return check_uuid

    def change(self, name: str, definition: Definition, now: float) -> None:
        """Change the check `name` that a program created to `definition`. Raises DeclaredCheckError for a check of
        settings.json, UnknownUserError for none, ConfigError if `definition` is invalid."""
        self._refuse_declared(name)
        others = {other: user for other, user in self._live.current.users.items() if other != name}
        user = parse_check(name, definition.settings, self._file, others)
        before = self._store.program_change()
        self._store.change_check(name, user, definition.to_json(), now)
        stored = dataclasses.replace(definition, uuid=self.uuid_of(name) or "")

        def update(view: _View) -> _View:
            resumed = view.resumed_by_signal - {name}
            if name in view.paused and not stored.manual_resume:
                resumed |= {name}
            return dataclasses.replace(
                view,
                programs={**view.programs, name: stored},
                users={**view.users, name: user},
                resumed_by_signal=resumed,
            )

        self._follow(before, update)
        log.info("check %s changed by API", name)

    def delete(self, name: str) -> None:
        """Stop monitoring the check `name` that a program created (its history kept). Raises as change()."""
        self._refuse_declared(name)
        dependants = [other for other, user in self._live.current.users.items() if user.depends_on == name]
        if dependants:
            raise ConfigError([f"check: {dependants[0]} depends on it (depends_on); change or delete that one first"])
        before = self._store.program_change()
        self._store.delete_check(name)

        def update(view: _View) -> _View:
            check_uuid = view.uuids.get(name)
            return dataclasses.replace(
                view,
                programs={key: value for key, value in view.programs.items() if key != name},
                users={key: value for key, value in view.users.items() if key != name},
                names={key: value for key, value in view.names.items() if key != check_uuid},
                uuids={key: value for key, value in view.uuids.items() if key != name},
                paused=view.paused - {name},
                resumed_by_signal=view.resumed_by_signal - {name},
            )

        self._follow(before, update)
        log.info("check %s deleted by API", name)

    def _follow(self, before: int, update: Callable[[_View], _View]) -> None:
        """Put in force a change this instance just made, the store's change counter being `before` it: by
        `update` of the view if that change is the only one since (one index seek, not a read of every check),
        else by reading everything again."""
        with self._lock:
            change = self._store.program_change()
            if self._view.change == before and change == before + 1:
                self._view = dataclasses.replace(update(self._view), change=change)
                self._live.replace(self.merged_with(self._file))
                return
        self.refresh(force=True)

    def _refuse_declared(self, name: str) -> None:
        if name in self._file.users:
            raise DeclaredCheckError(f"{name} is declared in the settings file: change it there")
        if name not in self._live.current.users:
            raise UnknownUserError(f"unknown check {name}")

    def _parse(self, programs: Mapping[str, Definition], file: Settings) -> dict[str, UserConfig]:
        """The configs of `programs` that `file` does not declare, each validated among all checks; one that the
        settings in force make invalid (a webhook or default removed) is left out, loudly."""
        parsed: dict[str, UserConfig] = {}
        others = {**{name: _placeholder(definition) for name, definition in programs.items()}, **file.users}
        for name, definition in programs.items():
            if name in file.users:
                continue
            try:
                parsed[name] = parse_check(name, definition.settings, file, others)
            except ConfigError as error:
                log.error("check %s (created by program) is not monitored: %s", name, "; ".join(error.problems))
        return parsed


def _placeholder(definition: Definition) -> UserConfig:
    """A stand-in config of a check created by program, only for others' depends_on to name."""
    depends_on = definition.settings.get("depends_on")
    return UserConfig(True, 0.0, 0.0, (), depends_on=depends_on if isinstance(depends_on, str) else None)
