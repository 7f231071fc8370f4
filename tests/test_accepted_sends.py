"""Once Plivo has accepted a batch, its uuids survive a database that fails the next write."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from shared.db import get_engine, session_scope
from shared.logs import json_formatter
from shared.models import Batch, Recipient
from tests.conftest import sandbox_stats
from workers.sending import deliver_batch

NUMBERS = [f"+1415555{i:04d}" for i in range(1, 51)]


@pytest.fixture()
def batch_id(client, settings) -> int:
    response = client.post("/v1/broadcasts", json={"recipients": NUMBERS, "text": "Hello"})
    assert response.status_code == 202
    with session_scope(settings.database_url) as session:
        return session.scalar(select(Batch.id))


class FailingWrites:
    """Fails the first `times` writes of a submitted batch (the only UPDATE that sets
    api_id), as a database restart or failover would, at the driver boundary."""

    def __init__(self, database_url: str, times: int):
        self.engine = get_engine(database_url)
        self.left = times
        self.failed = 0

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._maybe_fail)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._maybe_fail)

    def _maybe_fail(self, conn, cursor, statement, parameters, context, executemany):
        if self.left and statement.startswith("UPDATE batches") and "api_id" in statement:
            self.left -= 1
            self.failed += 1
            raise OperationalError(statement, parameters, ConnectionError("server closed"))


def test_the_write_after_plivo_accepted_is_retried_until_it_lands(settings, batch_id, caplog):
    caplog.set_level(logging.INFO, logger="workers.sending")
    with FailingWrites(settings.database_url, times=2) as faults:
        outcome = deliver_batch(settings, batch_id)

    assert faults.failed == 2
    assert outcome["outcome"] == "submitted"
    with session_scope(settings.database_url) as session:
        assert session.get(Batch, batch_id).status == "submitted"
        rows = session.execute(select(Recipient.id, Recipient.status, Recipient.message_uuid))
        recorded = {rid: uuid_ for rid, status, uuid_ in rows if status == "queued"}
    assert len(recorded) == len(NUMBERS)
    stats = sandbox_stats(settings.sandbox_url)
    assert (stats["messages"], stats["duplicates"]) == (len(NUMBERS), 0)
    # The map was logged before the first write: the record of last resort, as the JSON
    # line the worker writes.
    lines = [json.loads(json_formatter().format(record)) for record in caplog.records]
    accepted = [line for line in lines if line["event"] == "batch.accepted"]
    assert len(accepted) == 1
    logged = json.loads(accepted[0]["uuids"])
    assert {int(rid): uuid_ for rid, uuid_ in logged.items()} == recorded
    retries = [line for line in lines if line["event"] == "batch.record_retry"]
    assert len(retries) == 2


def test_a_database_that_stays_away_leaves_the_batch_for_the_reconciler(settings, batch_id):
    short = settings.model_copy(update={"lease_seconds": 12.0, "plivo_timeout": 5.0})
    with FailingWrites(settings.database_url, times=10_000), pytest.raises(OperationalError):
        deliver_batch(short, batch_id)

    with session_scope(settings.database_url) as session:
        # Still `submitting`: after its lease the reconciler marks it `unknown`, and the
        # resolver finds its messages in Plivo's list. Nothing was sent twice.
        assert session.get(Batch, batch_id).status == "submitting"
    assert sandbox_stats(settings.sandbox_url)["messages"] == len(NUMBERS)
