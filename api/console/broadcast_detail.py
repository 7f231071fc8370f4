"""One broadcast: status, recipients by status, rate and delivery chart, error codes with
their meaning and advice, batches, recipients (with CSV), actions behind a confirmation
that says what will happen, and the audit trail."""

from __future__ import annotations

from uuid import UUID

from flask import Response, abort, current_app, g, redirect, render_template, request, url_for
from sqlalchemy import select

from api.auth import ADMIN
from api.console import bp, charts
from api.console.calls import call, stream
from api.console.formatting import when
from shared.db import session_scope
from shared.models import AuditEvent, Broadcast
from shared.plivo_codes import ERROR_CODES

ACTIONS = ("pause", "resume", "cancel", "retry")
RETRYABLE = ("failed", "unknown", "undelivered")
RECIPIENTS_SHOWN = 50
AUDIT_SHOWN = 50
RECIPIENT_STATUSES = (
    "pending", "queued", "sent", "delivered", "undelivered", "failed", "rejected", "skipped",
    "unknown",
)  # fmt: skip


def _broadcast(broadcast_id: str) -> dict:
    """GET /v1/broadcasts/{id} as the session's key: 404 for what the key may not see."""
    answer = call("GET", f"/v1/broadcasts/{broadcast_id}")
    if answer.status == 404:
        abort(404, f"No broadcast {broadcast_id} that this key may see.")
    if not answer.ok:
        abort(answer.status, answer.message)
    return answer.body


def _errors(body: dict) -> list[dict]:
    rows = []
    for code, info in sorted(body["errors"].items(), key=lambda item: -item[1]["count"]):
        advice = ERROR_CODES.get(code, (None, "maybe: a code not in Plivo's table"))[1]
        rows.append({"code": code, "count": info["count"], "meaning": info["meaning"],
                     "advice": advice})  # fmt: skip
    return rows


def _extras(body: dict) -> dict:
    """What the API body does not carry: the name and text, the chart, the audit trail
    (admin keys only, as GET /v1/audit)."""
    settings = current_app.config["SETTINGS"]
    with session_scope(settings.database_url) as session:
        row = session.get(Broadcast, UUID(body["id"]))
        chart = charts.build(session, row)
        audit = []
        if ADMIN in g.console_caller.scopes:
            audit = list(
                session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.target == body["id"])
                    .order_by(AuditEvent.id.desc())
                    .limit(AUDIT_SHOWN)
                )
            )
            session.expunge_all()
        return {"name": row.name, "text": row.text, "chart": chart, "audit": audit}


def _live_context(broadcast_id: str) -> dict:
    body = _broadcast(broadcast_id)
    return {
        "b": body,
        "errors": _errors(body),
        "actions": available(body),
        "geometry": charts.geometry(),
        **_extras(body),
    }


def available(body: dict) -> list[str]:
    """The actions the API would accept now (the same rules as shared/lifecycle.py)."""
    status = body["status"]
    shown = []
    if status not in ("paused", "cancelled", "completed", "completed_with_failures"):
        shown.append("pause")
    if status == "paused":
        shown.append("resume")
    if status not in ("cancelled", "completed", "completed_with_failures"):
        shown.append("cancel")
    by_status = body["recipients"]["by_status"]
    if status not in ("cancelled", "scheduled") and any(by_status.get(s) for s in RETRYABLE):
        shown.append("retry")
    return shown


def _recipients(broadcast_id: str) -> dict:
    wanted = request.args.get("rstatus", "")
    wanted = wanted if wanted in RECIPIENT_STATUSES else ""
    answer = call(
        "GET",
        f"/v1/broadcasts/{broadcast_id}/recipients",
        query={
            "status": wanted,
            "limit": str(RECIPIENTS_SHOWN),
            "cursor": request.args.get("rcursor"),
        },
    )
    return {
        "rstatus": wanted,
        "recipients": answer.body["items"] if answer.ok else [],
        "recipients_next": answer.body["next_cursor"] if answer.ok else None,
        "recipients_error": None if answer.ok else answer.message,
    }


NOTICES = {
    "pause": "Paused: no new batch starts until you resume.",
    "resume": "Resumed: {batches} pending batches handed to the workers.",
    "cancel": "Cancelled: {skipped} recipients not yet handed to Plivo were skipped.",
    "retry": "Retrying {retried} recipients in {batches} new batches"
    " ({skipped} skipped: opted out).",
}


def _notice() -> str | None:
    done = request.args.get("done")
    if done not in NOTICES:
        return None
    names = ("batches", "skipped", "retried")
    numbers = {name: request.args.get(name, type=int) or 0 for name in names}
    return NOTICES[done].format(**{k: f"{v:,}" for k, v in numbers.items()})


@bp.get("/broadcasts/<broadcast_id>")
def broadcast(broadcast_id: str):
    context = _live_context(broadcast_id)
    return render_template(
        "console/broadcast.html",
        notice=_notice(),
        statuses=RECIPIENT_STATUSES,
        **context,
        **_recipients(broadcast_id),
    )


@bp.get("/broadcasts/<broadcast_id>/live")
def broadcast_live(broadcast_id: str):
    """The parts that change while it sends, which the page fetches every few seconds."""
    return render_template("console/_broadcast_live.html", **_live_context(broadcast_id))


@bp.get("/broadcasts/<broadcast_id>/recipients.csv")
def recipients_csv(broadcast_id: str):
    """The API's CSV export, streamed through: checked first (404, scopes), then read."""
    wanted = request.args.get("status", "")
    query = {"status": wanted} if wanted in RECIPIENT_STATUSES else {}
    check = call("GET", f"/v1/broadcasts/{broadcast_id}/recipients", query={**query, "limit": "1"})
    if not check.ok:
        abort(check.status, check.message)
    bid = UUID(broadcast_id)
    filename = f"broadcast-{bid}-recipients{'-' + wanted if query else ''}.csv"
    return Response(
        stream(f"/v1/broadcasts/{bid}/recipients", {**query, "format": "csv"}, g.console_caller),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def consequences(action: str, body: dict, statuses: list[str]) -> list[str]:
    """What the action will do, in numbers, for the confirmation page."""
    by_status = body["recipients"]["by_status"]
    batches = body["batches"]["by_status"]
    pending = by_status.get("pending", 0)
    if action == "pause":
        in_flight = batches.get("claimed", 0) + batches.get("submitting", 0)
        return [
            f"No new batch starts: {pending:,} recipients in {batches.get('pending', 0):,} "
            "pending batches wait until you resume.",
            f"{in_flight:,} batches already being handed to Plivo finish and are recorded.",
        ]
    if action == "resume":
        # Batches quiet hours hold stay held on resume (shared/lifecycle.py): only the rest
        # go to the workers now.
        held = (body.get("held") or {}).get("recipients", 0)
        lines = [
            f"{pending - held:,} pending recipients are handed to the workers again and sent "
            "at the sender's pace."
        ]
        if held:
            lines.append(
                f"{held:,} recipients held by quiet hours stay held until their window ends "
                f"(the first at {when(body['held'].get('first_release'))})."
            )
        return lines
    if action == "cancel":
        handed = body["recipients"]["total"] - pending - by_status.get("skipped", 0)
        return [
            f"{pending:,} recipients not yet handed to Plivo are skipped (cancelled).",
            f"{handed:,} recipients already handed to Plivo are not recalled.",
            "A cancelled broadcast cannot be resumed or retried.",
        ]
    chosen = [s for s in RETRYABLE if s in statuses]
    counts = ", ".join(f"{by_status.get(s, 0):,} {s}" for s in chosen) or "nobody"
    lines = [f"Retry {counts} recipients, in new batches."]
    left = [
        f"{by_status.get(s, 0):,} {s}" for s in RETRYABLE if s not in chosen and by_status.get(s)
    ]
    if left:
        lines.append(f"Left out: {', '.join(left)} (they may have reached the phone already).")
    lines.append("Numbers on the opt-out list are skipped, not sent.")
    return lines


def _statuses() -> list[str]:
    chosen = [s for s in request.values.getlist("statuses") if s in RETRYABLE]
    return chosen or ["failed"]


@bp.get("/broadcasts/<broadcast_id>/confirm/<action>")
def confirm(broadcast_id: str, action: str, error: str | None = None, status: int = 200):
    if action not in ACTIONS:
        abort(404)
    body = _broadcast(broadcast_id)
    statuses = _statuses()
    return render_template(
        "console/confirm.html",
        b=body,
        action=action,
        statuses=statuses,
        retryable=RETRYABLE,
        lines=consequences(action, body, statuses),
        error=error,
    ), status


@bp.post("/broadcasts/<broadcast_id>/<action>")
def act(broadcast_id: str, action: str):
    if action not in ACTIONS:
        abort(404)
    payload = {"statuses": _statuses()} if action == "retry" else None
    answer = call("POST", f"/v1/broadcasts/{broadcast_id}/{action}", json_body=payload)
    if not answer.ok:
        if answer.status == 404:
            abort(404, f"No broadcast {broadcast_id} that this key may see.")
        return confirm(broadcast_id, action, error=answer.message, status=answer.status)
    result = answer.body
    return redirect(
        url_for(
            "console.broadcast",
            broadcast_id=broadcast_id,
            done=action,
            batches=result["batches_enqueued"],
            skipped=result["skipped"],
            retried=result["retried"],
        ),
        code=303,
    )
