"""Turning a POSTed broadcast into rows: validate everything first, then write it all in one
transaction with bulk inserts, so a bad request writes nothing and a good one is whole."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

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
REJECTED_REASON = "MMS can only be sent to US and Canadian numbers"
_E164_SENDER = re.compile(r"\+[1-9]\d{6,14}")
_ALPHANUMERIC_SENDER = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")


# `high` (alerts, one-time codes) books its sender's pacing slots before `normal` broadcasts
# waiting on the same sender.
Priority = Literal["normal", "high"]


class BroadcastRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        # What /docs fills in to try it, and what Schemathesis sends first.
        json_schema_extra={
            "examples": [
                {"recipients": ["+14155550101", "+14155550102"], "text": "Hello from bulksms"}
            ]
        },
    )

    recipients: list[Any] = Field(
        min_length=1,
        description="Phone numbers: E.164, or as people type them with DEFAULT_REGION; "
        "duplicates are sent once, opted-out numbers skipped",
    )
    text: str = Field(description="GSM-7 up to 1600 characters, or UCS-2 up to 737")
    sender: str | None = Field(
        default=None, description="E.164 or 1-11 letters and digits; default PLIVO_SENDER"
    )
    skip_invalid: bool = Field(
        default=False,
        strict=True,  # true or false, not 0 or "yes"
        description="Send to the valid numbers and count the rest, instead of a 400",
    )
    callback_url: str | None = Field(
        default=None, description="Where to POST a signed notice once the broadcast is final"
    )
    send_at: datetime | None = Field(
        default=None, description="ISO 8601 with a zone; it waits, `scheduled`, until then"
    )
    priority: Priority = Field(
        default="normal", description="high books its sender's pacing before normal"
    )


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
    priority: str = "normal"


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


def request_fingerprint(payload: Any) -> str:
    """What an Idempotency-Key is bound to: SHA-256 of the body as canonical JSON (sorted
    keys, no whitespace), so the same request re-serialised by another client is a replay,
    not a conflict."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


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
        # Each rule broken, in its own words: a UK number sent by MMS is a fine E.164
        # number, and being told to send E.164 would not help.
        rules = []
        if invalid:
            rules.append(
                f"{len(invalid)} invalid phone number(s) (each must be a possible number, "
                "in E.164 such as +14155550100, and not the sender's)"
            )
        if unreachable:
            rules.append(f"{len(unreachable)} number(s) this cannot reach: {why}")
        raise ApiError(
            400,
            "invalid_recipients",
            f"recipients: {'; '.join(rules)}; or set skip_invalid to send to the rest",
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
        priority=request.priority,
        **vars(audience),  # shallow: asdict would copy 100k numbers one by one
    )


def intake_counts(plan: Plan) -> dict[str, int]:
    """What became of the numbers in the request (the broadcast's `counts`)."""
    return {
        "accepted": len(plan.to_send),
        "invalid": len(plan.invalid),
        "duplicates": plan.duplicates,
        "skipped": len(plan.skipped),
        "rejected": len(plan.rejected),
    }


def write_broadcast(
    session: Session,
    plan: Plan,
    settings: Settings,
    api_key_id: str,
    idempotency_key: str | None,
    request_hash: str | None,
) -> tuple[uuid.UUID, list[int]]:
    """Broadcast, batches and recipients in the caller's transaction; returns its id and
    the batch ids to enqueue after commit. The 202 body is the broadcast as read back in the
    same transaction (api/broadcast_body.py), so it is the body GET answers."""
    broadcast_id = uuid.uuid4()
    size = settings.batch_size_for(plan.kind)
    batch_count = math.ceil(len(plan.to_send) / size)
    if not batch_count:
        status = BroadcastStatus.COMPLETED
    elif plan.send_at:
        status = BroadcastStatus.SCHEDULED
    else:
        status = BroadcastStatus.QUEUED
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
            counts=intake_counts(plan),
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            # Until the 202 body replaces it: the invalid numbers, which only intake knows.
            intake_response={"invalid": plan.invalid[:INVALID_SHOWN]},
            callback_url=plan.callback_url,
            scheduled_at=plan.send_at,
            priority=plan.priority,
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
    return broadcast_id, batch_ids


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
