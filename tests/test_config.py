"""Settings from the environment: defaults, parsing, errors that say how to fix them."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from buttress import ConfigError, ConfigWarning, Settings
from buttress.config import FIELDS, markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_are_production_json_logging() -> None:
    """With no variables set, buttress runs in production with JSON logs and sane defaults."""
    s = Settings.from_env({})
    assert s.env == "production"
    assert s.effective_log_format == "json"
    assert s.log_level == "INFO"
    assert s.request_id_header == "X-Request-ID"
    assert s.trusted_proxies == ()
    assert s.access_log_exclude == ("/metrics",)
    assert s.rate_limit_exempt == ("/metrics",)
    assert s.sentry_status_codes == frozenset(range(500, 600))


def test_development_defaults_to_console_logs() -> None:
    """BUTTRESS_ENV=development switches the default log format to the console."""
    s = Settings.from_env({"BUTTRESS_ENV": "development"})
    assert s.effective_log_format == "console"
    assert (
        Settings.from_env(
            {"BUTTRESS_ENV": "development", "BUTTRESS_LOG_FORMAT": "json"}
        ).effective_log_format
        == "json"
    )


def test_bad_value_names_variable_value_and_accepted_values() -> None:
    """A bad value stops start-up with the variable, the value and what is accepted."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"BUTTRESS_LOG_LEVEL": "loud"})
    assert (
        "BUTTRESS_LOG_LEVEL='loud': expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        in str(info.value)
    )


def test_every_bad_variable_is_reported_at_once() -> None:
    """Several mistakes are listed together, so one restart shows them all."""
    env = {
        "BUTTRESS_ACCESS_LOG": "maybe",
        "BUTTRESS_TRUSTED_PROXIES": "10.0.0.0/8,not-an-ip",
        "BUTTRESS_RATE_LIMIT": "ten per minute",
        "BUTTRESS_METRICS_BUCKETS": "1,0.5",
        "BUTTRESS_SENTRY_STATUS_CODES": "5xx",
        "BUTTRESS_EXCEPTION_MAP": '{"nowhere.module:Nope": 409}',
        "BUTTRESS_REQUEST_ID_HEADER": "X Request",
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    problems = info.value.problems
    assert len(problems) == len(env)
    text = str(info.value)
    for key in env:
        assert key in text
    assert "'not-an-ip' is not an IP address or CIDR" in text
    assert "write it like '100/minute'" in text


def test_values_are_parsed() -> None:
    """Lists, networks, rates, maps and booleans come out as typed values."""
    s = Settings.from_env(
        {
            "BUTTRESS_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1",
            "BUTTRESS_ACCESS_LOG": "off",
            "BUTTRESS_SENTRY_STATUS_CODES": "409,500-502",
            "BUTTRESS_EXCEPTION_MAP": '{"tests.apps:UserAlreadyExists": 409}',
            "BUTTRESS_RATE_LIMITS": '{"POST /login": "10/minute"}',
            "BUTTRESS_METRICS_PATH": "",
        }
    )
    from tests.apps import UserAlreadyExists

    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "192.168.1.1/32"]
    assert s.access_log is False
    assert s.sentry_status_codes == {409, 500, 501, 502}
    assert s.exception_map == {UserAlreadyExists: 409}
    assert s.rate_limits == {"POST /login": "10/minute"}
    assert s.access_log_exclude == ()  # no metrics path, nothing excluded by default


def test_overrides_win_and_are_validated() -> None:
    """Keyword overrides beat the environment; strings are parsed, typos are named."""
    s = Settings.from_env({"BUTTRESS_LOG_LEVEL": "DEBUG"}, log_level="warning")
    assert s.log_level == "WARNING"
    with pytest.raises(ConfigError, match="did you mean 'log_level'"):
        Settings.from_env({}, log_levle="INFO")


def test_unknown_variable_warns_with_closest_name() -> None:
    """A typo in a BUTTRESS_* variable is a warning naming the closest setting."""
    with pytest.warns(ConfigWarning, match="BUTTRESS_LOG_LEVL .*did you mean BUTTRESS_LOG_LEVEL"):
        Settings.from_env({"BUTTRESS_LOG_LEVL": "INFO"})


def test_known_non_setting_variables_do_not_warn() -> None:
    """The CLI's own hand-off variable is not mistaken for a typo."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Settings.from_env({"BUTTRESS_RUN_APP": "x:y"})


def test_secrets_are_masked_in_redacted_view() -> None:
    """`buttress config` never prints the metrics token or a storage password."""
    s = Settings.from_env(
        {
            "BUTTRESS_METRICS_TOKEN": "s3cret",
            "BUTTRESS_RATE_LIMIT_STORAGE": "redis://:pw@redis:6379/0",
        }
    )
    shown = s.redacted()
    assert shown["BUTTRESS_METRICS_TOKEN"] == "***"
    assert "pw" not in shown["BUTTRESS_RATE_LIMIT_STORAGE"]
    assert shown["BUTTRESS_RATE_LIMIT_STORAGE"].startswith("redis://***@redis:6379")
    assert "s3cret" not in repr(s) and "pw@" not in repr(s)


def test_readme_configuration_table_matches_settings() -> None:
    """The README's configuration table is exactly the one generated from Settings."""
    text = README.read_text()
    match = re.search(r"<!-- config-table -->\n(.*?)\n<!-- /config-table -->", text, re.S)
    assert match, "README.md lost its configuration table markers"
    assert match.group(1) == markdown_table()


def test_every_field_is_a_settings_attribute() -> None:
    """Each documented variable maps to one Settings attribute and back."""
    import dataclasses

    assert [f.name for f in FIELDS] == [f.name for f in dataclasses.fields(Settings)]
