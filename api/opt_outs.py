"""/v1/opt-outs: list (JSON pages or streamed CSV), add (JSON or CSV import), remove."""

from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from sqlalchemy import select

from api.auth import require_api_key
from api.errors import ApiError, int_param
from shared.db import session_scope
from shared.models import OptOut
from shared.opt_outs import add_opt_outs, remove_opt_out
from shared.phone import InvalidNumber, normalise

bp = Blueprint("opt_outs", __name__, url_prefix="/v1/opt-outs")
bp.before_request(require_api_key)

PAGE_MAX = 1000
EXPORT_CHUNK = 5000
INVALID_SHOWN = 20


def _settings():
    return current_app.config["SETTINGS"]


def _row(opt_out: OptOut) -> dict:
    return {
        "phone": opt_out.phone,
        "source": opt_out.source,
        "reason": opt_out.reason,
        "created_at": opt_out.created_at.isoformat(),
    }


def _page(after: str, limit: int) -> list[OptOut]:
    with session_scope(_settings().database_url) as session:
        return list(
            session.scalars(
                select(OptOut).where(OptOut.phone > after).order_by(OptOut.phone).limit(limit)
            )
        )


@bp.get("")
def list_opt_outs():
    """Keyset pages ordered by number (`after` = the last number seen); `Accept: text/csv`
    streams the whole list without holding it in memory."""
    if request.accept_mimetypes.best == "text/csv":
        return Response(stream_with_context(_csv_rows()), mimetype="text/csv")
    limit = int_param("limit", 100, 1, PAGE_MAX)
    rows = _page(request.args.get("after", ""), limit)
    return jsonify(
        {
            "opt_outs": [_row(row) for row in rows],
            "next": rows[-1].phone if len(rows) == limit else None,
        }
    )


def _csv_rows():
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["phone", "source", "reason", "created_at"])
    after = ""
    while True:
        rows = _page(after, EXPORT_CHUNK)
        for row in rows:
            writer.writerow([row.phone, row.source, row.reason or "", row.created_at.isoformat()])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < EXPORT_CHUNK:
            return
        after = rows[-1].phone


def _submitted_numbers() -> tuple[list, str | None, bool]:
    """(values, reason, skip_invalid) from a JSON body or a CSV upload (first column)."""
    if request.mimetype == "text/csv":
        reader = csv.reader(io.StringIO(request.get_data(as_text=True)))
        values = [row[0].strip() for row in reader if row and row[0].strip()]
        if values and not any(ch.isdigit() for ch in values[0]):
            values = values[1:]  # a header row such as "phone"
        return values, request.args.get("reason"), request.args.get("skip_invalid") == "true"
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or set(payload) - {"phones", "reason", "skip_invalid"}:
        raise ApiError(
            400,
            "invalid_request",
            'body must be {"phones": [...], "reason"?: "...", "skip_invalid"?: bool} or a CSV',
        )
    phones = payload.get("phones")
    if not isinstance(phones, list) or not phones:
        raise ApiError(400, "invalid_request", "phones: must be a non-empty list")
    return phones, payload.get("reason"), bool(payload.get("skip_invalid"))


@bp.post("")
def add():
    values, reason, skip_invalid = _submitted_numbers()
    settings = _settings()
    phones, invalid = [], []
    for index, value in enumerate(values):
        try:
            phones.append(normalise(value, settings.default_region))
        except InvalidNumber as error:
            invalid.append({"index": index, "value": value, "reason": str(error)})
    if invalid and not skip_invalid:
        raise ApiError(
            400,
            "invalid_recipients",
            f"phones: {len(invalid)} invalid phone number(s)",
            {"invalid": invalid[:INVALID_SHOWN], "invalid_total": len(invalid)},
        )
    with session_scope(settings.database_url) as session:
        added = add_opt_outs(session, phones, source="api", reason=reason)
    unique = len(set(phones))
    return jsonify({"added": added, "already": unique - added, "invalid": len(invalid)}), 201


@bp.delete("/<path:phone>")
def remove(phone: str):
    try:
        number = normalise(phone, _settings().default_region)
    except InvalidNumber as error:
        raise ApiError(400, "invalid_request", f"phone: {error}") from None
    with session_scope(_settings().database_url) as session:
        if not remove_opt_out(session, number):
            raise ApiError(404, "not_found", f"{number} is not on the opt-out list")
    return "", 204
