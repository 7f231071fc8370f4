"""A broadcast is never completed while an operator's retry is committing new batches."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import select, update

from shared import lifecycle
from shared.db import session_scope
from shared.models import Batch, Broadcast, Recipient
from workers import batches

NUMBERS = [f"+1415555{i:04d}" for i in range(1, 21)]


@pytest.fixture()
def failed_broadcast(client, settings) -> uuid.UUID:
    """A broadcast still `sending` whose only batch failed: it looks finished."""
    response = client.post("/v1/broadcasts", json={"recipients": NUMBERS, "text": "Hi"})
    broadcast_id = uuid.UUID(response.get_json()["id"])
    with session_scope(settings.database_url) as session:
        session.execute(update(Batch).values(status="failed"))
        session.execute(update(Recipient).values(status="failed", error_reason="HTTP 400"))
        session.execute(update(Broadcast).values(status="sending"))
    return broadcast_id


def test_completion_waits_for_a_retry_holding_the_broadcast(settings, failed_broadcast):
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("row locks: PostgreSQL; SQLite serialises writers")
    retried = threading.Event()
    commit = threading.Event()
    outcome: dict = {}

    def operator_retry():
        with session_scope(settings.database_url) as session:
            outcome["plan"] = lifecycle.retry(session, failed_broadcast, ["failed"], settings)
            retried.set()
            commit.wait(10)

    def reconciler_finish():
        with session_scope(settings.database_url) as session:
            outcome["finished"] = batches.finish_broadcast_if_done(session, failed_broadcast, False)

    operator = threading.Thread(target=operator_retry)
    operator.start()
    assert retried.wait(10)
    finisher = threading.Thread(target=reconciler_finish)
    finisher.start()
    finisher.join(1.0)
    assert finisher.is_alive(), "completion must wait for the retry's transaction"
    commit.set()
    operator.join(10)
    finisher.join(10)

    assert outcome["plan"].retried == len(NUMBERS)
    assert outcome["finished"] is None
    with session_scope(settings.database_url) as session:
        assert session.get(Broadcast, failed_broadcast).status == "sending"
        assert session.scalars(select(Batch.status).order_by(Batch.seq)).all() == [
            "failed",
            "pending",
        ]


def test_completion_after_the_retry_committed_sees_its_batches(settings, failed_broadcast):
    with session_scope(settings.database_url) as session:
        lifecycle.retry(session, failed_broadcast, ["failed"], settings)
    with session_scope(settings.database_url) as session:
        assert batches.finish_broadcast_if_done(session, failed_broadcast, False) is None
        assert session.get(Broadcast, failed_broadcast).status == "sending"


def test_a_finished_broadcast_is_still_completed(settings, failed_broadcast):
    with session_scope(settings.database_url) as session:
        status = batches.finish_broadcast_if_done(session, failed_broadcast, False)

    assert status == "completed_with_failures"
