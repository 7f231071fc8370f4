"""Operators: list and inspect broadcasts, page and export recipients, pause, resume, cancel,
retry and schedule, through the API (and real workers where timing matters)."""

from __future__ import annotations

import csv
import io
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from shared.db import session_scope
from shared.models import Batch, Broadcast, OptOut, Recipient, as_utc
from tests.conftest import Beat, Worker, sandbox_stats, wait_for
from workers.sending import deliver_batch

NUMBERS = [f"+1415{i:07d}" for i in range(1, 3001)]


def create(client, count=3, **extra):
    response = client.post(
        "/v1/broadcasts", json={"recipients": NUMBERS[:count], "text": "Ops", **extra}
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def batch_ids(settings, broadcast_id=None) -> list[int]:
    query = select(Batch.id).order_by(Batch.seq)
    with session_scope(settings.database_url) as session:
        return list(session.scalars(query))


# Listing and inspecting.


def test_broadcasts_are_listed_newest_first_in_pages(client):
    ids = [create(client, 1) for _ in range(5)]
    first = client.get("/v1/broadcasts?limit=2").get_json()
    second = client.get(f"/v1/broadcasts?limit=2&cursor={first['next_cursor']}").get_json()
    third = client.get(f"/v1/broadcasts?limit=2&cursor={second['next_cursor']}").get_json()

    listed = [b["id"] for page in (first, second, third) for b in page["items"]]
    assert listed == list(reversed(ids))
    assert third["next_cursor"] is None


def test_broadcasts_can_be_filtered_by_status_and_time(client):
    kept = create(client, 1)
    other = create(client, 1)
    client.post(f"/v1/broadcasts/{other}/cancel")

    queued = client.get("/v1/broadcasts?status=queued").get_json()["items"]
    assert [b["id"] for b in queued] == [kept]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = client.get("/v1/broadcasts", query_string={"created_after": future})
    assert response.get_json()["items"] == []


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "cursor=nonsense", "created_after=x"])
def test_bad_list_parameters_are_400(client, query):
    assert client.get(f"/v1/broadcasts?{query}").status_code == 400


def test_a_broadcast_shows_progress_rate_and_eta(client, settings):
    broadcast_id = create(client, 1500)
    deliver_batch(settings, batch_ids(settings)[0])

    body = client.get(f"/v1/broadcasts/{broadcast_id}").get_json()
    assert body["progress"] == {"final": 1000, "total": 1500, "percent": 66.7}
    # 1,000 sent within the broadcast's first seconds: the rate is over its age, not 60 s.
    assert 1000 / 60 < body["rate"]["messages_per_second"] <= 1000
    assert body["eta_seconds"] == pytest.approx(500 / 100_000, abs=0.01)


# Recipients.


def test_recipients_are_paged_and_filtered_by_status(client, settings):
    broadcast_id = create(client, 5)
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Recipient).where(Recipient.phone == NUMBERS[1]).values(status="failed")
        )
    url = f"/v1/broadcasts/{broadcast_id}/recipients"
    page = client.get(f"{url}?limit=2").get_json()
    rest = client.get(f"{url}?limit=10&cursor={page['next_cursor']}").get_json()
    failed = client.get(f"{url}?status=failed").get_json()

    assert [r["phone"] for r in page["items"] + rest["items"]] == NUMBERS[:5]
    assert [r["phone"] for r in failed["items"]] == [NUMBERS[1]]
    assert failed["items"][0]["status"] == "failed"


def test_recipients_of_an_unknown_broadcast_are_404(client):
    missing = "00000000-0000-0000-0000-000000000000"
    assert client.get(f"/v1/broadcasts/{missing}/recipients").status_code == 404


def export_peak(client, count: int) -> tuple[int, int, int]:
    """(rows, bytes, peak traced bytes) of streaming one broadcast's recipients as CSV."""
    numbers = [f"+1416{i:07d}" for i in range(count)]
    broadcast_id = client.post(
        "/v1/broadcasts", json={"recipients": numbers, "text": f"Export {count}"}
    ).get_json()["id"]
    tracemalloc.start()
    response = client.get(
        f"/v1/broadcasts/{broadcast_id}/recipients", headers={"Accept": "text/csv"}
    )
    rows = size = 0
    for chunk in response.response:
        rows += chunk.count(b"\n") if isinstance(chunk, bytes) else chunk.count("\n")
        size += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert response.mimetype == "text/csv"
    return rows, size, peak


def test_a_100k_recipient_csv_export_streams_in_bounded_memory(client):
    small_rows, _, small_peak = export_peak(client, 10_000)
    rows, size, peak = export_peak(client, 100_000)
    print(f"csv 100k: {size / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB; 10k: {small_peak / 1e6:.1f}")

    assert (small_rows, rows) == (10_001, 100_001)  # header + every recipient
    # Memory does not grow with the export: 10x the rows, about the same peak (measured
    # ~4 MB for both, where holding 100k rows would take ~60 MB).
    assert peak < small_peak * 1.5 + 1_000_000
    assert peak < 16 * 1024 * 1024


def test_the_csv_has_a_header_and_the_filtered_rows(client, settings):
    broadcast_id = create(client, 3)
    text = client.get(
        f"/v1/broadcasts/{broadcast_id}/recipients?status=pending",
        headers={"Accept": "text/csv"},
    ).get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "phone",
        "status",
        "message_uuid",
        "error_code",
        "error_reason",
        "units",
        "updated_at",
        "sender",
        "send_after",
    ]
    assert [row[0] for row in rows[1:]] == NUMBERS[:3]


# Actions.


def test_pause_and_resume_are_safe_to_call_twice(client):
    broadcast_id = create(client)
    for _ in range(2):
        assert client.post(f"/v1/broadcasts/{broadcast_id}/pause").get_json()["status"] == "paused"
    statuses = [client.post(f"/v1/broadcasts/{broadcast_id}/resume").get_json() for _ in "ab"]
    assert [s["status"] for s in statuses] == ["queued", "queued"]
    assert [s["batches_enqueued"] for s in statuses] == [1, 0]


def test_cancel_skips_whats_left_and_is_safe_twice(client, settings):
    broadcast_id = create(client, 1500)
    deliver_batch(settings, batch_ids(settings)[0])

    first = client.post(f"/v1/broadcasts/{broadcast_id}/cancel").get_json()
    second = client.post(f"/v1/broadcasts/{broadcast_id}/cancel").get_json()

    assert (first["status"], first["skipped"]) == ("cancelled", 500)
    assert (second["status"], second["skipped"]) == ("cancelled", 0)
    body = client.get(f"/v1/broadcasts/{broadcast_id}").get_json()
    assert body["recipients"]["by_status"] == {"queued": 1000, "skipped": 500}
    assert body["batches"]["by_status"] == {"submitted": 1, "cancelled": 1}
    # Its tasks still in the broker do nothing.
    assert deliver_batch(settings, batch_ids(settings)[1])["outcome"] == "not_claimed"


def test_a_finished_broadcast_cannot_be_paused_or_cancelled(client, settings):
    broadcast_id = create(client)
    deliver_batch(settings, batch_ids(settings)[0])
    assert client.post(f"/v1/broadcasts/{broadcast_id}/pause").status_code == 409
    assert client.post(f"/v1/broadcasts/{broadcast_id}/cancel").status_code == 409


def test_actions_on_an_unknown_broadcast_are_404(client):
    missing = "00000000-0000-0000-0000-000000000000"
    for action in ("pause", "resume", "cancel", "retry"):
        assert client.post(f"/v1/broadcasts/{missing}/{action}").status_code == 404


def fail_recipients(settings, phones, status="failed"):
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Recipient)
            .where(Recipient.phone.in_(phones))
            .values(status=status, error_reason="test failure", message_uuid=None)
        )


def test_retry_sends_exactly_the_failed_numbers_once(client, settings, sandbox):
    broadcast_id = create(client, 10)
    deliver_batch(settings, batch_ids(settings)[0])
    fail_recipients(settings, NUMBERS[2:5])
    fail_recipients(settings, NUMBERS[5:6], status="unknown")
    with session_scope(settings.database_url) as session:
        session.add(OptOut(phone=NUMBERS[4], source="test"))
    before = sandbox_stats(sandbox)["messages"]

    first = client.post(f"/v1/broadcasts/{broadcast_id}/retry", json={})
    second = client.post(f"/v1/broadcasts/{broadcast_id}/retry")

    assert first.status_code == 202
    assert (first.get_json()["retried"], first.get_json()["skipped"]) == (2, 1)
    assert second.get_json()["retried"] == 0
    new_batch = batch_ids(settings)[-1]
    assert deliver_batch(settings, new_batch)["outcome"] == "submitted"
    stats = sandbox_stats(sandbox)
    assert stats["messages"] - before == 2
    assert stats["sends"][NUMBERS[2][1:]] == 2 and stats["sends"][NUMBERS[3][1:]] == 2
    assert stats["sends"][NUMBERS[4][1:]] == 1  # opted out since: not texted again
    assert stats["sends"][NUMBERS[5][1:]] == 1  # unknown: only when asked
    body = client.get(f"/v1/broadcasts/{broadcast_id}").get_json()
    assert body["recipients"]["by_status"] == {"queued": 8, "skipped": 1, "unknown": 1}


def test_unknown_recipients_are_retried_only_when_asked(client, settings):
    broadcast_id = create(client, 3)
    deliver_batch(settings, batch_ids(settings)[0])
    fail_recipients(settings, NUMBERS[:1], status="unknown")

    response = client.post(
        f"/v1/broadcasts/{broadcast_id}/retry", json={"statuses": ["unknown"]}
    ).get_json()
    assert response["retried"] == 1


@pytest.mark.parametrize(
    "payload", [{"statuses": ["delivered"]}, {"statuses": []}, {"statuses": "failed"}, {"x": 1}]
)
def test_retry_refuses_statuses_it_cannot_retry(client, payload):
    broadcast_id = create(client)
    response = client.post(f"/v1/broadcasts/{broadcast_id}/retry", json=payload)
    assert response.status_code == 400


# Scheduling.


@pytest.mark.parametrize(
    "send_at, rule",
    [
        ("2020-01-01T00:00:00Z", "in the past"),
        ((datetime.now() + timedelta(hours=1)).isoformat(), "time zone"),
        ("tomorrow", "send_at"),
    ],
)
def test_send_at_must_be_future_and_zoned(client, settings, send_at, rule):
    response = client.post(
        "/v1/broadcasts", json={"recipients": NUMBERS[:1], "text": "Later", "send_at": send_at}
    )
    assert response.status_code == 400
    assert rule in response.get_json()["error"]["message"]
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Broadcast)) == 0


def test_a_scheduled_broadcast_starts_within_seconds_of_send_at(
    client, settings, sandbox, tmp_path
):
    fast = settings.model_copy(update={"reconcile_interval": 1})
    worker = Worker(fast, tmp_path / "worker.log", queues="sms,maintenance")
    beat = Beat(fast, tmp_path)
    try:
        worker.wait_ready()
        send_at = datetime.now(UTC) + timedelta(seconds=4)
        created = client.post(
            "/v1/broadcasts",
            json={"recipients": NUMBERS[:5], "text": "Later", "send_at": send_at.isoformat()},
        ).get_json()
        assert created["status"] == "scheduled"
        time.sleep(2)
        assert sandbox_stats(sandbox)["messages"] == 0  # not before its time
        wait_for(lambda: sandbox_stats(sandbox)["messages"] == 5, timeout=30)
    finally:
        worker.stop()
        beat.stop()
    with session_scope(settings.database_url) as session:
        submitted = session.scalar(select(Batch.submitted_at))
    started_after = (as_utc(submitted) - send_at).total_seconds()
    assert 0 <= started_after < 4, started_after


def test_pausing_mid_broadcast_stops_new_batches_and_resume_finishes(
    client, settings, sandbox, tmp_path
):
    # 3 batches, 1 s apart at 1000 messages/s.
    paced = settings.model_copy(update={"sms_mps": 1000, "reconcile_interval": 1})
    worker = Worker(paced, tmp_path / "worker.log", queues="sms,maintenance")
    beat = Beat(paced, tmp_path)
    try:
        worker.wait_ready()
        broadcast_id = create(client, 3000)
        wait_for(lambda: sandbox_stats(sandbox)["requests"] >= 1, timeout=30)
        client.post(f"/v1/broadcasts/{broadcast_id}/pause")
        # In-flight calls may finish; after that nothing more is sent while paused.
        time.sleep(2.5)
        sent_while_paused = sandbox_stats(sandbox)["messages"]
        time.sleep(3)
        assert sandbox_stats(sandbox)["messages"] == sent_while_paused < 3000
        assert client.get(f"/v1/broadcasts/{broadcast_id}").get_json()["status"] == "paused"

        client.post(f"/v1/broadcasts/{broadcast_id}/resume")

        def completed():
            body = client.get(f"/v1/broadcasts/{broadcast_id}").get_json()
            return body["status"] == "completed"

        wait_for(completed, timeout=60, message=worker.log_tail())
    finally:
        worker.stop()
        beat.stop()
    stats = sandbox_stats(sandbox)
    assert stats["messages"] == 3000
    assert stats["duplicates"] == 0
