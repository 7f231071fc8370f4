"""A real Celery worker process sends a broadcast through the sandbox over HTTP."""

from __future__ import annotations

from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Recipient
from tests.conftest import sandbox_stats, wait_for

NUMBERS = [f"+1415555{i:04d}" for i in range(1, 2501)]


def _all_queued(client, location, total):
    body = client.get(location).get_json()
    return body if body["recipients"]["by_status"].get("queued") == total else None


def _completed(client, location):
    body = client.get(location).get_json()
    return body if body["status"] == "completed" else None


def test_a_worker_sends_2500_recipients_each_exactly_once(client, settings, worker, sandbox):
    response = client.post("/v1/broadcasts", json={"recipients": NUMBERS, "text": "E2E hello"})
    assert response.status_code == 202

    wait_for(
        lambda: _all_queued(client, response.headers["Location"], 2500),
        timeout=90,
        message=f"recipients never all queued; worker log:\n{worker.log_tail()}",
    )
    # The broadcast is completed in the transaction just after the last batch's record.
    body = wait_for(
        lambda: _completed(client, response.headers["Location"]),
        timeout=30,
        message=f"never completed; worker log:\n{worker.log_tail()}",
    )
    assert body["recipients"]["by_status"] == {"queued": 2500}
    assert body["batches"] == {"total": 3, "by_status": {"submitted": 3}}
    with session_scope(settings.database_url) as session:
        distinct_uuids = session.scalar(select(func.count(func.distinct(Recipient.message_uuid))))
        missing_uuid = session.scalar(
            select(func.count()).select_from(Recipient).where(Recipient.message_uuid.is_(None))
        )
    assert distinct_uuids == 2500
    assert missing_uuid == 0
    stats = sandbox_stats(sandbox)
    assert stats["requests"] == 3
    assert stats["duplicates"] == 0
    assert stats["sends"] == {number[1:]: 1 for number in NUMBERS}


def test_a_retried_post_is_sent_once(client, settings, worker, sandbox):
    payload = {"recipients": NUMBERS[:1500], "text": "Idempotent hello"}
    headers = {"Idempotency-Key": "e2e-retry"}
    first = client.post("/v1/broadcasts", json=payload, headers=headers)
    wait_for(
        lambda: _all_queued(client, first.headers["Location"], 1500),
        timeout=90,
        message=f"first broadcast not sent; worker log:\n{worker.log_tail()}",
    )
    again = client.post("/v1/broadcasts", json=payload, headers=headers)

    assert again.get_json()["id"] == first.get_json()["id"]
    stats = sandbox_stats(sandbox)
    assert stats["messages"] == 1500
    assert stats["duplicates"] == 0


def test_numbers_plivo_calls_invalid_are_rejected_and_the_rest_queued(
    client, settings, worker, sandbox
):
    import requests

    requests.post(
        f"{sandbox}/sandbox/config", json={"invalid_prefixes": ["1415555000"]}, timeout=5
    ).raise_for_status()
    response = client.post("/v1/broadcasts", json={"recipients": NUMBERS[:20], "text": "Hi"})

    def settled():
        body = client.get(response.headers["Location"]).get_json()
        return body if body["status"].startswith("completed") else None

    body = wait_for(settled, timeout=60, message=worker.log_tail())
    # +14155550001..+14155550009 match the prefix; 0010..0020 do not.
    assert body["recipients"]["by_status"] == {"rejected": 9, "queued": 11}
    assert body["status"] == "completed_with_failures"
