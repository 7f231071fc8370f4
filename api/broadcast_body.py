"""A broadcast as the API shows it: one body for the 202 of POST /v1/broadcasts and /v1/mms,
GET /v1/broadcasts/{id}, and the items of GET /v1/broadcasts (which leave out the parts that
cost a query per broadcast, under the same names and types). The CLI's --json prints it as
it comes; the models here are what /openapi.json says of it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.quote_body import Quote
from shared.config import Settings
from shared.models import Broadcast as BroadcastRow
from shared.progress import iso, outlook, progress, recent_rate, summarize

RATE_WINDOW_SECONDS = 60

BroadcastStatusName = Literal[
    "scheduled", "queued", "sending", "paused", "cancelled", "completed", "completed_with_failures"
]


class Body(BaseModel):
    # Every field is in every answer (null when there is nothing to say), so the schema of
    # an answer lists them all as required.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class Segments(Body):
    per_message: int = Field(
        description="What one message costs in SMS segments (1 for MMS); for personalised "
        "texts, the longest"
    )
    total: int = Field(description="Segments of all accepted recipients' messages together")
    longest: int = Field(description="Segments of the longest message")


class IntakeCounts(Body):
    """What became of the numbers in the request."""

    accepted: int
    invalid: int
    duplicates: int
    skipped: int = Field(description="On the opt-out list")
    rejected: int = Field(description="Valid numbers this kind cannot reach (MMS abroad)")


class Tally(Body):
    total: int
    by_status: dict[str, int]


class ErrorCount(Body):
    count: int
    meaning: str | None = Field(description="What Plivo's error code means")


class Progress(Body):
    final: int = Field(description="Recipients with nothing more to come")
    total: int
    percent: float


class Rate(Body):
    messages_per_second: float
    window_seconds: int


class InvalidRecipient(Body):
    index: int | None = Field(description="Position in `recipients`; null: a list's contact")
    value: Any = Field(description="What was sent")
    reason: str
    list_id: UUID | None = Field(default=None, description="The list of a contact")


class QuietHours(Body):
    start: str = Field(description="HH:MM in each recipient's local time")
    end: str


class BroadcastBrief(Body):
    """A broadcast in a list: the fields of Broadcast that need no extra query."""

    id: UUID
    name: str | None = Field(description="What the client called it")
    kind: Literal["sms", "mms"]
    status: BroadcastStatusName
    status_reason: str | None
    sender: str = Field(description="The sender, or the first of the pool")
    senders: list[str] | None = Field(description="The sender pool; null: one sender")
    priority: Literal["normal", "high"]
    template_id: UUID | None = Field(description="The template the text came from")
    list_ids: list[UUID] | None = Field(description="The contact lists it was sent to")
    quiet_hours: QuietHours | None = Field(description="Null: any hour")
    encoding: str | None = Field(
        description="GSM or UCS-2 (SMS), mixed when personalised texts differ; null for MMS"
    )
    segments: Segments
    counts: IntakeCounts
    quote: Quote | None = Field(description="The estimate made when it was accepted")
    scheduled_at: datetime | None = Field(description="When it starts (send_at); null: at once")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class Broadcast(BroadcastBrief):
    """A broadcast: what it is, how far it has got, and what it waits for."""

    recipients: Tally
    batches: Tally
    errors: dict[str, ErrorCount] = Field(description="Recipients by Plivo error code")
    progress: Progress
    rate: Rate
    eta_seconds: float | None = Field(description="Until every recipient is handed to Plivo")
    waiting_for: str | None
    pacing: dict[str, Any] | None = Field(description="The limits in force, what goes first")
    held: dict[str, Any] | None = Field(
        default=None,
        description="Recipients quiet hours hold: how many, the first and last release",
    )
    reports_due_by: datetime | None = Field(description="When missing reports are looked up")
    sent_no_report: int = Field(description="Sent; Plivo had no final status when asked")
    resolutions: dict[str, Any] = Field(description="Batches of unknown outcome looked up")
    invalid: list[InvalidRecipient] = Field(description="The first invalid numbers (intake)")
    warnings: list[str] = Field(description="Anything this answer must warn about")


def brief(broadcast: BroadcastRow) -> dict[str, Any]:
    """The list item: the broadcast's own row, nothing counted."""
    counts = {name: 0 for name in IntakeCounts.model_fields} | (broadcast.counts or {})
    per_message = broadcast.segments or 0
    quote = broadcast.quote if isinstance(broadcast.quote, dict) else None
    segments = {
        "per_message": per_message,
        "total": per_message * counts["accepted"],
        "longest": per_message if counts["accepted"] else 0,
    }
    if quote is not None:
        segments |= quote["segments"]
    return {
        "id": str(broadcast.id),
        "name": broadcast.name,
        "kind": broadcast.kind,
        "status": broadcast.status,
        "status_reason": broadcast.status_reason,
        "sender": broadcast.sender,
        "senders": broadcast.senders,
        "priority": broadcast.priority,
        "template_id": str(broadcast.template_id) if broadcast.template_id else None,
        "list_ids": broadcast.list_ids,
        "quiet_hours": broadcast.quiet_hours,
        "encoding": broadcast.encoding,
        "segments": segments,
        "counts": counts,
        "quote": quote,
        "scheduled_at": iso(broadcast.scheduled_at),
        "created_at": iso(broadcast.created_at),
        "updated_at": iso(broadcast.updated_at),
        "finished_at": iso(broadcast.finished_at),
    }


def full(session: Session, broadcast: BroadcastRow, settings: Settings) -> dict[str, Any]:
    """The whole broadcast: `brief` plus recipients and batches by status, errors by code,
    progress, rate, ETA and what it waits for."""
    summary = summarize(session, broadcast)
    rate = recent_rate(session, broadcast, RATE_WINDOW_SECONDS)
    body = brief(broadcast)
    body |= {key: value for key, value in summary.items() if key not in body}
    body["progress"] = progress(summary, settings.status_callback_url is not None)
    body["rate"] = {"messages_per_second": rate, "window_seconds": RATE_WINDOW_SECONDS}
    body |= {"reports_due_by": None} | outlook(session, broadcast, summary, settings, rate)
    stored = broadcast.intake_response if isinstance(broadcast.intake_response, dict) else {}
    body["invalid"] = stored.get("invalid", [])
    body["warnings"] = []
    return body


def is_current(body: Any) -> bool:
    """Whether a stored 202 body has today's shape (older ones had `batches` as a number
    and `send_at`, or no campaign fields: name, quote, ...)."""
    return (
        isinstance(body, dict)
        and isinstance(body.get("batches"), dict)
        and "rate" in body
        and "quote" in body
    )
