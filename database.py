"""Which database a `--db` value (or DATABASE_URL) names, and opening it: a postgresql:// or postgres:// URL is a
PostgreSQL database (pg_store.PgStore), anything else the path of a SQLite file (store.Store).

Both stores satisfy store_contract.StoreContract, so nothing else in the service knows which one runs. A URL is
never shown with its password: display_name() replaces it.
"""

import re
import urllib.parse
from collections.abc import Mapping

from config import DEFAULT_DURABILITY
from store import Store
from store_contract import StoreContract

POSTGRESQL_SCHEMES = ("postgresql", "postgres")
DEFAULT_SQLITE_PATH = "ping_listener.db"
# What a password is replaced with wherever a URL is shown.
HIDDEN = "***"
# A password given as a parameter of the URL's query (libpq accepts ?password=...).
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


def is_postgresql(db: str) -> bool:
    """Whether `db` is a PostgreSQL URL (postgresql://… or postgres://…) rather than a SQLite path."""
    scheme, separator, _ = db.partition("://")
    return bool(separator) and scheme.lower() in POSTGRESQL_SCHEMES


def chosen_database(command_line: str | None, environ: Mapping[str, str]) -> str:
    """The database to use: `--db` if it was given on the command line, else DATABASE_URL if set, else
    ping_listener.db."""
    return command_line or environ.get("DATABASE_URL") or DEFAULT_SQLITE_PATH


def display_name(db: str) -> str:
    """`db` as it may be shown in a message or a log line: a URL with its password (before the host, or
    password=... in its query) replaced by ***."""
    return hide_password(db, db) if is_postgresql(db) else db


def hide_password(text: str, url: str) -> str:
    """`text` with the passwords of the PostgreSQL URL `url` (before the host, and in its query; as written,
    and percent-decoded) replaced by ***."""
    for password in _passwords(url):
        for form in sorted({password, urllib.parse.unquote(password)}, key=len, reverse=True):
            text = text.replace(form, HIDDEN)
    return text


def open_store(db: str, durability: str = DEFAULT_DURABILITY) -> StoreContract:
    """Open the database `db` names (see is_postgresql) for the service, creating its tables if it is new, its
    commits as `durability` (settings.json's) says.

    A SQLite file is this process's alone while the store is open (Store's `exclusive`): a second service
    on it is refused before it touches anything; PostgreSQL takes several instances. Raises
    records.StoreOpenError, with a message naming the database without its password, if it cannot be used.
    Either store is returned as the contract they both satisfy (store_contract.StoreContract), which mypy checks.
    """
    if not is_postgresql(db):
        return Store(db, durability, exclusive=True)
    from pg_store import PgStore  # psycopg is loaded only when PostgreSQL is used

    return PgStore(db)


def _passwords(url: str) -> list[str]:
    """The URL's non-empty passwords, longest first (so that one inside another is hidden whole)."""
    found = [match.group(2) for match in _QUERY_PASSWORD.finditer(url)]
    # By hand, not urllib.parse: a URL with a bad port or host still has its password hidden.
    netloc = url.partition("://")[2].partition("/")[0].partition("?")[0]
    credentials, at, _ = netloc.rpartition("@")
    if at and ":" in credentials:
        found.append(credentials.partition(":")[2])
    return sorted({password for password in found if password}, key=len, reverse=True)
