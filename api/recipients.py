"""/v1/broadcasts/{id}/recipients: who got what, as JSON pages or one streamed CSV."""

from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from sqlalchemy import select

from api.auth import require_api_key
from api.broadcasts import load, parse_id
from api.errors import int_param
from shared.db import session_scope
from shared.models import Recipient
from shared.progress import iso

PAGE_MAX = 1000
# Rows fetched per query while streaming CSV: memory stays bounded by this, not by the
# size of the broadcast.
CSV_CHUNK = 5000
COLUMNS = ["phone", "status", "message_uuid", "error_code", "error_reason", "units", "updated_at"]

bp = Blueprint("recipients", __name__, url_prefix="/v1/broadcasts")
bp.before_request(require_api_key)


def _query(broadcast_id, statuses: list[str] | None, after: int, limit: int):
    query = select(
        Recipient.id,
        Recipient.phone,
        Recipient.status,
        Recipient.message_uuid,
        Recipient.error_code,
        Recipient.error_reason,
        Recipient.units,
        Recipient.updated_at,
    ).where(Recipient.broadcast_id == broadcast_id, Recipient.id > after)
    if statuses:
        query = query.where(Recipient.status.in_(statuses))
    return query.order_by(Recipient.id).limit(limit)


def _fetch(broadcast_id, statuses, after: int, limit: int) -> list:
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        return session.execute(_query(broadcast_id, statuses, after, limit)).all()


def _csv(broadcast_id, statuses):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    after = 0
    while True:
        rows = _fetch(broadcast_id, statuses, after, CSV_CHUNK)
        for row in rows:
            writer.writerow([*row[1:7], iso(row[7]) or ""])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < CSV_CHUNK:
            return
        after = rows[-1][0]


@bp.get("/<broadcast_id>/recipients")
def list_recipients(broadcast_id: str):
    """Filter with ?status=failed,unknown; page with ?cursor=; `Accept: text/csv` streams."""
    bid = parse_id(broadcast_id)
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        load(session, broadcast_id)
    statuses = request.args["status"].split(",") if request.args.get("status") else None
    if request.accept_mimetypes.best == "text/csv" or request.args.get("format") == "csv":
        filename = f"broadcast-{bid}-recipients.csv"
        return Response(
            stream_with_context(_csv(bid, statuses)),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    limit = int_param("limit", 100, 1, PAGE_MAX)
    after = int_param("cursor", 0, 0, 2**63 - 1)
    rows = _fetch(bid, statuses, after, limit)
    return jsonify(
        {
            "recipients": [
                dict(zip(COLUMNS, [*row[1:7], iso(row[7])], strict=True)) for row in rows
            ],
            "next_cursor": str(rows[-1][0]) if len(rows) == limit else None,
        }
    )
