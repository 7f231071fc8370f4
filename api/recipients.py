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
from api.errors import ApiError, int_param
from api.list_audience import KEEP_ABOVE
from api.openapi import CSV, ID_CURSOR, Query, describe, id_cursor, text_param
from shared import audience
from shared.db import session_scope
from shared.models import Batch
from shared.models import Recipient as RecipientRow
from shared.progress import iso

PAGE_MAX = 1000
# Rows fetched per query while streaming CSV: memory stays bounded by this, not by the
# size of the broadcast.
CSV_CHUNK = 5000
COLUMNS = [
    "phone",
    "status",
    "message_uuid",
    "error_code",
    "error_reason",
    "units",
    "updated_at",
    "sender",
    "send_after",
]

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
    sender: str | None = Field(description="Who texts it (pools: its sticky sender)")
    send_after: datetime | None = Field(
        description="Held by quiet hours until then (its batch's hold_until); null: now"
    )


class RecipientPage(BaseModel):
    items: list[Recipient] = Field(
        description="In the order they were given. A list broadcast of more than "
        f"{KEEP_ABOVE:,} contacts has its recipients written after its 202: until then a "
        "listing that includes `pending` answers 409 (its counts are complete at once)"
    )
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
        RecipientRow.batch_id,
        Batch.sender,
        Batch.hold_until,
    ).outerjoin(Batch, Batch.id == RecipientRow.batch_id)
    query = query.where(RecipientRow.broadcast_id == broadcast_id, RecipientRow.id > after)
    if statuses:
        query = query.where(RecipientRow.status.in_(statuses))
    return query.order_by(RecipientRow.id).limit(limit)


def _fetch(broadcast_id, statuses, after: int, limit: int) -> list:
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        return session.execute(_query(broadcast_id, statuses, after, limit)).all()


def _row(row, default_sender: str) -> list:
    """A recipient's cells in COLUMNS order (the sender of its batch, else the broadcast's;
    none for a recipient never put in a batch: skipped, rejected)."""
    batch_id, batch_sender, hold_until = row[8:11]
    sender = (batch_sender or default_sender) if batch_id is not None else None
    return [*row[1:7], row[7], sender, hold_until]


def _csv(broadcast_id, statuses, default_sender: str):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    after = 0
    while True:
        rows = _fetch(broadcast_id, statuses, after, CSV_CHUNK)
        for row in rows:
            cells = _row(row, default_sender)
            phone, status, message_uuid, error_code, error_reason, units = cells[:6]
            # Plivo's uuid, error code and reason come from outside: quote formula starts.
            texts = [text_cell(v) for v in (status, message_uuid, error_code, error_reason)]
            sender, send_after = text_cell(cells[7]) if cells[7] else "", iso(cells[8]) or ""
            writer.writerow(
                [phone_cell(phone), *texts, units, iso(cells[6]) or "", sender, send_after]
            )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < CSV_CHUNK:
            return
        after = rows[-1][0]


def _json_cells(cells: list) -> list:
    return [*cells[:6], iso(cells[6]), cells[7], iso(cells[8])]


@bp.get("/<broadcast_id>/recipients")
@describe(
    "broadcasts",
    {200: RecipientPage},
    (400, 404, 409),
    query=RecipientQuery,
    extra={"responses": {"200": {"content": {"text/csv": CSV}}}},
)
def list_recipients(broadcast_id: str):
    """A broadcast's recipients: number, status, Plivo's message id and error

    JSON pages, or with `format=csv` (or `Accept: text/csv`) every recipient as one CSV
    streamed as it is read: phone, status, message_uuid, error_code, error_reason, units,
    updated_at, sender, send_after."""
    bid = parse_id(broadcast_id)
    statuses = statuses_param(STATUSES)
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        default_sender = load(session, broadcast_id).sender
        # Rows still being written appear out of id order: a page (or CSV) read now could
        # skip some for good. Only pending ones are kept (all of them are pending).
        if statuses is None or "pending" in statuses:
            if kept := audience.unwritten(session, [bid]).get(bid):
                raise ApiError(
                    409,
                    "not_ready",
                    f"recipients: {kept:,} of this broadcast's recipients are still being "
                    f"written (a list broadcast of more than {KEEP_ABOVE:,} contacts is written "
                    "after its 202, a million in about 20 s); ask again in a few seconds, or "
                    "ask for statuses other than pending",
                )
    wanted = text_param("format", "json|csv", "must be json or csv")
    if wanted == "csv" or (wanted is None and request.accept_mimetypes.best == "text/csv"):
        filename = f"broadcast-{bid}-recipients.csv"
        return Response(
            stream_with_context(_csv(bid, statuses, default_sender)),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    limit = int_param("limit", 100, 1, PAGE_MAX)
    after = id_cursor() or 0
    rows = _fetch(bid, statuses, after, limit)
    return jsonify(
        {
            "items": [
                dict(zip(COLUMNS, _json_cells(_row(row, default_sender)), strict=True))
                for row in rows
            ],
            "next_cursor": str(rows[-1][0]) if len(rows) == limit else None,
        }
    )
