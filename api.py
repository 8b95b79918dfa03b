"""The management API at /api/v1/, /api/v2/ and /api/v3/, shaped as Healthchecks documents it (its
templates/docs/api.md), so that its clients (runitor, the healthchecks-io package, Terraform and Ansible modules)
work unchanged: list, create, read, change, pause, resume and delete checks, read their pings and flips, the
channels and the badges.

A check's name is its username (the name its pings carry), and its slug is that same name. Its fields are
Healthchecks' (timeout + grace is its max_sleep; a scheduled check has schedule, tz and grace) plus this service's
own settings keys (email_frequency, device_email, depends_on, max_runtime, ...). Checks created here live in the
database (checks.py); those settings.json declares can be read, paused and resumed, not changed or deleted.
Every field is validated by config.parse_check, the rules of settings.json.

Routes only do their job: `_authorized` checks the key (X-Api-Key, or api_key in a JSON body) against API_KEY
(read-write) and API_KEY_READONLY, counting wrong ones in the password limiter; `check_dict` is the one
serializer; `_definition` turns fields into a check's definition.
"""

import datetime
import functools
import hashlib
import hmac
import json
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import bottle

from checks import Checks, Definition
from config import (
    EMAIL_CHANNEL,
    USER_KEYS,
    WEBHOOK_CHANNEL_PREFIX,
    ConfigError,
    LiveSettings,
    Settings,
    UserConfig,
    seconds,
    secret_digest,
)
from guards import WrongPasswordLimiter, count_wrong, header_text, json_body, refuse_if_limited
from records import (
    CheckExistsError,
    DeclaredCheckError,
    StoreUnavailableError,
    UnknownUserError,
    UserState,
    listed_state,
)
from rules import condition, expected_at, late_at, run_deadline, silence_start, snoozed, start_deadline
from store_contract import StoreContract

API_DISABLED = "the management API is disabled: neither API_KEY nor API_KEY_READONLY is set"
# The largest body the API reads (a check's fields); a larger one is refused with 413 before it is read.
MAX_API_BODY = 64 * 1024
# The most signals checks/<uuid>/pings/ and flips a check's flips/ answer, newest (pings) or oldest (flips) first.
MAX_PINGS = 100
MAX_FLIPS = 1000
# The longest description kept.
MAX_DESC = 10_000
# Fields of Healthchecks' checks that this service has no use for: accepted and ignored, so that a client
# sending them (Terraform, Ansible) works.
IGNORED_FIELDS = {
    "api_key",
    "subject",
    "subject_fail",
    "start_kw",
    "success_kw",
    "failure_kw",
    "filter_subject",
    "filter_body",
    "filter_http_body",
    "filter_default_fail",
}
UNIQUE_FIELDS = ("name", "slug", "tags", "timeout", "grace")
# The channels' ids: stable UUIDs derived from each channel's name ("email", "webhook:NAME").
_CHANNEL_NAMESPACE = uuid.UUID("6f1a3c52-94a4-4d5e-8c0e-7b1f2e3d4c5b")
_ROUTE = "/api/v<version:re:[123]>/"


@dataclass(frozen=True)
class ApiKeys:
    """The management API's keys from the environment: API_KEY (read-write) and API_KEY_READONLY; None if unset."""

    read_write: str | None
    read_only: str | None


@functools.lru_cache(maxsize=1024)
def channel_id(channel: str) -> str:
    """The id of the channel `channel` ("email" or "webhook:NAME"): the same every time, on every instance."""
    return str(uuid.uuid5(_CHANNEL_NAMESPACE, channel))


def unique_key(check_uuid: str) -> str:
    """What a read-only key names a check by instead of its UUID (as Healthchecks: the SHA-1 of the UUID)."""
    return hashlib.sha1(check_uuid.encode()).hexdigest()


def iso(epoch: float | None) -> str | None:
    """`epoch` as Healthchecks writes times: ISO 8601 in UTC to the second, or None."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).isoformat()


def status(user: UserState, config: UserConfig, api_grace: float, now: float) -> str:
    """A check's status as Healthchecks names it: paused (snoozed), down (in a condition: late, failed or a run
    past max_runtime), started (a run open), new (no ping yet), grace (past its timeout, within its grace), up."""
    if snoozed(user, now):
        return "paused"
    if condition(user, now) is not None:
        return "down"
    if user.run_started is not None:
        return "started"
    if user.last_ping is None:
        return "new"
    grace_start = _grace_start(user, config, api_grace)
    return "grace" if grace_start is not None and now > grace_start else "up"


def status_until(user: UserState, config: UserConfig, api_grace: float, now: float) -> float | None:
    """The first moment after `now` at which status() may answer otherwise than at `now`, with `user` unchanged (no
    signal, no pause): the earliest of the moments it compares `now` with (a snooze's end, a run's deadline, the
    silence's deadline, a start's deadline, the grace's start) that are not past; None if none is ahead.
    status() stays what it is at `now` at every moment before it."""
    ahead = [
        moment
        for moment in (
            user.snoozed_until,
            run_deadline(user, now),
            late_at(user, now),
            start_deadline(user, now),
            _grace_start(user, config, api_grace),
        )
        if moment is not None and moment >= now
    ]
    return min(ahead, default=None)


def _grace_start(user: UserState, config: UserConfig, api_grace: float) -> float | None:
    """When the check is next expected (its timeout ends): after that it is in its grace until late."""
    if config.schedule is not None:
        return expected_at(user)
    if not config.monitor or config.max_sleep is None:
        return None
    return silence_start(user) + config.max_sleep - api_grace


def _number(value: float) -> float | int:
    """`value` as an integer when it is whole (Healthchecks' clients read timeouts as integers)."""
    return value if value % 1 else int(value)


@functools.lru_cache(maxsize=1024)
def _channels_field(notify: tuple[str, ...]) -> str:
    """The `channels` field of a check that notifies `notify`: their ids separated by commas."""
    return ",".join(channel_id(channel) for channel in notify)


def _api_grace(config: UserConfig, definition: Definition | None) -> float:
    """The check's grace as the API shows it: a schedule's grace, or the part of max_sleep its creator called grace."""
    if config.schedule is not None:
        return config.grace or 0.0
    return definition.grace or 0.0 if definition is not None else 0.0


def check_dict(
    user: UserState,
    config: UserConfig,
    definition: Definition | None,
    check_uuid: str,
    pings: int,
    now: float,
    version: int,
    readonly: bool,
    root: str,
) -> dict[str, Any]:
    """A check as the API shows it (Healthchecks' fields, then this service's own): the one serializer."""
    api_grace = _api_grace(config, definition)
    result: dict[str, Any] = {
        "name": user.username,
        "slug": user.username,
        "tags": " ".join(config.tags),
        "desc": definition.desc if definition is not None else "",
        "grace": _number(api_grace),
        "n_pings": pings,
        "status": status(user, config, api_grace, now),
        "started": user.run_started is not None,
        "last_ping": iso(user.last_ping),
        "next_ping": iso(_grace_start(user, config, api_grace)) if user.last_ping is not None else None,
        "manual_resume": definition.manual_resume if definition is not None else False,
        "methods": "",
        "declared_in": "settings" if definition is None else "program",
    }
    if user.last_duration is not None:
        result["last_duration"] = int(user.last_duration)
    if readonly:
        result["unique_key"] = unique_key(check_uuid)
    else:
        result["uuid"] = check_uuid
        result["ping_url"] = f"{root}/ping/{check_uuid}"
        update_url = f"{root}/api/v{version}/checks/{check_uuid}"
        result["update_url"] = update_url
        result["pause_url"] = update_url + "/pause"
        result["resume_url"] = update_url + "/resume"
        result["channels"] = _channels_field(config.notify)
    if config.schedule is not None:
        result["schedule"] = config.schedule
        result["tz"] = config.tz
    else:
        result["timeout"] = _number((config.max_sleep or 0.0) - api_grace)
    # This service's own keys.
    result.update(
        monitor=config.monitor,
        max_sleep=None if config.max_sleep is None else _number(config.max_sleep),
        email_frequency=_number(config.email_frequency),
        device_email=list(config.recipients) if definition is None or "device_email" in definition.settings else None,
        depends_on=config.depends_on,
        max_runtime=config.max_runtime,
        notify_recovery=config.notify_recovery,
        notify=list(config.notify),
    )
    return result


@dataclass(frozen=True, slots=True)
class _Part:
    """A check's JSON in the listing (check_dict's, encoded), with what it was made of: the check's row of
    StoreContract.listed_check_rows, config, definition and UUID, and the moments between which its status holds
    (`until` None: until one of those changes)."""

    row: tuple[Any, ...]
    config: UserConfig
    definition: Definition | None
    check_uuid: str
    since: float
    until: float | None
    json: bytes

    def holds(
        self, row: tuple[Any, ...], config: UserConfig, definition: Definition | None, check_uuid: str, at: float
    ) -> bool:
        """Whether this is the JSON of the check made of these at `at` (a clock set back misses)."""
        return (
            row == self.row
            and (config is self.config or config == self.config)
            and (definition is self.definition or definition == self.definition)
            and check_uuid == self.check_uuid
            and self.since <= at
            and (self.until is None or at < self.until)
        )


@dataclass(frozen=True, slots=True)
class _Listed:
    """A listing: its parts by check name (those it showed and those it kept), all of the same (version, read-only,
    root), so that a listing of another encodes every check again; and its answer with what it was made of (the
    rows read, the configs and checks in force, the query's slug and tags) and the moments between which it holds.
    Replaced whole by each listing, so concurrent ones each read one version."""

    variant: tuple[int, bool, str]
    parts: Mapping[str, _Part]
    rows: list[tuple[Any, ...]]
    users: Mapping[str, UserConfig]
    checks_version: tuple[object, object]
    query: tuple[str | None, frozenset[str]]
    since: float
    until: float | None
    answer: bytes

    def holds(
        self,
        variant: tuple[int, bool, str],
        rows: list[tuple[Any, ...]],
        users: Mapping[str, UserConfig],
        checks_version: tuple[object, object],
        query: tuple[str | None, frozenset[str]],
        at: float,
    ) -> bool:
        """Whether `answer` is the listing made of these at `at`: nothing it was made of changed (configs and
        checks by identity) and no status it shows may have turned."""
        return (
            variant == self.variant
            and query == self.query
            and users is self.users
            and all(now is then for now, then in zip(checks_version, self.checks_version, strict=True))
            and self.since <= at
            and (self.until is None or at < self.until)
            and rows == self.rows
        )


def _part(
    row: tuple[Any, ...],
    config: UserConfig,
    definition: Definition | None,
    check_uuid: str,
    at: float,
    variant: tuple[int, bool, str],
) -> _Part:
    """The listing's part of the check of `row` (StoreContract.listed_check_rows) at `at`, for `variant`."""
    user = listed_state(row)
    version, readonly, base = variant
    shown = check_dict(user, config, definition, check_uuid, row[1], at, version, readonly, base)
    until = status_until(user, config, _api_grace(config, definition), at)
    return _Part(row, config, definition, check_uuid, at, until, json.dumps(shown, separators=(",", ":")).encode())


def _json_list(key: bytes, items: list[bytes]) -> bytes:
    """The JSON object {key: [items]} of encoded JSON `items`, which are copied once."""
    if not items:
        return b'{"%s":[]}' % key
    first, last = b'{"%s":[' % key, b"]}"
    if len(items) == 1:
        return first + items[0] + last
    return b",".join([first + items[0], *items[1:-1], items[-1] + last])


def mount(
    app: bottle.Bottle,
    store: StoreContract,
    settings: LiveSettings,
    checks: Checks,
    clock: Callable[[], float],
    keys: ApiKeys,
    limiter: WrongPasswordLimiter,
) -> None:
    """Add the management API's routes to `app`; the *_url fields begin with server_root, or the address the
    request came to."""
    read_write = None if keys.read_write is None else secret_digest(keys.read_write)
    read_only = None if keys.read_only is None else secret_digest(keys.read_only)

    def authorized(write: bool) -> tuple[dict[str, Any], bool]:
        """The request's JSON body ({} if none) and whether it came with the read-only key; 404 if the API is
        disabled, 401 for a wrong or missing key (counted), 403 for a write with the read-only key, 413 for a body
        over MAX_API_BODY, 400 for a body that is not a JSON object."""
        if read_write is None and read_only is None:
            raise bottle.HTTPError(404, API_DISABLED)
        environ = bottle.request.environ
        client, now = environ.get("REMOTE_ADDR", ""), clock()
        refuse_if_limited(limiter, client, now, "API keys")
        body = _body(bottle.request)
        given = header_text(environ, "HTTP_X_API_KEY") or body.get("api_key")
        digest = secret_digest(given) if isinstance(given, str) and given else None
        if digest is not None and read_write is not None and hmac.compare_digest(digest, read_write):
            readonly = False
        elif digest is not None and read_only is not None and hmac.compare_digest(digest, read_only):
            readonly = True
        else:
            count_wrong(limiter, client, now, "API keys")
            raise bottle.HTTPError(401, "wrong or missing API key (X-Api-Key)")
        limiter.record_right(client, now)
        if write and readonly:
            raise bottle.HTTPError(403, "the read-only API key (API_KEY_READONLY) cannot change anything")
        return body, readonly

    def root() -> str:
        if settings.current.server_root is not None:
            return settings.current.server_root
        parts = bottle.request.urlparts
        return f"{parts.scheme}://{parts.netloc}"

    def show(
        name: str, version: int, readonly: bool, user: UserState | None = None, pings: int | None = None
    ) -> dict[str, Any]:
        config = settings.current.users[name]
        if user is None or pings is None:
            user = store.user(name)
            pings = store.pings_total(name) or 0
        check_uuid = checks.uuid_of(name) or ""
        definition = checks.definition(name)
        return check_dict(user, config, definition, check_uuid, pings, clock(), version, readonly, root())

    def lookup(code: str, readonly: bool) -> str:
        """The name of the check that `code` names: its UUID, or for a read-only key its unique_key too; 404."""
        name = checks.name_of(code)
        if name is None and readonly and len(code) == 40:
            name = next((n for n in settings.current.users if unique_key(checks.uuid_of(n) or "") == code), None)
        if name is None or name not in settings.current.users:
            raise bottle.HTTPError(404, f"no check with the uuid {code[:40]}")
        return name

    # The last listing, whose parts the next one reuses (or its whole answer, if nothing changed).
    listed = _Listed((0, False, ""), {}, [], {}, (None, None), (None, frozenset()), 0.0, None, b"")

    @app.get(_ROUTE + "checks/")
    @_errors
    def list_checks(version: str) -> bytes:
        nonlocal listed
        _, readonly = authorized(write=False)
        query = bottle.request.query
        tags = frozenset(query.getall("tag"))
        slug = query.get("slug")
        current, checks_version = settings.current.users, checks.version()
        rows = store.listed_check_rows()
        at, variant = clock(), (int(version), readonly, root())
        bottle.response.content_type = "application/json"
        last = listed
        if last.holds(variant, rows, current, checks_version, (slug, tags), at):
            return last.answer
        before = last.parts if last.variant == variant else {}
        parts: dict[str, _Part] = {}
        shown = []
        until: float | None = None
        for row in rows:
            name = row[0]
            config = current.get(name)
            if config is None:
                continue
            part = before.get(name)
            if (slug is None or name == slug) and tags.issubset(config.tags):
                definition, check_uuid = checks.definition(name), checks.uuid_of(name) or ""
                if part is None or not part.holds(row, config, definition, check_uuid, at):
                    part = _part(row, config, definition, check_uuid, at, variant)
                shown.append(part.json)
                if part.until is not None and (until is None or part.until < until):
                    until = part.until
            if part is not None:
                parts[name] = part
        answer = _json_list(b"checks", shown)
        listed = _Listed(variant, parts, rows, current, checks_version, (slug, tags), at, until, answer)
        return answer

    @app.post(_ROUTE + "checks/")
    @_errors
    def create_check(version: str) -> str:
        body, _ = authorized(write=True)
        name, fields = _name_and_fields(body, required=True)
        assert name is not None  # required
        unique = _unique(body)
        existing = _matching(name, fields, unique, settings.current.users, checks) if unique else None
        now = clock()
        if existing is not None:
            checks.change(
                existing,
                _definition(fields, checks.definition(existing), settings.current.users[existing], settings.current),
                now,
            )
            return _json(show(existing, int(version), False))
        checks.create(name, _definition(fields, None, None, settings.current), None, now)
        bottle.response.status = 201
        return _json(show(name, int(version), False))

    @app.get(_ROUTE + "checks/<code>")
    @_errors
    def get_check(version: str, code: str) -> str:
        _, readonly = authorized(write=False)
        return _json(show(lookup(code, readonly), int(version), readonly))

    @app.post(_ROUTE + "checks/<code>")
    @_errors
    def update_check(version: str, code: str) -> str:
        body, _ = authorized(write=True)
        name = lookup(code, False)
        new_name, fields = _name_and_fields(body, required=False)
        if new_name is not None and new_name != name:
            raise bottle.HTTPError(400, "name: cannot be changed (a check's name is what its pings carry)")
        definition = checks.definition(name)
        if definition is None:
            raise DeclaredCheckError(f"{name} is declared in the settings file: change it there")
        checks.change(name, _definition(fields, definition, settings.current.users[name], settings.current), clock())
        return _json(show(name, int(version), False))

    @app.delete(_ROUTE + "checks/<code>")
    @_errors
    def delete_check(version: str, code: str) -> str:
        authorized(write=True)
        name = lookup(code, False)
        shown = show(name, int(version), False)
        checks.delete(name)
        return _json(shown)

    @app.post(_ROUTE + "checks/<code>/pause")
    @_errors
    def pause_check(version: str, code: str) -> str:
        authorized(write=True)
        name = lookup(code, False)
        checks.pause(name, True, clock())
        return _json(show(name, int(version), False))

    @app.post(_ROUTE + "checks/<code>/resume")
    @_errors
    def resume_check(version: str, code: str) -> str:
        authorized(write=True)
        name = lookup(code, False)
        checks.pause(name, False, clock())
        return _json(show(name, int(version), False))

    @app.get(_ROUTE + "checks/<code>/pings/")
    @_errors
    def check_pings(version: str, code: str) -> str:
        _, readonly = authorized(write=False)
        name = lookup(code, readonly)
        signals = store.recent_signals(name, MAX_PINGS)
        pings = [
            {
                "type": signal.kind,
                "date": iso(signal.at),
                "n": len(signals) - index,
                "scheme": "http",
                "remote_addr": "",
                "method": "",
                "ua": "",
                "rid": None,
                "body_url": None,
                **({} if signal.duration is None else {"duration": round(signal.duration, 2)}),
                **({} if signal.exit_code is None else {"exit_status": signal.exit_code}),
            }
            for index, signal in enumerate(signals)
        ]
        return _json({"pings": pings})

    @app.get(_ROUTE + "checks/<code>/flips/")
    @_errors
    def check_flips(version: str, code: str) -> str:
        _, readonly = authorized(write=False)
        name = lookup(code, readonly)
        start, end = _flips_window(bottle.request.query, clock())
        flips: list[dict[str, Any]] = []
        outages = set()
        for at, kind, went_down_at in store.alert_kinds(name, start, end, MAX_FLIPS):
            if kind == "back":
                flips.append({"timestamp": iso(at), "up": 1})
            elif went_down_at not in outages:
                outages.add(went_down_at)
                flips.append({"timestamp": iso(went_down_at if went_down_at is not None else at), "up": 0})
        return _json(flips)

    @app.get(_ROUTE + "channels/")
    @_errors
    def channels(version: str) -> str:
        authorized(write=False)
        listed = [{"id": channel_id(EMAIL_CHANNEL), "name": EMAIL_CHANNEL, "kind": "email"}]
        for webhook in settings.current.webhooks:
            channel = WEBHOOK_CHANNEL_PREFIX + webhook
            listed.append({"id": channel_id(channel), "name": webhook, "kind": "webhook"})
        return _json({"channels": listed})

    @app.get(_ROUTE + "badges/")
    @_errors
    def badges(version: str) -> str:
        # As Healthchecks lists them: by tag, each form's URL (this service's badges have one style, so the
        # "3" forms are the same URLs). None without a badge_key.
        authorized(write=False)
        key = settings.current.badge_key
        if key is None:
            return _json({"badges": {}})
        tags = sorted({tag for user in settings.current.users.values() for tag in user.tags})
        listed = {}
        for tag in tags:
            url = f"{root()}/badge/{key}/{urllib.parse.quote(tag, safe='')}"
            forms = {"svg": f"{url}.svg", "json": f"{url}.json", "shields": f"{url}.shields"}
            listed[tag] = {**forms, **{f"{form}3": address for form, address in forms.items()}}
        return _json({"badges": listed})


def _errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """The API's errors as answers: 400 naming the field, 403 for a check of settings.json, 404, 409, 503."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except ConfigError as error:
            raise bottle.HTTPError(400, "; ".join(error.problems)) from None
        except DeclaredCheckError as error:
            raise bottle.HTTPError(403, str(error)) from None
        except UnknownUserError as error:
            raise bottle.HTTPError(404, str(error)) from None
        except CheckExistsError as error:
            raise bottle.HTTPError(409, f'{error} (send "unique": ["name"] to change it instead)') from None
        except StoreUnavailableError as error:
            raise bottle.HTTPError(503, f"{error}; try again later") from None

    return wrapper


def _json(data: Any) -> str:
    bottle.response.content_type = "application/json"
    return json.dumps(data, separators=(",", ":"))


def _body(request: bottle.BaseRequest) -> dict[str, Any]:
    """The request's JSON object ({} if empty); 413 past MAX_API_BODY, 400 if not a JSON object."""
    try:
        length = int(request.environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise bottle.HTTPError(400, "invalid Content-Length") from None
    if length > MAX_API_BODY:
        raise bottle.HTTPError(413, f"request body too large: at most {MAX_API_BODY} bytes")
    if length == 0:
        return {}
    expected = "expected a JSON object of a check's fields"
    body = json_body(request, MAX_API_BODY, expected)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise bottle.HTTPError(400, expected)
    return body


def _name_and_fields(body: Mapping[str, Any], required: bool) -> tuple[str | None, dict[str, Any]]:
    """The check's name (from name, or slug) and its other fields; 400 naming a field of the wrong kind."""
    fields = {key: value for key, value in body.items() if key not in IGNORED_FIELDS and key != "unique"}
    name, slug = fields.pop("name", None), fields.pop("slug", None)
    for key, value in (("name", name), ("slug", slug)):
        if value is not None and not (isinstance(value, str) and value):
            raise ConfigError([f"{key}: must be a non-empty string, got {json.dumps(value)[:60]}"])
    if name is not None and slug is not None and name != slug:
        raise ConfigError(["slug: must be the name here (a check is pinged by its name), or left out"])
    name = name if name is not None else slug
    if name is None and required:
        raise ConfigError(["name: missing (the name that the check's pings carry)"])
    return name, fields


def _unique(body: Mapping[str, Any]) -> list[str]:
    unique = body.get("unique", [])
    if not isinstance(unique, list) or not all(field in UNIQUE_FIELDS for field in unique):
        raise ConfigError([f"unique: must be a list of {', '.join(UNIQUE_FIELDS)}, got {json.dumps(unique)[:60]}"])
    return unique


def _matching(
    name: str, fields: Mapping[str, Any], unique: list[str], users: Mapping[str, UserConfig], checks: Checks
) -> str | None:
    """The configured check that the fields listed in `unique` match (as Healthchecks' upsert), or None."""
    for candidate, config in sorted(users.items()):
        if ("name" in unique or "slug" in unique) and candidate != name:
            continue
        if "tags" in unique and " ".join(config.tags) != fields.get("tags", ""):
            continue
        definition = checks.definition(candidate)
        grace = (definition.grace or 0.0) if definition is not None else (config.grace or 0.0)
        if "grace" in unique and fields.get("grace") != grace:
            continue
        if "timeout" in unique and fields.get("timeout") != (config.max_sleep or 0.0) - grace:
            continue
        return candidate
    return None


def _definition(
    fields: Mapping[str, Any], current: Definition | None, config: UserConfig | None, settings: Settings
) -> Definition:
    """The definition that `fields` (the API's, name aside) make of the check defined by `current` (None: a new
    check). Healthchecks' timeout + grace become max_sleep, schedule + tz + grace a schedule; every other
    settings key passes as it is, for config.parse_check to validate. A new check given no timing gets the
    defaults' (settings.json's `defaults`), or else Healthchecks' (a timeout of a day, an hour's grace)."""
    own = dict(current.settings) if current is not None else {}
    desc = current.desc if current is not None else ""
    manual_resume = current.manual_resume if current is not None else False
    api_grace = current.grace if current is not None else None
    for key, value in fields.items():
        if key in ("timeout", "grace", "schedule", "tz", "tags", "desc", "manual_resume", "methods", "channels"):
            continue
        if key not in USER_KEYS:
            raise ConfigError(
                [f"{key}: unknown field (expected Healthchecks' fields or one of {', '.join(sorted(USER_KEYS))})"]
            )
        own[key] = value
    if "desc" in fields:
        desc = fields["desc"]
        if not isinstance(desc, str) or len(desc) > MAX_DESC:
            raise ConfigError([f"desc: must be a string of at most {MAX_DESC} characters"])
    if "manual_resume" in fields:
        manual_resume = fields["manual_resume"]
        if not isinstance(manual_resume, bool):
            raise ConfigError([f"manual_resume: must be true or false, got {json.dumps(manual_resume)[:60]}"])
    if fields.get("methods", "") != "":
        raise ConfigError(['methods: only "" (HEAD, GET and POST) is supported'])
    if "tags" in fields:
        tags = fields["tags"]
        if not isinstance(tags, str):
            raise ConfigError([f"tags: must be a string of tags separated by spaces, got {json.dumps(tags)[:60]}"])
        own["tags"] = tags.split()
    if "channels" in fields:
        own["notify"] = _notify(fields["channels"], settings.webhooks)
    grace = seconds(fields["grace"], "grace") if "grace" in fields else None
    if "schedule" in fields:
        own.pop("max_sleep", None)
        own["schedule"] = fields["schedule"]
        for key in ("tz", "grace"):
            if key in fields:
                own[key] = fields[key]
        api_grace = None
    elif "timeout" in fields or "max_sleep" in fields or (grace is not None and "schedule" not in own):
        if "max_sleep" in fields and "timeout" in fields:
            raise ConfigError(["max_sleep: give it or timeout (+ grace), not both"])
        for key in ("schedule", "tz", "grace"):
            own.pop(key, None)
        if "max_sleep" not in fields:
            old_grace = api_grace or 0.0
            old_timeout = (config.max_sleep or 0.0) - old_grace if config is not None and config.max_sleep else 86400.0
            timeout = seconds(fields["timeout"], "timeout") if "timeout" in fields else old_timeout
            api_grace = grace if grace is not None else (old_grace if current is not None else 3600.0)
            own["max_sleep"] = timeout + api_grace
        else:
            api_grace = None
    elif grace is not None:
        own["grace"] = fields["grace"]
    elif current is None and "max_sleep" not in settings.defaults and "schedule" not in settings.defaults:
        own["max_sleep"], api_grace = 86400.0 + 3600.0, 3600.0
    created_by = current.created_by if current is not None else "api"
    return Definition(own, desc, manual_resume, api_grace, created_by)


def _notify(value: Any, webhooks: Mapping[str, Any]) -> list[str]:
    """The API's `channels` ("*": every channel; else their ids or names separated by commas) as settings' notify."""
    if not isinstance(value, str):
        raise ConfigError(
            [f"channels: must be a string of channel ids separated by commas, got {json.dumps(value)[:60]}"]
        )
    known = [EMAIL_CHANNEL] + [WEBHOOK_CHANNEL_PREFIX + name for name in webhooks]
    if value == "*":
        return known
    by_id = {channel_id(channel): channel for channel in known} | {EMAIL_CHANNEL: EMAIL_CHANNEL}
    by_id |= {name: WEBHOOK_CHANNEL_PREFIX + name for name in webhooks}
    notify = []
    for item in value.split(","):
        channel = by_id.get(item.strip())
        if channel is None:
            raise ConfigError([f"channels: unknown channel {json.dumps(item.strip())[:60]} (see GET channels/)"])
        notify.append(channel)
    return notify


def _flips_window(query: Any, now: float) -> tuple[float, float]:
    """The flips/ window: `seconds` back from now, or `start` and `end` (epoch seconds); everything by default."""

    def number(key: str) -> float | None:
        text = query.get(key)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            raise ConfigError([f"{key}: must be a number of seconds, got {text[:20]!r}"]) from None
        if not 0 <= value <= 1e11:
            raise ConfigError([f"{key}: must be a number of seconds >= 0, got {text[:20]!r}"])
        return value

    back, start, end = number("seconds"), number("start"), number("end")
    if back is not None:
        return now - back, now + 1
    return (start or 0.0), (end if end is not None else now + 1)
