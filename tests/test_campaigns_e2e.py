"""Campaigns end to end: the API takes the broadcast, real Celery workers (and beat, for the
reconciler) send it through the sandbox over HTTP, on SQLite and on PostgreSQL.

- personalised texts: equal renderings share one Plivo call;
- a pool of senders: each recipient keeps its sender across broadcasts, and the pool
  together stays within the account's limit (measured from the sandbox's request log);
- quiet hours: recipients in New York and in Berlin each go at the end of the window in
  their own local time, not before.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis
import requests
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Batch, Broadcast, Recipient, utcnow
from tests.conftest import API_KEY, Beat, Worker, sandbox_stats, wait_for

POOL = ["+14155550201", "+14155550202", "+14155550203"]
NEW_YORK, BERLIN = "+12125550142", "+4915112345678"


@pytest.fixture()
def campaign(settings, tmp_path):
    """The API in-process, a worker on the send and maintenance queues, and beat."""
    from api import create_app

    changed = settings.model_copy(
        update={
            "sms_mps": 200,
            "batch_size": 100,
            "default_sender_mps": 100,
            "reconcile_interval": 1,
        }
    )
    redis.Redis.from_url(settings.redis_url).delete("bulksms:limits")
    api = create_app(changed).test_client()
    api.environ_base["HTTP_X_API_KEY"] = API_KEY
    worker = Worker(changed, tmp_path / "worker.log", concurrency=4, queues="sms,maintenance")
    beat = Beat(changed, tmp_path)
    try:
        worker.wait_ready()
        yield changed, worker, api
    finally:
        worker.stop()
        beat.stop()


def post(api, body: dict) -> str:
    response = api.post("/v1/broadcasts", json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def finished(settings, broadcast_id: str) -> bool:
    with session_scope(settings.database_url) as session:
        status = session.get(Broadcast, uuid.UUID(broadcast_id)).status
    return status.startswith("completed")


def messages_of(sandbox: str, settings, broadcast_id: str) -> dict[str, dict]:
    """number → the message as the sandbox received it (src, text, queued_time)."""
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(Recipient.phone, Recipient.message_uuid).where(
                Recipient.broadcast_id == uuid.UUID(broadcast_id),
                Recipient.message_uuid.is_not(None),
            )
        ).all()
    return {
        phone: requests.get(f"{sandbox}/messages/{message_uuid}", timeout=5).json()
        for phone, message_uuid in rows
    }


def request_log(sandbox: str) -> list[tuple[float, int, str]]:
    entries = requests.get(f"{sandbox}/stats/requests", timeout=10).json()
    return sorted((entry["t"], entry["count"], entry["src"]) for entry in entries)


def steady_rate(log: list[tuple]) -> float:
    """Messages per second: the least-squares slope of messages sent before each request
    against its time (as tests/test_pacing.py measures it)."""
    times, before, total = [], [], 0
    for t, count, *_ in log:
        times.append(t)
        before.append(total)
        total += count
    n = len(times)
    mean_t, mean_m = sum(times) / n, sum(before) / n
    covariance = sum((t - mean_t) * (m - mean_m) for t, m in zip(times, before, strict=True))
    return covariance / sum((t - mean_t) ** 2 for t in times)


def test_three_names_become_three_texts_in_two_plivo_calls(campaign, sandbox):
    settings, worker, api = campaign
    broadcast_id = post(
        api,
        {
            "recipients": [
                {"to": "+14155553001", "fields": {"first_name": "Ana"}},
                {"to": "+14155553002", "fields": {"first_name": "Bo"}},
                {"to": "+14155553003", "fields": {"first_name": "Ana"}},
            ],
            "text": "Hi {first_name}, your order is ready",
        },
    )
    wait_for(lambda: finished(settings, broadcast_id), timeout=60, message=worker.log_tail())

    texts = {n: m["text"] for n, m in messages_of(sandbox, settings, broadcast_id).items()}
    assert texts == {
        "+14155553001": "Hi Ana, your order is ready",
        "+14155553002": "Hi Bo, your order is ready",
        "+14155553003": "Hi Ana, your order is ready",
    }
    stats = sandbox_stats(sandbox)
    assert (stats["requests"], stats["messages"], stats["duplicates"]) == (2, 3, 0)


def test_a_pool_keeps_each_recipient_s_sender_and_stays_within_the_account_limit(campaign, sandbox):
    settings, worker, api = campaign
    numbers = [f"+1416{n:07d}" for n in range(3000)]
    first = post(api, {"recipients": numbers, "text": "Pool", "senders": POOL})  # 15 s at 200/s
    wait_for(lambda: finished(settings, first), timeout=180, message=worker.log_tail())
    log = request_log(sandbox)
    # The second broadcast names the pool in another order: stickiness, not position.
    again = post(api, {"recipients": numbers[:300], "text": "Again", "senders": POOL[::-1]})
    wait_for(lambda: finished(settings, again), timeout=60, message=worker.log_tail())

    before = {n: m["src"] for n, m in messages_of(sandbox, settings, first).items()}
    after = {n: m["src"] for n, m in messages_of(sandbox, settings, again).items()}
    assert len(before) == 3000 and len(after) == 300
    assert {number: before[number] for number in after} == after
    assert set(before.values()) == {sender[1:] for sender in POOL}

    # Three senders at 100/s each could send 300/s; the account allows 200/s. Measured
    # past the first second (the start-up wave), over the whole first broadcast.
    steady = [entry for entry in log if entry[0] > log[0][0] + 1.0]
    combined = steady_rate(steady)
    per_sender = {
        src: steady_rate([entry for entry in steady if entry[2] == src])
        for src in {entry[2] for entry in steady}
    }
    print(f"pool: combined {combined:.1f} msg/s, per sender {per_sender}")
    # Only the ceiling is asserted: how close to it a loaded 2-core machine gets is a
    # benchmark's question (bench/), not a test's.
    assert combined <= settings.sms_mps * 1.01
    assert all(rate <= settings.default_sender_mps * 1.05 for rate in per_sender.values())
    assert sandbox_stats(sandbox)["duplicates"] == 0


def _window_ending_soon(zone: str) -> tuple[dict, datetime]:
    """A 2-hour quiet window around now in `zone`, ending at the next whole minute at least
    5 s away; and that end as a UTC instant."""
    local = datetime.now(UTC).astimezone(ZoneInfo(zone))
    end = (local + timedelta(seconds=65)).replace(second=0, microsecond=0)
    start = end - timedelta(hours=2)
    return {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}, end.astimezone(UTC)


def test_new_york_and_berlin_each_go_at_the_end_of_their_own_quiet_hours(campaign, sandbox):
    settings, worker, api = campaign
    ids, ends = {}, {}
    for zone in ("America/New_York", "Europe/Berlin"):
        window, ends[zone] = _window_ending_soon(zone)
        # Both numbers in each broadcast: the window holds the zone it was made for and
        # leaves the other (5-7 hours away) free.
        ids[zone] = post(
            api,
            {
                "recipients": [NEW_YORK, BERLIN],
                "text": f"Good morning {zone}",
                "quiet_hours": window,
            },
        )
    held = {"America/New_York": NEW_YORK, "Europe/Berlin": BERLIN}

    with session_scope(settings.database_url) as session:
        for zone, broadcast_id in ids.items():
            rows = session.execute(
                select(Recipient.phone, Batch.zone, Batch.hold_until)
                .join(Batch, Batch.id == Recipient.batch_id)
                .where(Recipient.broadcast_id == uuid.UUID(broadcast_id))
            ).all()
            holds = {phone: (batch_zone, until) for phone, batch_zone, until in rows}
            # Held until the end of the window in its own zone; the other number not held.
            assert holds[held[zone]] == (zone, ends[zone])
            other = BERLIN if held[zone] == NEW_YORK else NEW_YORK
            assert holds[other][1] is None

    # The free ones go at once; the held ones wait, shown as such.
    def free_ones_sent():
        sent = {z: messages_of(sandbox, settings, b) for z, b in ids.items()}
        return sent if all(len(m) == 1 for m in sent.values()) else None

    sent = wait_for(free_ones_sent, timeout=30, message=worker.log_tail())
    for zone, messages in sent.items():
        assert held[zone] not in messages
    body = api.get(f"/v1/broadcasts/{ids['Europe/Berlin']}").get_json()
    assert "quiet hours" in body["waiting_for"]
    assert body["eta_seconds"] >= (ends["Europe/Berlin"] - utcnow()).total_seconds() - 2

    for broadcast_id in ids.values():
        wait_for(
            lambda b=broadcast_id: finished(settings, b), timeout=120, message=worker.log_tail()
        )
    for zone, broadcast_id in ids.items():
        messages = messages_of(sandbox, settings, broadcast_id)
        # When the sandbox accepted it (epoch seconds, its own clock: this machine's).
        queued = datetime.fromtimestamp(float(messages[held[zone]]["queued_time"]), UTC)
        # Not a moment before the end of its own quiet hours.
        assert queued >= ends[zone], (zone, queued, ends[zone])
    stats = sandbox_stats(sandbox)
    assert (stats["messages"], stats["duplicates"]) == (4, 0)


def test_a_large_list_broadcast_is_sent_whole_from_batches_kept_as_text(
    campaign, sandbox, monkeypatch
):
    """Past KEEP_ABOVE (lowered here) the list's batches are kept as text at intake; beat's
    writer and the workers turn them into rows. Intake publishes 2 tasks, the reconciler
    the other 8. Everyone on the list is texted once, the opted-out nobody."""
    from api import intake, list_audience

    settings, worker, api = campaign
    monkeypatch.setattr(list_audience, "KEEP_ABOVE", 0)
    monkeypatch.setattr(intake, "ENQUEUED_AT_INTAKE", 2)
    numbers = [f"+1415556{i:04d}" for i in range(1000)]
    opted = numbers[::100]
    assert api.post("/v1/opt-outs", json={"phones": opted}).status_code in (200, 201)
    list_id = api.post("/v1/lists", json={"name": "everyone"}).get_json()["id"]
    added = api.post(f"/v1/lists/{list_id}/contacts", json={"contacts": numbers})
    assert added.status_code in (200, 201), added.get_json()
    broadcast_id = post(api, {"list_ids": [list_id], "text": "Big news"})
    if _postgres(settings):
        with session_scope(settings.database_url) as session:
            kept = session.scalars(
                select(Batch.id).where(
                    Batch.broadcast_id == uuid.UUID(broadcast_id), Batch.audience.is_not(None)
                )
            ).all()
        assert kept, "the list's batches were not kept as text"

    wait_for(lambda: finished(settings, broadcast_id), timeout=90, message=worker.log_tail())

    sent = set(messages_of(sandbox, settings, broadcast_id))
    assert sent == set(numbers) - set(opted)
    stats = sandbox_stats(sandbox)
    assert (stats["messages"], stats["duplicates"]) == (990, 0)
    body = api.get(f"/v1/broadcasts/{broadcast_id}").get_json()
    assert body["recipients"]["total"] == 1000
    assert body["recipients"]["by_status"].get("skipped") == 10
    with session_scope(settings.database_url) as session:
        left = session.scalar(select(func.count()).where(Batch.audience.is_not(None)))
    assert left == 0


def _postgres(settings) -> bool:
    return settings.database_url.startswith("postgresql")
