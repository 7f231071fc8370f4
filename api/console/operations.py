"""Opt-outs (search, add, remove, import, export), pacing limits (view, edit) and the
system page (workers, queues, Redis and the database, sandbox mode, version)."""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import quote

from flask import (
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select

from api.auth import READ
from api.console import bp, can
from api.console.calls import call, stream
from shared.db import session_scope
from shared.metrics import LiveState
from shared.models import OptOut

OPT_OUTS_SHOWN = 50
# Celery's control broadcast waits this long for every worker's answer: the page must
# stay quick when a worker is down.
INSPECT_TIMEOUT = 0.8
NOTICES = {
    "added": "{n} number(s) added to the opt-out list ({m} were on it already).",
    "removed": "{n} removed from the opt-out list: broadcasts may text it again.",
    "limits": "Limits changed: every worker's next reservation uses them.",
}


def _notice() -> str | None:
    done = request.args.get("done")
    if done not in NOTICES:
        return None
    return NOTICES[done].format(n=request.args.get("n", ""), m=request.args.get("m", ""))


def _search(prefix: str) -> list[dict]:
    """Numbers starting with the digits typed (the API lists by number only). Read only,
    and only once the API has said this key may list opt-outs."""
    digits = re.sub(r"\D", "", prefix)
    if not digits:
        return []
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        rows = session.scalars(
            select(OptOut)
            .where(OptOut.phone.like(f"+{digits}%"))
            .order_by(OptOut.phone)
            .limit(OPT_OUTS_SHOWN)
        )
        return [
            {"phone": r.phone, "source": r.source, "reason": r.reason,
             "created_at": r.created_at.isoformat()}
            for r in rows
        ]  # fmt: skip


@bp.route("/opt-outs", methods=["GET", "POST"])
def opt_outs():
    if request.method == "POST":
        return _change_opt_outs()
    return _opt_outs_page()


def _opt_outs_page(error: str | None = None, status: int = 200):
    """The list (or a search of it), with a refused change's reason when there is one."""
    query = request.args.get("q", "").strip()
    cursor = request.args.get("cursor")
    page = call("GET", "/v1/opt-outs", query={"limit": str(OPT_OUTS_SHOWN), "cursor": cursor})
    items, next_cursor = [], None
    if page.ok:
        items, next_cursor = page.body["items"], page.body["next_cursor"]
        if query:
            items, next_cursor = _search(query), None
    else:
        error = error or page.message
    return render_template(
        "console/opt_outs.html",
        items=items,
        next_cursor=next_cursor,
        query=query,
        error=error,
        notice=_notice(),
        can_list=page.ok,
    ), status


def _change_opt_outs():
    action = request.form.get("action")
    if action == "remove":
        phone = request.form.get("phone", "")
        # A form value in a path: quoted, so "../keys" or "?x" stays one number, not a route.
        answer = call("DELETE", f"/v1/opt-outs/{quote(phone, safe='+')}")
        if answer.ok:
            return redirect(url_for("console.opt_outs", done="removed", n=phone), code=303)
        return _opt_outs_page(error=answer.message, status=answer.status)
    reason = request.form.get("reason", "").strip() or None
    upload = request.files.get("file")
    if action == "import" and upload is not None and upload.filename:
        answer = call(
            "POST",
            "/v1/opt-outs",
            data=upload.read(),
            content_type="text/csv",
            query={"reason": reason} if reason else None,
        )
    else:
        phones = [p for p in re.split(r"[\s,;]+", request.form.get("phones", "")) if p]
        if not phones:
            return _opt_outs_page(error="Enter at least one number.", status=400)
        answer = call("POST", "/v1/opt-outs", json_body={"phones": phones, "reason": reason})
    if not answer.ok:
        return _opt_outs_page(error=answer.message, status=answer.status)
    return redirect(
        url_for("console.opt_outs", done="added", n=answer.body["added"], m=answer.body["already"]),
        code=303,
    )


@bp.get("/opt-outs.csv")
def opt_outs_csv():
    check = call("GET", "/v1/opt-outs", query={"limit": "1"})
    if not check.ok:
        abort(check.status, check.message)
    return Response(
        stream("/v1/opt-outs", {"format": "csv"}, g.console_caller),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="opt-outs.csv"'},
    )


def _mps(raw: str | None):
    """A number as the API wants it; what is not a number goes through as text, so the
    API's own 400 names the field."""
    raw = (raw or "").strip()
    if raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        return raw


@bp.route("/limits", methods=["GET", "POST"])
def limits():
    error, status = None, 200
    if request.method == "POST":
        change: dict = {}
        for kind in ("sms_mps", "mms_mps"):
            if request.form.get(kind, "").strip():
                change[kind] = _mps(request.form.get(kind))
        sender = request.form.get("sender", "").strip()
        if sender:
            value = _mps(request.form.get("sender_mps"))
            # Empty: the override goes (null), as PUT /v1/limits says.
            change["senders"] = {sender: {"sms_mps": value}}
        answer = call("PUT", "/v1/limits", json_body=change)
        if answer.ok:
            return redirect(url_for("console.limits", done="limits"), code=303)
        error, status = answer.message, answer.status
    shown = call("GET", "/v1/limits")
    if not shown.ok:
        error = error or shown.message
    return render_template(
        "console/limits.html",
        limits=shown.body if shown.ok else None,
        error=error,
        notice=_notice(),
        form=request.form,
    ), status


@lru_cache(maxsize=4)
def _control_app(redis_url: str):
    """A bare Celery app on the service's broker, only to broadcast control commands: the
    shared app's control publishes through its own default broker, whatever connection it
    is handed."""
    from celery import Celery

    return Celery("bulksms-console", broker=redis_url, set_as_current=False)


def _workers(redis_url: str) -> tuple[dict | None, str | None]:
    """{worker name: [queue names]} of the workers that answered, or the broker's error."""
    try:
        inspect = _control_app(redis_url).control.inspect(timeout=INSPECT_TIMEOUT)
        replies = inspect.active_queues() or {}
    except Exception as error:  # any broker failure is shown, not raised
        return None, type(error).__name__
    return {name: sorted(q["name"] for q in queues) for name, queues in replies.items()}, None


def _queue_depths(settings) -> dict[str, int] | None:
    """The metrics scrape's own reading of the Celery queues (shared/metrics.py)."""
    state = LiveState(settings.redis_url, settings.database_url)
    for family in state.collect():
        if family.name == "bulksms_queue_depth":
            return {s.labels["queue"]: int(s.value) for s in family.samples}
    return None


@bp.get("/system")
def system():
    if not can(READ):
        abort(403, "The system page needs a key with the read scope.")
    settings = current_app.config["SETTINGS"]
    ready = call("GET", "/readyz", anonymous=True)
    workers, workers_error = _workers(settings.redis_url)
    return render_template(
        "console/system.html",
        checks=(ready.body or {}).get("checks", {}),
        ready=ready.ok,
        workers=workers,
        workers_error=workers_error,
        queues=_queue_depths(settings),
        settings=settings,
    )
