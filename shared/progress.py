"""How far a broadcast has got: the one summary the API, the CLI and client callbacks show."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import audience, timelines
from shared.config import Settings
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
    """Status, intake counts, recipients by status and by error code, batches by status,
    and what looking messages up at Plivo found (the status sweep, the resolution of
    `unknown` batches)."""
    recipients = audience.recipients_by_status(session, [broadcast.id])[broadcast.id]
    errors = _grouped(session, Recipient.error_code, broadcast.id)
    batches = _grouped(session, Batch.status, broadcast.id)
    return {
        "id": str(broadcast.id),
        "kind": broadcast.kind,
        "status": broadcast.status,
        "status_reason": broadcast.status_reason,
        "sender": broadcast.sender,
        "priority": broadcast.priority,
        "encoding": broadcast.encoding,
        "segments": broadcast.segments,
        "counts": broadcast.counts,
        "recipients": {"total": sum(recipients.values()), "by_status": recipients},
        "errors": {
            code: {"count": count, "meaning": meaning(code)} for code, count in errors.items()
        },
        "batches": {"total": sum(batches.values()), "by_status": batches},
        "sent_no_report": _sent_no_report(session, broadcast.id),
        "resolutions": _resolutions(session, broadcast.id),
        "created_at": iso(broadcast.created_at),
        "updated_at": iso(broadcast.updated_at),
        "finished_at": iso(broadcast.finished_at),
    }


# Shown per batch: enough for an operator to see what happened, bounded for a huge broadcast.
RESOLUTIONS_SHOWN = 50


def _sent_no_report(session: Session, broadcast_id) -> int:
    """Recipients Plivo still showed only `queued`/`sent` when the status sweep looked them
    up: no final report will come, and they count as final."""
    return session.scalar(
        select(func.count()).where(
            Recipient.broadcast_id == broadcast_id,
            Recipient.status.in_((RecipientStatus.QUEUED, RecipientStatus.SENT)),
            Recipient.report_checked_at.is_not(None),
        )
    )


def _resolutions(session: Session, broadcast_id) -> dict:
    """`unknown` batches still to be looked up at Plivo, and what each resolution found."""
    unresolved = (
        Batch.broadcast_id == broadcast_id,
        Batch.status == BatchStatus.UNKNOWN,
        Batch.resolved_at.is_(None),
    )
    awaiting_batches = session.scalar(select(func.count()).where(*unresolved))
    awaiting_recipients = 0
    if awaiting_batches:
        awaiting_recipients = session.scalar(
            select(func.count()).where(
                Recipient.broadcast_id == broadcast_id,
                Recipient.status == RecipientStatus.UNKNOWN,
                Recipient.batch_id.in_(select(Batch.id).where(*unresolved)),
            )
        )
    rows = session.execute(
        select(
            Batch.seq,
            Batch.status,
            Batch.resolution,
            Batch.resolved_at,
            Batch.resolve_attempts,
            Batch.resolve_after,
        )
        .where(
            Batch.broadcast_id == broadcast_id,
            (Batch.resolution.is_not(None)) | (Batch.status == BatchStatus.UNKNOWN),
        )
        .order_by(Batch.seq)
        .limit(RESOLUTIONS_SHOWN)
    ).all()
    return {
        "awaiting": {"batches": awaiting_batches, "recipients": awaiting_recipients},
        "batches": [
            {
                "seq": seq,
                "status": status,
                "resolution": resolution,
                "resolved_at": iso(resolved_at),
                "tries": tries,
                "next_try_at": None if resolved_at else iso(resolve_after),
            }
            for seq, status, resolution, resolved_at, tries, resolve_after in rows
        ],
    }


def progress(summary: dict, await_reports: bool) -> dict:
    """How many recipients have reached the end of the road. With delivery reports on,
    `queued` and `sent` are still on their way, unless the status sweep found Plivo has no
    more to say; without them, `queued` is as far as we see. `unknown` recipients still to
    be looked up at Plivo are on their way too."""
    by_status = summary["recipients"]["by_status"]
    total = summary["recipients"]["total"]
    waiting = ("pending", "queued", "sent") if await_reports else ("pending",)
    unfinished = sum(by_status.get(status, 0) for status in waiting)
    if await_reports:
        unfinished -= summary.get("sent_no_report", 0)
    unfinished += summary.get("resolutions", {}).get("awaiting", {}).get("recipients", 0)
    final = total - unfinished
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


def eta_seconds(
    pending: int,
    mps: float,
    rate: float,
    *,
    ahead: int = 0,
    wait: float = 0.0,
    unsettled: int = 0,
) -> float | None:
    """Seconds until every recipient is handed to Plivo: the `pending` ones, after `ahead`
    (other broadcasts' messages that go first on the sender), at the pacing limit (or,
    unlimited, at the rate seen lately), from `wait` on (a scheduled start, capacity already
    booked). None when it cannot be known: no rate yet, or nothing left to send but
    `unsettled` recipients whose delivery reports are still to come."""
    if pending == 0:
        return None if unsettled else 0.0
    speed = mps if mps > 0 else rate
    if speed <= 0:
        return None
    return round(max(0.0, wait) + (pending + ahead) / speed, 1)


def outlook(
    session: Session, broadcast: Broadcast, summary: dict, settings: Settings, rate: float
) -> dict:
    """The ETA and, when the broadcast is waiting (on its senders' pacing, on quiet hours, or
    on delivery reports), what for: `eta_seconds` (quiet-hours waits included), `waiting_for`
    (a sentence, or None), `pacing` (the limits in force, how far the senders are booked,
    what waits before this broadcast) and `held` (recipients quiet hours hold: how many,
    the first and last release)."""
    by_status = summary["recipients"]["by_status"]
    pending = by_status.get("pending", 0)
    reached = progress(summary, settings.status_callback_url is not None)
    unsettled = max(0, reached["total"] - reached["final"] - pending)
    answer: dict = {"eta_seconds": None, "waiting_for": None, "pacing": None, "held": None}
    if broadcast.status in BroadcastStatus.FINAL:
        return answer
    now = utcnow()
    try:
        view = _pacing_view(session, settings, broadcast)
    except redis.RedisError:
        view = None
    if view is not None:
        mps, ahead = view.mps, view.ahead
        booked_for = max(0.0, view.booked_until - view.now)
        booked_until = now + timedelta(seconds=booked_for)
        answer["pacing"] = {
            "mps": mps,
            "account_mps": view.account_mps,
            "sender_mps": view.sender_mps,
            "booked_until": iso(booked_until) if booked_for > 0 else None,
            "ahead": ahead,
            "waiting_unbooked": view.own_waiting,
        }
    else:
        mps, ahead, booked_for, booked_until = 0.0, 0, 0.0, now
    wait = booked_for
    if broadcast.scheduled_at is not None and broadcast.status == BroadcastStatus.SCHEDULED:
        wait = max(wait, (as_utc(broadcast.scheduled_at) - now).total_seconds())
    holds = _holds(session, broadcast.id) if pending and broadcast.quiet_hours else []
    held = sum(count for _, count in holds)
    if holds:
        answer["held"] = {
            "recipients": held,
            "first_release": iso(holds[0][0]),
            "last_release": iso(holds[-1][0]),
        }
    if broadcast.status != BroadcastStatus.PAUSED:
        answer["eta_seconds"] = _eta_with_holds(
            pending - held, holds, mps, rate, ahead=ahead, wait=wait, unsettled=unsettled, now=now
        )
    if broadcast.status not in BroadcastStatus.SENDABLE:
        return answer
    if pending:
        next_send = session.scalar(
            select(func.min(func.coalesce(Batch.slot_at, Batch.not_before))).where(
                Batch.broadcast_id == broadcast.id, Batch.status == BatchStatus.PENDING
            )
        )
        reasons = []
        if next_send is not None and as_utc(next_send) - now > timedelta(
            seconds=settings.pacing_max_sleep
        ):
            reasons.append(
                _pacing_reason(
                    view.sender if view is not None else broadcast.sender,
                    booked_until if booked_for > 0 else None,
                    ahead,
                    mps,
                    next_send,
                )
            )
        if holds:
            window = broadcast.quiet_hours
            reasons.append(
                f"quiet hours ({window['start']}-{window['end']} in the recipients' local time):"
                f" {held:,} recipients wait, the first until {_clock(holds[0][0])}"
            )
        if reasons:
            answer["waiting_for"] = "; ".join(reasons)
    elif unsettled:
        last_sent = session.scalar(
            select(func.max(Batch.submitted_at)).where(Batch.broadcast_id == broadcast.id)
        )
        reason = f"delivery reports of {unsettled:,} recipients"
        if last_sent is not None:
            lookup = as_utc(last_sent) + timedelta(seconds=settings.report_timeout)
            reason += f" (any still missing are looked up at Plivo from {_clock(lookup)})"
            answer["reports_due_by"] = iso(lookup)
        answer["waiting_for"] = reason
    return answer


def _holds(session: Session, broadcast_id) -> list[tuple[datetime, int]]:
    """(hold end, pending recipients) of the batches quiet hours hold, earliest first."""
    rows = session.execute(
        select(Batch.hold_until, func.count(Recipient.id))
        .join(Recipient, Recipient.batch_id == Batch.id)
        .where(
            Batch.broadcast_id == broadcast_id,
            Batch.status == BatchStatus.PENDING,
            Batch.hold_until.is_not(None),
            Recipient.status == RecipientStatus.PENDING,
        )
        .group_by(Batch.hold_until)
        .order_by(Batch.hold_until)
    ).all()
    return [(as_utc(until), count) for until, count in rows]


def _eta_with_holds(
    free: int,
    holds: list[tuple[datetime, int]],
    mps: float,
    rate: float,
    *,
    ahead: int,
    wait: float,
    unsettled: int,
    now: datetime,
) -> float | None:
    """`eta_seconds` for the recipients free to go, and for the held ones: each group
    released at its hold's end, then paced with everyone released after it."""
    eta = eta_seconds(free, mps, rate, ahead=ahead, wait=wait, unsettled=0 if holds else unsettled)
    if not holds:
        return eta
    if free and eta is None:
        return None
    speed = mps if mps > 0 else rate
    finish = eta or 0.0
    remaining = sum(count for _, count in holds)
    for until, count in holds:
        start = max(wait, (until - now).total_seconds())
        finish = max(finish, start + (remaining / speed if speed > 0 else 0.0))
        remaining -= count
    return round(finish, 1)


@dataclass(frozen=True)
class _PoolView:
    """A pooled broadcast's pacing: its senders side by side, under one account limit."""

    now: float
    booked_until: float
    account_mps: float
    sender_mps: float  # the pool's senders together (0: no sender limit)
    mps: float
    ahead: int
    own_waiting: int
    sender: str  # as shown: the sender, or "pool of N"


# Looked up per sender; a larger pool is shown by its first few.
POOL_SENDERS_SHOWN = 20


def _pacing_view(session: Session, settings: Settings, broadcast: Broadcast) -> _PoolView:
    senders = list(
        session.scalars(
            select(Batch.sender)
            .where(
                Batch.broadcast_id == broadcast.id,
                Batch.status == BatchStatus.PENDING,
                Batch.sender.is_not(None),
            )
            .distinct()
            .limit(POOL_SENDERS_SHOWN)
        )
    )
    if not senders or broadcast.sender not in senders:
        senders.insert(0, broadcast.sender)
    views = [
        timelines.outlook(settings, broadcast.kind, sender, broadcast.id) for sender in senders
    ]
    account = views[0].account_mps
    own = [view.sender_mps for view in views]
    # Senders send side by side: their own limits add up, and the account caps the sum.
    pooled = 0.0 if any(limit <= 0 for limit in own) else sum(own)
    return _PoolView(
        now=views[0].now,
        booked_until=max(view.booked_until for view in views),
        account_mps=account,
        sender_mps=pooled,
        mps=timelines.effective(account, pooled),
        ahead=max(view.ahead for view in views),
        own_waiting=sum(view.own_waiting for view in views),
        sender=senders[0] if len(senders) == 1 else f"pool of {len(senders)}",
    )


def _clock(moment: datetime) -> str:
    return as_utc(moment).strftime("%H:%M:%S UTC")


def _pacing_reason(
    sender: str, booked_until: datetime | None, ahead: int, mps: float, next_send: datetime
) -> str:
    details = []
    if booked_until is not None:
        details.append(f"booked until {_clock(booked_until)}")
    if ahead:
        details.append(f"{ahead:,} messages of other broadcasts first")
    if mps > 0:
        details.append(f"{mps:g} msg/s")
    shown = f" ({', '.join(details)})" if details else ""
    return f"sender {sender}{shown}; next batch about {_clock(next_send)}"
