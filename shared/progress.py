"""How far a broadcast has got: the one summary the API, the CLI and client callbacks show."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import Batch, Broadcast, Recipient
from shared.plivo_codes import meaning


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands datetimes back without their zone)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _grouped(session: Session, column, broadcast_id) -> dict:
    model = column.class_
    rows = session.execute(
        select(column, func.count())
        .where(model.broadcast_id == broadcast_id, column.is_not(None))
        .group_by(column)
    ).all()
    return {key: count for key, count in rows}


def summarize(session: Session, broadcast: Broadcast) -> dict:
    """Status, intake counts, recipients by status and by error code, batches by status."""
    recipients = _grouped(session, Recipient.status, broadcast.id)
    errors = _grouped(session, Recipient.error_code, broadcast.id)
    batches = _grouped(session, Batch.status, broadcast.id)
    return {
        "id": str(broadcast.id),
        "kind": broadcast.kind,
        "status": broadcast.status,
        "status_reason": broadcast.status_reason,
        "sender": broadcast.sender,
        "encoding": broadcast.encoding,
        "segments": broadcast.segments,
        "counts": broadcast.counts,
        "recipients": {"total": sum(recipients.values()), "by_status": recipients},
        "errors": {
            code: {"count": count, "meaning": meaning(code)} for code, count in errors.items()
        },
        "batches": {"total": sum(batches.values()), "by_status": batches},
        "created_at": iso(broadcast.created_at),
        "updated_at": iso(broadcast.updated_at),
        "finished_at": iso(broadcast.finished_at),
    }
