"""Operator actions on a broadcast (pause, resume, cancel, retry) and its scheduled start.

Each is one transaction of conditional updates, so calling it twice, or racing a worker,
changes nothing twice. In-flight batches are never touched here: a worker holding one
finishes its call and records the outcome; claims check the broadcast's status.

Pause and cancel also give the broadcast's pacing back (given `settings`): the slots its
waiting batches had booked, and its place in its sender's line, once the transaction has
committed, so the next broadcast on that sender goes within seconds."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import redis
from sqlalchemy import and_, event, exists, func, or_, select, update
from sqlalchemy.orm import Session

from shared import audience, timelines
from shared.config import Settings
from shared.db import chunked
from shared.logs import log_event
from shared.models import (
    Batch,
    BatchStatus,
    Broadcast,
    BroadcastStatus,
    Recipient,
    RecipientStatus,
    as_utc,
    utcnow,
)
from shared.opt_outs import opted_out_among
from shared.quiet_hours import parse_window, release_at

log = logging.getLogger(__name__)

RETRYABLE = (RecipientStatus.FAILED, RecipientStatus.UNKNOWN, RecipientStatus.UNDELIVERED)
CANCELLED_REASON = "cancelled"


class ActionRefused(Exception):
    """The broadcast's state does not allow this action; the message says why."""


def _locked(session: Session, broadcast_id: uuid.UUID) -> Broadcast:
    # FOR UPDATE on PostgreSQL serialises two operators acting at once; SQLite writers are
    # serialised anyway.
    broadcast = session.scalar(
        select(Broadcast).where(Broadcast.id == broadcast_id).with_for_update()
    )
    if broadcast is None:
        raise LookupError(broadcast_id)
    return broadcast


def pause(
    session: Session,
    broadcast_id: uuid.UUID,
    reason: str = "paused by operator",
    *,
    settings: Settings | None = None,
) -> str:
    broadcast = _locked(session, broadcast_id)
    if broadcast.status == BroadcastStatus.PAUSED:
        return broadcast.status
    if broadcast.status in BroadcastStatus.FINAL:
        raise ActionRefused(f"the broadcast is already {broadcast.status}")
    broadcast.status = BroadcastStatus.PAUSED
    broadcast.status_reason = reason
    release_pacing(session, broadcast, settings)
    return broadcast.status


def resume(session: Session, broadcast_id: uuid.UUID) -> tuple[str, list[int]]:
    """Back to sending; returns the pending batch ids to enqueue after commit. Their old
    pacing slots are dropped: sent now, they would burst past the limit."""
    broadcast = _locked(session, broadcast_id)
    if broadcast.status != BroadcastStatus.PAUSED:
        if broadcast.status in BroadcastStatus.FINAL:
            raise ActionRefused(f"the broadcast is {broadcast.status}")
        return broadcast.status, []
    now = utcnow()
    if broadcast.scheduled_at is not None and as_utc(broadcast.scheduled_at) > now:
        broadcast.status = BroadcastStatus.SCHEDULED
    else:
        started = session.scalar(
            select(func.count())
            .select_from(Batch)
            .where(Batch.broadcast_id == broadcast_id, Batch.status != BatchStatus.PENDING)
        )
        broadcast.status = BroadcastStatus.SENDING if started else BroadcastStatus.QUEUED
    broadcast.status_reason = None
    if broadcast.status == BroadcastStatus.SCHEDULED:
        return broadcast.status, []
    # Batches quiet hours still hold stay held (the reconciler sends them when the hold
    # ends); a hold already over is simply dropped.
    held = and_(Batch.hold_until.is_not(None), Batch.hold_until > now)
    pending = list(
        session.scalars(
            select(Batch.id).where(
                Batch.broadcast_id == broadcast_id, Batch.status == BatchStatus.PENDING, ~held
            )
        )
    )
    if pending:
        # Any slot still kept (pause could not reach Redis) is dropped too: they book afresh
        # in their sender's line, never after abandoned slots.
        for chunk in chunked(pending):
            session.execute(
                update(Batch)
                .where(Batch.id.in_(chunk), Batch.status == BatchStatus.PENDING)
                .values(
                    not_before=None, slot_at=None, hold_until=None, enqueued_at=now, updated_at=now
                )
                .execution_options(synchronize_session=False)
            )
    return broadcast.status, pending


def cancel(
    session: Session, broadcast_id: uuid.UUID, *, settings: Settings | None = None
) -> tuple[str, int]:
    """Cancelled; recipients not yet handed to Plivo become `skipped` (cancelled). Returns
    the status and how many recipients were skipped by this call."""
    broadcast = _locked(session, broadcast_id)
    if broadcast.status in (BroadcastStatus.COMPLETED, BroadcastStatus.COMPLETED_WITH_FAILURES):
        raise ActionRefused(f"the broadcast is already {broadcast.status}")
    now = utcnow()
    if broadcast.status != BroadcastStatus.CANCELLED:
        broadcast.status = BroadcastStatus.CANCELLED
        broadcast.status_reason = "cancelled by operator"
        broadcast.finished_at = now
    release_pacing(session, broadcast, settings)
    return broadcast.status, sweep_cancelled(session, broadcast_id)


def release_pacing(session: Session, broadcast: Broadcast, settings: Settings | None) -> None:
    """The stopped broadcast's waiting batches let go of their booked slots (in this
    transaction) and, after commit, the slots and the broadcast's place in its sender's line
    are given back in Redis; the sender's other waiting batches are woken to take them."""
    if settings is None:
        return
    now = utcnow()
    booked = session.execute(
        select(Batch.id, Batch.slot_at, Batch.sender)
        .where(
            Batch.broadcast_id == broadcast.id,
            Batch.status == BatchStatus.PENDING,
            Batch.slot_at.is_not(None),
        )
        .with_for_update()
    ).all()
    # A pooled broadcast's batches carry their own sender: each gives back on its own.
    senders = {broadcast.sender} | set(
        session.scalars(
            select(Batch.sender)
            .where(Batch.broadcast_id == broadcast.id, Batch.sender.is_not(None))
            .distinct()
        )
    )
    members: dict[str, list[str]] = {sender: [] for sender in senders}
    for batch_id, slot_at, batch_sender in booked:
        # Only a batch still pending (no worker has claimed it since) gives its slot back:
        # a claimed one may be about to send at it.
        dropped = session.execute(
            update(Batch)
            .where(
                Batch.id == batch_id,
                Batch.status == BatchStatus.PENDING,
                Batch.slot_at.is_not(None),
            )
            .values(slot_at=None, not_before=None, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if dropped:
            member = timelines.booking_member(batch_id, as_utc(slot_at))
            members[batch_sender or broadcast.sender].append(member)
    for sender in senders:
        wake_waiting(session, broadcast.kind, sender)
    kind, broadcast_id = broadcast.kind, broadcast.id

    def give_back_after_commit(_session: Session) -> None:
        # After commit: given back first, a batch could still be sent at the slot.
        freed, left = 0.0, 0
        try:
            for sender, given in members.items():
                freed = max(freed, timelines.give_back(settings, kind, sender, given))
                left += timelines.leave_line(settings, kind, sender, broadcast_id)
        except redis.RedisError as error:
            # The slots then simply pass unused (at most the pacing horizon), and the line
            # forgets the batches once they are overdue.
            log_event(
                log,
                "pacing.release_failed",
                logging.WARNING,
                broadcast_id=broadcast_id,
                error=type(error).__name__,
            )
            return
        log_event(
            log,
            "pacing.released",
            broadcast_id=broadcast_id,
            senders=len(members),
            slots=sum(len(given) for given in members.values()),
            seconds_freed=round(freed, 3),
            left_line=left,
        )

    event.listen(session, "after_commit", give_back_after_commit, once=True)


def wake_waiting(session: Session, kind: str | None = None, sender: str | None = None) -> int:
    """Pending batches waiting unbooked (of this kind, this sender) forget their estimate
    and have no task: the reconciler's next pass sends them to book again at once. For a
    limit changed, or a sender freed. Returns how many."""
    now = utcnow()
    conditions = [Broadcast.id == Batch.broadcast_id]
    if kind is not None:
        conditions.append(Broadcast.kind == kind)
    where = [
        Batch.status == BatchStatus.PENDING,
        Batch.slot_at.is_(None),
        Batch.not_before.is_not(None),
        exists().where(and_(*conditions)),
    ]
    if sender is not None:
        # A batch's own sender (a pool's) wins over its broadcast's.
        where.append(
            or_(
                Batch.sender == sender,
                and_(
                    Batch.sender.is_(None),
                    exists().where(Broadcast.id == Batch.broadcast_id, Broadcast.sender == sender),
                ),
            )
        )
    return session.execute(
        update(Batch)
        .where(*where)
        .values(not_before=None, enqueued_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount


def sweep_cancelled(session: Session, broadcast_id: uuid.UUID) -> int:
    """Pending batches of a cancelled broadcast become `cancelled`, their recipients
    `skipped`. Also run by the reconciler, for batches a worker handed back afterwards."""
    now = utcnow()
    pending = list(
        session.scalars(
            select(Batch.id).where(
                Batch.broadcast_id == broadcast_id, Batch.status == BatchStatus.PENDING
            )
        )
    )
    skipped = 0
    for chunk in chunked(pending):
        session.execute(
            update(Batch)
            .where(Batch.id.in_(chunk), Batch.status == BatchStatus.PENDING)
            # Out of the partial index of held batches too: nothing will release them.
            .values(status=BatchStatus.CANCELLED, hold_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        # Numbers a large list broadcast still keeps as text are written settled.
        skipped += audience.write(
            session,
            chunk,
            RecipientStatus.SKIPPED,
            CANCELLED_REASON,
            batch_status=BatchStatus.CANCELLED,
        )
        skipped += session.execute(
            update(Recipient)
            .where(Recipient.batch_id.in_(chunk), Recipient.status == RecipientStatus.PENDING)
            .values(status=RecipientStatus.SKIPPED, error_reason=CANCELLED_REASON, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
    return skipped


@dataclass
class RetryPlan:
    retried: int
    skipped: int
    batch_ids: list[int]


def retry(
    session: Session, broadcast_id: uuid.UUID, statuses: list[str], settings: Settings
) -> RetryPlan:
    """New batches for exactly the recipients in `statuses` (whose batches are over);
    opted-out numbers are skipped instead. Returns batch ids to enqueue after commit."""
    broadcast = _locked(session, broadcast_id)
    if broadcast.status in (BroadcastStatus.CANCELLED, BroadcastStatus.SCHEDULED):
        raise ActionRefused(f"the broadcast is {broadcast.status}")
    # Each recipient keeps what its batch sent: a pooled sender (people see one number), a
    # personalised text, its zone for quiet hours.
    rows = session.execute(
        select(
            Recipient.id,
            Recipient.phone,
            Batch.sender,
            Batch.text,
            Batch.encoding,
            Batch.segments,
            Batch.zone,
        )
        .join(Batch, Batch.id == Recipient.batch_id)
        .where(
            Recipient.broadcast_id == broadcast_id,
            Recipient.status.in_(statuses),
            Batch.broadcast_id == broadcast_id,
            Batch.status.in_(BatchStatus.FINAL),
        )
        .order_by(Recipient.id)
    ).all()
    if not rows:
        return RetryPlan(0, 0, [])
    blocked = opted_out_among(session, [row.phone for row in rows])
    now = utcnow()
    skip_ids = [row.id for row in rows if row.phone in blocked]
    for chunk in chunked(skip_ids):
        session.execute(
            update(Recipient)
            .where(Recipient.id.in_(chunk))
            .values(status=RecipientStatus.SKIPPED, error_reason="opted out", updated_at=now)
            .execution_options(synchronize_session=False)
        )
    groups: dict[tuple, list[int]] = {}
    for row in rows:
        if row.phone not in blocked:
            key = (row.sender, row.text, row.encoding, row.segments, row.zone)
            groups.setdefault(key, []).append(row.id)
    window = parse_window(broadcast.quiet_hours) if broadcast.quiet_hours else None
    batch_size = settings.batch_size_for(broadcast.kind)
    seq = (
        session.scalar(select(func.max(Batch.seq)).where(Batch.broadcast_id == broadcast_id)) or 0
    ) + 1
    batch_ids = []
    for (sender, text, encoding, segments, zone), send_ids in groups.items():
        # Held now if the recipients' night has begun since; the reconciler sends it later.
        hold_until = release_at(zone, window, now) if zone and window else None
        for offset in range(0, len(send_ids), batch_size):
            ids = send_ids[offset : offset + batch_size]
            batch = Batch(
                broadcast_id=broadcast_id,
                seq=seq,
                size=len(ids),
                status=BatchStatus.PENDING,
                attempts=0,
                enqueued_at=None if hold_until else now,
                sender=sender,
                text=text,
                encoding=encoding,
                segments=segments,
                zone=zone,
                hold_until=hold_until,
            )
            seq += 1
            session.add(batch)
            session.flush()
            if hold_until is None:
                batch_ids.append(batch.id)
            for chunk in chunked(ids):
                session.execute(
                    update(Recipient)
                    .where(Recipient.id.in_(chunk))
                    .values(
                        batch_id=batch.id,
                        status=RecipientStatus.PENDING,
                        message_uuid=None,
                        error_code=None,
                        error_reason=None,
                        sent_at=None,
                        finished_at=None,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
    send_count = sum(len(ids) for ids in groups.values())
    if groups and broadcast.status != BroadcastStatus.PAUSED:
        broadcast.status = BroadcastStatus.SENDING
    broadcast.finished_at = None
    broadcast.notified_at = None
    return RetryPlan(send_count, len(skip_ids), batch_ids)


def start_due(session: Session) -> int:
    """Scheduled broadcasts whose time has come become `queued`; the reconciler then
    enqueues their batches like any other pending ones."""
    now = utcnow()
    return session.execute(
        update(Broadcast)
        .where(Broadcast.status == BroadcastStatus.SCHEDULED, Broadcast.scheduled_at <= now)
        .values(status=BroadcastStatus.QUEUED, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
