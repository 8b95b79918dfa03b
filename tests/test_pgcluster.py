"""The tests' own PostgreSQL server (pgcluster.py): each test gets an empty database of its own that only
the service's role, with its password, can reach."""

import psycopg
import pytest

from pgcluster import PASSWORD, ROLE


def test_each_test_gets_a_new_empty_database_owned_by_the_service_role(postgres_server, postgres_url):
    with psycopg.connect(postgres_url) as connection:
        user, database = connection.execute("SELECT current_user, current_database()").fetchone()
        tables = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        connection.execute("CREATE TABLE mine (id integer)")
    assert user == ROLE
    assert postgres_url == postgres_server.url(database)
    assert tables == (0,)
    second = postgres_server.create_database()
    try:
        with psycopg.connect(postgres_server.url(second)) as connection:
            assert connection.execute("SELECT to_regclass('mine')").fetchone() == (None,)
    finally:
        postgres_server.drop_database(second)


def test_the_service_role_must_give_its_password(postgres_server, postgres_url):
    database = postgres_url.rsplit("/", 1)[1]
    for password in ("wrong", None):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(postgres_server.url(database, password=password), connect_timeout=5)
    with psycopg.connect(postgres_server.url(database, password=PASSWORD)) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_a_database_is_dropped_even_with_connections_left_open(postgres_server):
    name = postgres_server.create_database()
    left_open = psycopg.connect(postgres_server.url(name))
    postgres_server.drop_database(name)
    with postgres_server.connect() as admin:
        assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)
    left_open.close()
