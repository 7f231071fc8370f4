"""/v1/opt-outs: list (JSON pages or streamed CSV), add (JSON or CSV import), remove."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from api.csv_cells import phone_cell, text_cell
from api.errors import ApiError, field_errors, int_param
from api.openapi import CSV, Query, describe, text_param
from shared.db import session_scope
from shared.models import OptOut as OptOutRow
from shared.opt_outs import add_opt_outs, remove_opt_out
from shared.phone import InvalidNumber, normalise
from shared.progress import iso

bp = Blueprint("opt_outs", __name__, url_prefix="/v1/opt-outs")

PAGE_MAX = 1000
EXPORT_CHUNK = 5000
INVALID_SHOWN = 20
# The cursor is the last number of the page before: E.164, as stored.
CURSOR = r"^\+[0-9]{1,15}$"
# No database text column stores NUL; a reason is words, not control characters.
REASON = r"^[^\x00]*$"
NUMBER_RULE = "each must be a possible phone number, in E.164 such as +14155550100"


class OptOut(BaseModel):
    phone: str = Field(description="E.164")
    source: str = Field(description="api, inbound (a STOP reply) or import")
    reason: str | None
    created_at: datetime


class OptOutPage(BaseModel):
    items: list[OptOut] = Field(description="Ordered by number")
    next_cursor: str | None = Field(description="For the next page; null on the last one")


class OptOutQuery(Query):
    limit: int = Field(default=100, ge=1, le=PAGE_MAX, description="Numbers per page")
    cursor: str | None = Field(
        default=None, pattern=CURSOR, description="`next_cursor` of the page before"
    )
    format: Literal["json", "csv"] | None = Field(
        default=None, description="csv: the whole list as one streamed CSV (or Accept: text/csv)"
    )


class NewOptOuts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phones: list[Any] = Field(min_length=1, description="Numbers as people type them")
    reason: str | None = Field(default=None, pattern=REASON, description="Kept with each")
    skip_invalid: bool = Field(
        default=False, strict=True, description="Add the valid ones, count the rest"
    )


class ImportQuery(Query):
    """For a CSV body, which has no room for them."""

    reason: str | None = Field(default=None, pattern=REASON, description="Kept with each")
    skip_invalid: Literal["true", "false"] | None = Field(
        default=None, description="true: add the valid numbers, count the rest"
    )


class OptOutsAdded(BaseModel):
    added: int = Field(description="Numbers new on the list")
    already: int = Field(description="Numbers that were on it already")
    invalid: int = Field(description="Numbers skipped as invalid (skip_invalid)")


def _settings():
    return current_app.config["SETTINGS"]


def _row(opt_out: OptOutRow) -> dict:
    return {
        "phone": opt_out.phone,
        "source": opt_out.source,
        "reason": opt_out.reason,
        "created_at": iso(opt_out.created_at),
    }


def _page(after: str, limit: int) -> list[OptOutRow]:
    with session_scope(_settings().database_url) as session:
        return list(
            session.scalars(
                select(OptOutRow)
                .where(OptOutRow.phone > after)
                .order_by(OptOutRow.phone)
                .limit(limit)
            )
        )


def _wants_csv() -> bool:
    wanted = text_param("format", "json|csv", "must be json or csv")
    return wanted == "csv" or (wanted is None and request.accept_mimetypes.best == "text/csv")


@bp.get("")
@describe(
    "opt-outs",
    {200: OptOutPage},
    (400,),
    query=OptOutQuery,
    extra={"responses": {"200": {"content": {"text/csv": CSV}}}},
)
def list_opt_outs():
    """The numbers no broadcast may text, ordered by number

    JSON pages, or with `format=csv` (or `Accept: text/csv`) the whole list as one CSV
    streamed without holding it in memory: phone, source, reason, created_at."""
    if _wants_csv():
        return Response(stream_with_context(_csv_rows()), mimetype="text/csv")
    limit = int_param("limit", 100, 1, PAGE_MAX)
    after = text_param("cursor", CURSOR, "not a cursor this API gave out") or ""
    rows = _page(after, limit)
    return jsonify(
        {
            "items": [_row(row) for row in rows],
            "next_cursor": rows[-1].phone if len(rows) == limit else None,
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
            # The reason is free text (an inbound STOP's words, a client's reason).
            writer.writerow(
                [
                    phone_cell(row.phone),
                    row.source,
                    text_cell(row.reason or ""),
                    iso(row.created_at),
                ]
            )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < EXPORT_CHUNK:
            return
        after = rows[-1].phone


def _import_options() -> tuple[str | None, bool]:
    """`reason` and `skip_invalid` from the query string, checked whatever the body."""
    reason = request.args.get("reason")
    if reason is not None and "\x00" in reason:
        raise ApiError(400, "invalid_request", "reason: must not contain NUL (\\u0000)")
    skip = text_param("skip_invalid", "true|false", "must be true or false")
    return reason, skip == "true"


def _submitted_numbers() -> tuple[list, str | None, bool]:
    """(values, reason, skip_invalid) from a JSON body or a CSV upload (first column)."""
    reason, skip_invalid = _import_options()
    if request.mimetype == "text/csv":
        reader = csv.reader(io.StringIO(request.get_data(as_text=True)))
        values = [row[0].strip() for row in reader if row and row[0].strip()]
        if values and not any(ch.isdigit() for ch in values[0]):
            values = values[1:]  # a header row such as "phone"
        if not values:
            raise ApiError(400, "invalid_request", "body: the CSV has no phone numbers")
        return values, reason, skip_invalid
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise ApiError(
            400,
            "invalid_request",
            'body must be JSON {"phones": [...], "reason"?: "...", "skip_invalid"?: bool} '
            "or a CSV (Content-Type: text/csv)",
        )
    try:
        wanted = NewOptOuts.model_validate(payload)
    except ValidationError as error:
        raise field_errors(error) from None
    return wanted.phones, wanted.reason or reason, wanted.skip_invalid or skip_invalid


@bp.post("")
@describe(
    "opt-outs",
    {201: OptOutsAdded},
    (400, 413),
    query=ImportQuery,
    body=NewOptOuts,
    extra={"requestBody": {"content": {"text/csv": CSV}}},
)
def add():
    """Add numbers: JSON, or a CSV import (the first column; a header row is fine)

    Every number is checked first: an invalid one refuses the lot unless skip_invalid."""
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
            f"phones: {len(invalid)} invalid phone number(s) ({NUMBER_RULE}); "
            "or set skip_invalid to add the rest",
            {"invalid": invalid[:INVALID_SHOWN], "invalid_total": len(invalid)},
        )
    if not phones:
        raise ApiError(400, "invalid_request", f"phones: no valid phone number ({NUMBER_RULE})")
    with session_scope(settings.database_url) as session:
        added = add_opt_outs(session, phones, source="api", reason=reason)
    unique = len(set(phones))
    return jsonify({"added": added, "already": unique - added, "invalid": len(invalid)}), 201


@bp.delete("/<phone>")
@describe("opt-outs", {204: None}, (400, 404))
def remove(phone: str):
    """Remove a number from the list, so broadcasts may text it again"""
    try:
        number = normalise(phone, _settings().default_region)
    except InvalidNumber as error:
        raise ApiError(400, "invalid_request", f"phone: {error} ({NUMBER_RULE})") from None
    with session_scope(_settings().database_url) as session:
        if not remove_opt_out(session, number):
            raise ApiError(404, "not_found", f"{number} is not on the opt-out list")
    return "", 204
