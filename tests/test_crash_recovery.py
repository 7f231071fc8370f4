"""SIGKILL a worker mid-broadcast: another worker and beat finish it, nobody texted twice."""

from __future__ import annotations

from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Batch, Recipient
from tests.conftest import Beat, Worker, sandbox_stats, wait_for

NUMBERS = [f"+1415{i:07d}" for i in range(1, 10_001)]


def submitted_batches(database_url: str) -> int:
    with session_scope(database_url) as session:
        return session.scalar(
            select(func.count()).select_from(Batch).where(Batch.status == "submitted")
        )


def test_a_killed_worker_loses_nobody_and_texts_nobody_twice(client, settings, sandbox, tmp_path):
    # 10 batches paced 0.5 s apart, short leases so recovery fits in a test.
    paced = settings.model_copy(
        update={
            "sms_mps": 2000,
            "plivo_timeout": 5,
            "lease_seconds": 10,
            "requeue_after": 4,
            "reconcile_interval": 1,
            # A batch caught inside its Plivo call is `unknown`, then looked up in Plivo's
            # message list a second later (the sandbox's list limit is the real 20/min).
            "unknown_resolve_after": 1,
        }
    )
    first = Worker(paced, tmp_path / "first.log", name="doomed")
    try:
        first.wait_ready()
        response = client.post("/v1/broadcasts", json={"recipients": NUMBERS, "text": "Crash"})
        assert response.status_code == 202
        wait_for(lambda: submitted_batches(paced.database_url) >= 2, timeout=60)
        first.kill()
    finally:
        first.stop()
    killed_after = submitted_batches(paced.database_url)

    second = Worker(paced, tmp_path / "second.log", queues="sms,maintenance", name="rescue")
    beat = Beat(paced, tmp_path)
    try:
        second.wait_ready()

        def finished():
            body = client.get(response.headers["Location"]).get_json()
            return body if body["status"].startswith("completed") else None

        body = wait_for(finished, timeout=120, message=second.log_tail())
    finally:
        second.stop()
        beat.stop()

    assert killed_after < 10, "the kill came too late to test recovery"
    with session_scope(paced.database_url) as session:
        rows = session.execute(select(Recipient.phone, Recipient.status)).all()
    sends = sandbox_stats(sandbox)["sends"]
    lost = [phone for phone, status in rows if status != "queued"]
    twice = [number for number, count in sends.items() if count > 1]
    not_sent = [p for p, status in rows if status == "queued" and sends.get(p[1:]) != 1]
    assert lost == []
    assert twice == []
    assert not_sent == []
    assert body["recipients"]["total"] == 10_000
