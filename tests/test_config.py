"""Settings: sandbox mode without credentials, and start-up failures that name the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.config import ConfigError, load_settings
from tests.conftest import ROOT

LIVE = {"plivo_auth_id": "MA" + "A" * 18, "plivo_auth_token": "tok-9f8e7d", "api_keys": "k1"}


def test_without_credentials_it_runs_in_sandbox_mode():
    settings = load_settings(_env_file=None)

    assert settings.sandbox_mode
    assert settings.plivo_base_url == settings.sandbox_url
    assert settings.effective_api_keys == ["dev-key"]
    assert settings.default_sender == "+14155550000"


def test_with_credentials_it_talks_to_plivo():
    settings = load_settings(_env_file=None, **LIVE)

    assert not settings.sandbox_mode
    assert settings.plivo_base_url == "https://api.plivo.com"
    assert settings.effective_api_keys == ["k1"]
    assert settings.effective_sms_mps == 5.0


def test_api_keys_are_read_as_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("API_KEYS", " a , b,")
    assert load_settings(_env_file=None).api_keys == ["a", "b"]


@pytest.mark.parametrize(
    "values, variable",
    [
        ({"batch_size": 5000}, "BATCH_SIZE"),
        ({"batch_size": 0}, "BATCH_SIZE"),
        ({"sms_mps": -1}, "SMS_MPS"),
        ({"plivo_auth_id": "nope", "plivo_auth_token": "x", "api_keys": "k"}, "PLIVO_AUTH_ID"),
        ({"plivo_auth_id": "MA" + "A" * 18}, "PLIVO_AUTH_TOKEN"),
        ({**LIVE, "api_keys": ""}, "API_KEYS"),
        ({"plivo_sender": "+1"}, "PLIVO_SENDER"),
        ({"database_url": "mysql://x"}, "DATABASE_URL"),
        ({"redis_url": "localhost:6379"}, "REDIS_URL"),
        ({"public_base_url": "example.com"}, "PUBLIC_BASE_URL"),
        ({"default_region": "XX"}, "DEFAULT_REGION"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(values, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(_env_file=None, **values)


def test_the_start_up_check_exits_with_the_variable_named():
    env = {"PATH": "/usr/bin:/bin", "BATCH_SIZE": "abc", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "shared.config"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "BATCH_SIZE" in result.stderr


def test_the_start_up_check_announces_sandbox_mode():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "shared.config"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "SANDBOX MODE" in result.stdout


def test_the_token_never_appears_in_the_settings_repr():
    assert "tok-9f8e7d" not in repr(load_settings(_env_file=None, **LIVE))
