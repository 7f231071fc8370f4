"""How far a broadcast has got: the one summary the API, the CLI and client callbacks show."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import Batch, Broadcast, Recipient, as_utc, utcnow
from shared.plivo_codes import meaning


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 with its zone."""
    return as_utc(moment).isoformat() if moment is not None else None


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


def progress(summary: dict, await_reports: bool) -> dict:
    """How many recipients have reached the end of the road. With delivery reports on,
    `queued` and `sent` are still on their way; without them, `queued` is as far as we see."""
    by_status = summary["recipients"]["by_status"]
    total = summary["recipients"]["total"]
    waiting = ("pending", "queued", "sent") if await_reports else ("pending",)
    final = total - sum(by_status.get(status, 0) for status in waiting)
    percent = round(100 * final / total, 1) if total else 100.0
    return {"final": final, "total": total, "percent": percent}


def recent_rate(session: Session, broadcast: Broadcast, window_seconds: int = 60) -> float:
    """Messages handed to Plivo per second over the last `window_seconds` (or since the
    broadcast started, when that is shorter)."""
    now = utcnow()
    since = now - timedelta(seconds=window_seconds)
    sent = session.scalar(
        select(func.coalesce(func.sum(Batch.size), 0)).where(
            Batch.broadcast_id == broadcast.id, Batch.submitted_at >= since
        )
    )
    age = (now - as_utc(broadcast.created_at)).total_seconds()
    return round(sent / max(1.0, min(window_seconds, age)), 2)


def eta_seconds(pending: int, mps: float, rate: float) -> float | None:
    """Time left at the pacing limit (or, unlimited, at the rate seen lately)."""
    if pending == 0:
        return 0.0
    speed = mps if mps > 0 else rate
    return round(pending / speed, 1) if speed > 0 else None
