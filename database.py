"""Which database a `--db` value (or DATABASE_URL) names, and opening it: a postgresql:// or postgres:// URL is a
PostgreSQL database (pg_store.PgStore), anything else the path of a SQLite file (store.Store).

Both stores offer the same public methods with the same meanings, so nothing else in the service knows which
one runs. A URL is never shown with its password: display_name() replaces it.
"""

import urllib.parse
from collections.abc import Mapping
from typing import cast

from store import Store

POSTGRESQL_SCHEMES = ("postgresql", "postgres")
DEFAULT_SQLITE_PATH = "ping_listener.db"
# What a password is replaced with wherever a URL is shown.
HIDDEN = "***"


def is_postgresql(db: str) -> bool:
    """Whether `db` is a PostgreSQL URL (postgresql://… or postgres://…) rather than a SQLite path."""
    scheme, separator, _ = db.partition("://")
    return bool(separator) and scheme.lower() in POSTGRESQL_SCHEMES


def chosen_database(command_line: str | None, environ: Mapping[str, str]) -> str:
    """The database to use: `--db` if it was given on the command line, else DATABASE_URL if set, else
    ping_listener.db."""
    return command_line or environ.get("DATABASE_URL") or DEFAULT_SQLITE_PATH


def display_name(db: str) -> str:
    """`db` as it may be shown in a message or a log line: a URL with its password replaced by ***."""
    return hide_password(db, db) if is_postgresql(db) else db


def hide_password(text: str, url: str) -> str:
    """`text` with the password of the PostgreSQL URL `url` (as written, and percent-decoded) replaced by ***."""
    password = _password(url)
    if not password:
        return text
    for form in {password, urllib.parse.unquote(password)}:
        text = text.replace(form, HIDDEN)
    return text


def open_store(db: str) -> Store:
    """Open the database `db` names (see is_postgresql), creating its tables if it is new.

    Raises store.StoreOpenError, with a message naming the database without its password, if it cannot
    be used. The PostgreSQL store is typed as a Store: it offers every public method of Store with the
    same signature and meaning (tests/test_pg_store.py checks the signatures).
    """
    if not is_postgresql(db):
        return Store(db)
    from pg_store import PgStore  # psycopg is loaded only when PostgreSQL is used

    return cast(Store, PgStore(db))


def _password(url: str) -> str | None:
    # By hand, not urllib.parse: a URL with a bad port or host still has its password hidden.
    netloc = url.partition("://")[2].partition("/")[0]
    credentials, at, _ = netloc.rpartition("@")
    if not at or ":" not in credentials:
        return None
    return credentials.partition(":")[2]
