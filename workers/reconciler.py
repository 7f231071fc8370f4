"""The reconciler, run by Celery beat every few seconds. The database is the source of truth
and the broker only transport: whatever a crash, a lost message or a Redis restart left
behind, this puts back on its way, without ever sending anything twice."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from shared import audience, lifecycle, metrics
from shared.config import Settings, get_settings
from shared.db import session_scope
from shared.logs import log_event
from shared.models import Batch, BatchStatus, Broadcast, BroadcastStatus, RecipientStatus, utcnow
from shared.taskqueue import (
    MAINTENANCE_QUEUE,
    NOTIFY_COMPLETION,
    RECONCILE,
    RESOLVE_UNKNOWN,
    SWEEP_REPORTS,
    WEBHOOKS_QUEUE,
    WRITE_AUDIENCES,
    EnqueueError,
    celery_app,
    enqueue_batches,
    enqueue_tasks,
)
from workers import batches, report_sweep, resolution

log = logging.getLogger(__name__)

DISPATCH_LIMIT = 1000
AMBIGUOUS_REASON = (
    "the worker stopped during the Plivo call: the messages may or may not have been sent"
)


def release_expired_claims(session: Session) -> int:
    """A worker that claimed a batch and vanished before calling Plivo sent nothing: the
    batch is pending again. Clearing the token fences the old worker out."""
    now = utcnow()
    return session.execute(
        update(Batch)
        .where(Batch.status == BatchStatus.CLAIMED, Batch.lease_expires_at < now)
        .values(
            status=BatchStatus.PENDING,
            claim_token=None,
            lease_expires_at=None,
            enqueued_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount


def expire_stale_submissions(session: Session, settings: Settings) -> int:
    """A batch still `submitting` after its lease may have reached Plivo: `unknown`, never
    re-sent blindly; it is looked up in Plivo's message list UNKNOWN_RESOLVE_AFTER later."""
    now = utcnow()
    resolve_after = now + timedelta(seconds=settings.unknown_resolve_after)
    stale = session.execute(
        select(Batch.id, Batch.claim_token).where(
            Batch.status == BatchStatus.SUBMITTING, Batch.lease_expires_at < now
        )
    ).all()
    for batch_id, token in stale:
        batches.record_failure(
            session,
            batch_id,
            token,
            BatchStatus.UNKNOWN,
            RecipientStatus.UNKNOWN,
            AMBIGUOUS_REASON,
            resolve_after=resolve_after,
        )
    return len(stale)


def release_held_batches(session: Session) -> int:
    """Batches quiet hours held whose time has come lose their hold and any task mark, so
    the next step enqueues them. Only the partial index on `hold_until` is read (it holds
    just the held batches), and nothing is released a moment early: the send-time check
    would only hold it again."""
    now = utcnow()
    return session.execute(
        update(Batch)
        .where(
            Batch.hold_until.is_not(None),
            Batch.hold_until <= now,
            Batch.status == BatchStatus.PENDING,
        )
        .values(hold_until=None, enqueued_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount


def claim_due_batches(
    session: Session, settings: Settings
) -> dict[tuple[uuid.UUID, str], list[int]]:
    """Pending batches of sendable broadcasts that are due and have no live task: never
    enqueued (broker down at intake, a long pacing wait) or enqueued so long ago that the
    task must have been lost. Marks them enqueued; the caller enqueues after commit."""
    now = utcnow()
    due = now + timedelta(seconds=settings.pacing_lead)
    lost = now - timedelta(seconds=settings.requeue_after)
    rows = session.execute(
        select(Batch.id, Batch.broadcast_id, Broadcast.kind)
        .join(Broadcast, Broadcast.id == Batch.broadcast_id)
        .where(
            Batch.status == BatchStatus.PENDING,
            or_(Batch.not_before.is_(None), Batch.not_before <= due),
            or_(Batch.enqueued_at.is_(None), Batch.enqueued_at < lost),
            # Still held by quiet hours (release_held_batches lets them go).
            Batch.hold_until.is_(None),
            Broadcast.status.in_(BroadcastStatus.SENDABLE),
        )
        .order_by(Batch.not_before, Batch.id)
        .limit(DISPATCH_LIMIT)
    ).all()
    found: dict[tuple[uuid.UUID, str], list[int]] = defaultdict(list)
    for batch_id, broadcast_id, kind in rows:
        found[(broadcast_id, kind)].append(batch_id)
    if rows:
        session.execute(
            update(Batch)
            .where(Batch.id.in_([r[0] for r in rows]), Batch.status == BatchStatus.PENDING)
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
    return found


def complete_finished_broadcasts(session: Session, await_reports: bool) -> int:
    """Broadcasts whose batches are all final (e.g. the last one ended `unknown` by the
    reconciler) are completed here; workers complete the rest as they finish."""
    # An `unknown` batch still being resolved keeps its broadcast open (batches.py).
    open_batch = exists().where(
        and_(
            Batch.broadcast_id == Broadcast.id,
            or_(
                Batch.status.not_in(BatchStatus.FINAL),
                and_(Batch.status == BatchStatus.UNKNOWN, Batch.resolved_at.is_(None)),
            ),
        )
    )
    candidates = session.scalars(
        select(Broadcast.id).where(Broadcast.status.in_(BroadcastStatus.SENDABLE), ~open_batch)
    ).all()
    for broadcast_id in candidates:
        batches.finish_broadcast_if_done(session, broadcast_id, await_reports)
    return len(candidates)


def claim_due_notices(session: Session) -> list[str]:
    """Finished broadcasts whose client asked for a notice: marked, then enqueued once."""
    now = utcnow()
    due = session.scalars(
        select(Broadcast.id).where(
            Broadcast.callback_url.is_not(None),
            Broadcast.notified_at.is_(None),
            Broadcast.status.in_(BroadcastStatus.FINAL),
        )
    ).all()
    if due:
        session.execute(
            update(Broadcast)
            .where(Broadcast.id.in_(due), Broadcast.notified_at.is_(None))
            .values(notified_at=now)
            .execution_options(synchronize_session=False)
        )
    return [str(broadcast_id) for broadcast_id in due]


def release_notices(session: Session, broadcast_ids: list[str]) -> None:
    """The broker refused the notices: claim them again on the next pass."""
    session.execute(
        update(Broadcast)
        .where(Broadcast.id.in_([uuid.UUID(b) for b in broadcast_ids]))
        .values(notified_at=None)
        .execution_options(synchronize_session=False)
    )


def sweep_cancelled_broadcasts(session: Session) -> int:
    """Batches handed back after their broadcast was cancelled are cancelled too."""
    pending = exists().where(
        and_(Batch.broadcast_id == Broadcast.id, Batch.status == BatchStatus.PENDING)
    )
    cancelled = session.scalars(
        select(Broadcast.id).where(Broadcast.status == BroadcastStatus.CANCELLED, pending)
    ).all()
    return sum(lifecycle.sweep_cancelled(session, broadcast_id) for broadcast_id in cancelled)


def reconcile(settings: Settings) -> dict[str, int]:
    """One pass; every step is idempotent, so overlapping passes do no harm."""
    with session_scope(settings.database_url) as session:
        started = lifecycle.start_due(session)
        released = release_expired_claims(session)
        unknown = expire_stale_submissions(session, settings)
        sweep_cancelled_broadcasts(session)
        held = release_held_batches(session)
    with session_scope(settings.database_url) as session:
        due = claim_due_batches(session, settings)
    enqueued = 0
    for (broadcast_id, kind), batch_ids in due.items():
        try:
            enqueue_batches(settings.redis_url, kind, broadcast_id, batch_ids)
            enqueued += len(batch_ids)
        except EnqueueError:
            with session_scope(settings.database_url) as session:
                batches.mark_not_enqueued(session, batch_ids)
    with session_scope(settings.database_url) as session:
        completed = complete_finished_broadcasts(session, settings.status_callback_url is not None)
    with session_scope(settings.database_url) as session:
        notices = claim_due_notices(session)
    if notices:
        try:
            enqueue_tasks(
                settings.redis_url,
                NOTIFY_COMPLETION,
                WEBHOOKS_QUEUE,
                [{"broadcast_id": broadcast_id} for broadcast_id in notices],
            )
        except EnqueueError:
            with session_scope(settings.database_url) as session:
                release_notices(session, notices)
    counts = {
        "started": started,
        "released": released,
        "unknown": unknown,
        "released_holds": held,
        "enqueued": enqueued,
        "notices": len(notices),
    }
    metrics.reconcile_pass(counts)
    if any(counts.values()):
        log_event(log, "reconcile", **counts)
    counts["checked_broadcasts"] = completed
    return counts


@celery_app.task(name=RECONCILE, queue=MAINTENANCE_QUEUE, ignore_result=True)
def reconcile_task() -> dict[str, int]:
    return reconcile(get_settings())


# The passes that ask Plivo run as their own tasks, so a reconcile pass stays a few cheap
# queries: the status sweep (Message Get) and the resolution of `unknown` batches (Message
# list), each bounded to a few seconds and paced through the account's limiters.
@celery_app.task(name=SWEEP_REPORTS, queue=MAINTENANCE_QUEUE, ignore_result=True)
def sweep_reports_task() -> dict[str, int]:
    return report_sweep.sweep(get_settings())


@celery_app.task(name=RESOLVE_UNKNOWN, queue=MAINTENANCE_QUEUE, ignore_result=True)
def resolve_unknown_task() -> dict[str, int]:
    return resolution.resolve(get_settings())


@celery_app.task(name=WRITE_AUDIENCES, queue=MAINTENANCE_QUEUE, ignore_result=True)
def write_audiences_task() -> int:
    url = get_settings().database_url
    return audience.write_for(lambda: session_scope(url))
