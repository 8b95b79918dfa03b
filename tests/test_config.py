import json
import subprocess
import sys

import pytest

import config
from support import ROOT


def valid_document(**changes):
    document = {
        "base_frequency": 1,
        "email_processing_frequency": 2.5,
        "recipient": "oncall@example.com",
        "users": {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600}},
    }
    document.update(changes)
    return document


def problems_of(document):
    with pytest.raises(config.ConfigError) as raised:
        config.parse_settings(document)
    return raised.value.problems


def test_the_shipped_example_is_valid():
    settings = config.load_settings(ROOT / "settings.json")
    assert len(settings.users) == 2


def test_it_parses_a_valid_document():
    settings = config.parse_settings(valid_document(server_root="https://example.net/"))
    assert settings.base_frequency == 1.0
    assert settings.email_processing_frequency == 2.5
    assert settings.server_root == "https://example.net"
    assert settings.users["pi"] == config.UserConfig(True, 60.0, 600.0, ("oncall@example.com",))


def test_server_root_is_optional():
    assert config.parse_settings(valid_document()).server_root is None


def test_device_email_may_be_a_string_or_a_list_and_overrides_recipient():
    settings = config.parse_settings(
        valid_document(
            users={
                "one": {"monitor": True, "max_sleep": 1, "email_frequency": 1, "device_email": "a@example.com"},
                "two": {
                    "monitor": True,
                    "max_sleep": 1,
                    "email_frequency": 1,
                    "device_email": ["b@example.com", "c@example.org", "b@example.com"],
                },
            }
        )
    )
    assert settings.users["one"].recipients == ("a@example.com",)
    assert settings.users["two"].recipients == ("b@example.com", "c@example.org")


def test_it_reports_every_problem_at_once_each_naming_its_key_path():
    document = valid_document(
        base_frequency="fast",
        colour="blue",
        users={
            "pi": {"monitor": "yes", "max_sleep": "ten", "email_frequency": -1, "device_email": "nobody"},
            "nas": {"monitor": True, "max_sleep": 5},
        },
    )
    del document["recipient"]
    assert sorted(problems_of(document)) == sorted(
        [
            'base_frequency: must be a number >= 0, got "fast"',
            f"colour: unknown key (expected one of {', '.join(sorted(config.TOP_LEVEL_KEYS))})",
            'recipient: missing, needed by users.nas (a user that notifies "email" and has no device_email sends'
            " its alerts to recipient)",
            'users.pi.monitor: must be true or false, got "yes"',
            'users.pi.max_sleep: must be a number >= 0, got "ten"',
            "users.pi.email_frequency: must be a number >= 0, got -1",
            'users.pi.device_email: must be an email address like name@example.com, got "nobody"',
            "users.nas.email_frequency: missing",
        ]
    )


@pytest.mark.parametrize("value", [True, False, None, "1", [1], {"n": 1}, -0.5])
def test_frequencies_must_be_numbers_not_booleans(value):
    assert problems_of(valid_document(base_frequency=value)) == [
        f"base_frequency: must be a number >= 0, got {json.dumps(value)}"
    ]


def test_zero_and_decimals_are_allowed():
    settings = config.parse_settings(valid_document(base_frequency=0, email_processing_frequency=0.25))
    assert (settings.base_frequency, settings.email_processing_frequency) == (0.0, 0.25)


@pytest.mark.parametrize(
    "address",
    [
        *("nobody", "a@", "@example.com", "a b@example.com", "a@exa mple.com", "<a@example.com>", 42, None),
        *("a@.example.com", "a@example.", "a@example..com", "a@-host", "a@host-", "a@b@example.com"),
    ],
)
def test_malformed_email_addresses_are_refused(address):
    [problem] = problems_of(valid_document(recipient=address))
    assert problem.startswith("recipient: must be an email address")


def test_an_address_whose_domain_has_no_dot_is_accepted_as_a_local_relay_delivers_to_it():
    user = {"monitor": True, "max_sleep": 1, "email_frequency": 1}
    settings = config.parse_settings(
        valid_document(
            recipient="root@localhost",
            users={"pi": user, "nas": {**user, "device_email": ["admin@mailhost", "ops@example.com"]}},
        )
    )
    assert settings.recipient == "root@localhost"
    assert settings.users["pi"].recipients == ("root@localhost",)
    assert settings.users["nas"].recipients == ("admin@mailhost", "ops@example.com")


def test_recipient_may_be_left_out_when_no_users_alerts_would_go_to_it():
    user = {"monitor": True, "max_sleep": 1, "email_frequency": 1}
    document = valid_document(
        webhooks=WEBHOOKS,
        users={
            "pi": {**user, "device_email": "pi-owner@example.com"},
            "nas": {**user, "notify": ["webhook:phone"]},
            "cam": {**user, "device_email": ["a@example.com"], "notify": ["email", "webhook:team"]},
        },
    )
    del document["recipient"]
    settings = config.parse_settings(document)
    assert settings.recipient is None
    assert [user.recipients for user in settings.users.values()] == [
        ("pi-owner@example.com",),
        (),
        ("a@example.com",),
    ]
    del document["users"]["pi"]["device_email"]
    assert problems_of(document) == [
        'recipient: missing, needed by users.pi (a user that notifies "email" and has no device_email sends'
        " its alerts to recipient)"
    ]


def test_a_missing_recipient_names_the_first_users_that_need_it_and_counts_the_others():
    user = {"monitor": True, "max_sleep": 1, "email_frequency": 1}
    document = valid_document(
        webhooks=WEBHOOKS,
        users={
            "own": {**user, "device_email": "own@example.com"},
            "hook": {**user, "notify": ["webhook:phone"]},
            **{f"dev{n}": user for n in range(4)},
            "both": {**user, "notify": ["webhook:phone", "email"]},
        },
    )
    del document["recipient"]
    assert problems_of(document) == [
        "recipient: missing, needed by users.dev0, users.dev1, users.dev2 and 2 more (a user that notifies"
        ' "email" and has no device_email sends its alerts to recipient)'
    ]


def test_device_email_must_not_be_an_empty_list():
    users = {"pi": {"monitor": True, "max_sleep": 1, "email_frequency": 1, "device_email": []}}
    assert problems_of(valid_document(users=users)) == [
        "users.pi.device_email: must be an email address or a non-empty list of them, got []"
    ]


def test_unknown_user_keys_are_errors():
    users = {"pi": {"monitor": True, "max_sleep": 1, "email_frequency": 1, "maxsleep": 5}}
    [problem] = problems_of(valid_document(users=users))
    assert problem.startswith("users.pi.maxsleep: unknown key")


def test_usernames_must_be_non_empty_and_free_of_control_characters():
    user = {"monitor": True, "max_sleep": 1, "email_frequency": 1}
    assert sorted(problems_of(valid_document(users={"": user, "bad\nname": user}))) == [
        'users."": a username must not be empty',
        'users."bad\\nname": a username must not contain control characters',
    ]


def test_users_must_be_an_object_of_objects():
    assert problems_of(valid_document(users=["pi"])) == [
        'users: must be an object of username -> user settings, got ["pi"]'
    ]
    [problem] = problems_of(valid_document(users={"pi": 5}))
    assert problem.startswith("users.pi: must be an object")


def test_server_root_must_be_an_http_url():
    assert problems_of(valid_document(server_root="example.net")) == [
        'server_root: must be an http:// or https:// URL, got "example.net"'
    ]


def test_a_document_that_is_not_an_object_is_refused():
    assert problems_of([]) == ["settings: must be a JSON object, got []"]


def write(tmp_path, text):
    path = tmp_path / "settings.json"
    path.write_text(text)
    return path


def test_bad_json_is_reported_with_the_file_name(tmp_path):
    path = write(tmp_path, '{"users": ')
    with pytest.raises(config.ConfigError) as raised:
        config.load_settings(path)
    [problem] = raised.value.problems
    assert problem.startswith(f"{path}: invalid JSON")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(tmp_path, constant):
    path = write(tmp_path, json.dumps(valid_document()).replace('"base_frequency": 1', f'"base_frequency": {constant}'))
    with pytest.raises(config.ConfigError) as raised:
        config.load_settings(path)
    assert constant.lstrip("-") in raised.value.problems[0]


def test_duplicate_usernames_are_refused(tmp_path):
    user = '{"monitor": true, "max_sleep": 1, "email_frequency": 1}'
    text = json.dumps(valid_document()).replace('"users": {', f'"users": {{"pi": {user}, ')
    with pytest.raises(config.ConfigError) as raised:
        config.load_settings(write(tmp_path, text))
    assert raised.value.problems == [f'{tmp_path / "settings.json"}: duplicate key "pi"']


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(config.ConfigError) as raised:
        config.load_settings(tmp_path / "nope.json")
    assert raised.value.problems == [f"{tmp_path / 'nope.json'}: cannot read settings file: No such file or directory"]


def test_smtp_settings_have_documented_defaults():
    smtp = config.load_smtp_settings({})
    assert smtp == config.SmtpSettings("smtp.gmail.com", 465, None, None, None)


def test_smtp_from_defaults_to_the_login():
    smtp = config.load_smtp_settings({"SMTP_LOGIN": "me@example.com", "SMTP_PASSWORD": "pw", "SMTP_PORT": "2465"})
    assert (smtp.port, smtp.sender) == (2465, "me@example.com")
    assert config.load_smtp_settings({"SMTP_LOGIN": "me@example.com", "SMTP_FROM": "pl@example.com"}).sender == (
        "pl@example.com"
    )


def test_the_metrics_token_and_api_key_are_optional_secrets_of_16_characters_or_more():
    assert config.load_secrets({}) == config.Secrets(None, None)
    assert config.load_secrets({"METRICS_TOKEN": "", "API_KEY": ""}) == config.Secrets(None, None)
    secrets = config.load_secrets({"METRICS_TOKEN": "m" * 16, "API_KEY": "a" * 40})
    assert (secrets.metrics_token, secrets.api_key) == ("m" * 16, "a" * 40)
    assert "m" * 16 not in repr(secrets)


@pytest.mark.parametrize("value", ["x" * 15, "abc", "sixteen chars ok", "sixteen-chars-ok\n"])
def test_a_short_metrics_token_or_api_key_is_refused_naming_the_variable_never_its_value(value):
    with pytest.raises(config.ConfigError) as raised:
        config.load_secrets({"METRICS_TOKEN": value, "API_KEY": value})
    assert raised.value.problems == [
        f"{name}: must be at least 16 characters without spaces or control characters, got {len(value)} characters"
        for name in ("METRICS_TOKEN", "API_KEY")
    ]


@pytest.mark.parametrize(
    "value", ["short-ping-key", "ping/key-0123456789", "ping key 0123456789", "ping\tkey-0123456789"]
)
def test_a_bad_ping_key_in_the_environment_is_refused_naming_it_never_its_value(value):
    with pytest.raises(config.ConfigError) as raised:
        config.load_secrets({"PING_KEY": value})
    assert raised.value.problems == [
        f"PING_KEY: must be at least 16 characters without spaces, / or control characters, got {len(value)} characters"
    ]


def test_a_ping_key_in_the_environment_is_read():
    assert config.load_secrets({"PING_KEY": "ping-key-0123456789"}).ping_key == "ping-key-0123456789"
    assert config.load_secrets({"PING_KEY": ""}).ping_key is None


@pytest.mark.parametrize("port", ["abc", "4.65", "", "0", "70000", "-1"])
def test_a_non_integer_smtp_port_is_refused(port):
    with pytest.raises(config.ConfigError) as raised:
        config.load_smtp_settings({"SMTP_PORT": port})
    assert raised.value.problems == [f"SMTP_PORT: must be an integer port from 1 to 65535, got {port!r}"]


@pytest.mark.parametrize("value", [1e9 + 1, 10**17, 10**400])
def test_durations_beyond_about_31_years_are_refused(value):
    [problem] = problems_of(valid_document(base_frequency=value))
    assert problem.startswith("base_frequency: must be at most 1000000000 seconds, got ")


def test_a_duration_of_exactly_the_maximum_is_allowed():
    assert config.parse_settings(valid_document(base_frequency=10**9)).base_frequency == 1e9


def test_deeply_nested_json_is_reported_not_crashed_on(tmp_path):
    with pytest.raises(config.ConfigError) as raised:
        config.load_settings(write(tmp_path, "[" * 100_000))
    assert raised.value.problems == [f"{tmp_path / 'settings.json'}: invalid JSON: nested too deeply"]


def test_an_address_with_a_control_character_is_refused():
    [problem] = problems_of(valid_document(recipient="a\x00b@example.com"))
    assert problem.startswith("recipient: must be an email address")


def test_the_from_name_defaults_to_ping_listener_and_may_be_changed_or_emptied():
    assert config.load_smtp_settings({}).sender_name == "Ping Listener"
    assert config.load_smtp_settings({"SMTP_FROM_NAME": "Home monitor"}).sender_name == "Home monitor"
    assert config.load_smtp_settings({"SMTP_FROM_NAME": ""}).sender_name == ""


def test_smtp_counts_as_set_up_once_its_host_or_login_is_given():
    assert not config.load_smtp_settings({"SMTP_PASSWORD": "pw"}).configured
    assert config.load_smtp_settings({"SMTP_HOST": "mail.example.net"}).configured
    assert config.load_smtp_settings({"SMTP_LOGIN": "me@example.com"}).configured


def test_every_bad_smtp_setting_is_reported_at_once():
    with pytest.raises(config.ConfigError) as raised:
        config.load_smtp_settings({"SMTP_PORT": "x", "SMTP_FROM_NAME": "a\rb"})
    assert raised.value.problems == [
        "SMTP_PORT: must be an integer port from 1 to 65535, got 'x'",
        "SMTP_FROM_NAME: must be one line without control characters, got 'a\\rb'",
    ]


def test_max_runtime_and_notify_recovery_are_optional_per_user_settings():
    pi = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    settings = config.parse_settings(
        valid_document(users={"pi": pi, "job": {**pi, "max_runtime": 90, "notify_recovery": False}})
    )
    assert (settings.users["pi"].max_runtime, settings.users["pi"].notify_recovery) == (None, True)
    assert (settings.users["job"].max_runtime, settings.users["job"].notify_recovery) == (90.0, False)


def test_status_pages_name_configured_users_with_optional_display_names():
    pi = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    document = valid_document(
        users={"pi": pi, "nas": pi, "secret": pi},
        status_pages={"home": {"title": "Home lab", "users": ["nas", "pi"], "show_names": {"nas": "Storage"}}},
        badge_key="b" * 16,
    )
    settings = config.parse_settings(document)
    page = settings.status_pages["home"]
    assert (page.title, page.users) == ("Home lab", ("nas", "pi"))
    assert (page.shown_name("nas"), page.shown_name("pi")) == ("Storage", "pi")
    assert settings.badge_key == "b" * 16
    assert "b" * 16 not in repr(settings)


def test_bad_status_pages_and_badge_keys_are_named():
    pi = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    document = valid_document(
        users={"pi": pi},
        status_pages={
            "home page": {"title": "Home", "users": ["pi"]},
            "lab": {"title": "", "users": ["pi", "ghost"], "show_names": {"nas": "Storage", "pi": "a\nb"}},
            "empty": {"users": [], "colour": 1},
        },
        badge_key="short-key",
    )
    assert sorted(problems_of(document)) == sorted(
        [
            "badge_key: must be a string of at least 16 letters, digits, '-', '_', '.' or '~'",
            "status_pages.\"home page\": a status page's slug must be letters, digits, '_' or '-'",
            "status_pages.empty.colour: unknown key (expected one of show_names, title, users)",
            "status_pages.empty.title: missing",
            "status_pages.empty.users: must be a non-empty list of usernames, got []",
            'status_pages.lab.title: must be one line of 1 to 200 characters, got ""',
            'status_pages.lab.users: no user named "ghost" is configured',
            "status_pages.lab.show_names.nas: not one of this page's users",
            'status_pages.lab.show_names.pi: must be one line of 1 to 200 characters, got "a\\nb"',
        ]
    )
    assert problems_of(valid_document(status_pages=[])) == [
        "status_pages: must be an object of slug -> {title, users}, got []"
    ]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("max_runtime", 0, "users.pi.max_runtime: must be a number > 0, got 0"),
        ("max_runtime", "1h", 'users.pi.max_runtime: must be a number > 0, got "1h"'),
        ("max_runtime", True, "users.pi.max_runtime: must be a number > 0, got true"),
        ("max_runtime", 1e12, "users.pi.max_runtime: must be at most 1000000000 seconds, got 1000000000000.0"),
        ("notify_recovery", "yes", 'users.pi.notify_recovery: must be true or false, got "yes"'),
    ],
)
def test_a_bad_max_runtime_or_notify_recovery_is_named(key, value, problem):
    pi = {"monitor": True, "max_sleep": 60, "email_frequency": 600, key: value}
    assert problems_of(valid_document(users={"pi": pi})) == [problem]


def scheduled(**changes):
    return {"monitor": True, "schedule": "30 2 * * 1-5", "email_frequency": 600, **changes}


def test_a_user_may_have_a_schedule_in_a_zone_with_a_grace_instead_of_max_sleep():
    settings = config.parse_settings(
        valid_document(users={"backup": scheduled(tz="America/New_York", grace=900), "nightly": scheduled()})
    )
    backup = settings.users["backup"]
    assert (backup.max_sleep, backup.schedule, backup.tz, backup.grace) == (
        None,
        "30 2 * * 1-5",
        "America/New_York",
        900,
    )
    # Without tz, the service's local zone (TZ, Europe/Paris in the tests); without grace, an hour.
    assert (settings.users["nightly"].tz, settings.users["nightly"].grace) == ("Europe/Paris", 3600.0)
    pi = config.parse_settings(valid_document()).users["pi"]
    assert (pi.max_sleep, pi.schedule, pi.tz, pi.grace) == (60.0, None, None, None)


@pytest.mark.parametrize(
    ("user", "problem"),
    [
        (
            scheduled(schedule="0 25 * * *"),
            'users.pi.schedule: is not a valid cron expression (bad hour), got "0 25 * * *"',
        ),
        (
            scheduled(schedule="@daily"),
            "users.pi.schedule: must be a cron expression of 5 fields (minute hour day-of-month month day-of-week),"
            ' got "@daily"',
        ),
        (
            scheduled(tz="Europe/Pariss"),
            "users.pi.tz: is not a time zone known here (an IANA name such as Europe/Paris or America/New_York),"
            ' got "Europe/Pariss"',
        ),
        (scheduled(grace=-1), "users.pi.grace: must be a number >= 0, got -1"),
        (scheduled(max_sleep=60), "users.pi: must have exactly one of max_sleep and schedule, got both"),
        (
            {"monitor": True, "email_frequency": 1},
            "users.pi: must have exactly one of max_sleep and schedule, got neither",
        ),
        (
            {"monitor": True, "max_sleep": 60, "email_frequency": 1, "grace": 60},
            "users.pi.grace: only for a user with a schedule (this one has max_sleep)",
        ),
        (
            {"monitor": True, "max_sleep": 60, "email_frequency": 1, "tz": "UTC"},
            "users.pi.tz: only for a user with a schedule (this one has max_sleep)",
        ),
    ],
)
def test_every_schedule_mistake_is_named_by_its_key_path(user, problem):
    assert problems_of(valid_document(users={"pi": user})) == [problem]


def test_a_schedule_without_tz_needs_a_local_zone_with_an_iana_name(monkeypatch):
    monkeypatch.setenv("TZ", "CET-1CEST")
    assert problems_of(valid_document(users={"pi": scheduled()})) == [
        'users.pi.tz: missing, and this process\'s local zone (TZ="CET-1CEST") has no IANA name: set tz, such as'
        " Europe/Paris"
    ]
    assert config.parse_settings(valid_document(users={"pi": scheduled(tz="UTC")})).users["pi"].tz == "UTC"


def test_a_bad_schedule_stops_startup_with_exit_status_2_and_one_line_per_problem(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(
        json.dumps(valid_document(users={"pi": scheduled(schedule="0 2 * *", tz="Nowhere/City", max_sleep=5)}))
    )
    finished = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--settings", str(path), "--db", str(tmp_path / "db")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert finished.returncode == 2
    assert finished.stderr.splitlines() == [
        "users.pi: must have exactly one of max_sleep and schedule, got both",
        "users.pi.schedule: must be a cron expression of 5 fields (minute hour day-of-month month day-of-week),"
        ' got "0 2 * *"',
        "users.pi.tz: is not a time zone known here (an IANA name such as Europe/Paris or America/New_York),"
        ' got "Nowhere/City"',
    ]


def with_dependencies(**depends_on):
    """A document whose users depend as `depends_on` says (username -> the name it depends on, or None)."""
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    return valid_document(
        users={
            name: {**user, **({} if parent is None else {"depends_on": parent})} for name, parent in depends_on.items()
        }
    )


def test_depends_on_names_another_configured_user_in_chains_of_any_length():
    settings = config.parse_settings(with_dependencies(wan=None, router="wan", switch="router", cam="switch"))
    assert [settings.users[name].depends_on for name in ("wan", "router", "switch", "cam")] == [
        None,
        "wan",
        "router",
        "switch",
    ]


def test_depends_on_an_unknown_user_or_not_a_name_is_a_key_path_error():
    document = with_dependencies(cam="router")
    document["users"]["pi"] = {"monitor": True, "max_sleep": 60, "email_frequency": 600, "depends_on": 7}
    assert problems_of(document) == [
        "users.pi.depends_on: must be the name of another user, got 7",
        'users.cam.depends_on: no user named "router" is configured',
    ]


def test_a_cycle_of_dependencies_is_reported_once_naming_its_links():
    assert problems_of(with_dependencies(a="b", b="c", c="a", d="a")) == [
        'users.a.depends_on: a cycle of dependencies: "a" -> "b" -> "c" -> "a"'
    ]
    assert problems_of(with_dependencies(pi="pi")) == ['users.pi.depends_on: a cycle of dependencies: "pi" -> "pi"']


@pytest.mark.parametrize(
    ("environ", "security", "port"),
    [
        ({}, "ssl", 465),
        ({"SMTP_SECURITY": "ssl"}, "ssl", 465),
        ({"SMTP_SECURITY": "starttls"}, "starttls", 587),
        ({"SMTP_SECURITY": "starttls", "SMTP_PORT": "2587"}, "starttls", 2587),
        ({"SMTP_SECURITY": "none", "SMTP_HOST": "localhost"}, "none", 25),
        ({"SMTP_SECURITY": "none", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": "2525"}, "none", 2525),
        ({"SMTP_SECURITY": "none", "SMTP_HOST": "127.8.9.10"}, "none", 25),
        ({"SMTP_SECURITY": "none", "SMTP_HOST": "::1"}, "none", 25),
    ],
)
def test_smtp_security_chooses_the_mode_and_its_default_port(environ, security, port):
    smtp = config.load_smtp_settings(environ)
    assert (smtp.security, smtp.port) == (security, port)


@pytest.mark.parametrize("value", ["tls", "SSL", "", "starttls ", "plain"])
def test_any_other_smtp_security_is_refused(value):
    with pytest.raises(config.ConfigError) as raised:
        config.load_smtp_settings({"SMTP_SECURITY": value})
    assert raised.value.problems == [f"SMTP_SECURITY: must be one of ssl, starttls or none, got {value!r}"]


@pytest.mark.parametrize("host", [None, "smtp.example.net", "192.168.1.10", "::2", "localhost.example.net", "0.0.0.0"])
def test_plain_text_smtp_is_refused_unless_the_host_is_loopback(host):
    environ = {"SMTP_SECURITY": "none"} | ({"SMTP_HOST": host} if host else {})
    with pytest.raises(config.ConfigError) as raised:
        config.load_smtp_settings(environ)
    assert raised.value.problems == [
        "SMTP_SECURITY: none (no TLS) is only allowed to a loopback SMTP_HOST (localhost, 127.0.0.0/8, ::1),"
        f" got SMTP_HOST {host or 'smtp.gmail.com'!r}; use starttls or ssl"
    ]


WEBHOOKS = {
    "phone": {"url": "https://ntfy.sh/my-pi-alerts", "format": "ntfy"},
    "team": {"url": "https://hooks.slack.com/services/T0/B0/x", "format": "slack", "headers": {"X-Env": "home"}},
}


def test_webhooks_and_each_users_channels_are_read():
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    settings = config.parse_settings(
        valid_document(
            webhooks=WEBHOOKS,
            users={
                "pi": {**user, "notify": ["webhook:phone", "email", "webhook:phone"]},
                "nas": user,
            },
        )
    )
    assert settings.webhooks == {
        "phone": config.WebhookConfig("https://ntfy.sh/my-pi-alerts", "ntfy"),
        "team": config.WebhookConfig("https://hooks.slack.com/services/T0/B0/x", "slack", (("X-Env", "home"),)),
    }
    assert settings.users["pi"].notify == ("webhook:phone", "email")
    assert settings.users["nas"].notify == ("email",)
    assert config.parse_settings(valid_document()).webhooks == {}


def test_every_bad_webhook_or_channel_is_reported_with_its_key_path():
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600}
    problems = problems_of(
        valid_document(
            webhooks={
                "ftp": {"url": "ftp://example.net/x", "format": "json"},
                "odd": {"url": "https://example.net", "format": "pager", "colour": "red"},
                "bare": {"format": "json", "headers": {"Bad Name": "x", "X-Ok": "line\nbreak"}},
                "no object": "https://example.net",
            },
            users={
                "pi": {**user, "notify": ["webhook:team", "sms", 3]},
                "nas": {**user, "notify": []},
                "cam": {**user, "notify": "email"},
            },
        )
    )
    assert problems == [
        'webhooks.ftp.url: must be an http:// or https:// URL, got "ftp://example.net/x"',
        "webhooks.odd.colour: unknown key (expected one of api_key, format, headers, recoveries, routing_key, url)",
        "webhooks.odd.format: must be one of json, ntfy, slack, discord, gotify, teams, pagerduty, opsgenie, apprise,"
        ' got "pager"',
        "webhooks.bare.url: missing",
        'webhooks.bare.headers: "Bad Name" is not an HTTP header name',
        'webhooks.bare.headers.X-Ok: must be text without control characters, got "line\\nbreak"',
        "webhooks.\"no object\": a webhook's name must be letters, digits, '_' or '-'",
        'webhooks."no object": must be an object with url and format, got "https://example.net"',
        'users.pi.notify: unknown webhook "team" (known: none: settings.json has no webhooks)',
        'users.pi.notify: each channel must be "email" or "webhook:NAME", got "sms"',
        'users.pi.notify: each channel must be "email" or "webhook:NAME", got 3',
        'users.nas.notify: must be a non-empty list of "email" and "webhook:NAME", got []',
        'users.cam.notify: must be a non-empty list of "email" and "webhook:NAME", got "email"',
    ]


def test_a_channel_naming_a_webhook_that_is_not_configured_names_the_known_ones():
    user = {"monitor": True, "max_sleep": 60, "email_frequency": 600, "notify": ["webhook:phnoe"]}
    assert problems_of(valid_document(webhooks=WEBHOOKS, users={"pi": user})) == [
        'users.pi.notify: unknown webhook "phnoe" (known: phone, team)'
    ]


@pytest.mark.parametrize("url", ["https://", "http://host:99999/", "https://ex ample.net", "mailto:a@b.c", 5])
def test_a_webhook_url_must_be_a_usable_http_url(url):
    assert problems_of(valid_document(webhooks={"w": {"url": url, "format": "json"}})) == [
        f"webhooks.w.url: must be an http:// or https:// URL, got {json.dumps(url)}"
    ]


USER = {"monitor": True, "max_sleep": 1, "email_frequency": 1}
TOKEN = "0123456789abcdef"


def test_the_operations_settings_have_documented_defaults():
    settings = config.parse_settings(valid_document())
    assert (settings.require_tokens, settings.retention_days) == (False, None)
    assert (settings.heartbeat_url, settings.heartbeat_frequency) == (None, 60.0)
    assert settings.users["pi"].token_digest is None


def test_the_operations_settings_are_read():
    settings = config.parse_settings(
        valid_document(
            require_tokens=True,
            retention_days=30,
            heartbeat_url="https://hc-ping.com/5f0c?create=1",
            heartbeat_frequency=0.5,
            users={"pi": {**USER, "token": TOKEN}},
        )
    )
    assert (settings.require_tokens, settings.retention_days) == (True, 30.0)
    assert (settings.heartbeat_url, settings.heartbeat_frequency) == ("https://hc-ping.com/5f0c?create=1", 0.5)
    assert settings.users["pi"].token_digest == config.secret_digest(TOKEN)
    assert TOKEN not in repr(settings)


@pytest.mark.parametrize("token", ["0123456789abcde", 1234567890123456, "0123456789 abcdef", "0123456789abcdef\n"])
def test_a_token_must_be_16_characters_without_spaces_and_is_never_quoted(token):
    assert problems_of(valid_document(users={"pi": {**USER, "token": token}})) == [
        "users.pi.token: must be a string of at least 16 characters without spaces or control characters"
    ]


def test_require_tokens_makes_a_user_without_one_a_key_path_error():
    users = {"pi": {**USER, "token": TOKEN}, "nas": USER}
    assert problems_of(valid_document(require_tokens=True, users=users)) == [
        "users.nas.token: missing (require_tokens is true)"
    ]
    assert problems_of(valid_document(require_tokens="yes")) == ['require_tokens: must be true or false, got "yes"']


def test_email_recoveries_is_true_unless_set_and_must_be_a_bool():
    assert config.parse_settings(valid_document()).email_recoveries is True
    assert config.parse_settings(valid_document(email_recoveries=False)).email_recoveries is False
    for value, shown in (("no", '"no"'), (0, "0"), (None, "null")):
        assert problems_of(valid_document(email_recoveries=value)) == [
            f"email_recoveries: must be true or false, got {shown}"
        ]


@pytest.mark.parametrize("key", ["retention_days", "heartbeat_frequency"])
@pytest.mark.parametrize("value", [0, -1, "7", True, 1e12])
def test_retention_and_heartbeat_frequency_must_be_positive_numbers(key, value):
    [problem] = problems_of(valid_document(**{key: value}))
    assert problem.startswith(f"{key}: must be a number > 0 and at most ")


def test_max_incomplete_requests_per_address_defaults_to_1000_and_takes_a_whole_number():
    def parsed(**top_level):
        return config.parse_settings(valid_document(**top_level)).max_incomplete_requests_per_address

    assert parsed() == 1_000
    assert parsed(max_incomplete_requests_per_address=20_000) == 20_000
    assert parsed(max_incomplete_requests_per_address=50.0) == 50


@pytest.mark.parametrize("value", [0, -5, 2.5, "1000", True, None, 1e12])
def test_max_incomplete_requests_per_address_must_be_a_whole_number_of_at_least_1(value):
    assert problems_of(valid_document(max_incomplete_requests_per_address=value)) == [
        f"max_incomplete_requests_per_address: must be a whole number >= 1, got {json.dumps(value)}"
    ]


def test_durability_is_process_unless_power_is_asked_for():
    assert config.parse_settings(valid_document()).durability == "process"
    assert config.parse_settings(valid_document(durability="process")).durability == "process"
    assert config.parse_settings(valid_document(durability="power")).durability == "power"


@pytest.mark.parametrize("value", ["POWER", "full", "", None, True, 1, ["power"]])
def test_any_other_durability_is_a_key_path_error(value):
    assert problems_of(valid_document(durability=value)) == [
        f'durability: must be "process" or "power", got {json.dumps(value)}'
    ]


def test_a_bad_durability_stops_startup_with_status_2_and_one_line(tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(valid_document(durability="fsync")))
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--settings", str(settings), "--db", str(tmp_path / "db")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        'durability: must be "process" or "power", got "fsync"\n',
    )
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("url", ["hc-ping.com/x", "ftp://example.net", "https://", 5])
def test_heartbeat_url_must_be_an_http_url(url):
    [problem] = problems_of(valid_document(heartbeat_url=url))
    assert problem.startswith("heartbeat_url: must be an http:// or https:// URL")


def test_lone_surrogates_anywhere_are_key_path_errors(tmp_path):
    # Written as JSON escapes, as a hostile or broken file would hold them.
    text = json.dumps(
        valid_document(
            server_root="https://example.net/\ud800",
            users={"pi\udc00": USER, "nas": {**USER, "device_email": ["ok@example.com", "\ud83d@example.com"]}},
        ),
        ensure_ascii=True,
    )
    with pytest.raises(config.ConfigError) as raised:
        config.load_settings(write(tmp_path, text))
    assert sorted(raised.value.problems) == [
        "server_root: must be valid Unicode text (it holds a lone surrogate)",
        'users."pi\\udc00": a key must be valid Unicode text (it holds a lone surrogate)',
        "users.nas.device_email[1]: must be valid Unicode text (it holds a lone surrogate)",
    ]


@pytest.mark.parametrize("escape", ["\\uD800", "\\udbff", "\\uDc00", "\\uDFFF", "\\\\\\ud800"])
def test_a_lone_surrogate_is_found_whatever_the_case_of_its_escape(tmp_path, escape):
    # The search for lone surrogates is skipped only for a text without a surrogate escape in any case.
    text = json.dumps(valid_document(server_root="https://example.net/x")).replace("/x", "/" + escape)
    with pytest.raises(config.ConfigError) as raised:
        config.load_settings(write(tmp_path, text))
    assert raised.value.problems == ["server_root: must be valid Unicode text (it holds a lone surrogate)"]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029"])
def test_usernames_must_not_hold_line_or_paragraph_separators(separator):
    assert problems_of(valid_document(users={f"a{separator}b": USER})) == [
        f"users.{json.dumps(f'a{separator}b')}: a username must not contain line or paragraph separators"
        " (U+2028, U+2029)"
    ]


def test_over_long_keys_and_values_are_cut_in_every_problem(tmp_path):
    huge = "x" * 1_000_000
    document = valid_document(
        recipient=huge,
        users={huge: {**USER, huge: 1}, "\n" + huge: {**USER, "max_sleep": huge}},
        **{huge: 1},
    )
    problems = problems_of(document)
    assert len(problems) == 5
    # A problem is at most its cut key or value and the list of keys an unknown key could have been.
    longest = 2 * config.MAX_SHOWN + len(", ".join(config.TOP_LEVEL_KEYS)) + 50
    assert all(len(problem) < longest for problem in problems), problems
    duplicate = json.dumps({"a": 1, huge: 1})[:-1] + f', "{huge}": 2}}'
    with pytest.raises(config.ConfigError) as raised:
        config.load_settings(write(tmp_path, duplicate))
    assert len(raised.value.problems[0]) < 300


def test_live_settings_are_replaced_as_a_whole():
    first, second = config.parse_settings(valid_document()), config.parse_settings(valid_document(base_frequency=5))
    live = config.LiveSettings(first)
    assert live.current is first
    assert live.replace(second) is first
    assert live.current is second


def test_trusted_proxy_is_an_ip_address_written_as_a_socket_gives_it_and_unset_by_default():
    def parsed(**top_level):
        return config.parse_settings(valid_document(**top_level)).trusted_proxy

    assert parsed() is None
    assert parsed(trusted_proxy="127.0.0.1") == "127.0.0.1"
    assert parsed(trusted_proxy="0:0::1") == "::1"
    for bad, shown in (("10.0.0.300", '"10.0.0.300"'), ("proxy.lan", '"proxy.lan"'), (1, "1"), (True, "true")):
        with pytest.raises(config.ConfigError) as raised:
            parsed(trusted_proxy=bad)
        assert raised.value.problems == [
            f'trusted_proxy: must be the IP address of the reverse proxy, like "127.0.0.1", got {shown}'
        ]
