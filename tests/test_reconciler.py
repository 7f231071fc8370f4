"""The reconciler's transitions, one pass at a time, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from sqlalchemy import select, update

from shared.db import session_scope
from shared.models import Batch, Broadcast, Recipient, utcnow
from tests.test_intake_api import queued_tasks
from workers import batches
from workers.reconciler import reconcile

NUMBERS = [f"+1415555{i:04d}" for i in range(1, 1201)]
LEASE = timedelta(minutes=5)


@pytest.fixture()
def broadcast(client, settings):
    """Two pending batches, their tasks cleared from the broker (as if lost)."""
    response = client.post("/v1/broadcasts", json={"recipients": NUMBERS, "text": "Reconcile"})
    redis.Redis.from_url(settings.redis_url).delete("sms")
    return response.get_json()["id"]


def batch_rows(database_url):
    with session_scope(database_url) as session:
        return session.execute(
            select(Batch.id, Batch.status, Batch.enqueued_at, Batch.claim_token).order_by(Batch.seq)
        ).all()


def set_batches(database_url, **values):
    with session_scope(database_url) as session:
        session.execute(update(Batch).values(**values))


def test_it_leaves_freshly_enqueued_batches_alone(settings, broadcast):
    assert reconcile(settings)["enqueued"] == 0
    assert queued_tasks(settings.redis_url) == []


def test_it_enqueues_batches_the_broker_never_got(settings, broadcast):
    set_batches(settings.database_url, enqueued_at=None)

    assert reconcile(settings)["enqueued"] == 2
    assert len(queued_tasks(settings.redis_url)) == 2
    assert all(row.enqueued_at is not None for row in batch_rows(settings.database_url))
    # The next pass knows a task exists now.
    assert reconcile(settings)["enqueued"] == 0


def test_it_re_enqueues_a_task_lost_long_ago(settings, broadcast):
    long_ago = utcnow() - timedelta(seconds=settings.requeue_after + 1)
    set_batches(settings.database_url, enqueued_at=long_ago)

    assert reconcile(settings)["enqueued"] == 2


def test_it_waits_for_a_batchs_slot(settings, broadcast):
    set_batches(settings.database_url, enqueued_at=None, not_before=utcnow() + timedelta(hours=1))
    assert reconcile(settings)["enqueued"] == 0

    set_batches(settings.database_url, not_before=utcnow() - timedelta(seconds=1))
    assert reconcile(settings)["enqueued"] == 2


def test_it_does_not_enqueue_batches_of_a_paused_broadcast(settings, broadcast):
    set_batches(settings.database_url, enqueued_at=None)
    with session_scope(settings.database_url) as session:
        session.execute(update(Broadcast).values(status="paused"))

    assert reconcile(settings)["enqueued"] == 0


def test_an_expired_claim_is_released_and_the_old_worker_fenced_out(settings, broadcast):
    first = batch_rows(settings.database_url)[0].id
    with session_scope(settings.database_url) as session:
        token = batches.claim_batch(session, first, timedelta(seconds=-1))

    counts = reconcile(settings)

    assert counts["released"] == 1
    row = batch_rows(settings.database_url)[0]
    assert row.status == "pending"
    assert row.claim_token is None
    with session_scope(settings.database_url) as session:
        assert batches.mark_submitting(session, first, token, LEASE) is False
    assert counts["enqueued"] == 1  # released, so it gets a task straight away


def test_a_stale_submission_becomes_unknown_and_is_never_resent(settings, broadcast):
    first, second = (row.id for row in batch_rows(settings.database_url))
    with session_scope(settings.database_url) as session:
        token = batches.claim_batch(session, first, LEASE)
        batches.mark_submitting(session, first, token, timedelta(seconds=-1))

    assert reconcile(settings)["unknown"] == 1
    with session_scope(settings.database_url) as session:
        row = session.get(Batch, first)
        assert row.status == "unknown"
        # Looked up in Plivo's message list once the attempt is old enough.
        assert row.submitting_at is not None
        assert row.resolve_after >= utcnow() + timedelta(
            seconds=settings.unknown_resolve_after - 5
        )
        assert row.resolved_at is None
        unknown = session.scalars(
            select(Recipient.error_reason).where(Recipient.batch_id == first)
        ).all()
        statuses = set(session.scalars(select(Recipient.status).where(Recipient.batch_id == first)))
    assert statuses == {"unknown"}
    assert "may or may not" in unknown[0]
    assert reconcile(settings)["unknown"] == 0
    set_batches(settings.database_url, enqueued_at=None)
    reconcile(settings)
    tasks = queued_tasks(settings.redis_url)
    assert [task["headers"]["kwargsrepr"] for task in tasks] == [
        repr({"batch_id": second, "broadcast_id": broadcast})
    ]


def test_it_completes_a_broadcast_whose_batches_are_all_final(settings, broadcast):
    # `unknown` and resolved: Plivo could not be asked, for good.
    set_batches(settings.database_url, status="unknown", resolved_at=utcnow())
    with session_scope(settings.database_url) as session:
        session.execute(update(Broadcast).values(status="sending"))
        session.execute(update(Recipient).values(status="unknown"))

    reconcile(settings)

    with session_scope(settings.database_url) as session:
        assert session.scalar(select(Broadcast.status)) == "completed_with_failures"


def test_an_unknown_batch_still_to_be_resolved_keeps_its_broadcast_open(settings, broadcast):
    # Its resolution may find it unsent and hand it back to `pending`.
    set_batches(settings.database_url, status="unknown")
    with session_scope(settings.database_url) as session:
        session.execute(update(Broadcast).values(status="sending"))
        session.execute(update(Recipient).values(status="unknown"))

    reconcile(settings)

    with session_scope(settings.database_url) as session:
        assert session.scalar(select(Broadcast.status)) == "sending"
