"""The broadcasts page: newest first, filtered by status and date, refreshed live.

The page of broadcasts comes from GET /v1/broadcasts (its scopes, ownership and filters);
what the list item leaves out (recipients by status, the recent rate) is counted here with
two grouped queries for the whole page, never one per broadcast."""

from __future__ import annotations

from datetime import date, timedelta
from uuid import UUID

from flask import current_app, render_template, request
from sqlalchemy import func, select

from api.console import bp
from api.console.calls import call
from shared import audience
from shared.db import session_scope
from shared.models import Batch, BroadcastStatus, utcnow
from shared.progress import eta_seconds, progress

PAGE_SIZE = 25
RATE_WINDOW_SECONDS = 60
STATUSES = (
    "scheduled",
    "queued",
    "sending",
    "paused",
    "cancelled",
    "completed",
    "completed_with_failures",
)


def _day(name: str) -> date | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return None


def filters() -> dict:
    status = request.args.get("status", "")
    return {
        "status": status if status in STATUSES else "",
        "from": _day("from"),
        "to": _day("to"),
        "cursor": request.args.get("cursor", ""),
    }


def _api_query(chosen: dict) -> dict:
    query = {"limit": str(PAGE_SIZE), "status": chosen["status"], "cursor": chosen["cursor"]}
    if chosen["from"]:
        query["created_after"] = f"{chosen['from'].isoformat()}T00:00:00Z"
    if chosen["to"]:
        # The whole "to" day is included.
        query["created_before"] = f"{(chosen['to'] + timedelta(days=1)).isoformat()}T00:00:00Z"
    return query


def tallies(session, ids: list[UUID]) -> dict[str, dict[str, int]]:
    """Recipients by status of each broadcast, in one grouped query (an index scan of
    ix_recipients_broadcast_status; a large list broadcast's batches still kept as text
    count as pending)."""
    found = audience.recipients_by_status(session, ids)
    return {str(broadcast_id): counts for broadcast_id, counts in found.items()}


def rates(session, ids: list[UUID]) -> dict[str, float]:
    """Messages handed to Plivo per second over the last minute, per broadcast."""
    since = utcnow() - timedelta(seconds=RATE_WINDOW_SECONDS)
    rows = session.execute(
        select(Batch.broadcast_id, func.sum(Batch.size))
        .where(Batch.broadcast_id.in_(ids), Batch.submitted_at >= since)
        .group_by(Batch.broadcast_id)
    ).all()
    return {str(b): round(int(sent) / RATE_WINDOW_SECONDS, 2) for b, sent in rows}


def rows(items: list[dict]) -> list[dict]:
    """Each list item with its counts, progress, rate and ETA."""
    settings = current_app.config["SETTINGS"]
    ids = [UUID(item["id"]) for item in items]
    with session_scope(settings.database_url) as session:
        counts = tallies(session, ids) if ids else {}
        speeds = rates(session, ids) if ids else {}
    await_reports = settings.status_callback_url is not None
    shown = []
    for item in items:
        by_status = counts.get(item["id"], {})
        total = sum(by_status.values())
        reached = progress({"recipients": {"total": total, "by_status": by_status}}, await_reports)
        rate = speeds.get(item["id"], 0.0)
        eta = None
        if item["status"] not in BroadcastStatus.FINAL and item["status"] != "paused":
            pending = by_status.get("pending", 0)
            # At the rate seen lately: the list shows no per-broadcast pacing (one Redis
            # round trip each); the broadcast's own page does.
            eta = eta_seconds(pending, 0.0, rate, unsettled=total - reached["final"] - pending)
        shown.append(item | {"by_status": by_status, "progress": reached, "rate": rate, "eta": eta})
    return shown


def _page():
    chosen = filters()
    answer = call("GET", "/v1/broadcasts", query=_api_query(chosen))
    if not answer.ok:
        return chosen, [], None, answer.message
    return chosen, rows(answer.body["items"]), answer.body["next_cursor"], None


@bp.get("/broadcasts")
def broadcasts():
    chosen, items, next_cursor, error = _page()
    return render_template(
        "console/broadcasts.html",
        chosen=chosen,
        items=items,
        next_cursor=next_cursor,
        error=error,
        statuses=STATUSES,
        query=request.query_string.decode(),
    )


@bp.get("/broadcasts/live")
def broadcast_rows():
    """The table body alone, which the page fetches every few seconds."""
    _chosen, items, next_cursor, error = _page()
    return render_template(
        "console/_broadcast_rows.html", items=items, next_cursor=next_cursor, error=error
    )
