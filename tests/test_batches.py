"""The batch state machine and one attempt at a batch, in-process against the sandbox."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

from shared.db import session_scope
from shared.models import Batch, Broadcast, OptOut, Recipient
from tests.conftest import sandbox_stats
from workers import batches
from workers.sending import deliver_batch

LEASE = timedelta(minutes=5)
NUMBERS = [f"+1415555{i:04d}" for i in range(1, 1201)]


@pytest.fixture()
def broadcast(client):
    """A 1,200-recipient broadcast (two batches) created through the API."""
    response = client.post("/v1/broadcasts", json={"recipients": NUMBERS, "text": "Batch test"})
    assert response.status_code == 202
    return response.get_json()["id"]


def batch_ids(database_url: str) -> list[int]:
    with session_scope(database_url) as session:
        return list(session.scalars(select(Batch.id).order_by(Batch.seq)))


def statuses(database_url: str, model) -> dict[str, int]:
    with session_scope(database_url) as session:
        rows = session.scalars(select(model.status)).all()
    return {status: rows.count(status) for status in set(rows)}


def test_a_batch_can_be_claimed_once(settings, broadcast):
    first = batch_ids(settings.database_url)[0]
    with session_scope(settings.database_url) as session:
        token = batches.claim_batch(session, first, LEASE)
    with session_scope(settings.database_url) as session:
        again = batches.claim_batch(session, first, LEASE)

    assert token is not None
    assert again is None
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(Broadcast.status)) == "sending"


def test_a_stale_claim_token_cannot_move_the_batch(settings, broadcast):
    first = batch_ids(settings.database_url)[0]
    with session_scope(settings.database_url) as session:
        batches.claim_batch(session, first, LEASE)
    with session_scope(settings.database_url) as session:
        assert batches.mark_submitting(session, first, "not-the-token", LEASE) is False
        assert session.get(Batch, first).status == "claimed"


def test_batches_of_a_paused_broadcast_are_not_claimed(settings, broadcast):
    with session_scope(settings.database_url) as session:
        session.execute(update(Broadcast).values(status="paused"))
    outcome = deliver_batch(settings, batch_ids(settings.database_url)[0])

    assert outcome["outcome"] == "not_claimed"
    assert sandbox_stats(settings.sandbox_url)["requests"] == 0


def test_a_duplicate_task_sends_nothing_twice(settings, broadcast, sandbox):
    first, second = batch_ids(settings.database_url)

    assert deliver_batch(settings, first)["outcome"] == "submitted"
    assert deliver_batch(settings, first)["outcome"] == "not_claimed"
    assert deliver_batch(settings, second)["outcome"] == "submitted"

    stats = sandbox_stats(sandbox)
    assert stats["messages"] == 1200
    assert stats["duplicates"] == 0
    assert statuses(settings.database_url, Recipient) == {"queued": 1200}
    assert statuses(settings.database_url, Batch) == {"submitted": 2}
    assert statuses(settings.database_url, Broadcast) == {"completed": 1}


def test_someone_who_opts_out_after_intake_is_not_texted(settings, broadcast, sandbox):
    with session_scope(settings.database_url) as session:
        session.add(OptOut(phone=NUMBERS[0], source="test"))
    deliver_batch(settings, batch_ids(settings.database_url)[0])

    assert NUMBERS[0][1:] not in sandbox_stats(sandbox)["sends"]
    with session_scope(settings.database_url) as session:
        skipped = session.scalar(select(Recipient).where(Recipient.phone == NUMBERS[0]))
    assert (skipped.status, skipped.error_reason) == ("skipped", "opted out")


def test_an_unreachable_plivo_leaves_the_batch_pending_for_a_retry(settings, broadcast):
    from tests.services import free_port
    from workers.sending import RetryLater

    down = settings.model_copy(update={"sandbox_url": f"http://127.0.0.1:{free_port()}"})
    first = batch_ids(settings.database_url)[0]
    with pytest.raises(RetryLater):
        deliver_batch(down, first)

    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, first)
        assert batch.status == "pending"
        assert batch.claim_token is None
        assert batch.enqueued_at is not None  # Celery's retry is its task
        assert "ConnectionError" in batch.last_error
    # Retries exhausted: the batch fails visibly, with the last error on every recipient.
    outcome = deliver_batch(down, first, attempt=99)
    assert outcome["outcome"] == "failed"
    with session_scope(settings.database_url) as session:
        reasons = set(
            session.scalars(select(Recipient.error_reason).where(Recipient.batch_id == first))
        )
        assert len(reasons) == 1 and "ConnectionError" in reasons.pop()


def test_an_account_error_pauses_the_broadcast_and_keeps_the_batch(settings, broadcast):
    # A live-account configuration aimed at the sandbox, whose Basic auth check answers a
    # wrong token with 401 as Plivo does.
    wrong_token = settings.model_copy(
        update={
            "plivo_auth_id": "MASANDBOX00000000000",
            "plivo_auth_token": SecretStr("wrong-token"),
            "plivo_api_base_url": settings.sandbox_url,
        }
    )
    assert not wrong_token.sandbox_mode
    outcome = deliver_batch(wrong_token, batch_ids(settings.database_url)[0])

    assert outcome["outcome"] == "paused"
    with session_scope(settings.database_url) as session:
        broadcast_row = session.scalar(select(Broadcast))
        assert broadcast_row.status == "paused"
        assert "401" in broadcast_row.status_reason
    assert statuses(settings.database_url, Batch) == {"pending": 2}
    assert statuses(settings.database_url, Recipient) == {"pending": 1200}


def test_a_batch_far_from_its_slot_is_handed_back_and_sent_on_time(client, settings, sandbox):
    import time

    import redis as redis_lib
    import requests

    from shared.taskqueue import SMS_QUEUE

    redis_lib.Redis.from_url(settings.redis_url).delete("bulksms:pace:sms:+14155550000")
    paced = settings.model_copy(update={"sms_mps": 250})  # 1000 messages = 4 s
    broadcast_id = client.post(
        "/v1/broadcasts", json={"recipients": NUMBERS, "text": "Paced"}
    ).get_json()["id"]
    first, second = batch_ids(settings.database_url)
    broker = redis_lib.Redis.from_url(settings.redis_url)
    broker.delete(SMS_QUEUE)

    assert deliver_batch(paced, first)["outcome"] == "submitted"
    deferred = deliver_batch(paced, second)
    assert deferred["outcome"] == "deferred" and 3.5 < deferred["wait"] <= 4.0
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, second)
        assert (batch.status, batch.claim_token) == ("pending", None)
        assert batch.not_before is not None and batch.enqueued_at is not None
    assert len(broker.lrange(SMS_QUEUE, 0, -1)) == 1  # its own countdown task
    # Too early: not due yet, nothing is reserved twice.
    assert deliver_batch(paced, second)["outcome"] == "not_claimed"
    # Its task arrives PACING_LEAD ahead of the slot; the worker sleeps the rest.
    time.sleep(deferred["wait"] - paced.pacing_lead + 0.05)
    assert deliver_batch(paced, second)["outcome"] == "submitted"

    times = [entry["t"] for entry in requests.get(f"{sandbox}/stats/requests").json()]
    assert times[1] - times[0] == pytest.approx(4.0, abs=0.25)
    with session_scope(settings.database_url) as session:
        assert session.get(Broadcast, uuid.UUID(broadcast_id)).status == "completed"


def test_without_redis_for_pacing_the_batch_is_handed_back_not_held(settings, broadcast):
    from tests.services import free_port

    no_redis = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    first = batch_ids(settings.database_url)[0]

    assert deliver_batch(no_redis, first)["outcome"] == "pacing_unavailable"
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, first)
        assert (batch.status, batch.claim_token, batch.enqueued_at) == ("pending", None, None)
        assert "ConnectionError" in batch.last_error
    assert sandbox_stats(settings.sandbox_url)["requests"] == 0
