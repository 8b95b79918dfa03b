"""Tests of migrations.py: one list of schema steps upgrades SQLite and PostgreSQL databases alike.

SQLite's upgrades from version 1 on are tested in tests/test_store.py (from tests/data/schema_v1.sql).
"""

from pathlib import Path

import psycopg

import store as store_module
from migrations import SCHEMA_VERSION, STEPS
from pg_store import PG_MIGRATIONS, PgStore

PG_VERSION_8 = Path(__file__).with_name("data") / "schema_pg_v8.sql"


def pg_schema(url):
    """Every table's columns (type, nullability, default), index and constraint of the database at `url`, and its
    schema version."""
    with psycopg.connect(url, autocommit=True) as connection:
        return [
            connection.execute(query).fetchall()
            for query in (
                "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns"
                " WHERE table_schema = current_schema() ORDER BY 1, 2",
                "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                " ORDER BY 1, 2",
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE connamespace = current_schema()::regnamespace ORDER BY 1, 2",
                "SELECT version FROM schema_version",
            )
        ]


def test_each_database_takes_its_steps_from_the_one_list():
    assert tuple(step.sqlite for step in STEPS) == store_module.MIGRATIONS
    assert SCHEMA_VERSION == store_module.SCHEMA_VERSION == 1 + len(STEPS)
    # PostgreSQL databases begin at version 8: every step from there on is theirs too.
    assert {version: STEPS[version - 1].postgresql for version in range(8, SCHEMA_VERSION)} == PG_MIGRATIONS


def test_a_version_8_postgresql_database_is_upgraded_at_start_to_what_a_new_one_is(postgres_server):
    old_name, new_name = postgres_server.create_database(), postgres_server.create_database()
    try:
        old_url, new_url = postgres_server.url(old_name), postgres_server.url(new_name)
        with psycopg.connect(old_url, autocommit=True) as connection:
            connection.execute(PG_VERSION_8.read_text())
            connection.execute("INSERT INTO schema_version (version) VALUES (8)")
        upgraded, new = PgStore(old_url), PgStore(new_url)
        upgraded.close()
        new.close()
        assert upgraded.upgraded_from == 8
        assert new.upgraded_from is None
        assert pg_schema(old_url) == pg_schema(new_url)
    finally:
        postgres_server.drop_database(old_name)
        postgres_server.drop_database(new_name)
