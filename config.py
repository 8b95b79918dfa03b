"""Startup configuration: settings.json and the SMTP environment variables, validated once.

Every problem is collected before anything is reported, so a user fixes a bad file in one pass;
each problem names its key path (`users.pi.max_sleep: must be a number >= 0, got "ten"`).
"""

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Deliberately strict enough to catch typos ("alice@example", "alice example.com"), not a full
# RFC 5322 parser: the SMTP server has the last word on an address.
_EMAIL = re.compile(
    r"[^@\s\x00-\x1f\x7f<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The largest duration accepted, about 31 years: any more is surely a typo, and a deadline that far
# away could not even be shown as a local time.
MAX_SECONDS = 1e9
# The display name of alert emails' From header unless SMTP_FROM_NAME says otherwise.
DEFAULT_SENDER_NAME = "Ping Listener"

TOP_LEVEL_KEYS = {"server_root", "base_frequency", "email_processing_frequency", "recipient", "users"}
USER_KEYS = {
    "monitor",
    "max_sleep",
    "device_email",
    "email_frequency",
    "max_runtime",
    "notify_recovery",
    "depends_on",
}


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one line per problem, each naming its key."""

    def __init__(self, problems: Iterable[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class UserConfig:
    """One monitored device, with its recipients already resolved (device_email or recipient)."""

    monitor: bool
    max_sleep: float
    email_frequency: float
    recipients: tuple[str, ...]
    # The longest a run (a start until its success or fail) may take; None: no limit.
    max_runtime: float | None = None
    # Whether a recovery email says that the user is back after an alerted outage.
    notify_recovery: bool = True
    # The configured user this one sits behind (its router, say): while that one is down, this one's
    # alerts are suppressed. None: it depends on no one.
    depends_on: str | None = None


@dataclass(frozen=True)
class Settings:
    """The validated contents of settings.json."""

    base_frequency: float
    email_processing_frequency: float
    server_root: str | None
    users: dict[str, UserConfig]
    recipient: str


@dataclass(frozen=True)
class SmtpSettings:
    """Where and as whom alert emails are sent, from the SMTP_* environment variables.

    `configured` is whether SMTP_HOST or SMTP_LOGIN was set: whether a person set up SMTP at all.
    """

    host: str
    port: int
    login: str | None
    password: str | None
    sender: str | None
    sender_name: str = DEFAULT_SENDER_NAME
    configured: bool = False


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
        raise ConfigError([f"{path}: duplicate key {json.dumps(error.key)}"]) from None
    except ValueError as error:
        raise ConfigError([f"{path}: invalid JSON: {error}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: invalid JSON: nested too deeply"]) from None
    return parse_settings(document)


def parse_settings(document: Any) -> Settings:
    """Validate an already parsed settings document; raise ConfigError listing every problem."""
    problems: list[str] = []
    if not isinstance(document, dict):
        raise ConfigError([f"settings: must be a JSON object, got {_show(document)}"])
    _unknown_keys(document, TOP_LEVEL_KEYS, "", problems)
    base_frequency = _number(document, "base_frequency", "", problems)
    email_processing_frequency = _number(document, "email_processing_frequency", "", problems)
    recipient = _required(document, "recipient", "", problems)
    if recipient is not None and not is_email_address(recipient):
        problems.append(f"recipient: must be an email address like name@example.com, got {_show(recipient)}")
    server_root = document.get("server_root")
    if server_root is not None and not (
        isinstance(server_root, str) and re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", server_root)
    ):
        problems.append(f"server_root: must be an http:// or https:// URL, got {_show(server_root)}")
    users = _required(document, "users", "", problems)
    parsed_users = {}
    if users is not None and not isinstance(users, dict):
        problems.append(f"users: must be an object of username -> user settings, got {_show(users)}")
    elif users is not None:
        for username, user in users.items():
            parsed = _parse_user(username, user, recipient, problems)
            if parsed is not None:
                parsed_users[username] = parsed
        _check_dependencies(users, problems)
    if problems:
        raise ConfigError(problems)
    return Settings(
        base_frequency=base_frequency,
        email_processing_frequency=email_processing_frequency,
        server_root=server_root.rstrip("/") if server_root else None,
        users=parsed_users,
        recipient=recipient,
    )


def load_smtp_settings(environ: Mapping[str, str]) -> SmtpSettings:
    """Read the SMTP_* variables from `environ`; raise ConfigError listing every problem.

    SMTP_PORT must be a port; SMTP_FROM_NAME (the From header's display name, default "Ping
    Listener", empty for none) must be one line of text.
    """
    problems = []
    port_text = environ.get("SMTP_PORT", "465")
    if not re.fullmatch(r"[0-9]{1,5}", port_text.strip()) or not 0 < int(port_text) < 65536:
        problems.append(f"SMTP_PORT: must be an integer port from 1 to 65535, got {port_text!r}")
    sender_name = environ.get("SMTP_FROM_NAME", DEFAULT_SENDER_NAME)
    if _CONTROL.search(sender_name):
        problems.append(f"SMTP_FROM_NAME: must be one line without control characters, got {sender_name!r}")
    if problems:
        raise ConfigError(problems)
    login = environ.get("SMTP_LOGIN") or None
    return SmtpSettings(
        host=environ.get("SMTP_HOST") or "smtp.gmail.com",
        port=int(port_text),
        login=login,
        password=environ.get("SMTP_PASSWORD") or None,
        sender=environ.get("SMTP_FROM") or login,
        sender_name=sender_name.strip(),
        configured=bool(environ.get("SMTP_HOST") or login),
    )


def is_email_address(value: object) -> bool:
    """True if `value` is a string shaped like a deliverable address (name@domain.tld)."""
    return isinstance(value, str) and _EMAIL.fullmatch(value) is not None


def _parse_user(username, user, recipient, problems):
    path = _user_path(username)
    before = len(problems)
    if not username:
        problems.append(f"{path}: a username must not be empty")
    elif _CONTROL.search(username):
        problems.append(f"{path}: a username must not contain control characters")
    if not isinstance(user, dict):
        problems.append(f"{path}: must be an object with monitor, max_sleep and email_frequency, got {_show(user)}")
        return None
    _unknown_keys(user, USER_KEYS, path + ".", problems)
    monitor = _required(user, "monitor", path + ".", problems)
    if monitor is not None and not isinstance(monitor, bool):
        problems.append(f"{path}.monitor: must be true or false, got {_show(monitor)}")
    max_sleep = _number(user, "max_sleep", path + ".", problems)
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
    if len(problems) > before:
        return None
    return UserConfig(
        monitor=monitor,
        max_sleep=max_sleep,
        email_frequency=email_frequency,
        recipients=recipients or (recipient,),
        max_runtime=max_runtime,
        notify_recovery=notify_recovery,
        depends_on=depends_on,
    )


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
            problems.append(f"{_user_path(name)}.depends_on: no user named {_show(parent)} is configured")
            continue
        chain = [name]
        while chain[-1] in parents and parents[chain[-1]] in users and parents[chain[-1]] not in chain:
            chain.append(parents[chain[-1]])
        if parents.get(chain[-1]) == name and name not in reported:
            reported.update(chain)
            cycle = " -> ".join(_show(link) for link in [*chain, name])
            problems.append(f"{_user_path(name)}.depends_on: a cycle of dependencies: {cycle}")


def _user_path(username):
    return "users." + (username if re.fullmatch(r"[\w-]+", username) else json.dumps(username))


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


def _unknown_keys(document, known, prefix, problems):
    for key in document:
        if key not in known:
            problems.append(f"{prefix}{key}: unknown key (expected one of {', '.join(sorted(known))})")


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
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


class _DuplicateKey(ValueError):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs):
    document = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateKey(key)
        document[key] = value
    return document


def _reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")
