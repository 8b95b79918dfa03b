"""settings.json's `defaults` (every per-user key, a user's own winning) and per-user `tags`."""

import pytest
from test_config import problems_of, valid_document

import config


def fleet(defaults, users):
    return valid_document(defaults=defaults, users=users)


def test_an_empty_user_is_valid_when_defaults_give_max_sleep():
    settings = config.parse_settings(fleet({"max_sleep": 300}, {"cam-17": {}}))
    cam = settings.users["cam-17"]
    assert cam.max_sleep == 300.0
    assert cam.monitor is True
    assert cam.email_frequency == config.FLEET_FALLBACKS["email_frequency"]


def test_an_empty_user_is_valid_when_defaults_give_a_schedule():
    settings = config.parse_settings(fleet({"schedule": "0 3 * * *", "tz": "UTC", "grace": 600}, {"job": {}}))
    job = settings.users["job"]
    assert (job.schedule, job.tz, job.grace, job.max_sleep) == ("0 3 * * *", "UTC", 600.0, None)


def test_a_users_own_keys_win_over_the_defaults():
    defaults = {"max_sleep": 300, "email_frequency": 60, "monitor": False, "device_email": "fleet@example.com"}
    settings = config.parse_settings(fleet(defaults, {"a": {}, "b": {"max_sleep": 5, "monitor": True}}))
    a, b = settings.users["a"], settings.users["b"]
    assert (a.max_sleep, a.monitor, a.email_frequency, a.recipients) == (300.0, False, 60.0, ("fleet@example.com",))
    assert (b.max_sleep, b.monitor, b.email_frequency, b.recipients) == (5.0, True, 60.0, ("fleet@example.com",))


def test_a_user_with_a_schedule_takes_no_max_sleep_from_the_defaults_and_the_reverse():
    settings = config.parse_settings(fleet({"max_sleep": 300}, {"cron": {"schedule": "*/5 * * * *", "tz": "UTC"}}))
    assert (settings.users["cron"].max_sleep, settings.users["cron"].grace) == (None, config.DEFAULT_GRACE)
    # A max_sleep user takes neither the schedule nor grace nor tz, which only a schedule may have.
    defaults = {"schedule": "0 3 * * *", "grace": 60, "tz": "UTC"}
    settings = config.parse_settings(fleet(defaults, {"cam": {"max_sleep": 5}, "job": {}}))
    assert (settings.users["cam"].schedule, settings.users["cam"].grace) == (None, None)
    assert (settings.users["job"].schedule, settings.users["job"].grace) == ("0 3 * * *", 60.0)


def test_an_empty_user_without_defaults_is_still_refused_naming_its_keys():
    problems = problems_of(valid_document(users={"cam-17": {}}))
    assert "users.cam-17.monitor: missing" in problems
    assert "users.cam-17: must have exactly one of max_sleep and schedule, got neither" in problems


def test_a_bad_default_is_reported_under_the_key_path_of_each_user_that_takes_it():
    problems = problems_of(fleet({"max_sleep": "ten"}, {"a": {}, "b": {"max_sleep": 5}}))
    assert problems == ['users.a.max_sleep: must be a number >= 0, got "ten"']


def test_defaults_must_be_an_object_of_per_user_keys():
    assert problems_of(fleet([], {"a": {"monitor": True, "max_sleep": 1, "email_frequency": 1}})) == [
        "defaults: must be an object of per-user keys, got []"
    ]
    problems = problems_of(fleet({"max_sleep": 5, "colour": "red", "token": "x" * 20}, {"a": {}}))
    assert any(problem.startswith("defaults.colour: unknown key") for problem in problems)
    assert "defaults.token: cannot be a default (each user needs its own)" in problems


def test_tags_are_a_list_of_words_kept_in_order_without_repeats():
    user = {"monitor": True, "max_sleep": 1, "email_frequency": 1, "tags": ["prod", "cam", "prod"]}
    assert config.parse_settings(valid_document(users={"a": user})).users["a"].tags == ("prod", "cam")
    assert config.parse_settings(valid_document()).users["pi"].tags == ()


@pytest.mark.parametrize("tags", ["prod", ["two words"], [""], [3], ["x"] * 51])
def test_bad_tags_are_refused_naming_the_key(tags):
    user = {"monitor": True, "max_sleep": 1, "email_frequency": 1, "tags": tags}
    [problem] = problems_of(valid_document(users={"a": user}))
    assert problem.startswith("users.a.tags: ")


def test_tags_may_come_from_the_defaults():
    settings = config.parse_settings(fleet({"max_sleep": 5, "tags": ["fleet"]}, {"a": {}}))
    assert settings.users["a"].tags == ("fleet",)


@pytest.mark.parametrize(
    "top_level, problem",
    [
        ({"auto_provision": "yes"}, 'auto_provision: must be true or false, got "yes"'),
        ({"auto_provision_limit": 0}, "auto_provision_limit: must be a whole number >= 1, got 0"),
        ({"ping_key": "a/b" * 8}, "ping_key: must be a string of at least 16 characters"),
        ({"ping_key": 12345678901234567}, "ping_key: must be a string of at least 16 characters"),
    ],
)
def test_the_checks_by_program_keys_are_checked(top_level, problem):
    [reported] = problems_of(valid_document(**top_level))
    assert reported.startswith(problem)


def test_the_checks_by_program_keys_have_documented_defaults():
    settings = config.parse_settings(valid_document())
    assert (settings.auto_provision, settings.auto_provision_limit, settings.ping_key_digest) == (False, 10_000, None)


# A fleet's users that differ by name (and token) only are validated once (config._parse_users): each of them
# must still get exactly what validating it alone would give.


def test_users_with_the_same_settings_each_get_what_validating_them_alone_gives():
    # The first has a token (validated in full), the next ones share its settings with another token or none.
    tokens = {"first": "f" * 20, "other": "o" * 20}
    users = {name: {"max_sleep": 5, "token": token} for name, token in tokens.items()}
    users = {"first": users["first"], "none": {"max_sleep": 5}, "other": users["other"], "none-2": {"max_sleep": 5}}
    maintenance = [{"schedule": "0 3 * * *", "duration": 600, "tz": "UTC"}]
    settings = config.parse_settings(fleet({"email_frequency": 60}, users) | {"maintenance": maintenance})
    for name, user in users.items():
        alone = config.parse_settings(fleet({"email_frequency": 60}, {name: user}) | {"maintenance": maintenance})
        assert settings.users[name] == alone.users[name]
    assert [settings.users[name].token_digest for name in users] == [
        config.secret_digest(tokens["first"]),
        None,
        config.secret_digest(tokens["other"]),
        None,
    ]
    assert len(settings.users["none-2"].maintenance) == 1


def test_each_user_of_the_same_settings_is_checked_for_its_name_and_token():
    first = {"monitor": True, "max_sleep": 5, "email_frequency": 1, "token": "a" * 20}
    users = {
        "ok": first,
        "bad\u2028name": dict(first),
        "no-token": {**first, "token": None},
        "short": {**first, "token": "x"},
    }
    assert problems_of(valid_document(require_tokens=True, users=users)) == [
        'users."bad\\u2028name": a username must not contain line or paragraph separators (U+2028, U+2029)',
        "users.no-token.token: missing (require_tokens is true)",
        "users.short.token: must be a string of at least 16 characters without spaces or control characters",
    ]
    tokens = {"a": {**first, "token": "a" * 20}, "b": {**first, "token": "b" * 20}}
    settings = config.parse_settings(valid_document(users=tokens))
    assert settings.users["b"].token_digest == config.secret_digest("b" * 20) != settings.users["a"].token_digest


def test_settings_equal_in_python_but_not_in_json_are_validated_each():
    # 1 == 1.0 == True in Python, but `monitor` must be true or false.
    users = {
        "a": {"monitor": True, "max_sleep": 1, "email_frequency": 1},
        "b": {"monitor": 1, "max_sleep": 1, "email_frequency": 1},
    }
    assert problems_of(valid_document(users=users)) == ["users.b.monitor: must be true or false, got 1"]
