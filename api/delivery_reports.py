"""/v1/delivery-reports/orphans: delivery reports whose message uuid was never recorded.

Read-only: an orphan is still applied by the workers should its uuid appear; this only lets
an operator see how many there are and what they say."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, current_app, jsonify
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from api.errors import int_param
from api.openapi import ID_CURSOR, Query, describe, id_cursor
from shared.db import session_scope
from shared.models import DeliveryReport
from shared.progress import iso

bp = Blueprint("delivery_reports", __name__, url_prefix="/v1/delivery-reports")

PAGE_MAX = 1000

_ORPHAN = (DeliveryReport.orphaned_at.is_not(None), DeliveryReport.applied_at.is_(None))


class Orphan(BaseModel):
    id: int
    message_uuid: str
    status: str | None = Field(description="Plivo's Status in the report")
    received_at: datetime
    orphaned_at: datetime | None
    params: dict[str, str] = Field(description="The report as Plivo sent it")


class OrphanPage(BaseModel):
    count: int = Field(description="All orphans, not only this page's")
    items: list[Orphan] = Field(description="Oldest first")
    next_cursor: str | None = Field(description="For the next page; null on the last one")


class OrphanQuery(Query):
    limit: int = Field(default=100, ge=1, le=PAGE_MAX, description="Reports per page")
    cursor: str | None = Field(
        default=None, pattern=ID_CURSOR, description="`next_cursor` of the page before"
    )


@bp.get("/orphans")
@describe("delivery reports", {200: OrphanPage}, (400,), query=OrphanQuery)
def list_orphans():
    """Delivery reports whose message uuid was never recorded, oldest first

    Read-only: a worker still applies one should its uuid appear."""
    limit = int_param("limit", 100, 1, PAGE_MAX)
    after = id_cursor() or 0
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        count = session.scalar(select(func.count()).select_from(DeliveryReport).where(*_ORPHAN))
        rows = session.scalars(
            select(DeliveryReport)
            .where(*_ORPHAN, DeliveryReport.id > after)
            .order_by(DeliveryReport.id)
            .limit(limit)
        ).all()
    return jsonify(
        {
            "count": count,
            "items": [
                {
                    "id": row.id,
                    "message_uuid": row.message_uuid,
                    "status": row.params.get("Status"),
                    "received_at": iso(row.received_at),
                    "orphaned_at": iso(row.orphaned_at),
                    "params": row.params,
                }
                for row in rows
            ],
            "next_cursor": str(rows[-1].id) if len(rows) == limit else None,
        }
    )
