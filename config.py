"""Configuration: settings.json (read at start and again on SIGHUP) and the SMTP environment variables.

Every problem is collected before anything is reported, so a user fixes a bad file in one pass;
each problem names its key path (`users.pi.max_sleep: must be a number >= 0, got "ten"`). A quoted
value or key is cut, so a huge one cannot make a huge line.
"""

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import apprise_channel
import schedules
from webhooks import APPRISE, DEFAULT_URLS, FORMATS as WEBHOOK_FORMATS

# Deliberately strict enough to catch typos ("alice example.com", "alice@", "alice@.com"), not a full
# RFC 5322 parser: the SMTP server has the last word on an address. The domain may have a single label
# (root@localhost), as RFC 5321 allows: a local relay delivers to such addresses.
_EMAIL = re.compile(
    r"[^@\s\x00-\x1f\x7f<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# An email header cannot carry these, so an alert about a username holding one could never be sent.
_SEPARATORS = re.compile("[\u2028\u2029]")
# json.loads turns "\\ud800" into a lone surrogate: a str that cannot be encoded, stored or sent.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")
_HEARTBEAT_URL = re.compile(r"https?://[^\s/?#]+([/?][^\s#]*)?")
# A quoted value or key longer than this is cut in messages.
MAX_SHOWN = 60
MIN_TOKEN_LENGTH = 16
DEFAULT_HEARTBEAT_FREQUENCY = 60.0
# The largest duration accepted, about 31 years: any more is surely a typo, and a deadline that far
# away could not even be shown as a local time.
MAX_SECONDS = 1e9
# The greatest count a setting takes (fail_threshold): more would never be reached, and would overflow a column.
MAX_COUNT = 1_000_000
# Connections part way through a request (some bytes in, not all) one client address may hold unless
# max_incomplete_requests_per_address says otherwise: a NAT's devices share one address.
DEFAULT_MAX_INCOMPLETE_REQUESTS_PER_ADDRESS = 1_000
# What an acknowledged ping survives: "process", the service's death (kill -9); "power", the machine's too (each
# commit synced to disk before its answers leave). store.SYNCHRONOUS says how.
DURABILITIES = ("process", "power")
DEFAULT_DURABILITY = "process"
# settings.json's `email_pings`: its keys, the address it listens on unless `host` says otherwise, and the kinds
# of signal a user's `email_keywords` may name, in the order they are looked for.
EMAIL_PINGS_KEYS = {"port", "domain", "host", "tls_certificate", "tls_key"}
DEFAULT_EMAIL_PINGS_HOST = "0.0.0.0"
EMAIL_KEYWORD_KINDS = ("fail", "start", "success")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
# The display name of alert emails' From header unless SMTP_FROM_NAME says otherwise.
DEFAULT_SENDER_NAME = "Ping Listener"

TOP_LEVEL_KEYS = {
    "server_root",
    "base_frequency",
    "email_processing_frequency",
    "recipient",
    "users",
    "require_tokens",
    "retention_days",
    "heartbeat_url",
    "heartbeat_frequency",
    "webhooks",
    "durability",
    "max_incomplete_requests_per_address",
    "email_pings",
    "status_pages",
    "badge_key",
    "trusted_proxy",
    "defaults",
    "auto_provision",
    "auto_provision_limit",
    "ping_key",
    "maintenance",
    "email_recoveries",
}
# How many checks signals with create=1 may create (auto_provision) unless auto_provision_limit says otherwise:
# a flood of made-up names cannot grow the database past it.
DEFAULT_AUTO_PROVISION_LIMIT = 10_000
USER_KEYS = {
    "monitor",
    "max_sleep",
    "schedule",
    "tz",
    "grace",
    "device_email",
    "email_frequency",
    "max_runtime",
    "notify_recovery",
    "token",
    "depends_on",
    "notify",
    "email_keywords",
    "tags",
    "fail_threshold",
    "min_runtime",
    "min_interval",
    "start_grace",
    "maintenance",
    "flap_threshold",
    "flap_quiet",
}
# With a `defaults` object (a fleet's settings), these keys need not be given anywhere: a user that
# gives neither monitor nor email_frequency, in `defaults` or its own entry, is monitored and alerted at
# most hourly. Without `defaults` they stay required, as the first release has them.
FLEET_FALLBACKS = {"monitor": True, "email_frequency": 3600.0}
# A user's tags (the management API's filter, badges): at most this many, each one word of at most
# MAX_TAG_LENGTH characters, as Healthchecks writes tags separated by spaces.
MAX_TAGS = 50
MAX_TAG_LENGTH = 100
# How long after its expected time a scheduled job may ping, unless its `grace` says otherwise: an hour,
# as in Healthchecks, since a job that pings when it ends needs time to run.
DEFAULT_GRACE = 3600.0
WEBHOOK_KEYS = {"url", "format", "headers", "routing_key", "api_key", "recoveries"}
# The formats whose webhooks need a key of their own, and that key.
WEBHOOK_FORMAT_KEYS = {"pagerduty": "routing_key", "opsgenie": "api_key"}
STATUS_PAGE_KEYS = {"title", "users", "show_names"}
# A status page's slug and a badge key are path segments of public URLs: characters no URL escapes.
_SLUG = re.compile(r"[A-Za-z0-9_-]+")
_BADGE_KEY = re.compile(r"[A-Za-z0-9._~-]+")
# A status page's title and display names are shown on one line.
MAX_TITLE = 200
MAINTENANCE_KEYS = {"schedule", "duration", "tz"}
DEFAULT_FLAP_THRESHOLD = 10
DEFAULT_FLAP_QUIET = 3600.0
# A user's channels: "email" (its recipients) and "webhook:NAME" for each webhook named in `webhooks`.
EMAIL_CHANNEL = "email"
WEBHOOK_CHANNEL_PREFIX = "webhook:"
DEFAULT_NOTIFY = (EMAIL_CHANNEL,)
# SMTP_SECURITY: how the connection to the SMTP server is protected, and the port each mode uses by default.
SMTP_SECURITY_PORTS = {"ssl": 465, "starttls": 587, "none": 25}
# An HTTP header's name (RFC 9110 token) and a value of visible characters and spaces.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\x80-\xff]*")


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one line per problem, each naming its key."""

    def __init__(self, problems: Iterable[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class EmailKeywords:
    """A user's `email_keywords`: the words that make an email ping a fail, a start or a success (email_pings.py)."""

    fail: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    success: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UserConfig:
    """One monitored device, with its recipients already resolved (device_email or recipient; none when
    settings.json has no recipient and the user notifies no email).

    It is watched either by `max_sleep` or by `schedule` (a cron expression) in the zone `tz` with
    `grace`: exactly one of max_sleep and schedule is set, and tz and grace only with a schedule.
    """

    monitor: bool
    max_sleep: float | None
    email_frequency: float
    recipients: tuple[str, ...]
    # The longest a run (a start until its success or fail) may take; None: no limit.
    max_runtime: float | None = None
    # Whether a recovery email says that the user is back after an alerted outage.
    notify_recovery: bool = True
    schedule: str | None = None
    # The IANA zone the schedule is read in (the process's local zone unless settings.json names one).
    tz: str | None = None
    grace: float | None = None
    # The configured user this one sits behind (its router, say): while that one is down, this one's
    # alerts are suppressed. None: it depends on no one.
    depends_on: str | None = None
    # secret_digest() of the user's ping token (None: no token needed). Only the digest is kept, so
    # the token itself can be neither logged nor shown.
    token_digest: bytes | None = field(default=None, repr=False)
    # Where its alerts and recoveries go: EMAIL_CHANNEL and "webhook:NAME" channels, in the order given.
    notify: tuple[str, ...] = DEFAULT_NOTIFY
    # How an email ping's subject and text decide its kind; None: every email ping is a success.
    email_keywords: EmailKeywords | None = None
    # Labels grouping users (a badge covers every user carrying its tag), in the order given, without repeats.
    tags: tuple[str, ...] = ()
    # Detection (rules.py): how many fails in a row make a failure; the shortest run that is not a failure;
    # the least time between two successes; for a scheduled user, how late its run may start. None: no such rule.
    fail_threshold: int = 1
    min_runtime: float | None = None
    min_interval: float | None = None
    start_grace: float | None = None
    # Its maintenance windows, settings.json's top-level ones first: no alert inside one.
    maintenance: tuple["MaintenanceWindow", ...] = ()
    # More state changes than flap_threshold within an hour make the user flapping: one notice, then no alert
    # or recovery until it has had no new outage for flap_quiet seconds.
    flap_threshold: int = DEFAULT_FLAP_THRESHOLD
    flap_quiet: float = DEFAULT_FLAP_QUIET


@dataclass(frozen=True, slots=True)
class EmailPingsConfig:
    """settings.json's `email_pings`: the SMTP listener (email_pings.py) on `host`:`port` (0: the OS chooses)
    taking mail for `domain` (lowercase), offering STARTTLS with the PEM files `tls_certificate` and `tls_key`
    when both are given."""

    port: int
    domain: str
    host: str = DEFAULT_EMAIL_PINGS_HOST
    tls_certificate: str | None = None
    tls_key: str | None = None


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """A recurring maintenance window: it opens each time `schedule` (a cron expression in the zone `tz`) fires
    and lasts `duration` seconds (rules.maintenance_window)."""

    schedule: str
    duration: float
    tz: str


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One webhook of settings.json's `webhooks`: where to POST (an Apprise URL for the apprise format), in which
    format (webhooks.FORMATS), extra headers, the key of a pagerduty or opsgenie webhook, and whether it is told
    of recoveries."""

    url: str = field(repr=False)
    format: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    routing_key: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    recoveries: bool = True


@dataclass(frozen=True, slots=True)
class StatusPage:
    """One public status page of settings.json's `status_pages`: its title, the configured users it shows in
    the order given, and the name each is shown under (its username unless `show_names` says otherwise)."""

    title: str
    users: tuple[str, ...]
    show_names: tuple[tuple[str, str], ...] = ()

    def shown_name(self, username: str) -> str:
        """The name `username` is shown under on this page."""
        return dict(self.show_names).get(username, username)


@dataclass(frozen=True)
class Settings:
    """The validated contents of settings.json."""

    base_frequency: float
    email_processing_frequency: float
    server_root: str | None
    users: dict[str, UserConfig]
    # Where the alerts of users without device_email go; None if no user's alerts go to it.
    recipient: str | None
    require_tokens: bool = False
    # Pings, alerts and finished emails older than this many days are deleted; None keeps everything.
    retention_days: float | None = None
    heartbeat_url: str | None = None
    heartbeat_frequency: float = DEFAULT_HEARTBEAT_FREQUENCY
    # One of DURABILITIES.
    durability: str = DEFAULT_DURABILITY

    webhooks: dict[str, WebhookConfig] = field(default_factory=dict)
    # Whether recoveries are emailed at all: false leaves them to the webhooks (each its own `recoveries`).
    email_recoveries: bool = True
    # Read at start only: the server's connections are counted against the value it started with.
    max_incomplete_requests_per_address: int = DEFAULT_MAX_INCOMPLETE_REQUESTS_PER_ADDRESS
    # The SMTP listener taking email pings; None: no listener. Read at start only.
    email_pings: EmailPingsConfig | None = None
    # Public status pages: slug -> page (/status/<slug>).
    status_pages: dict[str, StatusPage] = field(default_factory=dict)
    # The path segment that unlocks /badge/<badge_key>/...; None: no badges.
    badge_key: str | None = field(default=None, repr=False)
    # The reverse proxy's address, whose X-Forwarded-For/-Proto/-Host are believed; None believes nobody's.
    # Read at start only, as the server's address is.
    trusted_proxy: str | None = None
    # settings.json's `defaults`, as written: the per-user keys every user that does not set them gets.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # Whether a signal with create=1 for an unknown name creates that check from `defaults`, and how many
    # checks may be created so.
    auto_provision: bool = False
    auto_provision_limit: int = DEFAULT_AUTO_PROVISION_LIMIT
    # secret_digest() of the key of /ping/<ping_key>/<name> (None: no such path).
    ping_key_digest: bytes | None = field(default=None, repr=False)


class LiveSettings:
    """The settings in force, which a reload replaces as a whole.

    The web layer and the scheduler each read `current` when they need it, so a reload is seen by
    both at once, and each reader sees one whole version, never a mix of two.
    """

    def __init__(self, settings: Settings) -> None:
        """Start with `settings` in force."""
        self._current = settings

    @property
    def current(self) -> Settings:
        """The settings in force now."""
        return self._current

    def replace(self, settings: Settings) -> Settings:
        """Put `settings` in force (one atomic assignment); return those it replaced."""
        previous, self._current = self._current, settings
        return previous


@dataclass(frozen=True)
class SmtpSettings:
    """Where and as whom alert emails are sent, from the SMTP_* environment variables.

    `configured` is whether SMTP_HOST or SMTP_LOGIN was set: whether a person set up SMTP at all.
    `security` is a key of SMTP_SECURITY_PORTS: implicit TLS ("ssl"), a mandatory STARTTLS upgrade
    ("starttls") or plain text to a loopback relay ("none").
    """

    host: str
    port: int
    login: str | None
    password: str | None
    sender: str | None
    sender_name: str = DEFAULT_SENDER_NAME
    configured: bool = False
    security: str = "ssl"


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and validate the settings file at `path`; raise ConfigError listing every problem."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise ConfigError([f"{path}: cannot read settings file: {error.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not valid UTF-8"]) from None
    try:
        document = json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
    except _DuplicateKey as error:
        raise ConfigError([f"{path}: duplicate key {_show(error.key)}"]) from None
    except ValueError as error:
        raise ConfigError([f"{path}: invalid JSON: {error}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: invalid JSON: nested too deeply"]) from None
    # Text read as UTF-8 holds no surrogate: only a \uD800-\uDFFF escape can put one in the document.
    return parse_settings(document, may_hold_surrogates=_SURROGATE_ESCAPE.search(text) is not None)


def parse_settings(document: Any, may_hold_surrogates: bool = True) -> Settings:
    """Validate an already parsed settings document; raise ConfigError listing every problem.

    `may_hold_surrogates` False (the JSON text had no surrogate escape) skips the search for lone surrogates.
    """
    problems: list[str] = []
    if not isinstance(document, dict):
        raise ConfigError([f"settings: must be a JSON object, got {_show(document)}"])
    if may_hold_surrogates:
        problems.extend(_lone_surrogates(document, []))
    _unknown_keys(document, TOP_LEVEL_KEYS, "", problems)
    base_frequency = _number(document, "base_frequency", "", problems)
    email_processing_frequency = _number(document, "email_processing_frequency", "", problems)
    recipient = document.get("recipient")
    if "recipient" in document and not is_email_address(recipient):
        problems.append(f"recipient: must be an email address like name@example.com, got {_show(recipient)}")
    server_root = _url(document, "server_root", _URL, problems)
    require_tokens = document.get("require_tokens", False)
    if not isinstance(require_tokens, bool):
        problems.append(f"require_tokens: must be true or false, got {_show(require_tokens)}")
    retention_days = _positive_number(document, "retention_days", None, MAX_SECONDS / 86400, problems)
    heartbeat_url = _url(document, "heartbeat_url", _HEARTBEAT_URL, problems)
    heartbeat_frequency = _positive_number(
        document, "heartbeat_frequency", DEFAULT_HEARTBEAT_FREQUENCY, MAX_SECONDS, problems
    )
    durability = document.get("durability", DEFAULT_DURABILITY)
    if not isinstance(durability, str) or durability not in DURABILITIES:
        problems.append(f'durability: must be "process" or "power", got {_show(durability)}')
    webhooks = _webhooks(document.get("webhooks", {}), problems)
    email_recoveries = document.get("email_recoveries", True)
    if not isinstance(email_recoveries, bool):
        problems.append(f"email_recoveries: must be true or false, got {_show(email_recoveries)}")
    max_incomplete_requests_per_address = _whole_number(
        document, "max_incomplete_requests_per_address", DEFAULT_MAX_INCOMPLETE_REQUESTS_PER_ADDRESS, problems
    )
    email_pings = _email_pings(document["email_pings"], problems) if "email_pings" in document else None
    trusted_proxy = _ip_address(document, "trusted_proxy", problems)
    defaults = _defaults(document.get("defaults", {}), problems)
    auto_provision = document.get("auto_provision", False)
    if not isinstance(auto_provision, bool):
        problems.append(f"auto_provision: must be true or false, got {_show(auto_provision)}")
    elif auto_provision and "max_sleep" not in defaults and "schedule" not in defaults:
        problems.append("auto_provision: needs defaults with max_sleep or schedule, which checks are created from")
    auto_provision_limit = _whole_number(document, "auto_provision_limit", DEFAULT_AUTO_PROVISION_LIMIT, problems)
    ping_key = document.get("ping_key")
    # The value is never quoted: it is a secret.
    if ping_key is not None and not (isinstance(ping_key, str) and _is_token(ping_key) and "/" not in ping_key):
        problems.append(
            f"ping_key: must be a string of at least {MIN_TOKEN_LENGTH} characters without spaces, / or control"
            " characters"
        )
    every_user = _maintenance(document.get("maintenance", []), "maintenance", problems)
    users = _required(document, "users", "", problems)
    parsed_users = {}
    if users is not None and not isinstance(users, dict):
        problems.append(f"users: must be an object of username -> user settings, got {_show(users)}")
    elif users is not None:
        fleet = "defaults" in document
        parsed_users = _parse_users(
            users, defaults, fleet, recipient, require_tokens is True, webhooks, every_user, problems
        )
        # `defaults` holds no depends_on: the users as written tell the dependencies.
        _check_dependencies(users, problems)
        if "recipient" not in document:
            _check_recipient_needed(
                {name: with_defaults(user, defaults, fleet) for name, user in users.items()}, problems
            )
    status_pages = _status_pages(document.get("status_pages", {}), users if isinstance(users, dict) else {}, problems)
    badge_key = document.get("badge_key")
    # The value is never quoted: it is a secret of sorts.
    if badge_key is not None and not (
        isinstance(badge_key, str) and len(badge_key) >= MIN_TOKEN_LENGTH and _BADGE_KEY.fullmatch(badge_key)
    ):
        problems.append(
            f"badge_key: must be a string of at least {MIN_TOKEN_LENGTH} letters, digits, '-', '_', '.' or '~'"
        )
    if problems:
        raise ConfigError(problems)
    return Settings(
        base_frequency=base_frequency,
        email_processing_frequency=email_processing_frequency,
        server_root=server_root.rstrip("/") if server_root else None,
        users=parsed_users,
        recipient=recipient,
        require_tokens=require_tokens,
        retention_days=retention_days,
        heartbeat_url=heartbeat_url,
        heartbeat_frequency=heartbeat_frequency,
        durability=durability,
        webhooks=webhooks,
        email_recoveries=email_recoveries,
        max_incomplete_requests_per_address=max_incomplete_requests_per_address,
        email_pings=email_pings,
        status_pages=status_pages,
        badge_key=badge_key,
        trusted_proxy=trusted_proxy,
        defaults=defaults if "defaults" in document else {},
        auto_provision=auto_provision,
        auto_provision_limit=auto_provision_limit,
        ping_key_digest=None if ping_key is None else secret_digest(ping_key),
    )


def parse_check(name: str, own: Any, settings: Settings, others: Mapping[str, UserConfig]) -> UserConfig:
    """A check that a program creates or changes, named `name`, with its own settings keys `own` (parsed JSON):
    validated exactly as a user of settings.json with these keys would be, `defaults` included, among the
    checks `others` (name -> config: those its depends_on may name). Raise ConfigError listing every problem,
    each naming its key as settings problems do but without the users.NAME prefix (`max_sleep: must be ...`).
    """
    problems: list[str] = []
    prefix = _path("users.", name)
    user = with_defaults(own, settings.defaults, True)
    parsed = _parse_user(name, user, settings.recipient, settings.require_tokens, settings.webhooks, problems)
    if isinstance(user, dict):
        depends_on = user.get("depends_on")
        if isinstance(depends_on, str) and depends_on:
            chain = [name, depends_on]
            while chain[-1] in others and others[chain[-1]].depends_on not in (None, *chain):
                chain.append(others[chain[-1]].depends_on)  # type: ignore[arg-type]
            if depends_on not in others and depends_on != name:
                problems.append(f"{prefix}.depends_on: no check named {_show(depends_on)} is configured")
            elif depends_on == name or (chain[-1] in others and others[chain[-1]].depends_on == name):
                cycle = " -> ".join(_show(link) for link in [*chain, name])
                problems.append(f"{prefix}.depends_on: a cycle of dependencies: {cycle}")
    if parsed is not None and not parsed.recipients and EMAIL_CHANNEL in parsed.notify:
        problems.append(f"{prefix}.device_email: missing, and settings.json has no recipient for this check's alerts")
    if problems:
        raise ConfigError([_field_problem(problem, prefix) for problem in problems])
    assert isinstance(parsed, UserConfig)
    return parsed


def with_defaults(user: Any, defaults: Mapping[str, Any], fleet: bool) -> Any:
    """A user's settings as validated: `defaults`' keys that `user` (parsed JSON) does not set, then its own;
    with `fleet` (settings.json has `defaults`), FLEET_FALLBACKS below both. A user that is not an object is
    returned as it is, for its problem to name it.

    A user's schedule and max_sleep exclude each other, as do max_sleep and tz or grace: a user that sets one
    of them takes none of the other kind from `defaults`, so a fleet watched by max_sleep can have a few
    members on a schedule.
    """
    if not isinstance(user, dict):
        return user
    inherited = {**FLEET_FALLBACKS, **defaults} if fleet else dict(defaults)
    if "schedule" in user or "tz" in user or "grace" in user:
        inherited.pop("max_sleep", None)
    if "max_sleep" in user:
        for key in ("schedule", "tz", "grace"):
            inherited.pop(key, None)
    return {**inherited, **user}


def _field_problem(problem: str, prefix: str) -> str:
    """A problem about the user at `prefix` (users.NAME) written about its fields: `max_sleep: ...`, `check: ...`."""
    if problem.startswith(prefix + "."):
        return problem[len(prefix) + 1 :]
    return "check" + problem[len(prefix) :] if problem.startswith(prefix + ":") else problem


def _defaults(value: Any, problems: list[str]) -> dict[str, Any]:
    """settings.json's `defaults` object: per-user keys only; {} and a problem if it is not an object.

    Its values are checked within each user that takes them, where the problems name the user's key path."""
    if not isinstance(value, dict):
        problems.append(f"defaults: must be an object of per-user keys, got {_show(value)}")
        return {}
    _unknown_keys(value, USER_KEYS, "defaults.", problems)
    for key in ("token", "depends_on"):
        if key in value:
            problems.append(f"defaults.{key}: cannot be a default (each user needs its own)")
    return {key: item for key, item in value.items() if key in USER_KEYS and key not in ("token", "depends_on")}


def load_smtp_settings(environ: Mapping[str, str]) -> SmtpSettings:
    """Read the SMTP_* variables from `environ`; raise ConfigError listing every problem.

    SMTP_SECURITY must be ssl (the default), starttls or none, and none only with a loopback
    SMTP_HOST, so that a password never crosses a network in clear; SMTP_PORT must be a port and
    defaults to the mode's (465, 587, 25); SMTP_FROM_NAME (the From header's display name, default
    "Ping Listener", empty for none) must be one line of text.
    """
    problems = []
    host = environ.get("SMTP_HOST") or "smtp.gmail.com"
    security = environ.get("SMTP_SECURITY", "ssl")
    if security not in SMTP_SECURITY_PORTS:
        problems.append(f"SMTP_SECURITY: must be one of ssl, starttls or none, got {security!r}")
    elif security == "none" and not is_loopback(host):
        problems.append(
            f"SMTP_SECURITY: none (no TLS) is only allowed to a loopback SMTP_HOST (localhost, 127.0.0.0/8, ::1),"
            f" got SMTP_HOST {host!r}; use starttls or ssl"
        )
    port_text = environ.get("SMTP_PORT", str(SMTP_SECURITY_PORTS.get(security, 465)))
    if not re.fullmatch(r"[0-9]{1,5}", port_text.strip()) or not 0 < int(port_text) < 65536:
        problems.append(f"SMTP_PORT: must be an integer port from 1 to 65535, got {port_text!r}")
    sender_name = environ.get("SMTP_FROM_NAME", DEFAULT_SENDER_NAME)
    if _CONTROL.search(sender_name):
        problems.append(f"SMTP_FROM_NAME: must be one line without control characters, got {sender_name!r}")
    if problems:
        raise ConfigError(problems)
    login = environ.get("SMTP_LOGIN") or None
    return SmtpSettings(
        host=host,
        port=int(port_text),
        login=login,
        password=environ.get("SMTP_PASSWORD") or None,
        sender=environ.get("SMTP_FROM") or login,
        sender_name=sender_name.strip(),
        configured=bool(environ.get("SMTP_HOST") or login),
        security=security,
    )


@dataclass(frozen=True)
class Secrets:
    """The secrets of the environment that unlock operators' endpoints; None when unset (or empty)."""

    # Unlocks GET /metrics as a bearer token.
    metrics_token: str | None = field(default=None, repr=False)
    # Unlocks what an operator may do by program (X-Api-Key), such as /snooze and the management API.
    api_key: str | None = field(default=None, repr=False)
    # Unlocks the management API's reads only.
    api_key_readonly: str | None = field(default=None, repr=False)
    # The key of the slug URLs /ping/<ping_key>/<name> when settings.json sets no ping_key (which wins).
    ping_key: str | None = field(default=None, repr=False)


def load_secrets(environ: Mapping[str, str]) -> Secrets:
    """Read METRICS_TOKEN, API_KEY, API_KEY_READONLY and PING_KEY from `environ`; raise ConfigError listing every
    problem.

    Each, when set, must be at least MIN_TOKEN_LENGTH characters without spaces or control characters,
    as ping tokens: a short one is found by guessing in seconds; PING_KEY, a path segment, no / either (as
    settings.json's ping_key). A value is never quoted.
    """
    problems = []
    values = {}
    for name in ("METRICS_TOKEN", "API_KEY", "API_KEY_READONLY"):
        value = environ.get(name) or None
        if value is not None and not _is_token(value):
            problems.append(
                f"{name}: must be at least {MIN_TOKEN_LENGTH} characters without spaces or control characters,"
                f" got {len(value)} characters"
            )
        values[name] = value
    ping_key = environ.get("PING_KEY") or None
    if ping_key is not None and not (_is_token(ping_key) and "/" not in ping_key):
        problems.append(
            f"PING_KEY: must be at least {MIN_TOKEN_LENGTH} characters without spaces, / or control characters,"
            f" got {len(ping_key)} characters"
        )
    if problems:
        raise ConfigError(problems)
    return Secrets(
        metrics_token=values["METRICS_TOKEN"],
        api_key=values["API_KEY"],
        api_key_readonly=values["API_KEY_READONLY"],
        ping_key=ping_key,
    )


def seconds(value: Any, path: str) -> float:
    """`value` as a number of seconds as settings.json takes a duration (a number >= 0, at most MAX_SECONDS);
    raise ConfigError naming `path` otherwise."""
    problems: list[str] = []
    parsed = _seconds(value, path, problems)
    if not isinstance(parsed, float):
        raise ConfigError(problems)
    return parsed


def first_text_problem(value: Any) -> str | None:
    """The first key or string under `value` (parsed JSON) that is not valid Unicode text (a lone surrogate,
    which json.loads lets through), as a problem naming its field as settings problems do; None if there is none.

    It looks no further, and never searches an ASCII string: a request's body is checked holding the GIL
    that pings wait for.
    """
    return next(_lone_surrogates(value, []), None)


def is_loopback(host: str) -> bool:
    """True if `host` names this machine only: localhost, an address in 127.0.0.0/8, or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_email_address(value: object) -> bool:
    """True if `value` is a string shaped like a deliverable address (name@domain.tld, or name@host)."""
    return isinstance(value, str) and _EMAIL.fullmatch(value) is not None


def secret_digest(text: str) -> bytes:
    """SHA-256 of `text` (a password or token): comparing two digests takes the same time whatever the texts."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _parse_users(users, defaults, fleet, recipient, require_tokens, webhooks, every_user, problems):
    """settings.json's `users` (name -> its settings as written) as name -> UserConfig, `defaults` filled in
    (with_defaults) and the top-level maintenance windows `every_user` first; a user with problems is left out.

    A fleet's users mostly differ by name, and token, alone: each distinct value of the other settings is
    validated once, and the users that share it share its UserConfig (their token checked and digested each).
    """
    parsed_users = {}
    # The repr of a user's settings without its token (which tells 1, 1.0 and true apart) -> their UserConfig.
    validated: dict[str, UserConfig] = {}
    for username, user in users.items():
        key = _settings_key(user)
        known = validated.get(key) if key is not None else None
        token = user.get("token") if known is not None else None
        if known is not None and _username_problem(username) is None and _token_problem(token, require_tokens) is None:
            parsed_users[username] = (
                known if token is None else dataclasses.replace(known, token_digest=secret_digest(token))
            )
            continue
        parsed = _parse_user(
            username, with_defaults(user, defaults, fleet), recipient, require_tokens, webhooks, problems
        )
        if parsed is None:
            continue
        if every_user:
            parsed = dataclasses.replace(parsed, maintenance=every_user + parsed.maintenance)
        parsed_users[username] = parsed
        if key is not None:
            validated[key] = parsed if parsed.token_digest is None else dataclasses.replace(parsed, token_digest=None)
    return parsed_users


def _settings_key(user):
    """What tells apart two users' settings (parsed JSON) as validation sees them, but their token; None for
    settings validated each time (not an object, or naming a user to depend on)."""
    if not isinstance(user, dict) or "depends_on" in user:
        return None
    return repr({key: value for key, value in user.items() if key != "token"} if "token" in user else user)


def _username_problem(username):
    """Why `username` cannot be a user's name (its path is prepended), or None if it can."""
    if not username:
        return "a username must not be empty"
    if _CONTROL.search(username):
        return "a username must not contain control characters"
    if _SEPARATORS.search(username):
        return "a username must not contain line or paragraph separators (U+2028, U+2029)"
    return None


def _token_problem(token, require_tokens):
    """Why `token` (a user's settings.json `token`, None if absent) is wrong (its path is prepended), or None."""
    if token is None:
        return "missing (require_tokens is true)" if require_tokens else None
    if not (isinstance(token, str) and _is_token(token)):
        # The value is never quoted: even a wrong token may be a secret.
        return f"must be a string of at least {MIN_TOKEN_LENGTH} characters without spaces or control characters"
    return None


def _parse_user(username, user, recipient, require_tokens, webhooks, problems):
    path = _path("users.", username)
    before = len(problems)
    username_problem = _username_problem(username)
    if username_problem is not None:
        problems.append(f"{path}: {username_problem}")
    if not isinstance(user, dict):
        problems.append(
            f"{path}: must be an object with monitor, max_sleep (or schedule) and email_frequency, got {_show(user)}"
        )
        return None
    _unknown_keys(user, USER_KEYS, path + ".", problems)
    monitor = _required(user, "monitor", path + ".", problems)
    if monitor is not None and not isinstance(monitor, bool):
        problems.append(f"{path}.monitor: must be true or false, got {_show(monitor)}")
    max_sleep, schedule, tz, grace = _watch(user, path, problems)
    email_frequency = _number(user, "email_frequency", path + ".", problems)
    recipients = _device_emails(user.get("device_email"), path + ".device_email", problems)
    max_runtime = None
    if user.get("max_runtime") is not None:
        max_runtime = _seconds(user["max_runtime"], f"{path}.max_runtime", problems, positive=True)
    notify_recovery = user.get("notify_recovery", True)
    if not isinstance(notify_recovery, bool):
        problems.append(f"{path}.notify_recovery: must be true or false, got {_show(notify_recovery)}")
    depends_on = user.get("depends_on")
    if depends_on is not None and not (isinstance(depends_on, str) and depends_on):
        problems.append(f"{path}.depends_on: must be the name of another user, got {_show(depends_on)}")
    token = user.get("token")
    token_problem = _token_problem(token, require_tokens)
    if token_problem is not None:
        problems.append(f"{path}.token: {token_problem}")
    notify = _notify(user.get("notify", list(DEFAULT_NOTIFY)), f"{path}.notify", webhooks, problems)
    email_keywords = _email_keywords(user["email_keywords"], path, problems) if "email_keywords" in user else None
    tags = _tags(user.get("tags", []), f"{path}.tags", problems)
    fail_threshold = user.get("fail_threshold", 1)
    if isinstance(fail_threshold, bool) or not isinstance(fail_threshold, int) or fail_threshold < 1:
        problems.append(f"{path}.fail_threshold: must be an integer >= 1, got {_show(fail_threshold)}")
    elif fail_threshold > MAX_COUNT:
        problems.append(f"{path}.fail_threshold: must be at most {MAX_COUNT}, got {_show(fail_threshold)}")
    min_runtime, min_interval = (
        None if user.get(key) is None else _seconds(user[key], f"{path}.{key}", problems, positive=True)
        for key in ("min_runtime", "min_interval")
    )
    maintenance = _maintenance(user.get("maintenance", []), f"{path}.maintenance", problems)
    flap_threshold = user.get("flap_threshold", DEFAULT_FLAP_THRESHOLD)
    if isinstance(flap_threshold, bool) or not isinstance(flap_threshold, int) or flap_threshold < 2:
        problems.append(f"{path}.flap_threshold: must be an integer >= 2, got {_show(flap_threshold)}")
    elif flap_threshold > MAX_COUNT:
        problems.append(f"{path}.flap_threshold: must be at most {MAX_COUNT}, got {_show(flap_threshold)}")
    flap_quiet = DEFAULT_FLAP_QUIET
    if "flap_quiet" in user:
        flap_quiet = _seconds(user["flap_quiet"], f"{path}.flap_quiet", problems, positive=True)
    start_grace = None
    if "start_grace" in user:
        start_grace = _seconds(user["start_grace"], f"{path}.start_grace", problems)
        if schedule is None and "max_sleep" in user:
            problems.append(f"{path}.start_grace: only for a user with a schedule (this one has max_sleep)")
    if len(problems) > before:
        return None
    return UserConfig(
        monitor=monitor,
        max_sleep=max_sleep,
        email_frequency=email_frequency,
        recipients=recipients or ((recipient,) if recipient is not None else ()),
        max_runtime=max_runtime,
        notify_recovery=notify_recovery,
        schedule=schedule,
        tz=tz,
        grace=grace,
        depends_on=depends_on,
        token_digest=None if token is None else secret_digest(token),
        notify=notify,
        email_keywords=email_keywords,
        tags=tags,
        fail_threshold=fail_threshold,
        min_runtime=min_runtime,
        min_interval=min_interval,
        start_grace=start_grace,
        maintenance=maintenance,
        flap_threshold=flap_threshold,
        flap_quiet=flap_quiet,
    )


def _email_pings(value, problems):
    """settings.json's `email_pings` as an EmailPingsConfig, or None and a problem naming each wrong key."""
    if not isinstance(value, dict):
        problems.append(
            f'email_pings: must be an object such as {{"port": 2525, "domain": "ping.example.net"}}, got {_show(value)}'
        )
        return None
    before = len(problems)
    _unknown_keys(value, EMAIL_PINGS_KEYS, "email_pings.", problems)
    port = _required(value, "port", "email_pings.", problems)
    if "port" in value and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        problems.append(f"email_pings.port: must be an integer from 0 to 65535 (0: the OS chooses), got {_show(port)}")
    domain = _required(value, "domain", "email_pings.", problems)
    if "domain" in value and not (isinstance(domain, str) and len(domain) <= 253 and _DOMAIN.fullmatch(domain)):
        problems.append(f"email_pings.domain: must be a domain name such as ping.example.net, got {_show(domain)}")
    host = value.get("host", DEFAULT_EMAIL_PINGS_HOST)
    if not (isinstance(host, str) and host and not _CONTROL.search(host)):
        problems.append(f"email_pings.host: must be an address or host name to listen on, got {_show(host)}")
    files = {}
    for key in ("tls_certificate", "tls_key"):
        files[key] = value.get(key)
        if files[key] is not None and not (isinstance(files[key], str) and files[key]):
            problems.append(f"email_pings.{key}: must be the path of a PEM file, got {_show(files[key])}")
    if (files["tls_certificate"] is None) != (files["tls_key"] is None):
        given, missing = ("tls_certificate", "tls_key") if files["tls_key"] is None else ("tls_key", "tls_certificate")
        problems.append(
            f"email_pings.{missing}: missing (STARTTLS needs tls_certificate and tls_key; {given} is given)"
        )
    if len(problems) > before:
        return None
    return EmailPingsConfig(port, domain.lower(), host, files["tls_certificate"], files["tls_key"])


def _email_keywords(value, path, problems):
    """A user's `email_keywords` as EmailKeywords, or None and a problem naming each wrong key."""
    path += ".email_keywords"
    expected = 'an object such as {"fail": ["failed", "error"], "success": ["completed"]}'
    if not isinstance(value, dict):
        problems.append(f"{path}: must be {expected}, got {_show(value)}")
        return None
    before = len(problems)
    _unknown_keys(value, set(EMAIL_KEYWORD_KINDS), path + ".", problems)
    for kind in EMAIL_KEYWORD_KINDS:
        words = value.get(kind, [])
        if not (isinstance(words, list) and all(isinstance(word, str) and word.strip() for word in words)):
            problems.append(f"{path}.{kind}: must be a list of non-empty strings, got {_show(words)}")
    if len(problems) > before:
        return None
    return EmailKeywords(*(tuple(value.get(kind, [])) for kind in EMAIL_KEYWORD_KINDS))


def _tags(value, path, problems):
    """A user's `tags` as a tuple without repeats, or () and a problem naming `path`."""
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        problems.append(f"{path}: must be a list of at most {MAX_TAGS} tags (strings), got {_show(value)}")
        return ()
    for tag in value:
        if not (isinstance(tag, str) and 0 < len(tag) <= MAX_TAG_LENGTH and not re.search(r"[\s\x00-\x1f\x7f]", tag)):
            problems.append(
                f"{path}: each tag must be a string of 1 to {MAX_TAG_LENGTH} characters without spaces or control"
                f" characters, got {_show(tag)}"
            )
            return ()
    return tuple(dict.fromkeys(value))


def _maintenance(windows, path, problems):
    """The MaintenanceWindows of the list `windows` (settings.json's `maintenance` at `path`), each
    {"schedule", "duration", "tz"} (tz: default the process's local zone); problems named by their key path."""
    if not isinstance(windows, list):
        problems.append(f'{path}: must be a list of {{"schedule", "duration", "tz"}}, got {_show(windows)}')
        return ()
    parsed = []
    for index, window in enumerate(windows):
        at = f"{path}[{index}]"
        if not isinstance(window, dict):
            problems.append(f'{at}: must be an object {{"schedule", "duration", "tz"}}, got {_show(window)}')
            continue
        before = len(problems)
        _unknown_keys(window, MAINTENANCE_KEYS, at + ".", problems)
        schedule, duration = (_required(window, key, at + ".", problems) for key in ("schedule", "duration"))
        tz = window.get("tz", schedules.local_zone_name())
        if "schedule" in window:
            problem = schedules.expression_problem(schedule)
            if problem is not None:
                problems.append(f"{at}.schedule: {problem}, got {_show(schedule)}")
        if "duration" in window:
            duration = _seconds(duration, f"{at}.duration", problems, positive=True)
        problem = schedules.zone_problem(tz)
        if problem is not None:
            problems.append(f"{at}.tz: {problem} (default: this process's local zone), got {_show(tz)}")
        if len(problems) == before:
            parsed.append(MaintenanceWindow(schedule, duration, str(tz)))
    return tuple(parsed)


def _is_token(text):
    """Whether `text` may be a secret sent in a header: MIN_TOKEN_LENGTH characters or more, no space or control."""
    return len(text) >= MIN_TOKEN_LENGTH and not re.search(r"[\s\x00-\x1f\x7f-\x9f]", text)


def _watch(user, path, problems):
    """(max_sleep, schedule, tz, grace) of a user's settings: exactly one of max_sleep and schedule.

    Each key given is checked even when both are given, so every mistake is reported at once.
    """
    if ("max_sleep" in user) == ("schedule" in user):
        given = "both" if "max_sleep" in user else "neither"
        problems.append(f"{path}: must have exactly one of max_sleep and schedule, got {given}")
    max_sleep = _seconds(user["max_sleep"], f"{path}.max_sleep", problems) if "max_sleep" in user else None
    if "schedule" not in user:
        for key in ("tz", "grace"):
            if key in user and "max_sleep" in user:
                problems.append(f"{path}.{key}: only for a user with a schedule (this one has max_sleep)")
        return max_sleep, None, None, None
    schedule = user["schedule"]
    problem = schedules.expression_problem(schedule)
    if problem is not None:
        problems.append(f"{path}.schedule: {problem}, got {_show(schedule)}")
    if "tz" in user:
        tz = user["tz"]
        problem = schedules.zone_problem(tz)
        if problem is not None:
            problems.append(f"{path}.tz: {problem}, got {_show(tz)}")
    else:
        tz = schedules.local_zone_name()
        if tz is None:
            problems.append(
                f"{path}.tz: missing, and this process's local zone (TZ={_show(os.environ.get('TZ'))})"
                " has no IANA name: set tz, such as Europe/Paris"
            )
    grace = _seconds(user["grace"], f"{path}.grace", problems) if "grace" in user else DEFAULT_GRACE
    return max_sleep, schedule, tz, grace


def _check_dependencies(users, problems):
    """Report each depends_on that names no configured user, and each user whose chain of depends_on
    comes back to it (a cycle, itself included), once per cycle."""
    parents = {
        name: user["depends_on"]
        for name, user in users.items()
        if isinstance(user, dict) and isinstance(user.get("depends_on"), str) and user["depends_on"]
    }
    reported = set()
    for name, parent in parents.items():
        if parent not in users:
            problems.append(f"{_path('users.', name)}.depends_on: no user named {_show(parent)} is configured")
            continue
        chain = [name]
        while chain[-1] in parents and parents[chain[-1]] in users and parents[chain[-1]] not in chain:
            chain.append(parents[chain[-1]])
        if parents.get(chain[-1]) == name and name not in reported:
            reported.update(chain)
            cycle = " -> ".join(_show(link) for link in [*chain, name])
            problems.append(f"{_path('users.', name)}.depends_on: a cycle of dependencies: {cycle}")


def _check_recipient_needed(users, problems):
    """Add a problem naming the users whose alerts would go to the missing `recipient`: those that notify
    "email" and have no device_email."""
    needing = [
        _path("users.", username)
        for username, user in users.items()
        if isinstance(user, dict)
        and user.get("device_email") is None
        and EMAIL_CHANNEL in (user["notify"] if isinstance(user.get("notify"), list) else DEFAULT_NOTIFY)
    ]
    if needing:
        named = ", ".join(needing[:3]) + (f" and {len(needing) - 3} more" if len(needing) > 3 else "")
        problems.append(
            f'recipient: missing, needed by {named} (a user that notifies "email" and has no device_email'
            " sends its alerts to recipient)"
        )


def _notify(value, path, webhooks, problems):
    """A user's `notify` as a tuple of channels without repeats, or DEFAULT_NOTIFY and a problem naming `path`."""
    if not isinstance(value, list) or not value:
        problems.append(f'{path}: must be a non-empty list of "email" and "webhook:NAME", got {_show(value)}')
        return DEFAULT_NOTIFY
    for channel in value:
        if channel == EMAIL_CHANNEL:
            continue
        if not (isinstance(channel, str) and channel.startswith(WEBHOOK_CHANNEL_PREFIX)):
            problems.append(f'{path}: each channel must be "email" or "webhook:NAME", got {_show(channel)}')
        elif channel[len(WEBHOOK_CHANNEL_PREFIX) :] not in webhooks:
            known = ", ".join(sorted(webhooks)) or "none: settings.json has no webhooks"
            problems.append(f"{path}: unknown webhook {_show(channel[len(WEBHOOK_CHANNEL_PREFIX) :])} (known: {known})")
    return tuple(dict.fromkeys(channel for channel in value if isinstance(channel, str)))


def _webhooks(value, problems):
    """settings.json's `webhooks` as name -> WebhookConfig, leaving out (with a problem each) those that are wrong."""
    if not isinstance(value, dict):
        problems.append(f"webhooks: must be an object of name -> {{url, format, headers}}, got {_show(value)}")
        return {}
    webhooks = {}
    # The apprise webhooks' names and URLs, checked at the end all at once (apprise_channel.url_problems).
    apprise_urls = {}
    for name, webhook in value.items():
        path = _path("webhooks.", name)
        before = len(problems)
        if not re.fullmatch(r"[\w-]+", name):
            problems.append(f"{path}: a webhook's name must be letters, digits, '_' or '-'")
        if not isinstance(webhook, dict):
            problems.append(f"{path}: must be an object with url and format, got {_show(webhook)}")
            continue
        _unknown_keys(webhook, WEBHOOK_KEYS, path + ".", problems)
        format_ = _required(webhook, "format", path + ".", problems)
        if format_ is not None and format_ not in WEBHOOK_FORMATS:
            problems.append(f"{path}.format: must be one of {', '.join(WEBHOOK_FORMATS)}, got {_show(format_)}")
            format_ = None
        if format_ in DEFAULT_URLS:
            url = webhook.get("url", DEFAULT_URLS[format_])
        else:
            url = _required(webhook, "url", path + ".", problems)
        if format_ == APPRISE:
            if url is not None and not isinstance(url, str):
                problems.append(f"{path}.url: must be an Apprise URL, got {_show(url)}")
            elif url is not None:
                apprise_urls[name] = url
            if "headers" in webhook:
                problems.append(f"{path}.headers: the apprise format takes none (an Apprise URL says it all)")
        elif url is not None and not _is_http_url(url):
            problems.append(f"{path}.url: must be an http:// or https:// URL, got {_show(url)}")
        keys = {}
        for key in ("routing_key", "api_key"):
            if WEBHOOK_FORMAT_KEYS.get(format_) == key:
                secret = keys[key] = _required(webhook, key, path + ".", problems)
                # Never shown: it is a secret.
                if secret is not None and not (isinstance(secret, str) and re.fullmatch(r"[\x21-\x7e]+", secret)):
                    problems.append(f"{path}.{key}: must be a non-empty string of visible ASCII characters")
            elif key in webhook:
                problems.append(f"{path}.{key}: only {_format_needing(key)} webhooks take one")
        recoveries = webhook.get("recoveries", True)
        if not isinstance(recoveries, bool):
            problems.append(f"{path}.recoveries: must be true or false, got {_show(recoveries)}")
        headers = webhook.get("headers", {})
        if not isinstance(headers, dict):
            problems.append(f"{path}.headers: must be an object of header name -> value, got {_show(headers)}")
            headers = {}
        for header, header_value in headers.items():
            if not _HEADER_NAME.fullmatch(header):
                problems.append(f"{path}.headers: {_show(header)} is not an HTTP header name")
            if not (isinstance(header_value, str) and _HEADER_VALUE.fullmatch(header_value)):
                problems.append(
                    f"{path}.headers.{header}: must be text without control characters, got {_show(header_value)}"
                )
        if len(problems) == before:
            webhooks[name] = WebhookConfig(url, format_, tuple(headers.items()), recoveries=recoveries, **keys)
    checked = apprise_channel.url_problems(list(apprise_urls.values()))
    for name, problem in zip(apprise_urls, checked, strict=True):
        if problem is not None:
            problems.append(f"{_path('webhooks.', name)}.url: {problem}")
            webhooks.pop(name, None)
    return webhooks


def _format_needing(key):
    return next(format_ for format_, needed in WEBHOOK_FORMAT_KEYS.items() if needed == key)


def _status_pages(value, users, problems):
    """settings.json's `status_pages` as slug -> StatusPage, leaving out (with a problem each) those that are wrong.

    Each page names configured users only: a page can show nothing the settings did not put on it.
    """
    if not isinstance(value, dict):
        problems.append(f"status_pages: must be an object of slug -> {{title, users}}, got {_show(value)}")
        return {}
    pages = {}
    for slug, page in value.items():
        path = _path("status_pages.", slug)
        before = len(problems)
        if not _SLUG.fullmatch(slug):
            problems.append(f"{path}: a status page's slug must be letters, digits, '_' or '-'")
        if not isinstance(page, dict):
            problems.append(f"{path}: must be an object with title and users, got {_show(page)}")
            continue
        _unknown_keys(page, STATUS_PAGE_KEYS, path + ".", problems)
        title = _required(page, "title", path + ".", problems)
        if title is not None and not _is_line(title):
            problems.append(f"{path}.title: must be one line of 1 to {MAX_TITLE} characters, got {_show(title)}")
        names = _required(page, "users", path + ".", problems)
        if names is not None and not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            problems.append(f"{path}.users: must be a non-empty list of usernames, got {_show(names)}")
            names = None
        for name in names or ():
            if name not in users:
                problems.append(f"{path}.users: no user named {_show(name)} is configured")
        show_names = page.get("show_names", {})
        if not isinstance(show_names, dict):
            problems.append(f"{path}.show_names: must be an object of username -> name shown, got {_show(show_names)}")
            show_names = {}
        for name, shown in show_names.items():
            if name not in (names or ()):
                problems.append(f"{_path(path + '.show_names.', name)}: not one of this page's users")
            if not _is_line(shown):
                problems.append(
                    f"{_path(path + '.show_names.', name)}: must be one line of 1 to {MAX_TITLE} characters,"
                    f" got {_show(shown)}"
                )
        if len(problems) == before:
            pages[slug] = StatusPage(title, tuple(dict.fromkeys(names)), tuple(show_names.items()))
    return pages


def _is_line(value):
    """Whether `value` is a string of 1 to MAX_TITLE characters without control characters."""
    return isinstance(value, str) and value.strip() != "" and len(value) <= MAX_TITLE and not _CONTROL.search(value)


def _is_http_url(value):
    if not isinstance(value, str) or re.search(r"\s", value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _device_emails(value, path, problems):
    if value is None:
        return ()
    addresses = [value] if isinstance(value, str) else value
    if not isinstance(addresses, list) or not addresses:
        problems.append(f"{path}: must be an email address or a non-empty list of them, got {_show(value)}")
        return ()
    for address in addresses:
        if not is_email_address(address):
            problems.append(f"{path}: must be an email address like name@example.com, got {_show(address)}")
    return tuple(dict.fromkeys(addresses))


def _url(document, key, pattern, problems):
    value = document.get(key)
    if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
        problems.append(f"{key}: must be an http:// or https:// URL, got {_show(value)}")
        return None
    return value


def _positive_number(document, key, default, maximum, problems):
    if key not in document:
        return default
    value = document[key]
    # Plain comparisons, as in _number.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not value <= maximum:
        problems.append(f"{key}: must be a number > 0 and at most {maximum:.0f}, got {_show(value)}")
        return default
    return float(value)


def _ip_address(document, key, problems):
    """A top-level IP address (IPv4 or IPv6), written as a socket gives it (`::1`), or None if absent."""
    value = document.get(key)
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        if isinstance(value, str):
            return ipaddress.ip_address(value).compressed
    problems.append(f'{key}: must be the IP address of the reverse proxy, like "127.0.0.1", got {_show(value)}')
    return None


def _whole_number(document, key, default, problems):
    """A top-level whole number >= 1 (1000 or 1000.0, not true), or `default` if absent."""
    if key not in document:
        return default
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (1 <= value < 1e9 and value % 1 == 0):
        problems.append(f"{key}: must be a whole number >= 1, got {_show(value)}")
        return default
    return int(value)


def _lone_surrogates(value, keys):
    """Yield a problem for each key and string under `value` that holds a lone surrogate (not Unicode text),
    in order; `keys` leads to `value` (keys and list indexes), and its path is written only for a problem.

    Strings are checked in their container's loop: a generator for each would cost more than the check.
    """
    if isinstance(value, str):
        if not value.isascii() and _SURROGATE.search(value):
            yield f"{_key_path(keys)}: must be valid Unicode text (it holds a lone surrogate)"
        return
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        keys.append(key)
        if isinstance(key, str) and not key.isascii() and _SURROGATE.search(key):
            yield f"{_key_path(keys)}: a key must be valid Unicode text (it holds a lone surrogate)"
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                yield f"{_key_path(keys)}: must be valid Unicode text (it holds a lone surrogate)"
        elif isinstance(item, (dict, list)):
            yield from _lone_surrogates(item, keys)
        keys.pop()


def _key_path(keys):
    """The key path of `keys` (keys of objects, indexes of lists) as settings problems write it: a.b[0]."""
    path = ""
    for key in keys:
        path = f"{path}[{key}]" if isinstance(key, int) else _path(path + "." if path else "", key)
    return path


def _unknown_keys(document, known, prefix, problems):
    for key in document:
        if key not in known:
            problems.append(f"{_path(prefix, key)}: unknown key (expected one of {', '.join(sorted(known))})")


def _path(prefix, key):
    """`prefix` then `key`, quoted as JSON (ASCII) unless it is a plain word, and cut if long."""
    shown = key if re.fullmatch(r"[\w-]+", key) else json.dumps(key)
    return prefix + (shown if len(shown) <= MAX_SHOWN else shown[: MAX_SHOWN - 3] + "...")


def _required(document, key, prefix, problems):
    if key not in document:
        problems.append(f"{prefix}{key}: missing")
        return None
    return document[key]


def _number(document, key, prefix, problems):
    value = _required(document, key, prefix, problems)
    if value is None and key not in document:
        return None
    return _seconds(value, prefix + key, problems)


def _seconds(value, path, problems, positive=False):
    """`value` as a float number of seconds (>= 0, or > 0 if `positive`), or None and a problem naming `path`."""
    # Plain comparisons: converting a huge JSON integer to float would overflow. NaN fails them all.
    in_range = isinstance(value, (int, float)) and (value > 0 if positive else value >= 0)
    if isinstance(value, bool) or not in_range:
        problems.append(f"{path}: must be a number {'>' if positive else '>='} 0, got {_show(value)}")
        return None
    if not value <= MAX_SECONDS:
        problems.append(f"{path}: must be at most {MAX_SECONDS:.0f} seconds, got {_show(value)}")
        return None
    return float(value)


def _show(value):
    # A lone surrogate is shown escaped: it could not be written to stderr or a log as it is.
    text = json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


class _DuplicateKey(ValueError):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs):
    document = dict(pairs)
    if len(document) < len(pairs):
        # Called for every object of the file: the loop that names the first repeated key runs only if one is.
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return document


def _reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")
