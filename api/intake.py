"""Turning a POSTed broadcast into rows: validate everything first, then write it all in one
transaction with bulk inserts, so a bad request writes nothing and a good one is whole."""

from __future__ import annotations

import io
import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from api.errors import ApiError, field_errors
from shared.config import Settings
from shared.db import is_postgres
from shared.encoding import measure, too_long
from shared.models import (
    Batch,
    BatchStatus,
    Broadcast,
    BroadcastStatus,
    Recipient,
    RecipientStatus,
    utcnow,
)
from shared.opt_outs import opted_out_among
from shared.phone import InvalidNumber, normalise
from shared.urls import UnsafeUrl, check_url

INVALID_SHOWN = 20
NULL = "\\N"  # COPY text format
REJECTED_REASON = "MMS reaches only the US and Canada"
_E164_SENDER = re.compile(r"\+[1-9]\d{6,14}")
_ALPHANUMERIC_SENDER = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")


class BroadcastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipients: list[Any] = Field(min_length=1)
    text: str
    sender: str | None = None
    # Accept the valid numbers and count the rest, instead of refusing the whole request.
    skip_invalid: bool = False
    # Where to POST a signed notice once the broadcast is final.
    callback_url: str | None = None
    # ISO 8601 with a zone; the broadcast waits, `scheduled`, until then.
    send_at: datetime | None = None


@dataclass
class Plan:
    """A validated broadcast, ready to be written."""

    sender: str
    text: str | None
    encoding: str | None
    segments: int
    to_send: list[str]
    skipped: list[str]
    invalid: list[dict] = field(default_factory=list)
    duplicates: int = 0
    callback_url: str | None = None
    send_at: datetime | None = None
    kind: str = "sms"
    media: dict | None = None
    # Valid numbers this kind cannot reach (MMS outside the US and Canada), kept as
    # `rejected` when the client asked to skip them.
    rejected: list[str] = field(default_factory=list)


def parse_request(payload: Any, settings: Settings, model: type[BaseModel] = BroadcastRequest):
    """The request model from a JSON body, or a 4xx naming the field."""
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    recipients = payload.get("recipients")
    # Checked before the model so an oversized list is refused without validating it.
    if isinstance(recipients, list) and len(recipients) > settings.max_recipients:
        raise ApiError(
            413,
            "too_many_recipients",
            f"recipients: {len(recipients)} recipients exceed the maximum of "
            f"{settings.max_recipients} per broadcast (MAX_RECIPIENTS)",
        )
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise field_errors(error) from None


def check_sender(sender: str | None, settings: Settings) -> str:
    chosen = sender if sender is not None else settings.default_sender
    if not chosen:
        raise ApiError(
            400, "invalid_request", "sender: required, because no PLIVO_SENDER is configured"
        )
    if not (_E164_SENDER.fullmatch(chosen) or _ALPHANUMERIC_SENDER.fullmatch(chosen)):
        raise ApiError(
            400,
            "invalid_request",
            "sender: must be an E.164 number such as +14155550100 or 1-11 letters and digits",
        )
    return chosen


def check_callback_url(url: str | None, settings: Settings) -> str | None:
    if url is None:
        return None
    if not settings.effective_callback_secret:
        raise ApiError(
            400, "invalid_request", "callback_url: needs CALLBACK_SECRET to be configured"
        )
    try:
        # Sandbox mode is local development: plain http and local receivers are fine.
        sandbox = settings.sandbox_mode
        return check_url(url, allow_http=sandbox, allow_internal=sandbox)
    except UnsafeUrl as error:
        raise ApiError(400, "invalid_request", f"callback_url: {error}") from None


def check_send_at(send_at: datetime | None) -> datetime | None:
    if send_at is None:
        return None
    if send_at.tzinfo is None:
        raise ApiError(400, "invalid_request", "send_at: must include a time zone (Z or +HH:MM)")
    if send_at <= utcnow():
        raise ApiError(400, "invalid_request", "send_at: is in the past")
    return send_at


def check_text(text: str) -> tuple[str, int]:
    if not text.strip():
        raise ApiError(400, "invalid_request", "text: must not be empty")
    cost = measure(text)
    problem = too_long(cost)
    if problem:
        raise ApiError(400, "invalid_request", f"text: {problem}")
    return cost.encoding, cost.segments


def normalise_all(values: list[Any], region: str | None) -> tuple[dict[str, int], list[dict], int]:
    """Unique E.164 numbers (each with the index it was first given at) in the order given,
    the invalid ones, and the duplicate count."""
    seen: dict[str, int] = {}
    invalid: list[dict] = []
    duplicates = 0
    for index, value in enumerate(values):
        try:
            number = normalise(value, region)
        except InvalidNumber as error:
            invalid.append({"index": index, "value": value, "reason": str(error)})
            continue
        if number in seen:
            duplicates += 1
        else:
            seen[number] = index
    return seen, invalid, duplicates


@dataclass
class Audience:
    """Recipients after normalising, de-duplicating, and checking the opt-out list."""

    to_send: list[str]
    skipped: list[str]
    invalid: list[dict]
    duplicates: int
    rejected: list[str]


def plan_audience(
    session: Session,
    values: list[Any],
    sender: str,
    skip_invalid: bool,
    settings: Settings,
    reachable=None,
    why: str = "",
) -> Audience:
    """Refuses (400, listing index/value/reason) any invalid number unless skip_invalid.
    `reachable(number)` filters numbers this kind of message cannot reach."""
    first_index, invalid, duplicates = normalise_all(values, settings.default_region)
    if sender in first_index:
        # Plivo (and its SDK) refuse a whole call whose destinations include its source.
        index = first_index.pop(sender)
        invalid.append({"index": index, "value": values[index], "reason": "is the sender's number"})
    rejected, unreachable = [], []
    if reachable is not None:
        for number, index in list(first_index.items()):
            if not reachable(number):
                del first_index[number]
                rejected.append(number)
                unreachable.append({"index": index, "value": values[index], "reason": why})
    problems = sorted(invalid + unreachable, key=lambda item: item["index"])
    if problems and not skip_invalid:
        raise ApiError(
            400,
            "invalid_recipients",
            f"recipients: {len(problems)} invalid phone number(s); "
            "send E.164 numbers such as +14155550100 (or set skip_invalid)",
            {"invalid": problems[:INVALID_SHOWN], "invalid_total": len(problems)},
        )
    invalid.sort(key=lambda item: item["index"])
    numbers = list(first_index)
    if not numbers:
        raise ApiError(400, "invalid_request", "recipients: no valid phone number left")
    blocked = opted_out_among(session, numbers)
    to_send = [n for n in numbers if n not in blocked] if blocked else numbers
    skipped = [n for n in numbers if n in blocked]
    return Audience(to_send, skipped, invalid, duplicates, rejected)


def plan_broadcast(session: Session, request: BroadcastRequest, settings: Settings) -> Plan:
    """All validation, before anything is written. Raises ApiError naming the field."""
    sender = check_sender(request.sender, settings)
    encoding, segments = check_text(request.text)
    callback_url = check_callback_url(request.callback_url, settings)
    send_at = check_send_at(request.send_at)
    audience = plan_audience(session, request.recipients, sender, request.skip_invalid, settings)
    return Plan(
        sender=sender,
        text=request.text,
        encoding=encoding,
        segments=segments,
        callback_url=callback_url,
        send_at=send_at,
        **vars(audience),  # shallow: asdict would copy 100k numbers one by one
    )


def response_body(broadcast_id: uuid.UUID, plan: Plan, batch_count: int, status: str) -> dict:
    return {
        "id": str(broadcast_id),
        "kind": plan.kind,
        "status": status,
        "sender": plan.sender,
        "counts": {
            "accepted": len(plan.to_send),
            "invalid": len(plan.invalid),
            "duplicates": plan.duplicates,
            "skipped": len(plan.skipped),
            "rejected": len(plan.rejected),
        },
        "batches": batch_count,
        "encoding": plan.encoding,
        "segments": {"per_message": plan.segments, "total": plan.segments * len(plan.to_send)},
        "invalid": plan.invalid[:INVALID_SHOWN],
        "send_at": plan.send_at.isoformat() if plan.send_at else None,
    }


def write_broadcast(
    session: Session,
    plan: Plan,
    settings: Settings,
    api_key_id: str,
    idempotency_key: str | None,
    request_hash: str | None,
) -> tuple[uuid.UUID, list[int], dict]:
    """Broadcast, batches and recipients in the caller's transaction; returns the batch ids
    to enqueue after commit and the 202 body."""
    broadcast_id = uuid.uuid4()
    size = settings.batch_size_for(plan.kind)
    batch_count = math.ceil(len(plan.to_send) / size)
    if not batch_count:
        status = BroadcastStatus.COMPLETED
    elif plan.send_at:
        status = BroadcastStatus.SCHEDULED
    else:
        status = BroadcastStatus.QUEUED
    body = response_body(broadcast_id, plan, batch_count, status)
    now = utcnow()
    session.execute(
        insert(Broadcast).values(
            id=broadcast_id,
            kind=plan.kind,
            sender=plan.sender,
            text=plan.text,
            media=plan.media,
            encoding=plan.encoding,
            segments=plan.segments,
            status=status,
            counts=body["counts"],
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            intake_response=body,
            callback_url=plan.callback_url,
            scheduled_at=plan.send_at,
            created_at=now,
            updated_at=now,
            finished_at=None if batch_count else now,
        )
    )
    batch_ids: list[int] = []
    if batch_count:
        session.execute(
            insert(Batch),
            [
                {
                    "broadcast_id": broadcast_id,
                    "seq": seq,
                    "size": len(plan.to_send[seq * size : (seq + 1) * size]),
                    "status": BatchStatus.PENDING,
                    "attempts": 0,
                    # Enqueued right after commit (NULL if the broker refuses); a scheduled
                    # broadcast's batches wait for the reconciler to start it.
                    "enqueued_at": None if plan.send_at else now,
                    "created_at": now,
                    "updated_at": now,
                }
                for seq in range(batch_count)
            ],
        )
        batch_ids = list(
            session.scalars(
                select(Batch.id).where(Batch.broadcast_id == broadcast_id).order_by(Batch.seq)
            )
        )
    rows = [
        (batch_ids[index // size], phone, RecipientStatus.PENDING, None)
        for index, phone in enumerate(plan.to_send)
    ]
    rows += [(None, phone, RecipientStatus.SKIPPED, "opted out") for phone in plan.skipped]
    rows += [(None, phone, RecipientStatus.REJECTED, REJECTED_REASON) for phone in plan.rejected]
    _insert_recipients(session, broadcast_id, rows)
    return broadcast_id, batch_ids, body


def _insert_recipients(session: Session, broadcast_id: uuid.UUID, rows: list[tuple]) -> None:
    if is_postgres(session):
        # COPY is several times faster than multi-row INSERT for 100k rows, and runs on
        # the session's own connection, so it is part of the same transaction.
        buffer = io.StringIO()
        bid = str(broadcast_id)
        for batch_id, phone, status, reason in rows:
            batch = NULL if batch_id is None else batch_id
            buffer.write(f"{bid}\t{batch}\t{phone}\t{status}\t{reason or NULL}\n")
        buffer.seek(0)
        cursor = session.connection().connection.dbapi_connection.cursor()
        cursor.copy_expert(
            "COPY recipients (broadcast_id, batch_id, phone, status, error_reason) FROM STDIN",
            buffer,
        )
        return
    session.execute(
        insert(Recipient.__table__),
        [
            {
                "broadcast_id": broadcast_id,
                "batch_id": batch_id,
                "phone": phone,
                "status": status,
                "error_reason": reason,
            }
            for batch_id, phone, status, reason in rows
        ],
    )
