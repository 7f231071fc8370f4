"""The worker side of campaigns, in-process against the sandbox: a batch's own sender and
text, its own sender's pacing, quiet-hours holds (released by the reconciler, re-checked at
send time), and pause/resume/cancel/retry with held batches. Batches are written straight
into the database, as intake writes them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis
import requests
from sqlalchemy import select, update

from shared import lifecycle
from shared.db import session_scope
from shared.models import Batch, Broadcast, Recipient, utcnow
from shared.progress import outlook, summarize
from shared.timelines import bookings, sender_timeline
from tests.conftest import sandbox_stats
from workers import reconciler, sending
from workers.sending import deliver_batch

POOL = ["+14155550101", "+14155550102"]
NIGHT = {"start": "21:00", "end": "08:00"}


def make_broadcast(database_url, groups, *, quiet_hours=None, sender="+14155550100", text="Hi"):
    """A broadcast with one batch per group: {numbers, sender, text, zone, hold_until}."""
    broadcast_id = uuid.uuid4()
    now = utcnow()
    ids = []
    with session_scope(database_url) as session:
        session.add(
            Broadcast(
                id=broadcast_id,
                kind="sms",
                sender=sender,
                text=text,
                encoding="GSM",
                segments=1,
                status="queued",
                counts={},
                api_key_id="test",
                quiet_hours=quiet_hours,
            )
        )
        session.flush()
        for seq, group in enumerate(groups):
            batch = Batch(
                broadcast_id=broadcast_id,
                seq=seq,
                size=len(group["numbers"]),
                status="pending",
                attempts=0,
                sender=group.get("sender"),
                text=group.get("text"),
                zone=group.get("zone"),
                hold_until=group.get("hold_until"),
                enqueued_at=None if group.get("hold_until") else now,
            )
            session.add(batch)
            session.flush()
            ids.append(batch.id)
            for number in group["numbers"]:
                session.add(
                    Recipient(
                        broadcast_id=broadcast_id, batch_id=batch.id, phone=number, status="pending"
                    )
                )
    return broadcast_id, ids


def sent_messages(sandbox_url, database_url, broadcast_id) -> dict[str, tuple[str, str]]:
    """number → (src, text) as the sandbox received each message."""
    with session_scope(database_url) as session:
        rows = session.execute(
            select(Recipient.phone, Recipient.message_uuid).where(
                Recipient.broadcast_id == broadcast_id, Recipient.message_uuid.is_not(None)
            )
        ).all()
    found = {}
    for phone, message_uuid in rows:
        record = requests.get(f"{sandbox_url}/messages/{message_uuid}", timeout=5).json()
        found[phone] = (record["src"], record["text"])
    return found


def batch_row(database_url, batch_id) -> Batch:
    with session_scope(database_url) as session:
        batch = session.get(Batch, batch_id)
        session.expunge(batch)
        return batch


def recipient_statuses(database_url, broadcast_id) -> list[str]:
    with session_scope(database_url) as session:
        return sorted(
            session.scalars(
                select(Recipient.status).where(Recipient.broadcast_id == broadcast_id)
            ).all()
        )


def plivo_address(number: str) -> str:
    return number.lstrip("+")


def test_a_batch_sends_its_own_sender_and_text(settings, sandbox):
    broadcast_id, (own, default) = make_broadcast(
        settings.database_url,
        [
            {"numbers": ["+14155551001"], "sender": POOL[0], "text": "Hi Ana"},
            {"numbers": ["+14155551002", "+14155551003"]},
        ],
        text="Hi there",
    )
    assert deliver_batch(settings, own)["outcome"] == "submitted"
    assert deliver_batch(settings, default)["outcome"] == "submitted"

    assert sent_messages(sandbox, settings.database_url, broadcast_id) == {
        "+14155551001": (plivo_address(POOL[0]), "Hi Ana"),
        "+14155551002": ("14155550100", "Hi there"),
        "+14155551003": ("14155550100", "Hi there"),
    }
    assert sandbox_stats(sandbox)["requests"] == 2


def test_each_batch_books_on_its_own_sender_s_timeline(settings, sandbox):
    paced = settings.model_copy(update={"default_sender_mps": 1000.0})
    _, ids = make_broadcast(
        paced.database_url,
        [{"numbers": [f"+1415555200{i}"], "sender": sender} for i, sender in enumerate(POOL)],
    )
    for batch_id in ids:
        assert deliver_batch(paced, batch_id)["outcome"] == "submitted"
    client = redis.Redis.from_url(paced.redis_url)
    for sender in POOL:
        booked = client.zrange(bookings(sender_timeline("sms", sender)), 0, -1)
        assert len(booked) == 1, sender
    # The broadcast's own sender sent nothing, so booked nothing.
    assert not client.exists(bookings(sender_timeline("sms", "+14155550100")))


def test_a_held_batch_is_neither_claimed_nor_enqueued_before_its_hold_ends(settings, sandbox):
    later = utcnow() + timedelta(hours=3)
    broadcast_id, (held,) = make_broadcast(
        settings.database_url,
        [{"numbers": ["+12125553001"], "zone": "America/New_York", "hold_until": later}],
    )
    assert deliver_batch(settings, held)["outcome"] == "not_claimed"
    counts = reconciler.reconcile(settings)
    assert (counts["released_holds"], counts["enqueued"]) == (0, 0)
    assert sandbox_stats(sandbox)["messages"] == 0

    # Its time comes: the reconciler lets it go and enqueues it, once.
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Batch).where(Batch.id == held).values(hold_until=utcnow() - timedelta(1e-3))
        )
    counts = reconciler.reconcile(settings)
    assert (counts["released_holds"], counts["enqueued"]) == (1, 1)
    assert batch_row(settings.database_url, held).hold_until is None
    assert reconciler.reconcile(settings)["enqueued"] == 0
    assert deliver_batch(settings, held)["outcome"] == "submitted"
    assert recipient_statuses(settings.database_url, broadcast_id) == ["queued"]


@pytest.mark.parametrize(
    ("clock", "zone", "until"),
    [
        # Midnight in New York, 06:00 in Berlin: both wait for their own 08:00.
        ("2025-02-03T05:00:00", "America/New_York", "2025-02-03T13:00:00"),
        ("2025-02-03T05:00:00", "Europe/Berlin", "2025-02-03T07:00:00"),
        # 09:00 UTC: Berlin is awake (sent), New York still asleep.
        ("2025-02-03T09:00:00", "Europe/Berlin", None),
        ("2025-02-03T09:00:00", "America/New_York", "2025-02-03T13:00:00"),
    ],
)
def test_quiet_hours_are_checked_again_at_send_time(
    settings, sandbox, monkeypatch, clock, zone, until
):
    now = datetime.fromisoformat(clock).replace(tzinfo=UTC)
    monkeypatch.setattr(sending, "utcnow", lambda: now)
    number = "+12125554001" if zone.startswith("America") else "+4915112345678"
    broadcast_id, (batch_id,) = make_broadcast(
        settings.database_url, [{"numbers": [number], "zone": zone}], quiet_hours=NIGHT
    )
    outcome = deliver_batch(settings, batch_id)
    batch = batch_row(settings.database_url, batch_id)
    if until is None:
        assert outcome["outcome"] == "submitted"
        assert sandbox_stats(sandbox)["messages"] == 1
        return
    expected = datetime.fromisoformat(until).replace(tzinfo=UTC)
    assert outcome["outcome"] == "held"
    assert (batch.status, batch.hold_until, batch.slot_at, batch.attempts) == (
        "pending",
        expected,
        None,
        0,
    )
    assert sandbox_stats(sandbox)["messages"] == 0
    assert recipient_statuses(settings.database_url, broadcast_id) == ["pending"]
    # A second task (the clock above is frozen in the past, so its claim is allowed) holds
    # it again: still nothing sent, nothing lost.
    assert deliver_batch(settings, batch_id)["outcome"] == "held"
    assert sandbox_stats(sandbox)["messages"] == 0
    assert recipient_statuses(settings.database_url, broadcast_id) == ["pending"]


def test_a_held_batch_gives_back_the_slot_an_earlier_attempt_booked(settings, sandbox, monkeypatch):
    paced = settings.model_copy(update={"default_sender_mps": 1.0})
    monkeypatch.setattr(
        sending,
        "utcnow",
        lambda: datetime(2025, 2, 3, 5, tzinfo=UTC),  # night in New York
    )
    _, (batch_id,) = make_broadcast(
        paced.database_url,
        [{"numbers": ["+12125555001"], "zone": "America/New_York"}],
        quiet_hours=NIGHT,
    )
    # An earlier attempt booked a slot a minute ahead and handed the batch back.
    from workers.pacing import Pacer

    reservation = Pacer.for_settings(paced).reserve("sms", "+14155550100", 1, batch_id=batch_id)
    with session_scope(paced.database_url) as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(slot_at=reservation.slot_at, not_before=None)
        )
    client = redis.Redis.from_url(paced.redis_url)
    key = bookings(sender_timeline("sms", "+14155550100"))
    assert client.zcard(key) == 1
    assert deliver_batch(paced, batch_id)["outcome"] == "held"
    assert client.zcard(key) == 0
    assert batch_row(paced.database_url, batch_id).slot_at is None


def test_resume_leaves_held_batches_held_and_cancel_ends_them(settings, sandbox):
    later = utcnow() + timedelta(hours=3)
    broadcast_id, (free, held) = make_broadcast(
        settings.database_url,
        [
            {"numbers": ["+14155556001"]},
            {"numbers": ["+12125556002"], "zone": "America/New_York", "hold_until": later},
        ],
        quiet_hours=NIGHT,
    )
    with session_scope(settings.database_url) as session:
        lifecycle.pause(session, broadcast_id)
    with session_scope(settings.database_url) as session:
        status, to_enqueue = lifecycle.resume(session, broadcast_id)
    assert to_enqueue == [free]
    assert batch_row(settings.database_url, held).hold_until == later
    assert deliver_batch(settings, held)["outcome"] == "not_claimed"

    with session_scope(settings.database_url) as session:
        lifecycle.cancel(session, broadcast_id)
    batch = batch_row(settings.database_url, held)
    assert (batch.status, batch.hold_until) == ("cancelled", None)
    assert recipient_statuses(settings.database_url, broadcast_id) == ["skipped", "skipped"]


def test_retry_keeps_each_recipient_s_sender_text_and_zone(settings, sandbox):
    broadcast_id, (first, second) = make_broadcast(
        settings.database_url,
        [
            {
                "numbers": ["+14155557001"],
                "sender": POOL[0],
                "text": "Hi Ana",
                "zone": "America/Los_Angeles",
            },
            {
                "numbers": ["+14155557002"],
                "sender": POOL[1],
                "text": "Hi Bo",
                "zone": "America/Los_Angeles",
            },
        ],
    )
    with session_scope(settings.database_url) as session:
        session.execute(update(Batch).values(status="failed"))
        session.execute(update(Recipient).values(status="failed", error_reason="boom"))
    with session_scope(settings.database_url) as session:
        plan = lifecycle.retry(session, broadcast_id, ["failed"], settings)
    assert plan.retried == 2 and len(plan.batch_ids) == 2
    for batch_id in plan.batch_ids:
        assert deliver_batch(settings, batch_id)["outcome"] == "submitted"
    assert sent_messages(sandbox, settings.database_url, broadcast_id) == {
        "+14155557001": (plivo_address(POOL[0]), "Hi Ana"),
        "+14155557002": (plivo_address(POOL[1]), "Hi Bo"),
    }
    with session_scope(settings.database_url) as session:
        zones = set(session.scalars(select(Batch.zone).where(Batch.id.in_(plan.batch_ids))))
    assert zones == {"America/Los_Angeles"}


def test_a_retry_in_the_recipients_night_is_held(settings, sandbox):
    # A window that holds Los Angeles whenever this test runs: all day but one minute.
    la_now = utcnow().astimezone(ZoneInfo("America/Los_Angeles"))
    end = (la_now + timedelta(hours=12)).strftime("%H:%M")
    start = (la_now - timedelta(hours=1)).strftime("%H:%M")
    broadcast_id, _ = make_broadcast(
        settings.database_url,
        [{"numbers": ["+14155558001"], "zone": "America/Los_Angeles"}],
        quiet_hours={"start": start, "end": end},
    )
    with session_scope(settings.database_url) as session:
        session.execute(update(Batch).values(status="failed"))
        session.execute(update(Recipient).values(status="failed"))
    with session_scope(settings.database_url) as session:
        plan = lifecycle.retry(session, broadcast_id, ["failed"], settings)
    assert (plan.retried, plan.batch_ids) == (1, [])
    with session_scope(settings.database_url) as session:
        held = session.scalar(select(Batch).where(Batch.status == "pending"))
        assert held.hold_until is not None and held.enqueued_at is None
        assert held.hold_until - utcnow() > timedelta(hours=10)


def test_the_outlook_says_it_waits_for_quiet_hours_and_the_eta_includes_the_wait(settings, sandbox):
    first = utcnow() + timedelta(hours=2)
    broadcast_id, _ = make_broadcast(
        settings.database_url,
        [
            {
                "numbers": ["+12125559001", "+12125559002"],
                "zone": "America/New_York",
                "hold_until": first,
            },
            {
                "numbers": ["+12135559003"],
                "zone": "America/Los_Angeles",
                "hold_until": first + timedelta(hours=3),
            },
        ],
        quiet_hours=NIGHT,
    )
    with session_scope(settings.database_url) as session:
        broadcast = session.get(Broadcast, broadcast_id)
        answer = outlook(session, broadcast, summarize(session, broadcast), settings, rate=0.0)
    assert "quiet hours (21:00-08:00" in answer["waiting_for"]
    assert "3 recipients wait" in answer["waiting_for"]
    assert answer["held"]["recipients"] == 3
    assert datetime.fromisoformat(answer["held"]["first_release"]) == first
    # Five hours until the last one is let go, then paced at 100,000 msg/s.
    assert 5 * 3600 - 60 < answer["eta_seconds"] <= 5 * 3600 + 1
