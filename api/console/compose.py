"""A new broadcast: numbers pasted, a CSV uploaded or contact lists picked; the text with a
live counter (static/console.js ports shared/encoding.py); then the API's dry-run quote,
and only then the real send, with the very body that was quoted.

The form is turned into a POST /v1/broadcasts body and nothing more: every rule (numbers,
text length, senders, quiet hours, costs) is the API's, and its 400 is shown as it says it."""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime

from flask import abort, current_app, redirect, render_template, request, url_for

from api.auth import SEND
from api.console import bp, can
from api.console.calls import call
from shared.contact_import import BadImport, ImportReport, csv_records

_SEPARATORS = re.compile(r"[\s,;]+")
QUIET_CHOICES = ("default", "off", "custom")


def _options() -> dict:
    """Contact lists and templates to pick from, where this API has them (issue 11's routes;
    an API without them answers 404 and the form leaves those parts out)."""
    lists = call("GET", "/v1/lists", query={"limit": "200"})
    templates = call("GET", "/v1/templates", query={"limit": "200"})
    settings = current_app.config["SETTINGS"]
    pools = getattr(settings, "sender_pools", None) or {}
    return {
        "lists": lists.body.get("items", []) if lists.ok else None,
        "templates": templates.body.get("items", []) if templates.ok else None,
        "pools": sorted(pools),
        "default_sender": settings.default_sender,
        "opt_out_text": getattr(settings, "opt_out_text", None) or "",
    }


def _csv_recipients(upload) -> list:
    """The recipients of an uploaded CSV, read as a list import reads it (the number's column
    found by its header name, the other columns kept as `fields`); whether each number is
    one is the API's to say. Raises BadImport for a file or row the reader refuses."""
    report = ImportReport()
    recipients = [
        {"to": raw, "fields": fields} if fields else raw
        for _, raw, fields in csv_records(upload.stream, report)
    ]
    if report.invalid_total:
        shown = "; ".join(f"line {row['line']}: {row['reason']}" for row in report.invalid[:5])
        more = report.invalid_total - min(5, len(report.invalid))
        raise BadImport(f"file: {shown}" + (f" (and {more:,} more)" if more > 0 else ""))
    return recipients


def _send_at(raw: str) -> str | None:
    """A datetime-local value, read as UTC (the form says so)."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return raw  # the API names the field and the rule
    return moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def payload_from(form, files) -> dict:
    """The POST /v1/broadcasts body the form describes; fields left empty stay out, so an
    API without issue 11's fields still takes a plain broadcast."""
    body: dict = {}
    if name := form.get("name", "").strip():
        body["name"] = name
    recipients: list = [n for n in _SEPARATORS.split(form.get("recipients", "")) if n]
    upload = files.get("file")
    if upload is not None and upload.filename:
        recipients += _csv_recipients(upload)
    if recipients:
        body["recipients"] = recipients
    if list_ids := form.getlist("list_ids"):
        body["list_ids"] = list_ids
    if template_id := form.get("template_id"):
        body["template_id"] = template_id
    else:
        # Browsers send a textarea's line breaks as CRLF; a CR would cost a character in
        # every message, and the counter on the page counts "\n".
        body["text"] = form.get("text", "").replace("\r\n", "\n")
    if pool := form.get("sender_pool"):
        body["sender_pool"] = pool
    elif sender := form.get("sender", "").strip():
        body["sender"] = sender
    if form.get("priority") == "high":
        body["priority"] = "high"
    if send_at := _send_at(form.get("send_at", "").strip()):
        body["send_at"] = send_at
    quiet = form.get("quiet", "default")
    if quiet == "off":
        body["quiet_hours"] = None
    elif quiet == "custom":
        body["quiet_hours"] = {"start": form.get("quiet_start"), "end": form.get("quiet_end")}
    if form.get("append_opt_out_text"):
        body["append_opt_out_text"] = True
    if form.get("skip_invalid"):
        body["skip_invalid"] = True
    return body


def _form(error: str | None = None, status: int = 200):
    return render_template(
        "console/new_broadcast.html",
        error=error,
        form=request.form,
        quiet_choices=QUIET_CHOICES,
        **_options(),
    ), status


def _no_dry_run(answer) -> bool:
    return answer.status == 400 and "dry_run" in answer.message


@bp.route("/broadcasts/new", methods=["GET", "POST"])
def new_broadcast():
    if not can(SEND):
        abort(403, "Sending needs a key with the send scope.")
    if request.method == "GET":
        return _form()
    if request.form.get("step") == "send":
        return _send()
    try:
        body = payload_from(request.form, request.files)
    except BadImport as error:
        return _form(str(error), 400)
    answer = call("POST", "/v1/broadcasts", json_body={**body, "dry_run": True})
    if answer.ok:
        quote = answer.body
    elif _no_dry_run(answer):
        quote = None  # this API has no quote yet: the page says so, and Send still works
    else:
        return _form(answer.message, answer.status)
    return render_template(
        "console/quote.html",
        quote=quote,
        body=body,
        payload=json.dumps(body),
        recipients_given=len(body.get("recipients", [])),
        idempotency_key=secrets.token_urlsafe(16),
    )


def _send():
    try:
        body = json.loads(request.form.get("payload", ""))
    except ValueError:
        abort(400, "The quoted broadcast was lost: start again from the form.")
    if not isinstance(body, dict):
        abort(400, "The quoted broadcast was lost: start again from the form.")
    # The key makes a double click (or a resubmitted form) one broadcast, not two.
    key = request.form.get("idempotency_key", "")[:255] or None
    answer = call(
        "POST",
        "/v1/broadcasts",
        json_body=body,
        headers={"Idempotency-Key": key} if key else None,
    )
    if not answer.ok:
        return render_template(
            "console/quote.html",
            quote=None,
            body=body,
            payload=json.dumps(body),
            recipients_given=len(body.get("recipients", [])),
            # The same key again: a broadcast the API stored before failing its answer (a
            # commit, then a 5xx) is found by it, not sent a second time on the next click.
            idempotency_key=key or secrets.token_urlsafe(16),
            error=answer.message,
        ), answer.status
    return redirect(url_for("console.broadcast", broadcast_id=answer.body["id"]), code=303)
