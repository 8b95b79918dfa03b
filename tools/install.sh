#!/bin/sh
# `make install` and `make uninstall` (docs/install.md). Usage: tools/install.sh install|uninstall, run from
# the checkout, with DESTDIR (default: none), PREFIX (default /opt/ping-listener) and PYTHON (default python3)
# from the environment.
#
# install: the system user ping-listener (created if missing), the code in PREFIX with its virtualenv in
# PREFIX/.venv (root's, read-only to the service), /etc/ping-listener/ (root:ping-listener 0750) with
# settings.json (0640) and env (root only, 0600) written only if missing, /var/lib/ping-listener/
# (ping-listener 0750) created only if missing, and the unit in /etc/systemd/system/. Run again, it
# replaces the code, the virtualenv's packages and the unit, removes the files an earlier install put in
# PREFIX that this version no longer has, and never touches the settings, the environment file or the data.
# uninstall: stops and disables the service, removes the unit, the code and the virtualenv; keeps
# /etc/ping-listener, /var/lib/ping-listener and the user that owns them.
#
# With DESTDIR (a staging root, e.g. for a package) files go under it, no user is created and systemd is left
# alone; owners are set only when run as root and the user exists on this machine, and said otherwise.
set -eu
umask 022

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/ping-listener}
PYTHON=${PYTHON:-python3}
SERVICE=ping-listener
CONF_DIR=/etc/ping-listener
STATE_DIR=/var/lib/ping-listener
UNIT_DIR=/etc/systemd/system
# Listed in PREFIX: the files the last install put there, so that an upgrade or an uninstall removes only those.
MANIFEST=.installed-files
# What goes into PREFIX: the service's code, its pages, its requirements, and the docs the unit points to.
CODE="*.py schema.sql schema_pg.sql requirements.txt settings.json README.md static docs contrib"

say() { printf '%s\n' "$*"; }
fail() { printf 'make %s: %s\n' "$ACTION" "$*" >&2; exit 2; }

ACTION=${1:-}
case "$ACTION" in
install | uninstall) ;;
*) fail "usage: tools/install.sh install|uninstall" ;;
esac
case "$PREFIX" in
/*/* | /[!/]*) ;;
*) fail "PREFIX must be an absolute path other than /, got '$PREFIX'" ;;
esac
[ -z "$DESTDIR" ] || case "$DESTDIR" in /*) ;; *) fail "DESTDIR must be an absolute path, got '$DESTDIR'" ;; esac
if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
	fail "it writes to $PREFIX, /etc and /var/lib: run it as root (sudo make $ACTION), or set DESTDIR to stage it elsewhere"
fi
ROOT=$DESTDIR
APP=$ROOT$PREFIX
# systemctl only for the machine's own systemd, when it runs (not in a container or a staging root).
systemd_here() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

# chown, when it can be done: always without DESTDIR; with it, only as root and for a user that exists here.
owner() {
	if [ -z "$DESTDIR" ] || { [ "$(id -u)" = 0 ] && getent passwd "$SERVICE" >/dev/null; }; then
		chown "$@"
	else
		say "not set (DESTDIR, and not root or no user $SERVICE here): owner $1 of ${2#"$ROOT"}"
	fi
}

create_user() {
	if [ -n "$DESTDIR" ]; then
		say "not created (DESTDIR): the system user $SERVICE; on the target: useradd --system --user-group --home-dir $STATE_DIR --no-create-home --shell /usr/sbin/nologin $SERVICE"
	elif ! getent passwd "$SERVICE" >/dev/null; then
		useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
			--comment "Ping Listener" "$SERVICE"
		say "created the system user $SERVICE"
	fi
}

install_code() {
	mkdir -p "$APP"
	new=$(mktemp)
	# shellcheck disable=SC2086 # CODE is a list of globs
	find $CODE -name __pycache__ -prune -o -type f -print | LC_ALL=C sort >"$new"
	tar -cf - -T "$new" | tar -xf - -C "$APP" --no-same-owner --no-same-permissions
	chmod -R u=rwX,go=rX "$APP"
	if [ -f "$APP/$MANIFEST" ]; then
		LC_ALL=C sort "$APP/$MANIFEST" | LC_ALL=C comm -23 - "$new" | remove_listed
	fi
	# Stale bytecode goes; install_venv compiles the code again (the service may not write here).
	find "$APP" -path "$APP/.venv" -prune -o -name __pycache__ -type d -exec rm -rf {} +
	install -m 0644 "$new" "$APP/$MANIFEST"
	rm -f "$new"
	say "installed the code in $APP"
}

# Removes the files of PREFIX named on stdin (relative paths, as in the manifest), then the directories left empty.
remove_listed() {
	while IFS= read -r file; do
		case "$file" in /* | ../* | */../* | *"/.." | "") continue ;; esac
		rm -f "$APP/$file"
		dir=$(dirname "$file")
		while [ "$dir" != . ] && rmdir "$APP/$dir" 2>/dev/null; do dir=$(dirname "$dir"); done
	done
}

install_venv() {
	# A venv whose interpreter is gone (Python upgraded with the system) is made again.
	if [ ! -x "$APP/.venv/bin/python" ] || ! "$APP/.venv/bin/python" -c '' 2>/dev/null; then
		rm -rf "$APP/.venv"
		"$PYTHON" -m venv "$APP/.venv" || fail "$PYTHON -m venv failed: install python3-venv (apt-get install python3-venv)"
	fi
	"$APP/.venv/bin/python" -m pip install --disable-pip-version-check --root-user-action=ignore -q \
		-r "$APP/requirements.txt"
	"$APP/.venv/bin/python" -m compileall -q -x '/\.venv/' "$APP" >/dev/null
	say "installed the virtualenv in $APP/.venv"
}

install_config() {
	if [ ! -d "$ROOT$CONF_DIR" ]; then
		install -d -m 0750 "$ROOT$CONF_DIR"
		owner "root:$SERVICE" "$ROOT$CONF_DIR"
	fi
	if [ ! -e "$ROOT$CONF_DIR/settings.json" ]; then
		install -m 0640 settings.json "$ROOT$CONF_DIR/settings.json"
		owner "root:$SERVICE" "$ROOT$CONF_DIR/settings.json"
		say "wrote the example $CONF_DIR/settings.json: edit it"
	fi
	if [ ! -e "$ROOT$CONF_DIR/env" ]; then
		install -m 0600 contrib/env.example "$ROOT$CONF_DIR/env"
		say "wrote $CONF_DIR/env (root only): put the SMTP login and the passwords there"
	fi
	if [ ! -d "$ROOT$STATE_DIR" ]; then
		install -d -m 0750 "$ROOT$STATE_DIR"
		owner "$SERVICE:$SERVICE" "$ROOT$STATE_DIR"
	fi
}

install_unit() {
	mkdir -p "$ROOT$UNIT_DIR"
	sed "s|/opt/ping-listener|$PREFIX|g" contrib/ping-listener.service >"$ROOT$UNIT_DIR/$SERVICE.service.new"
	chmod 0644 "$ROOT$UNIT_DIR/$SERVICE.service.new"
	mv "$ROOT$UNIT_DIR/$SERVICE.service.new" "$ROOT$UNIT_DIR/$SERVICE.service"
	if systemd_here; then
		systemctl daemon-reload
		say "installed $UNIT_DIR/$SERVICE.service; start it: systemctl enable --now $SERVICE (after an upgrade: systemctl restart $SERVICE)"
	else
		say "installed $UNIT_DIR/$SERVICE.service (systemd is not running here: not reloaded)"
	fi
}

uninstall() {
	if systemd_here; then
		systemctl disable --now "$SERVICE" 2>/dev/null || true
	fi
	rm -f "$ROOT$UNIT_DIR/$SERVICE.service"
	if systemd_here; then systemctl daemon-reload; fi
	if [ -f "$APP/$MANIFEST" ]; then
		find "$APP" -path "$APP/.venv" -prune -o -name __pycache__ -type d -exec rm -rf {} +
		remove_listed <"$APP/$MANIFEST"
		rm -rf "$APP/.venv"
		rm -f "$APP/$MANIFEST"
		rmdir "$APP" 2>/dev/null || say "kept $PREFIX: it holds files that make install did not put there"
	else
		say "no install found in $PREFIX (no $MANIFEST)"
	fi
	say "removed Ping Listener; kept $CONF_DIR (settings), $STATE_DIR (data) and the user $SERVICE that owns it"
}

if [ "$ACTION" = install ]; then
	create_user
	install_code
	install_venv
	install_config
	install_unit
else
	uninstall
fi
