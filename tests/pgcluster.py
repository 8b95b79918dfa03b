"""A throwaway PostgreSQL server of the tests' own, and the fixtures that hand it to them.

PostgreSQLCluster runs Debian's `postgresql` package (`make test` installs it) from its versioned directory,
/usr/lib/postgresql/VERSION/bin, never from symlinks on PATH a fresh machine may lack. initdb and the server
refuse to run as root, so when the tests run as root the cluster belongs to the `postgres` system user the
package creates (its processes are started with that user's ids), otherwise to the current user. It lives in
a temporary directory, listens on a free port of 127.0.0.1 only (and a Unix socket inside its directory, so it
never meets the packaged cluster's), and is stopped and deleted at the end of the session.

The service connects as ROLE with PASSWORD over TCP (scram-sha-256), as it would in production, so the
password is in every URL the tests give it and any message that printed it would show; the tests' own
administration goes through the superuser SUPERUSER, trusted on this machine only.

Durability is switched off (fsync, full_page_writes, synchronous_commit): a crash of the machine may lose this
cluster, which nobody keeps; a commit is still a commit for every other connection, which is what the tests
look at. The benchmarks pass `durable=True` to measure what a real deployment pays.

Fixtures (registered in conftest.py): `postgres_server`, the session's cluster, and `postgres_url`, the URL of
a new, empty database for one test, owned by ROLE and dropped after it (with whatever connections a killed
server left behind).
"""

import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

SUPERUSER = "postgres"
ROLE = "ping_listener"
PASSWORD = "pg-test-password-5b7e"
SYSTEM_USER = "postgres"
INSTALL_HINT = "PostgreSQL is not installed: `make test` installs Debian's postgresql package (apt-get)"


def bin_dir():
    """The bin directory of the newest PostgreSQL Debian installed (/usr/lib/postgresql/VERSION/bin)."""
    found = [Path(path).parent for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if not found:
        raise RuntimeError(INSTALL_HINT)
    return max(found, key=lambda path: int(re.sub(r"\D", "", path.parent.name) or 0))


class PostgreSQLCluster:
    """One PostgreSQL server in a temporary directory, for this process's tests or benchmarks.

    start() makes and starts it; stop() stops it and deletes its directory. url() names a database on it as
    the service would be given it; create_database() and drop_database() make and remove one;
    connect() opens a superuser connection, to look at what the service committed.
    """

    def __init__(self, durable=False, max_connections=300):
        self.durable = durable
        self.max_connections = max_connections
        self.host = "127.0.0.1"
        self.port = None
        self.directory = None
        self.process = None
        self._names = itertools.count(1)
        self._admin = None

    def start(self, timeout=60):
        """initdb into a new temporary directory, start the server on a free port, wait until it accepts
        connections and create ROLE; return self."""
        self.directory = Path(tempfile.mkdtemp(prefix="pgcluster-"))
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Stop the server (fast shutdown: connections are ended, nothing waits for clients) and delete its
        directory. Safe to call twice."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def url(self, dbname, user=ROLE, password=PASSWORD):
        """The postgresql:// URL of database `dbname` as `user` with `password` (none for None)."""
        credentials = user if password is None else f"{user}:{password}"
        return f"postgresql://{credentials}@{self.host}:{self.port}/{dbname}"

    def create_database(self):
        """Create a new, empty database owned by ROLE; return its name."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self._execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(*_names(name, ROLE)))
        return name

    def drop_database(self, name):
        """Drop database `name`, ending the connections still open to it (a killed server's, say)."""
        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def connect(self, dbname="postgres"):
        """A new superuser connection to `dbname`, autocommit (close it when done)."""
        return psycopg.connect(host=self.host, port=self.port, user=SUPERUSER, dbname=dbname, autocommit=True)

    def log(self):
        """What the server logged so far."""
        return (self.directory / "server.log").read_text(errors="replace")

    def _start(self, timeout):
        data = self.directory / "data"
        owner = _cluster_owner()
        if owner is not None:
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            "--no-instructions",
        )
        # First match wins: the tests' superuser is trusted, every other role must give its password.
        (data / "pg_hba.conf").write_text(
            f"local all {SUPERUSER} trust\n"
            f"host all {SUPERUSER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        # Another process may take the free port before the server binds it: then try another.
        for attempt in itertools.count(1):
            self.port = _free_port()
            self._launch(data, owner)
            try:
                self._admin = self._wait_until_ready(timeout)
                break
            except _PortTaken:
                if attempt == 3:
                    raise RuntimeError(f"PostgreSQL found no free port in 3 tries:\n{self.log()}") from None
        self._execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))

    def _launch(self, data, owner):
        settings = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.directory),
            "max_connections": self.max_connections,
            "log_min_messages": "warning",
        }
        if not self.durable:
            settings.update(fsync="off", full_page_writes="off", synchronous_commit="off")
        command = [str(bin_dir() / "postgres"), "-D", str(data)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        with (self.directory / "server.log").open("ab") as log:
            # A session of its own: a Ctrl-C meant for pytest does not reach the server before stop() does.
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                **_as_user(owner),
            )

    def _wait_until_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.connect()
            except psycopg.OperationalError:
                if self.process.poll() is not None:
                    if "could not bind" in self.log():
                        raise _PortTaken() from None
                    raise RuntimeError(
                        f"PostgreSQL exited with status {self.process.returncode}:\n{self.log()}"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not accept connections within {timeout} s:\n{self.log()}"
                    ) from None
                time.sleep(0.05)

    def _execute(self, statement):
        self._admin.execute(statement)

    def _run(self, program, *args):
        completed = subprocess.run(
            [str(bin_dir() / program), *args],
            capture_output=True,
            text=True,
            cwd=self.directory,
            **_as_user(_cluster_owner()),
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{program} failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}")


class _PortTaken(Exception):
    """The server could not bind the port chosen for it."""


def _names(*names):
    return [sql.Identifier(name) for name in names]


def _cluster_owner():
    """The system user the cluster must belong to: `postgres` when running as root (which PostgreSQL refuses),
    None (the current user) otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise RuntimeError(f"running as root and there is no {SYSTEM_USER!r} user: {INSTALL_HINT}") from None


def _as_user(owner):
    """subprocess arguments that run a program as `owner` (with its group only), or as we are for None."""
    if owner is None:
        return {}
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": [], "env": _environment_of(owner)}


def _environment_of(owner):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    environment.update(HOME=owner.pw_dir, USER=owner.pw_name, LOGNAME=owner.pw_name)
    return environment


def _free_port():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return unused.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """The session's PostgreSQL server (a PostgreSQLCluster), started on first use, stopped at the end."""
    cluster = PostgreSQLCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a new, empty database for this test (ROLE with PASSWORD), dropped after it."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
