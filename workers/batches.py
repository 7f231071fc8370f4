"""The batch state machine: claim, submit, record. The database decides; tasks only ask."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, exists, or_, select, text, update
from sqlalchemy.orm import Session

from shared import audience
from shared.db import chunked, is_postgres
from shared.lifecycle import sweep_cancelled
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
from shared.plivo_client import SendResult


@dataclass
class Job:
    """What one attempt sends: read in one short transaction, used after it closed."""

    broadcast_id: uuid.UUID
    sender: str
    text: str | None
    recipients: dict[str, int]  # E.164 → recipient id
    slot: datetime | None = None  # booked send time, when an earlier attempt booked one
    kind: str = "sms"
    media: dict | None = None
    priority: str = "normal"
    # This attempt's own booking on the pacing timelines, given back if it stands down.
    booking: str | None = None
    # Quiet hours: the batch's zone key and the broadcast's window ({"start", "end"}).
    zone: str | None = None
    quiet_hours: dict | None = None


def _broadcast_sendable():
    return exists().where(
        and_(Broadcast.id == Batch.broadcast_id, Broadcast.status.in_(BroadcastStatus.SENDABLE))
    )


def claim_batch(
    session: Session, batch_id: int, lease: timedelta, early: timedelta = timedelta(0)
) -> str | None:
    """Take a pending batch of a sendable broadcast; None when someone else has it or it
    is not due. One conditional UPDATE, so a duplicate task changes nothing. A batch whose
    slot is at most `early` away is due: its task is sent that much ahead on purpose."""
    now = utcnow()
    token = str(uuid.uuid4())
    sendable = _broadcast_sendable()
    result = session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.status == BatchStatus.PENDING,
            (Batch.not_before.is_(None)) | (Batch.not_before <= now + early),
            # Held by quiet hours: whatever task turns up early (a resume, a duplicate),
            # nobody is texted before the hold ends (not even by the pacing lead).
            (Batch.hold_until.is_(None)) | (Batch.hold_until <= now),
            sendable,
        )
        .values(
            status=BatchStatus.CLAIMED,
            claim_token=token,
            lease_expires_at=now + lease,
            attempts=Batch.attempts + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    broadcast_id = session.scalar(select(Batch.broadcast_id).where(Batch.id == batch_id))
    session.execute(
        update(Broadcast)
        .where(Broadcast.id == broadcast_id, Broadcast.status == BroadcastStatus.QUEUED)
        .values(status=BroadcastStatus.SENDING, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return token


def _fenced(batch_id: int, token: str):
    return update(Batch).where(Batch.id == batch_id, Batch.claim_token == token)


def load_job(session: Session, batch_id: int) -> Job:
    """The batch's pending recipients; anyone who opted out since intake is skipped now.
    A batch of a pooled or personalised broadcast sends its own sender and text."""
    # A large list broadcast's batch may still keep its numbers as text: rows first.
    audience.write(session, [batch_id])
    batch = session.get(Batch, batch_id)
    broadcast = session.get(Broadcast, batch.broadcast_id)
    rows = session.execute(
        select(Recipient.id, Recipient.phone).where(
            Recipient.batch_id == batch_id, Recipient.status == RecipientStatus.PENDING
        )
    ).all()
    recipients = {phone: rid for rid, phone in rows}
    opted_out = opted_out_among(session, list(recipients)) if recipients else set()
    if opted_out:
        _set_status(
            session,
            [recipients.pop(phone) for phone in opted_out],
            RecipientStatus.SKIPPED,
            reason="opted out",
        )
    # Only a booked slot is kept: `not_before` alone is an unbooked batch's estimate.
    slot = as_utc(batch.slot_at) if batch.slot_at else None
    return Job(
        broadcast.id,
        batch.sender or broadcast.sender,
        batch.text if batch.text is not None else broadcast.text,
        recipients,
        slot,
        broadcast.kind,
        broadcast.media,
        broadcast.priority,
        zone=batch.zone,
        quiet_hours=broadcast.quiet_hours,
    )


def hold(session: Session, batch_id: int, token: str, until: datetime) -> bool:
    """Quiet hours began in the batch's zone before it was sent (a broadcast that ran
    long, a resume at night): back to `pending`, held until `until`, keeping no slot and
    no task; the reconciler sends it then. The claim did not become an attempt."""
    now = utcnow()
    result = session.execute(
        _fenced(batch_id, token)
        .where(Batch.status == BatchStatus.CLAIMED)
        .values(
            status=BatchStatus.PENDING,
            claim_token=None,
            lease_expires_at=None,
            not_before=None,
            slot_at=None,
            enqueued_at=None,
            hold_until=until,
            attempts=Batch.attempts - 1,
            updated_at=now,
        )
    )
    return result.rowcount == 1


def mark_submitting(session: Session, batch_id: int, token: str, lease: timedelta) -> bool:
    """Committed just before the Plivo call: a batch found here after its lease is
    ambiguous (the call may have reached Plivo) and is never re-sent automatically.
    `submitting_at` is the window an ambiguous attempt is looked up in at Plivo."""
    now = utcnow()
    result = session.execute(
        _fenced(batch_id, token)
        .where(Batch.status == BatchStatus.CLAIMED, _broadcast_sendable())
        .values(
            status=BatchStatus.SUBMITTING,
            lease_expires_at=now + lease,
            submitting_at=now,
            updated_at=now,
        )
    )
    return result.rowcount == 1


def stand_down(session: Session, batch_id: int, token: str) -> str | None:
    """The broadcast was paused or cancelled while this batch waited for its slot: give the
    batch back (paused) or cancel it with its recipients (cancelled)."""
    status = session.scalar(
        select(Broadcast.status)
        .join(Batch, Batch.broadcast_id == Broadcast.id)
        .where(Batch.id == batch_id)
    )
    if status not in (BroadcastStatus.PAUSED, BroadcastStatus.CANCELLED):
        return None
    release(session, batch_id, token, not_before=None, enqueued=False)
    if status == BroadcastStatus.CANCELLED:
        sweep_cancelled(session, session.get(Batch, batch_id).broadcast_id)
    return status


def release(
    session: Session,
    batch_id: int,
    token: str,
    *,
    not_before: datetime | None,
    enqueued: bool,
    error: str | None = None,
    slot_at: datetime | None = None,
) -> bool:
    """Hand the batch back to `pending`: to wait for its slot, or after a failure that
    proves nothing was sent. `enqueued` says whether the caller is about to enqueue a task
    for it; if not, the reconciler will once it is due. `slot_at` is the slot it keeps
    booked (None: it books again), `not_before` when it may be claimed again."""
    now = utcnow()
    values = {
        "status": BatchStatus.PENDING,
        "claim_token": None,
        "lease_expires_at": None,
        "not_before": not_before,
        "slot_at": slot_at,
        "enqueued_at": now if enqueued else None,
        "updated_at": now,
    }
    if error is not None:
        values["last_error"] = error[:2000]
    result = session.execute(
        _fenced(batch_id, token)
        .where(Batch.status.in_((BatchStatus.CLAIMED, BatchStatus.SUBMITTING)))
        .values(**values)
    )
    return result.rowcount == 1


def hand_back(
    session: Session,
    batch_id: int,
    token: str,
    broadcast_id: uuid.UUID,
    *,
    not_before: datetime,
    slot_at: datetime | None,
    enqueued: bool,
) -> tuple[bool, bool]:
    """`release` for a batch that waits for its slot; returns (released, still sendable).
    A pause or cancel gives back the slots of its waiting batches (shared/lifecycle.py):
    the broadcast's row is read FOR SHARE before (their lock order) and again after the
    release (SQLite locks at the first write), so either the pause sees this batch's slot
    or this sees the pause. Stopped, the batch keeps nothing (the caller gives it back)."""
    session.scalar(
        select(Broadcast.status).where(Broadcast.id == broadcast_id).with_for_update(read=True)
    )
    released = release(
        session, batch_id, token, not_before=not_before, slot_at=slot_at, enqueued=enqueued
    )
    status = session.scalar(select(Broadcast.status).where(Broadcast.id == broadcast_id))
    sendable = status in BroadcastStatus.SENDABLE
    if released and not sendable:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.status == BatchStatus.PENDING)
            .values(not_before=None, slot_at=None, enqueued_at=None)
            .execution_options(synchronize_session=False)
        )
    return released, sendable


def holds_claim(session: Session, batch_id: int, token: str) -> bool:
    """Whether this attempt still holds the batch (nobody released or took it meanwhile)."""
    return session.scalar(select(Batch.claim_token).where(Batch.id == batch_id)) == token


def mark_not_enqueued(session: Session, batch_ids: list[int]) -> None:
    """The broker refused the task: let the reconciler try again on its next pass."""
    session.execute(
        update(Batch)
        .where(Batch.id.in_(batch_ids), Batch.status == BatchStatus.PENDING)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )


def record_submitted(
    session: Session, batch_id: int, token: str, job: Job, result: SendResult
) -> None:
    """Plivo accepted the call: every recipient gets its uuid or `rejected`."""
    now = utcnow()
    # Also from `unknown`: if the reconciler gave up on this call but Plivo did answer,
    # the answer is the truth.
    changed = session.execute(
        _fenced(batch_id, token)
        .where(Batch.status.in_((BatchStatus.SUBMITTING, BatchStatus.UNKNOWN)))
        .values(
            status=BatchStatus.SUBMITTED,
            api_id=result.api_id,
            submitted_at=now,
            lease_expires_at=None,
            updated_at=now,
        )
    ).rowcount
    if not changed and session.scalar(
        select(Batch.api_id).where(Batch.id == batch_id, Batch.status == BatchStatus.SUBMITTED)
    ) == result.api_id:
        # A retried write whose first try did commit: writing the uuids again would move
        # recipients that reports already moved on back to `queued`.
        return
    pairs = [(job.recipients[number], uuid_) for number, uuid_ in result.uuids.items()]
    _set_uuids(session, pairs, now)
    rejected = [job.recipients[n] for n in result.invalid if n in job.recipients]
    _set_status(session, rejected, RecipientStatus.REJECTED, reason="invalid number (Plivo)")


def record_failure(
    session: Session,
    batch_id: int,
    token: str,
    batch_status: str,
    recipient_status: str,
    error: str,
    resolve_after: datetime | None = None,
) -> None:
    """A final failed attempt (`failed` or `unknown`): the error is kept on the batch and on
    each of its still-pending recipients, for operators to read and retry. An `unknown`
    batch is looked up at Plivo from `resolve_after` on (workers/resolution.py, which also
    waits until the attempt is UNKNOWN_RESOLVE_AFTER old)."""
    now = utcnow()
    values = {
        "status": batch_status,
        "last_error": error[:2000],
        "lease_expires_at": None,
        "updated_at": now,
    }
    if batch_status == BatchStatus.UNKNOWN:
        # A fresh ambiguous attempt (maybe of a batch resolved and re-sent before) starts
        # its own resolution.
        values |= {
            "resolve_after": resolve_after or now,
            "resolve_attempts": 0,
            "resolved_at": None,
            "resolution": None,
        }
    changed = session.execute(
        _fenced(batch_id, token)
        .where(Batch.status.in_((BatchStatus.CLAIMED, BatchStatus.SUBMITTING)))
        .values(**values)
    ).rowcount
    if changed:
        ids = session.scalars(
            select(Recipient.id).where(
                Recipient.batch_id == batch_id, Recipient.status == RecipientStatus.PENDING
            )
        ).all()
        _set_status(session, list(ids), recipient_status, reason=error[:500])


def pause_broadcast(session: Session, broadcast_id: uuid.UUID, reason: str) -> None:
    session.execute(
        update(Broadcast)
        .where(Broadcast.id == broadcast_id, Broadcast.status.in_(BroadcastStatus.SENDABLE))
        .values(status=BroadcastStatus.PAUSED, status_reason=reason[:500], updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def finish_broadcast_if_done(
    session: Session, broadcast_id: uuid.UUID, await_reports: bool
) -> str | None:
    """When no batch is left to send or to resolve (and, when Plivo reports delivery to us,
    no recipient is still waiting for its report), the broadcast is completed, with
    failures if any. A recipient the status sweep looked up at Plivo waits no more, even if
    Plivo only says `sent` ("sent, no delivery report")."""
    if _has_open_batch(session, broadcast_id):
        return None
    # An operator's retry may be committing new batches right now: take the broadcast's row
    # lock (retry holds it while it writes) and look again, so a broadcast is never
    # completed with batches nobody will claim. Only here, when it looks finished, so the
    # appliers calling this after every bulk of reports rarely lock anything.
    session.scalar(select(Broadcast.id).where(Broadcast.id == broadcast_id).with_for_update())
    if _has_open_batch(session, broadcast_id):
        return None
    waiting = (RecipientStatus.PENDING, RecipientStatus.QUEUED, RecipientStatus.SENT)
    if await_reports and _any_recipient_in(session, broadcast_id, waiting, unchecked=True):
        return None
    bad = _any_recipient_in(session, broadcast_id, RecipientStatus.FAILURES)
    status = BroadcastStatus.COMPLETED_WITH_FAILURES if bad else BroadcastStatus.COMPLETED
    now = utcnow()
    changed = session.execute(
        update(Broadcast)
        .where(
            Broadcast.id == broadcast_id,
            Broadcast.status.in_(BroadcastStatus.SENDABLE),
            # SQLite has no row locks; its writers are serialised, and this re-check runs
            # under the write lock, after any retry that committed first.
            ~_open_batch_exists(broadcast_id),
        )
        .values(status=status, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    return status if changed else None


def _open_batch_exists(broadcast_id: uuid.UUID):
    # An `unknown` batch not yet resolved is open: its resolution may find it unsent and
    # hand it back to `pending`, which a completed broadcast would never claim.
    return exists().where(
        Batch.broadcast_id == broadcast_id,
        or_(
            Batch.status.not_in(BatchStatus.FINAL),
            and_(Batch.status == BatchStatus.UNKNOWN, Batch.resolved_at.is_(None)),
        ),
    )


def _has_open_batch(session: Session, broadcast_id: uuid.UUID) -> bool:
    return session.scalar(select(_open_batch_exists(broadcast_id)))


def _any_recipient_in(
    session: Session, broadcast_id: uuid.UUID, statuses, unchecked: bool = False
) -> bool:
    """`unchecked`: only recipients the status sweep has not looked up at Plivo yet."""
    # EXISTS on (broadcast_id, status) stays cheap for 100k recipients; the applier asks
    # after every bulk of delivery reports.
    condition = [Recipient.broadcast_id == broadcast_id, Recipient.status.in_(statuses)]
    if unchecked:
        condition.append(Recipient.report_checked_at.is_(None))
    return session.scalar(select(exists().where(*condition)))


def _set_status(session: Session, ids: list[int], status: str, reason: str | None) -> None:
    now = utcnow()
    for chunk in chunked(ids):
        session.execute(
            update(Recipient)
            .where(Recipient.id.in_(chunk))
            .values(status=status, error_reason=reason, updated_at=now)
            .execution_options(synchronize_session=False)
        )


def _set_uuids(session: Session, pairs: list[tuple[int, str]], now: datetime) -> None:
    if not pairs:
        return
    if is_postgres(session):
        # One statement for the whole batch; executemany would be 1000 round trips.
        session.execute(
            text(
                "UPDATE recipients SET message_uuid = v.uuid, status = :status, "
                "updated_at = :now FROM unnest(CAST(:ids AS bigint[]), CAST(:uuids AS text[])) "
                "AS v(id, uuid) WHERE recipients.id = v.id"
            ),
            {
                "ids": [rid for rid, _ in pairs],
                "uuids": [u for _, u in pairs],
                "status": RecipientStatus.QUEUED,
                "now": now,
            },
        )
        return
    table = Recipient.__table__
    session.execute(
        update(table)
        .where(table.c.id == bindparam("rid"))
        .values(message_uuid=bindparam("uuid"), status=RecipientStatus.QUEUED, updated_at=now),
        [{"rid": rid, "uuid": u} for rid, u in pairs],
    )
