# Ping Listener. `make run` serves; `make test` installs what the tests need and runs them all;
# `make bench` installs what the benchmarks need, runs them all and writes bench/results.md.
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8080
SETTINGS ?= settings.json
DB ?= ping_listener.db

VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench debian-packages bench-packages clean

run: $(VENV)/.runtime-installed
	$(BIN)/python server.py --settings $(SETTINGS) --db $(DB) --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-installed debian-packages
	$(BIN)/python -m pytest

# BENCH_ARGS passes options to bench/run.py, e.g. BENCH_ARGS="--duration 3 --only ping".
bench: $(VENV)/.bench-installed bench-packages
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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

# Debian packages the tests use: Chromium for the testing page, the sqlite3 shell the README shows,
# and time zone data. apt-get runs only when one is missing, with `apt-get update` once first.
debian-packages:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v sqlite3 >/dev/null || missing="$$missing sqlite3"; \
	[ -e /usr/share/zoneinfo/Europe/Paris ] || missing="$$missing tzdata"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Debian packages the benchmarks use, installed the same way: wrk, and time zone data (they run in Europe/Paris).
bench-packages:
	@missing=""; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	[ -e /usr/share/zoneinfo/Europe/Paris ] || missing="$$missing tzdata"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache bench/build
