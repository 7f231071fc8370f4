"""Recipients not written as rows yet. A list broadcast of more than a hundred thousand
contacts keeps each batch's numbers in `batches.audience` at intake (api/list_audience.py):
a million rows with four index entries each were 10-12 s of the 202, the same contacts
kept as a thousand text values take 3 s with their reading and numbering. The rows are
written afterwards, in send
order: by the batch's own task before it sends, by a cancellation before it settles the
batch, and by the `write_audiences` task in the background (a million in about 20 s).
Until then each such batch counts as `size` pending recipients, and a recipients listing
that could show them answers 409 (api/recipients.py).

Only PostgreSQL keeps audiences (SQLite takes the Python path of a list broadcast)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from sqlalchemy import String, func, literal, select, text, union_all
from sqlalchemy.orm import Session

from shared.db import is_postgres
from shared.models import Batch, BatchStatus, Recipient, RecipientStatus

# Batches per transaction of the background writer, and how long one run goes on: it
# shares the one-process events worker with delivery reports and the reconciler, so a run
# (every WRITE_AUDIENCES_EVERY = 2 s) takes at most half of it.
WRITE_CHUNK = 10
WRITE_SECONDS = 1.0


def write(
    session: Session,
    batch_ids: Sequence[int],
    status: str = RecipientStatus.PENDING,
    reason: str | None = None,
    batch_status: str | None = None,
) -> int:
    """Write the recipients of those of `batch_ids` whose audience is still kept (and,
    given `batch_status`, whose batch is in it) as rows in `status`, in the caller's
    transaction. The audience is taken and written in one statement, so a second caller
    waits for the first and then finds nothing to take: no number is written twice."""
    if not batch_ids or not is_postgres(session):
        return 0
    only = " AND status = :batch_status" if batch_status else ""
    return session.execute(
        text(
            # Locked and re-checked: a second caller waits here, then finds it NULL.
            "WITH taken AS (SELECT id, broadcast_id, audience FROM batches"
            f" WHERE id = ANY(CAST(:ids AS bigint[])) AND audience IS NOT NULL{only}"
            " FOR UPDATE), "
            # RETURNING would give the new (NULL) audience, hence the CTE above.
            "cleared AS (UPDATE batches b SET audience = NULL FROM taken t WHERE b.id = t.id) "
            "INSERT INTO recipients (broadcast_id, batch_id, phone, status, error_reason)"
            " SELECT t.broadcast_id, t.id, p.phone, :status, :reason FROM taken t,"
            " unnest(string_to_array(t.audience, ',')) WITH ORDINALITY AS p(phone, n)"
            " ORDER BY t.id, p.n"
        ),
        {
            "ids": "{" + ",".join(map(str, batch_ids)) + "}",
            "status": status,
            "reason": reason,
            "batch_status": batch_status,
        },
    ).rowcount


def write_some(session: Session, limit: int = WRITE_CHUNK) -> int:
    """Write the kept audiences of up to `limit` pending batches, oldest first; batches
    another transaction holds (a claim, a cancellation) are left to it."""
    if not is_postgres(session):
        return 0
    ids = session.scalars(
        select(Batch.id)
        .where(Batch.audience.is_not(None), Batch.status == BatchStatus.PENDING)
        .order_by(Batch.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return write(session, ids, batch_status=BatchStatus.PENDING)


def write_for(session_factory, seconds: float = WRITE_SECONDS) -> int:
    """Background writing: chunks of WRITE_CHUNK batches, one transaction each, until
    none is left or `seconds` have gone (the next run goes on)."""
    deadline = time.monotonic() + seconds
    written = 0
    while time.monotonic() < deadline:
        with session_factory() as session:
            done = write_some(session)
        if not done:
            break
        written += done
    return written


def unwritten(session: Session, broadcast_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Recipients still kept as audiences, per broadcast: all `pending` (not one of them
    has been sent: a batch's task writes them before it sends)."""
    if not broadcast_ids:
        return {}
    rows = session.execute(
        select(Batch.broadcast_id, func.sum(Batch.size))
        .where(Batch.broadcast_id.in_(broadcast_ids), Batch.audience.is_not(None))
        .group_by(Batch.broadcast_id)
    ).all()
    return {broadcast_id: int(count) for broadcast_id, count in rows}


def recipients_by_status(
    session: Session, broadcast_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, int]]:
    """Recipients by status of each broadcast, those still kept as text counted `pending`,
    in one statement: one snapshot, so a batch written meanwhile counts once, as text or
    as rows, never neither."""
    found: dict[uuid.UUID, dict[str, int]] = {broadcast_id: {} for broadcast_id in broadcast_ids}
    if not broadcast_ids:
        return found
    rows = (
        select(Recipient.broadcast_id, Recipient.status, func.count())
        .where(Recipient.broadcast_id.in_(broadcast_ids))
        .group_by(Recipient.broadcast_id, Recipient.status)
    )
    kept = (
        select(Batch.broadcast_id, literal(RecipientStatus.PENDING, String), func.sum(Batch.size))
        .where(Batch.broadcast_id.in_(broadcast_ids), Batch.audience.is_not(None))
        .group_by(Batch.broadcast_id)
    )
    for broadcast_id, status, count in session.execute(union_all(rows, kept)):
        counts = found[broadcast_id]
        counts[status] = counts.get(status, 0) + int(count)
    return found
