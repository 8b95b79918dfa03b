import os
import time

import pytest
import trustme

from pg_store import PgStore
from pgcluster import postgres_server, postgres_url  # noqa: F401 (fixtures)
from store import Store
from support import ServerProcess, TlsSmtpServer, Tmpfs, server_env

# A zone with daylight saving time, so tests notice any confusion between UTC and local time.
os.environ["TZ"] = "Europe/Paris"
time.tzset()


@pytest.fixture
def store(request, tmp_path):
    """A new store: SQLite in tmp_path, or PostgreSQL in a new database for a test parametrised with
    `store` = "postgresql" (indirect=True, as tests/test_store.py's BACKENDS)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        opened = PgStore(request.getfixturevalue("postgres_url"))
    else:
        opened = Store(tmp_path / "ping_listener.db")
    yield opened
    opened.close()


@pytest.fixture
def tmpfs(tmp_path):
    """A real 4 MiB tmpfs (support.Tmpfs) at tmp_path / "disk", unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = Tmpfs(tmp_path / "disk", 4 << 20)
    yield disk
    disk.unmount()


@pytest.fixture(scope="session")
def ca():
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_path(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def smtp_server(ca):
    server = TlsSmtpServer(ca).start()
    yield server
    server.stop()


@pytest.fixture
def trust_test_ca(monkeypatch, ca_path):
    """Make this process trust the test CA, as SSL_CERT_FILE does for the service."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_path))


@pytest.fixture
def start_server(tmp_path, smtp_server, ca_path):
    """Start the real service as a subprocess: start_server(settings_path, db_path=..., **env)."""
    started = []

    def start(settings_path, db_path=None, **env):
        server = ServerProcess(
            settings_path,
            db_path or tmp_path / "ping_listener.db",
            server_env(smtp_server.port, ca_path, **env),
            tmp_path / f"server-{len(started)}.log",
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.process.poll() is None:
            server.kill()
