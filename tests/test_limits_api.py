"""/v1/limits changes the pacing limits in Redis, which the next reservation reads."""

from __future__ import annotations

import pytest
import redis

from workers.pacing import Pacer


@pytest.fixture(autouse=True)
def clean_limits(settings):
    redis.Redis.from_url(settings.redis_url).delete("bulksms:limits")


def test_it_shows_the_configured_limits(client):
    body = client.get("/v1/limits").get_json()
    assert body["sms_mps"] == {"value": 100_000.0, "source": "config"}
    assert body["mms_mps"] == {"value": 0.25, "source": "config"}


def test_a_change_reaches_the_next_reservation(client, settings):
    response = client.put(
        "/v1/limits", json={"sms_mps": 4, "senders": {"+14155550000": {"mms_mps": 1}}}
    )
    assert response.status_code == 200
    assert response.get_json()["sms_mps"] == {"value": 4.0, "source": "override"}

    pacer = Pacer.for_settings(settings)
    assert pacer.reserve("sms", "+14155550000", 1).mps == 4
    assert pacer.reserve("mms", "+14155550000", 1).mps == 1

    client.put("/v1/limits", json={"sms_mps": None})
    assert pacer.reserve("sms", "+14155550000", 1).mps == 100_000


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"sms_mps": -1}, "sms_mps"),
        ({"sms_mps": "fast"}, "sms_mps"),
        ({"speed": 3}, "speed"),
        ({"senders": {"X": {"sms_mps": -2}}}, "senders.X.sms_mps"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(client, payload, field):
    response = client.put("/v1/limits", json=payload)
    assert response.status_code == 400
    assert field in response.get_json()["error"]["message"]


def test_limits_need_an_api_key(app):
    assert app.test_client().get("/v1/limits").status_code == 401
