"""/v1/broadcasts: create a broadcast (202, idempotent) and read its progress."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime

from flask import Blueprint, current_app, g, jsonify, request, url_for
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import require_api_key
from api.errors import ApiError, int_param
from api.intake import parse_request, plan_broadcast, write_broadcast
from shared.db import session_scope
from shared.limits import effective_mps
from shared.logs import log_event
from shared.models import Batch, Broadcast, BroadcastStatus
from shared.progress import eta_seconds, iso, progress, recent_rate, summarize
from shared.taskqueue import EnqueueError, enqueue_batches

bp = Blueprint("broadcasts", __name__, url_prefix="/v1/broadcasts")
bp.before_request(require_api_key)
log = logging.getLogger(__name__)

BROKER_DOWN_WARNING = (
    "the task broker is unavailable; the broadcast is saved and its batches stay pending "
    "until the reconciler enqueues them"
)


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
    return _accepted(existing.intake_response)


@bp.post("")
def create_broadcast():
    """Validate, persist in one transaction, then enqueue one task per batch."""
    return accept(parse_request, plan_broadcast)


def accept(parse, plan):
    """The intake flow every kind of broadcast shares: Idempotency-Key replay, validation
    before any write, one transaction, then enqueueing after commit. `parse(payload,
    settings)` builds the request model; `plan(session, request, settings)` the Plan."""
    settings = _settings()
    key = _idempotency_key()
    payload = _read_json()
    request_hash = hashlib.sha256(request.get_data(cache=True)).hexdigest()
    url = settings.database_url
    if key:
        with session_scope(url) as session:
            replay = _replay(session, key, request_hash)
        if replay is not None:
            return replay
    parsed = parse(payload, settings)
    try:
        with session_scope(url) as session:
            broadcast_id, batch_ids, body = write_broadcast(
                session,
                plan(session, parsed, settings),
                settings,
                g.api_key_id,
                key,
                request_hash,
            )
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
        batches=len(batch_ids),
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
    if broadcast is None:
        raise ApiError(404, "not_found", f"no broadcast {broadcast_id!r}")
    return broadcast


@bp.get("/<broadcast_id>")
def get_broadcast(broadcast_id: str):
    """Status, counts by recipient status and error code, batches, progress, rate, ETA."""
    settings = _settings()
    with session_scope(settings.database_url) as session:
        broadcast = load(session, broadcast_id)
        body = summarize(session, broadcast)
        rate = recent_rate(session, broadcast)
    body["progress"] = progress(body, settings.status_callback_url is not None)
    body["rate"] = {"messages_per_second": rate, "window_seconds": 60}
    pending = body["recipients"]["by_status"].get("pending", 0)
    mps = effective_mps(settings, broadcast.kind, broadcast.sender)
    sending = body["status"] in (BroadcastStatus.QUEUED, BroadcastStatus.SENDING)
    body["eta_seconds"] = eta_seconds(pending, mps, rate) if sending else None
    body["scheduled_at"] = iso(broadcast.scheduled_at)
    return jsonify(body)


LIST_MAX = 200


def _cursor(broadcast: Broadcast) -> str:
    raw = f"{iso(broadcast.created_at)}|{broadcast.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _after_cursor(cursor: str):
    try:
        created, _, bid = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        created_at, broadcast_id = datetime.fromisoformat(created), uuid.UUID(bid)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_request", "cursor: not a cursor this API gave out") from None
    return or_(
        Broadcast.created_at < created_at,
        and_(Broadcast.created_at == created_at, Broadcast.id < broadcast_id),
    )


def _time_arg(name: str) -> datetime | None:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name}: must be an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@bp.get("")
def list_broadcasts():
    """Newest first, filtered by status and creation time, in keyset pages."""
    limit = int_param("limit", 50, 1, LIST_MAX)
    query = select(Broadcast)
    if request.args.get("status"):
        query = query.where(Broadcast.status.in_(request.args["status"].split(",")))
    if (after := _time_arg("created_after")) is not None:
        query = query.where(Broadcast.created_at >= after)
    if (before := _time_arg("created_before")) is not None:
        query = query.where(Broadcast.created_at < before)
    if request.args.get("cursor"):
        query = query.where(_after_cursor(request.args["cursor"]))
    query = query.order_by(Broadcast.created_at.desc(), Broadcast.id.desc()).limit(limit)
    with session_scope(_settings().database_url) as session:
        rows = list(session.scalars(query))
    return jsonify(
        {
            "broadcasts": [
                {
                    "id": str(row.id),
                    "kind": row.kind,
                    "status": row.status,
                    "sender": row.sender,
                    "counts": row.counts,
                    "created_at": iso(row.created_at),
                    "scheduled_at": iso(row.scheduled_at),
                    "finished_at": iso(row.finished_at),
                }
                for row in rows
            ],
            "next_cursor": _cursor(rows[-1]) if len(rows) == limit else None,
        }
    )
