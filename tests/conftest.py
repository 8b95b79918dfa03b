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

# The files that take longest (a full run's durations, longest first): `make test`'s workers take them first, so
# that no long file starts when the other worker is about to run dry. Only the order depends on this list.
LONGEST_FILES = [
    "test_store.py",
    "test_e2e.py",
    "test_install.py",
    "test_overview_page.py",
    "test_browser.py",
    "test_serving.py",
    "test_channels.py",
    "test_scheduler.py",
    "test_pg_instances.py",
    "test_e2e_detection.py",
    "test_status_page.py",
    "test_web.py",
    "test_api_e2e.py",
    "test_fault_smtp.py",
    "test_install_doc.py",
    "test_detection.py",
    "test_overview.py",
    "test_fault_hostile_input.py",
    "test_checks_by_program.py",
    "test_e2e_operations.py",
    "test_fault_crash_and_load.py",
    "test_fault_storage.py",
    "test_e2e_email_pings.py",
]


def pytest_configure(config):
    # xdist's --dist loadfile hands out files by their number of tests unless told not to, which left a few
    # long files of few tests (the installs) for the end; pytest_collection_modifyitems orders them instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """The longest files first (LONGEST_FILES), then the others; each file's tests in their own order."""
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
