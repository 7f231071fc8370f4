"""/v1/broadcasts/{id}/recipients: who got what, as JSON pages or one streamed CSV."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Literal, get_args

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.broadcasts import load, parse_id, statuses_param
from api.csv_cells import phone_cell, text_cell
from api.errors import int_param
from api.openapi import CSV, ID_CURSOR, Query, describe, id_cursor, text_param
from shared.db import session_scope
from shared.models import Recipient as RecipientRow
from shared.progress import iso

PAGE_MAX = 1000
# Rows fetched per query while streaming CSV: memory stays bounded by this, not by the
# size of the broadcast.
CSV_CHUNK = 5000
COLUMNS = ["phone", "status", "message_uuid", "error_code", "error_reason", "units", "updated_at"]

bp = Blueprint("recipients", __name__, url_prefix="/v1/broadcasts")

RecipientStatusName = Literal[
    "pending",
    "queued",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "rejected",
    "skipped",
    "unknown",
]
STATUSES = get_args(RecipientStatusName)
_STATUS = "|".join(STATUSES)


class Recipient(BaseModel):
    phone: str = Field(description="E.164")
    status: RecipientStatusName
    message_uuid: str | None = Field(description="Plivo's id of the message")
    error_code: str | None = Field(description="Plivo's error code")
    error_reason: str | None
    units: int | None = Field(description="Segments Plivo billed")
    updated_at: datetime | None


class RecipientPage(BaseModel):
    items: list[Recipient] = Field(description="In the order they were given")
    next_cursor: str | None = Field(description="For the next page; null on the last one")


class RecipientQuery(Query):
    status: str | None = Field(
        default=None,
        pattern=f"^({_STATUS})(,({_STATUS}))*$",
        description="Only recipients in these statuses, comma-separated (e.g. failed,unknown)",
    )
    limit: int = Field(default=100, ge=1, le=PAGE_MAX, description="Recipients per page")
    cursor: str | None = Field(
        default=None, pattern=ID_CURSOR, description="`next_cursor` of the page before"
    )
    format: Literal["json", "csv"] | None = Field(
        default=None, description="csv: every recipient as one streamed CSV (or Accept: text/csv)"
    )


def _query(broadcast_id, statuses: list[str] | None, after: int, limit: int):
    query = select(
        RecipientRow.id,
        RecipientRow.phone,
        RecipientRow.status,
        RecipientRow.message_uuid,
        RecipientRow.error_code,
        RecipientRow.error_reason,
        RecipientRow.units,
        RecipientRow.updated_at,
    ).where(RecipientRow.broadcast_id == broadcast_id, RecipientRow.id > after)
    if statuses:
        query = query.where(RecipientRow.status.in_(statuses))
    return query.order_by(RecipientRow.id).limit(limit)


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
            phone, status, message_uuid, error_code, error_reason, units = row[1:7]
            # Plivo's uuid, error code and reason come from outside: quote formula starts.
            texts = [text_cell(v) for v in (status, message_uuid, error_code, error_reason)]
            writer.writerow([phone_cell(phone), *texts, units, iso(row[7]) or ""])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < CSV_CHUNK:
            return
        after = rows[-1][0]


@bp.get("/<broadcast_id>/recipients")
@describe(
    "broadcasts",
    {200: RecipientPage},
    (400, 404),
    query=RecipientQuery,
    extra={"responses": {"200": {"content": {"text/csv": CSV}}}},
)
def list_recipients(broadcast_id: str):
    """A broadcast's recipients: number, status, Plivo's message id and error

    JSON pages, or with `format=csv` (or `Accept: text/csv`) every recipient as one CSV
    streamed as it is read: phone, status, message_uuid, error_code, error_reason, units,
    updated_at."""
    bid = parse_id(broadcast_id)
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        load(session, broadcast_id)
    statuses = statuses_param(STATUSES)
    wanted = text_param("format", "json|csv", "must be json or csv")
    if wanted == "csv" or (wanted is None and request.accept_mimetypes.best == "text/csv"):
        filename = f"broadcast-{bid}-recipients.csv"
        return Response(
            stream_with_context(_csv(bid, statuses)),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    limit = int_param("limit", 100, 1, PAGE_MAX)
    after = id_cursor() or 0
    rows = _fetch(bid, statuses, after, limit)
    return jsonify(
        {
            "items": [dict(zip(COLUMNS, [*row[1:7], iso(row[7])], strict=True)) for row in rows],
            "next_cursor": str(rows[-1][0]) if len(rows) == limit else None,
        }
    )
