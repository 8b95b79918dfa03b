# Ping Listener. `make run` serves; `make test` installs what the tests need and runs them all;
# `make bench` installs what the benchmarks need, runs them all and writes bench/results.md.
# `make test-email TO=you@example.com` sends one email through the SMTP_* server; `make smtp-sink` runs
# a local SMTP-over-TLS server that prints what it receives (README: "Try alerts locally").
# `sudo make install` puts the service on this machine as a hardened systemd service, and upgrades it when run
# again; `sudo make uninstall` removes it but its settings and data (docs/install.md; DESTDIR and PREFIX
# overridable, e.g. `make install DESTDIR=/tmp/stage` to stage it without root).
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8080
SETTINGS ?= settings.json
# The database: a SQLite file, or a postgresql:// URL. Unset, the service uses DATABASE_URL if that is set,
# else ping_listener.db.
DB ?=
TO ?=
SINK_PORT ?= 8465
DESTDIR ?=
PREFIX ?= /opt/ping-listener

VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test-email smtp-sink test lint bench screenshots debian-packages bench-packages clean install uninstall

# Not echoed: DB may be a URL holding a password.
run: $(VENV)/.runtime-installed
	@$(BIN)/python server.py --settings $(SETTINGS) $(if $(DB),--db '$(value DB)') --host $(HOST) --port $(PORT)

test-email: $(VENV)/.runtime-installed
	@[ -n "$(TO)" ] || { echo "usage: make test-email TO=you@example.com" >&2; exit 2; }
	$(BIN)/python server.py --send-test-email '$(TO)'

# The sink needs aiosmtpd and trustme, which the tests use too.
smtp-sink: $(VENV)/.dev-installed
	$(BIN)/python tools/smtp_sink.py --port $(SINK_PORT)

# Two workers, one per core, each taking whole files (a file's tests share its module fixtures and order).
# The longest files go first (tests/conftest.py: LONGEST_FILES), so that none is left for the end.
test: $(VENV)/.dev-installed debian-packages
	$(BIN)/python -m pytest -n 2 --dist loadfile

# BENCH_ARGS passes options to bench/run.py, e.g. BENCH_ARGS="--duration 3 --only ping".
bench: $(VENV)/.bench-installed bench-packages
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The screenshots in docs/ (docs/overview.md, docs/testing-page.md, docs/status-pages.md, the README): the
# overview and the testing page at 1366 and 390 px, light and dark, and a status page, taken by browser tests.
screenshots: $(VENV)/.dev-installed debian-packages
	OVERVIEW_SCREENSHOTS=$(CURDIR)/docs $(BIN)/python -m pytest -q tests/test_overview_page.py -k test_screenshots
	STATUS_SCREENSHOTS=$(CURDIR)/docs $(BIN)/python -m pytest -q tests/test_status_page.py -k test_status_screenshots

install uninstall:
	DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' PYTHON='$(PYTHON)' sh tools/install.sh $@

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(BIN)/python:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && $(SUDO) apt-get update -q \
		&& $(SUDO) apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime-installed

$(VENV)/.bench-installed: requirements.txt requirements-bench.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-bench.txt
	touch $@ $(VENV)/.runtime-installed

# Debian packages as "command-or-file:package" pairs (a file may be a glob). Tests: Chromium for the testing
# page, the sqlite3 shell docs/database.md shows, time zone data, faketime, the PostgreSQL server the tests
# start a cluster of (tests/pgcluster.py; its versioned bin directory, as the client alone has one too),
# HAProxy (tests/test_haproxy.py runs contrib/haproxy.cfg; by path, as /usr/sbin may not be on PATH), strace
# (tests/test_fault_storage.py counts the service's syncs to disk), curl (as devices and cron jobs send their
# signals), swaks (an SMTP client nobody here wrote, for email pings) and Postfix (relaying mail to them, as a
# NAS's mail server does; tests/test_e2e_email_pings.py runs its own instance, by path as for HAProxy),
# Caddy and nginx (tests/test_tls_proxies.py runs contrib/Caddyfile and contrib/nginx.conf),
# systemd-analyze (tests/test_install.py checks contrib/ping-listener.service).
# Benchmarks: wrk, time zone data (they run in Europe/Paris), PostgreSQL.
POSTGRESQL_SERVER := /usr/lib/postgresql/*/bin/initdb:postgresql
TEST_DEBIAN_PACKAGES := chromium:chromium sqlite3:sqlite3 /usr/share/zoneinfo/Europe/Paris:tzdata faketime:faketime \
	$(POSTGRESQL_SERVER) \
	/usr/sbin/haproxy:haproxy strace:strace curl:curl \
	swaks:swaks /usr/sbin/postfix:postfix caddy:caddy /usr/sbin/nginx:nginx systemd-analyze:systemd
BENCH_DEBIAN_PACKAGES := wrk:wrk /usr/share/zoneinfo/Europe/Paris:tzdata $(POSTGRESQL_SERVER)

# Installs the packages of the pairs in $(1) whose command or file is missing, with `apt-get update` once first.
# `set -- GLOB` expands a glob to the files it matches (or leaves it as it is when none does).
define install_missing_debian_packages
	@missing=""; \
	for pair in $(1); do \
		set -- $${pair%%:*}; \
		[ -e "$$1" ] || command -v "$$1" >/dev/null || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

debian-packages:
	$(call install_missing_debian_packages,$(TEST_DEBIAN_PACKAGES))

bench-packages:
	$(call install_missing_debian_packages,$(BENCH_DEBIAN_PACKAGES))

clean:
	rm -rf $(VENV) .pytest_cache bench/build
