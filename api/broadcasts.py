"""/v1/broadcasts: create a broadcast (202, idempotent) and read its progress."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from typing import get_args
from uuid import UUID

from flask import Blueprint, current_app, g, jsonify, request, url_for
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import sees_all
from api.broadcast_body import Broadcast as BroadcastBody
from api.broadcast_body import BroadcastBrief, BroadcastStatusName, brief, full, is_current
from api.errors import ApiError, int_param, newest_first_after
from api.intake import (
    BroadcastRequest,
    check_max_cost,
    parse_request,
    plan_broadcast,
    quote_plan,
    request_fingerprint,
    write_broadcast,
)
from api.openapi import Query, describe, text_param, time_param
from api.quote_body import Quote
from shared.db import session_scope
from shared.logs import log_event
from shared.models import Batch, Broadcast, BroadcastStatus
from shared.taskqueue import EnqueueError, enqueue_batches

bp = Blueprint("broadcasts", __name__, url_prefix="/v1/broadcasts")
log = logging.getLogger(__name__)

BROKER_DOWN_WARNING = (
    "the task broker is unavailable; the broadcast is saved and its batches stay pending "
    "until the reconciler enqueues them"
)


# What a client can do next with the broadcast a 202 names (OpenAPI links, which let
# Schemathesis chain calls).
BROADCAST_LINKS = {
    "GetBroadcast": "broadcasts_get_broadcast",
    "ListRecipients": "recipients_list_recipients",
    "PauseBroadcast": "actions_pause",
    "ResumeBroadcast": "actions_resume",
    "RetryBroadcast": "actions_retry",
    "CancelBroadcast": "actions_cancel",
}


def _settings():
    return current_app.config["SETTINGS"]


def _read_json() -> object:
    if not request.is_json:
        raise ApiError(
            415, "unsupported_media_type", "body must be JSON (Content-Type: application/json)"
        )
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {error}") from None


class IdempotencyHeaders(Query):
    idempotency_key: str | None = Field(
        default=None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Sending the same body again with the same key answers the first 202 "
        "again and creates nothing; another body with the same key is a 409",
    )


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key) <= 255):
        raise ApiError(400, "invalid_request", "Idempotency-Key: must be 1-255 characters")
    return key


def _accepted(body: dict):
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = url_for("broadcasts.get_broadcast", broadcast_id=body["id"])
    return response


def _replay(session: Session, key: str, request_hash: str):
    """The first answer for this Idempotency-Key, or 409 when the body differs."""
    existing = session.scalar(
        select(Broadcast).where(
            Broadcast.api_key_id == g.api_key_id, Broadcast.idempotency_key == key
        )
    )
    if existing is None:
        return None
    if existing.request_hash != request_hash:
        raise ApiError(
            409,
            "idempotency_conflict",
            "Idempotency-Key: already used for a different request body",
            {"broadcast_id": str(existing.id)},
        )
    if not is_current(existing.intake_response):
        # Stored by an older version in another shape: clients parse only this one, so the
        # broadcast is answered as it is now rather than as it was then.
        return _accepted(full(session, existing, _settings()))
    return _accepted(existing.intake_response)


# The answer to a new broadcast, whatever its kind (sms here, mms in api/mms.py).
ACCEPTED = {202: BroadcastBody}
ACCEPTED_ERRORS = (400, 409, 413, 415)
LOCATION = {
    "responses": {
        "202": {
            "headers": {
                "Location": {
                    "required": True,
                    "description": "The broadcast: GET it to watch its progress",
                    "schema": {"type": "string"},
                }
            },
            "links": {
                name: {
                    "operationId": operation,
                    "parameters": {"broadcast_id": "$response.body#/id"},
                }
                for name, operation in BROADCAST_LINKS.items()
            },
        }
    }
}


@bp.post("")
@describe(
    "broadcasts",
    {**ACCEPTED, 200: Quote},
    (*ACCEPTED_ERRORS, 404),
    body=BroadcastRequest,
    headers=IdempotencyHeaders,
    extra=LOCATION,
)
def create_broadcast():
    """Send a text to many recipients (202: saved, and sending starts)

    Every number is checked before anything is written: a bad request writes nothing. The
    202 body is the broadcast as GET /v1/broadcasts/{broadcast_id} shows it. The text may be
    personalised ({first_name}), the audience may come from contact lists, senders from a
    pool, and quiet hours hold recipients in their own night. With `dry_run` the answer is
    200 with the quote (cost per country, segments, duration) and nothing is written."""

    def plan(session, parsed, settings):
        # Lists and templates must be the key's own, as GET shows them (admins: any).
        return plan_broadcast(session, parsed, settings, None if sees_all() else g.api_key_id)

    return accept(parse_request, plan)


def accept(parse, plan):
    """The intake flow every kind of broadcast shares: Idempotency-Key replay, validation
    before any write, one transaction, then enqueueing after commit. `parse(payload,
    settings)` builds the request model; `plan(session, request, settings)` the Plan."""
    settings = _settings()
    key = _idempotency_key()
    payload = _read_json()
    request_hash = request_fingerprint(payload)
    url = settings.database_url
    # A dry run writes nothing, so it neither replays nor takes an Idempotency-Key.
    dry_run = isinstance(payload, dict) and payload.get("dry_run") is True
    if key and not dry_run:
        with session_scope(url) as session:
            replay = _replay(session, key, request_hash)
        if replay is not None:
            return replay
    parsed = parse(payload, settings)
    if dry_run:
        with session_scope(url) as session:
            planned = plan(session, parsed, settings)
            quote = quote_plan(planned, settings)
            # Nothing was written; rolling back makes sure of it.
            session.rollback()
        return jsonify(quote)
    try:
        with session_scope(url) as session:
            planned = plan(session, parsed, settings)
            planned.quote = quote_plan(planned, settings)
            check_max_cost(planned, planned.quote)
            broadcast_id, batch_ids = write_broadcast(
                session, planned, settings, g.api_key_id, key, request_hash
            )
            # Read back in the same transaction: the 202 is what GET answers, and what a
            # replay of this request answers again.
            broadcast = session.get(Broadcast, broadcast_id)
            body = full(session, broadcast, settings)
            broadcast.intake_response = body
    except IntegrityError:
        # Two identical requests raced on one Idempotency-Key: the other one won.
        if not key:
            raise
        with session_scope(url) as session:
            replay = _replay(session, key, request_hash)
        if replay is None:
            raise
        return replay
    log_event(
        log,
        "broadcast.accepted",
        broadcast_id=broadcast_id,
        kind=body["kind"],
        recipients=body["counts"]["accepted"],
        batches=body["batches"]["total"],
        api_key_id=g.api_key_id,
    )
    if batch_ids and body["status"] == BroadcastStatus.QUEUED:
        try:
            enqueue_batches(settings.redis_url, body["kind"], broadcast_id, batch_ids)
        except EnqueueError as error:
            log_event(
                log,
                "broadcast.enqueue_failed",
                logging.WARNING,
                broadcast_id=broadcast_id,
                error=type(error.__cause__).__name__,
            )
            body = {**body, "warnings": [BROKER_DOWN_WARNING]}
            with session_scope(url) as session:
                session.get(Broadcast, broadcast_id).intake_response = body
                session.execute(
                    update(Batch).where(Batch.id.in_(batch_ids)).values(enqueued_at=None)
                )
    return _accepted(body)


def parse_id(broadcast_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(broadcast_id)
    except ValueError:
        raise ApiError(404, "not_found", f"no broadcast {broadcast_id!r}") from None


def load(session: Session, broadcast_id: str) -> Broadcast:
    broadcast = session.get(Broadcast, parse_id(broadcast_id))
    if broadcast is None or not (sees_all() or broadcast.api_key_id == g.api_key_id):
        raise ApiError(404, "not_found", f"no broadcast {broadcast_id!r}")
    return broadcast


@bp.get("/<broadcast_id>")
@describe("broadcasts", {200: BroadcastBody}, (404,))
def get_broadcast(broadcast_id: str):
    """One broadcast: counts by status and error code, progress, rate, ETA

    Also what it is waiting for: its sender's pacing, or delivery reports."""
    settings = _settings()
    with session_scope(settings.database_url) as session:
        return jsonify(full(session, load(session, broadcast_id), settings))


LIST_MAX = 200
STATUSES = get_args(BroadcastStatusName)
_STATUS = "|".join(STATUSES)


class BroadcastQuery(Query):
    status: str | None = Field(
        default=None,
        pattern=f"^({_STATUS})(,({_STATUS}))*$",
        description="Only broadcasts in these statuses, comma-separated",
    )
    created_after: datetime | None = Field(default=None, description="Created at or after")
    created_before: datetime | None = Field(default=None, description="Created before")
    limit: int = Field(default=50, ge=1, le=LIST_MAX, description="Broadcasts per page")
    cursor: UUID | None = Field(default=None, description="`next_cursor` of the page before")


class BroadcastPage(BaseModel):
    items: list[BroadcastBrief] = Field(description="Newest first")
    next_cursor: str | None = Field(description="For the next page; null on the last one")


def statuses_param(allowed: tuple[str, ...]) -> list[str] | None:
    """`?status=a,b` as a list, each one checked against `allowed`."""
    names = "|".join(allowed)
    raw = text_param(
        "status", f"({names})(,({names}))*", f"one or more of {', '.join(allowed)}, comma-separated"
    )
    return None if raw is None else raw.split(",")


@bp.get("")
@describe("broadcasts", {200: BroadcastPage}, (400,), query=BroadcastQuery)
def list_broadcasts():
    """Broadcasts, newest first, filtered by status and creation time

    Each item is a broadcast without the parts that cost a query each (recipients,
    batches, errors, progress): GET one broadcast for those."""
    limit = int_param("limit", 50, 1, LIST_MAX)
    query = select(Broadcast)
    if not sees_all():
        query = query.where(Broadcast.api_key_id == g.api_key_id)
    if (statuses := statuses_param(STATUSES)) is not None:
        query = query.where(Broadcast.status.in_(statuses))
    if (after := time_param("created_after")) is not None:
        query = query.where(Broadcast.created_at >= after)
    if (before := time_param("created_before")) is not None:
        query = query.where(Broadcast.created_at < before)
    if (after_cursor := newest_first_after(Broadcast)) is not None:
        query = query.where(after_cursor)
    query = query.order_by(Broadcast.created_at.desc(), Broadcast.id.desc()).limit(limit)
    with session_scope(_settings().database_url) as session:
        rows = list(session.scalars(query))
    return jsonify(
        {
            "items": [brief(row) for row in rows],
            "next_cursor": str(rows[-1].id) if len(rows) == limit else None,
        }
    )
