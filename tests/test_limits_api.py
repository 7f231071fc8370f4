"""/v1/limits changes the pacing limits in Redis, which the next reservation reads."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import redis
from sqlalchemy import select, update

from shared.db import session_scope
from shared.models import Batch, utcnow
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
    # The sender's own MMS limit holds together with the account's (0.25): the tighter wins.
    mms = pacer.reserve("mms", "+14155550000", 1)
    assert (mms.sender_mps, mms.account_mps, mms.mps) == (1, 0.25, 0.25)

    client.put("/v1/limits", json={"sms_mps": None})
    assert pacer.reserve("sms", "+14155550000", 1).mps == 100_000


def test_a_change_wakes_the_batches_waiting_unbooked(client, settings):
    numbers = [f"+1415555{n:04d}" for n in range(1, 4)]  # real US numbers, for the MMS

    def create(path: str, **body) -> uuid.UUID:
        response = client.post(path, json={"recipients": numbers, **body})
        assert response.status_code == 202, response.get_json()
        return uuid.UUID(response.get_json()["id"])

    booked = create("/v1/broadcasts", text="Booked")
    waiting = create("/v1/broadcasts", text="Waiting")
    mms = create("/v1/mms", media_urls=["https://example.com/a.png"])
    later = utcnow() + timedelta(minutes=5)
    with session_scope(settings.database_url) as session:
        # All wait for a slot: one has booked it, the others only hold an estimate.
        session.execute(update(Batch).values(not_before=later, enqueued_at=utcnow()))
        session.execute(update(Batch).where(Batch.broadcast_id == booked).values(slot_at=later))

    assert client.put("/v1/limits", json={"sms_mps": 50}).status_code == 200

    def due(broadcast_id: uuid.UUID) -> set:
        with session_scope(settings.database_url) as session:
            rows = session.execute(
                select(Batch.not_before, Batch.enqueued_at).where(
                    Batch.broadcast_id == broadcast_id
                )
            ).all()
        return {(not_before is None, enqueued_at is None) for not_before, enqueued_at in rows}

    # The unbooked SMS batch is due at once and left for the reconciler to send to book
    # again; the booked one keeps its slot; MMS limits did not change.
    assert due(waiting) == {(True, True)}
    assert due(booked) == {(False, False)}
    assert due(mms) == {(False, False)}


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
