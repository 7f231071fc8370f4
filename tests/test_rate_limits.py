"""Request limits (Flask-Limiter on the real Redis): per API key, on failed authentication per
client address, never on Plivo's webhooks or the health checks, and no outage when Redis is."""

from __future__ import annotations

import time
import uuid

import pytest

from shared.config import ConfigError, Settings, load_settings
from tests.conftest import API_KEY
from tests.services import free_port
from tests.test_webhooks import INBOUND_URL, PUBLIC, STATUS_URL, signed_headers

DEFAULT_API_RATE_LIMIT = Settings.model_fields["api_rate_limit"].default
DEFAULT_AUTH_FAILURE_LIMIT = Settings.model_fields["auth_failure_limit"].default


def app_with(settings, **limits):
    from api import create_app

    return create_app(settings.model_copy(update=limits))


def keyed(app, key: str = API_KEY, address: str = "198.51.100.1"):
    client = app.test_client()
    client.environ_base.update(HTTP_X_API_KEY=key, REMOTE_ADDR=address)
    return client


def test_the_defaults_are_the_documented_ones():
    assert DEFAULT_API_RATE_LIMIT == "20/second;600/minute"
    assert DEFAULT_AUTH_FAILURE_LIMIT == "10/minute"


@pytest.mark.parametrize("name", ["api_rate_limit", "auth_failure_limit"])
@pytest.mark.parametrize("value", ["fast", "0/second", "", "20/fortnight"])
def test_a_limit_that_does_not_parse_is_refused_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name.upper()):
        load_settings(_env_file=None, **{name: value})


def test_a_key_past_its_limit_gets_429_with_retry_after_and_ratelimit_headers(settings):
    client = keyed(app_with(settings, api_rate_limit="3/minute"))

    answers = [client.get("/v1/broadcasts") for _ in range(4)]

    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["2", "1", "0", "0"]
    assert all(r.headers["RateLimit-Limit"] == "3" for r in answers)
    assert all(0 <= int(r.headers["RateLimit-Reset"]) <= 60 for r in answers)
    # Retry-After belongs to the refusal alone.
    assert [("Retry-After" in r.headers) for r in answers] == [False, False, False, True]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    error = answers[-1].get_json()["error"]
    assert error["code"] == "rate_limited"
    assert "API_RATE_LIMIT" in error["message"]


def test_the_default_limit_refuses_the_21st_request_in_a_second(settings):
    client = keyed(app_with(settings, api_rate_limit=DEFAULT_API_RATE_LIMIT))

    answers = []
    # A fixed one-second window opens at its first request: 20 pass, then 429 until it ends
    # (a slow machine may need a second window, hence more than 21 tries at most).
    for _ in range(200):
        answers.append(client.get("/v1/limits"))
        if answers[-1].status_code == 429:
            break

    refused = answers[-1]
    assert refused.status_code == 429
    assert refused.headers["RateLimit-Limit"] == "20"
    assert int(refused.headers["Retry-After"]) <= 1
    assert answers[0].headers["RateLimit-Remaining"] == "19"


def test_each_key_has_its_own_count_and_admin_keys_are_limited_too(settings, client):
    created = client.post("/v1/keys", json={"name": "app", "scopes": ["send", "read"]})
    app = app_with(settings, api_rate_limit="2/minute", api_keys=[API_KEY, "second-admin"])
    admin, other_admin = keyed(app), keyed(app, "second-admin")
    stored = keyed(app, created.get_json()["key"])

    assert [admin.get("/v1/broadcasts").status_code for _ in range(3)] == [200, 200, 429]
    assert [stored.get("/v1/broadcasts").status_code for _ in range(3)] == [200, 200, 429]
    assert other_admin.get("/v1/broadcasts").status_code == 200


def test_every_api_process_shares_one_count_in_redis(settings):
    # Two app instances stand for two API workers (granian processes) on one Redis.
    first = keyed(app_with(settings, api_rate_limit="3/minute"))
    second = keyed(app_with(settings, api_rate_limit="3/minute"))

    statuses = [c.get("/v1/broadcasts").status_code for c in (first, second, first, second)]

    assert statuses == [200, 200, 200, 429]


def test_failed_authentication_is_limited_per_address(settings):
    app = app_with(settings, auth_failure_limit="3/minute")
    guesser = keyed(app, "guess", address="203.0.113.7")
    same_address = keyed(app, API_KEY, address="203.0.113.7")
    elsewhere = keyed(app, API_KEY, address="203.0.113.8")

    guesses = [guesser.get("/v1/broadcasts").status_code for _ in range(4)]
    refused = same_address.get("/v1/broadcasts")

    assert guesses == [401, 401, 401, 429]
    # Even the right key is refused from there now: otherwise 429-or-200 would still tell a
    # guesser which guess was right.
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert "AUTH_FAILURE_LIMIT" in refused.get_json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert elsewhere.get("/v1/broadcasts").status_code == 200
    assert keyed(app, "guess", address="203.0.113.8").get("/v1/broadcasts").status_code == 401


def test_a_missing_key_counts_as_a_failure_and_good_requests_do_not(settings):
    app = app_with(settings, auth_failure_limit="2/minute")
    good = keyed(app)
    anonymous = app.test_client()

    assert [good.get("/v1/broadcasts").status_code for _ in range(5)] == [200] * 5
    assert [anonymous.get("/v1/limits").status_code for _ in range(3)] == [401, 401, 429]


def test_default_failed_authentication_limit_is_ten_a_minute(settings):
    guesser = keyed(app_with(settings, auth_failure_limit=DEFAULT_AUTH_FAILURE_LIMIT), "guess")

    statuses = [guesser.get("/v1/broadcasts").status_code for _ in range(11)]

    assert statuses == [401] * 10 + [429]


def test_webhooks_and_health_checks_are_never_limited(settings):
    app = app_with(
        settings, api_rate_limit="1/minute", auth_failure_limit="1/minute", public_base_url=PUBLIC
    )
    hooks = app.test_client()

    for _ in range(5):
        health = hooks.get("/healthz")
        params = {
            "From": "14155550199",
            "To": "14155550000",
            "Text": "hello",
            "Type": "sms",
            "MessageUUID": uuid.uuid4().hex,
        }
        inbound = hooks.post(
            "/webhooks/plivo/inbound", data=params, headers=signed_headers(INBOUND_URL, params)
        )
        report = {"MessageUUID": uuid.uuid4().hex, "Status": "delivered", "To": "14155550101"}
        status = hooks.post(
            "/webhooks/plivo/status", data=report, headers=signed_headers(STATUS_URL, report)
        )
        unsigned = hooks.post("/webhooks/plivo/inbound", data=params)
        for response in (health, inbound, status):
            assert response.status_code == 200
            assert "RateLimit-Limit" not in response.headers
        assert unsigned.status_code == 403
    assert hooks.get("/readyz").status_code == 200


def test_an_unreachable_redis_does_not_take_the_api_down(settings):
    no_redis = f"redis://127.0.0.1:{free_port()}/0"
    client = keyed(app_with(settings, redis_url=no_redis, api_rate_limit="2/minute"))

    started = time.monotonic()
    statuses = [client.get("/v1/broadcasts").status_code for _ in range(3)]

    # Counted in the process's memory meanwhile: still limited, never a 500.
    assert statuses == [200, 200, 429]
    assert time.monotonic() - started < 5
