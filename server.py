"""Ping Listener's command: start up, serve the app until SIGTERM or SIGINT (serving.py), shut down.

python server.py [--settings PATH] [--db PATH_OR_URL] [--host HOST] [--port PORT]
python server.py --send-test-email ADDRESS

Startup reads the settings, opens the database (a SQLite file, or PostgreSQL for a postgresql:// URL in --db
or DATABASE_URL: database.py), starts the email pings' SMTP listener if the settings ask for it
(email_pings.py) and starts the scheduler; SIGHUP reads the settings
again (reload_settings). The app itself, its routes and answers, is web.py. --send-test-email only
proves the SMTP setup: it sends one email and exits, touching neither the settings nor the database.
"""

import argparse
import gc
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import config
import serving
from checks import REFRESH_INTERVAL, Checks
from config import LiveSettings
from database import chosen_database, display_name, open_store
from email_pings import EmailPingListener, tls_context
from mailer import SENT, SmtpMailer, SmtpSetupError
from metrics import Exporter
from overview import HISTORY_USERS_PER_STEP, UPKEEP_INTERVAL, Overview
from records import StoreError, StoreOpenError
from scheduler import Scheduler
from store import SCHEMA_VERSION
from store_contract import StoreContract
from web import MAX_REQUEST_BODY, MAX_SIGNAL_BODY, MAX_SIGNAL_REQUEST_BODY, Operations, make_app

log = logging.getLogger("ping_listener.server")

# Paths answered on waitress's I/O thread (serving.py): each costs one short SQLite statement.
QUICK_PATHS = ("/ping",)
# On SIGTERM: how long requests in flight may take to be answered, and the scheduler to stop.
SHUTDOWN_GRACE = 2.0
SCHEDULER_STOP_TIMEOUT = 1.5
# Objects allocated (beyond those freed) before the garbage collector looks at the young ones; Python's
# default is 700. An overview answer or a day view of 86 400 pings allocates tens of thousands of objects:
# at the default they set off dozens of collections each, and every few answers a full one over every
# object the overview keeps (20-30 ms at 10 000 users, the GIL held meanwhile, so pings wait too).
YOUNG_OBJECTS_BEFORE_COLLECTION = 20_000


def main(argv: list[str] | None = None) -> int:
    """Run the service until SIGTERM or SIGINT; return the process exit status."""
    args = _parse_args(argv)
    if args.send_test_email is not None:
        return send_test_email(args.send_test_email, os.environ)
    # First of all, so that a signal during startup stops (or reloads) the service cleanly once it is up.
    stop_requested = stop_on_signals()
    reload_requested = reload_on_sighup()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_garbage_collector()
    try:
        with collector_paused():
            settings = config.load_settings(args.settings)
        smtp = config.load_smtp_settings(os.environ)
        secrets = config.load_secrets(os.environ)
        email_tls = tls_context(settings.email_pings) if settings.email_pings is not None else None
    except config.ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2
    clock = time.time
    db = chosen_database(args.db, os.environ)
    try:
        store = open_store(db, settings.durability)
    except StoreOpenError as error:
        print(error, file=sys.stderr)
        return 2
    if store.upgraded_from is not None:
        log.warning(
            "%s: database upgraded from schema version %d to %d", display_name(db), store.upgraded_from, SCHEMA_VERSION
        )
    live_settings = LiveSettings(settings)
    try:
        with collector_paused():
            store.sync_users(settings.users, clock())
            checks = Checks(store, live_settings)
    except StoreError as error:
        store.close()
        print(f"{display_name(db)}: {error}", file=sys.stderr)
        return 2
    if not store.started_alone:
        log.info("%s: joined the instances running on it; no deadline restarted", display_name(db))
    mail_sender = SmtpMailer(smtp)
    # Its default server root, the address bound, is set below once the socket is bound.
    scheduler = Scheduler(store, mail_sender, live_settings, "", clock)
    operations = Operations(
        health_problem=scheduler.health_problem,
        metrics=Exporter(store, clock, scheduler.absence_step_seconds, scheduler.deliveries),
        metrics_token=secrets.metrics_token,
        api_key=secrets.api_key,
        api_key_readonly=secrets.api_key_readonly,
        ping_key=secrets.ping_key,
    )
    testing_password = os.environ.get("TESTING_PASSWORD") or None
    overview_password = os.environ.get("OVERVIEW_PASSWORD") or None
    overview = Overview(store)
    app = make_app(
        store, live_settings, clock, testing_password, mail_sender, operations, overview, overview_password, checks
    )
    email_listener = None
    if settings.email_pings is not None:
        email_listener = EmailPingListener(
            settings.email_pings, store, live_settings, clock, email_tls, name_of=checks.name_of
        )
        try:
            email_listener.start()
        except OSError as error:
            store.close()
            where = f"{settings.email_pings.host}:{settings.email_pings.port}"
            reason = os.strerror(error.errno) if error.errno else str(error)  # asyncio's strerror repeats the address
            print(f"email_pings: cannot listen on {where}: {reason}", file=sys.stderr)
            return 2
    try:
        limits = serving.ServingLimits(incomplete_requests_per_address=settings.max_incomplete_requests_per_address)
        http_server = serving.create_http_server(
            app,
            args.host,
            args.port,
            QUICK_PATHS,
            MAX_REQUEST_BODY,
            limits,
            batch=store.ping_batch,
            quick_bodies=serving.QuickBodies(MAX_SIGNAL_REQUEST_BODY, MAX_SIGNAL_BODY),
            trusted_proxy=settings.trusted_proxy,
        )
    except (OSError, ValueError) as error:  # ValueError: waitress cannot resolve the host
        if email_listener is not None:
            email_listener.stop()
        store.close()
        print(f"cannot listen on {args.host}:{args.port}: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
        return 2
    bound_url = _url(http_server.host, http_server.port)
    scheduler.default_root = bound_url
    if smtp.sender is None:
        log.warning("neither SMTP_FROM nor SMTP_LOGIN is set; alerts are sent from %s", mail_sender.sender)
    if settings.server_root is None and _unreachable_elsewhere(http_server.host):
        log.warning(
            "server_root is not set and the service listens on %s: the links in alert emails (%s/logs?...)"
            " will not work on another device, such as the phone you read them on; set server_root in %s",
            http_server.host,
            bound_url,
            args.settings,
        )
    check_smtp_in_background(mail_sender, smtp)
    scheduler.start()
    if overview_password or testing_password:
        # The overview's 24 hours are loaded in the background, so that its first answer waits for none of it.
        scheduler.run_loop("overview-upkeep", overview.keep_up, HISTORY_USERS_PER_STEP, UPKEEP_INTERVAL)
    # Checks that another instance created, changed or deleted are put in force here within REFRESH_INTERVAL.
    scheduler.run_loop("checks-refresh", checks.refresh_step, 1, REFRESH_INTERVAL)
    scheduler.on_request(
        "reload", reload_requested, lambda: reload_settings(args.settings, live_settings, store, clock, checks)
    )
    print(f"listening on {scheduler.default_root}", flush=True)
    serving.serve_until_signalled(http_server, stop_requested, SHUTDOWN_GRACE)
    if email_listener is not None:
        email_listener.stop()
    if not scheduler.stop(SCHEDULER_STOP_TIMEOUT):
        log.warning("a scheduler step is still running; what it has not committed is retried at next start")
    store.close()
    log.info("stopped")
    return 0


def tune_garbage_collector() -> None:
    """Set this process's garbage collector as the service runs it: the young generation is collected after
    YOUNG_OBJECTS_BEFORE_COLLECTION allocations, the older ones as Python's defaults say."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS_BEFORE_COLLECTION, middle, oldest)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off, and turn it on again after, even on an error.

    A start reads every user into objects that live as long as the service: collections meanwhile would walk
    them all again and again only to find them alive."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def send_test_email(address: str, environ: Mapping[str, str]) -> int:
    """Send one test email to `address` through the SMTP server of `environ`; return the exit status.

    0 if the server accepted it; 1 (the server's answer or the connection problem on stderr) if
    not; 2 for a bad address or SMTP configuration, as at startup.
    """
    problems = (
        []
        if config.is_email_address(address)
        else [f"--send-test-email: must be an email address like name@example.com, got {address!r}"]
    )
    try:
        smtp = config.load_smtp_settings(environ)
    except config.ConfigError as error:
        problems += error.problems
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 2
    mail_sender = SmtpMailer(smtp)
    result = mail_sender.send_test(address, time.time())
    if result.status != SENT:
        print(f"test email to {address} not sent through {mail_sender.server}: {result.error}", file=sys.stderr)
        return 1
    print(f"test email to {address} accepted by {mail_sender.server}", flush=True)
    return 0


def check_smtp_in_background(mail_sender: SmtpMailer, smtp: config.SmtpSettings) -> None:
    """If SMTP is set up, connect and log in once in a thread of its own, and log whether it worked.

    Startup neither waits for it nor fails with it: emails wait in the outbox until SMTP works.
    """
    if not smtp.configured:
        log.warning(
            "SMTP is not set up (SMTP_HOST, SMTP_LOGIN, SMTP_PASSWORD): alerts stay queued until it is;"
            " `python server.py --send-test-email ADDRESS` checks a setup"
        )
        return

    def check() -> None:
        try:
            done = mail_sender.check_login()
        except SmtpSetupError as error:
            log.error("SMTP check failed: %s; alerts stay queued and are retried until this is fixed", error)
        else:
            log.info("SMTP check: %s; alerts can be sent", done)

    threading.Thread(target=check, name="smtp-check", daemon=True).start()


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set from now on, instead of killing the process."""
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    return stop_requested


def reload_on_sighup() -> threading.Event:
    """An event that SIGHUP sets from now on, instead of killing the process; a loop does the reload."""
    reload_requested = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
    return reload_requested


def reload_settings(
    path: str | os.PathLike[str],
    live_settings: LiveSettings,
    store: StoreContract,
    clock: Callable[[], float],
    checks: Checks | None = None,
) -> bool:
    """Read the settings at `path` again and put them in force; True if they were.

    An invalid file changes nothing: each problem is logged on a line of its own, as at startup.
    Valid settings are put in force first, then the store's users follow (see StoreContract.reload_users):
    between the two, a user just removed already answers 404 and one just added may briefly answer
    404 too, but a ping is never recorded without the token the new settings ask for. If the store
    refuses, the previous settings are put back. A new `durability` applies to the commits that begin
    after it (StoreContract.use_durability). With `checks`, the checks created by program stay in force beside
    the file's users; a name the file now declares is taken over by it (history kept), which is logged.
    """
    try:
        settings = config.load_settings(path)
    except config.ConfigError as error:
        for problem in error.problems:
            log.error("%s", problem)
        log.error(
            "settings not reloaded (%d problem(s) above); the previous settings stay in force", len(error.problems)
        )
        return False
    previous = live_settings.replace(settings if checks is None else checks.merged_with(settings))
    try:
        change = store.reload_users(settings.users, clock())
        if checks is not None:
            checks.use_file_settings(settings)
    except StoreError as error:
        live_settings.replace(previous)
        log.error("settings not reloaded: %s; the previous settings stay in force", error)
        return False
    for name in change.taken_over:
        log.warning(
            "%s: settings.json now declares this check, created by program: it takes it over, history kept", name
        )
    store.use_durability(settings.durability)
    log.info(
        "settings reloaded: %d user(s) added, %d removed, %d changed",
        len(change.added),
        len(change.removed),
        len(change.changed),
    )
    return True


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Ping Listener: a dead man's switch for devices that ping it.")
    parser.add_argument("--settings", default="settings.json", help="settings file (default: settings.json)")
    parser.add_argument(
        "--db",
        help="SQLite database file, or postgresql://USER@HOST:PORT/DBNAME"
        " (default: DATABASE_URL if set, else ping_listener.db)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8080, help="port to listen on; 0 lets the OS choose")
    parser.add_argument(
        "--send-test-email",
        metavar="ADDRESS",
        help="send one email to ADDRESS through the SMTP_* server, then exit (0: accepted, 1: not, 2: bad setup)",
    )
    return parser.parse_args(argv)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 65535, got {text!r}")
    return int(text)


def _unreachable_elsewhere(host: str) -> bool:
    """Whether a link to `host` works only on this machine, or nowhere (a loopback or unspecified address)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return address.is_loopback or address.is_unspecified


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


if __name__ == "__main__":
    sys.exit(main())
