"""Operator actions: POST /v1/broadcasts/{id}/pause|resume|cancel|retry, each safe twice."""

from __future__ import annotations

import logging
from typing import Literal

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from api.broadcast_body import BroadcastStatusName
from api.broadcasts import load, parse_id
from api.errors import ApiError, field_errors
from api.openapi import describe
from shared import lifecycle
from shared.db import session_scope
from shared.logs import log_event
from shared.models import Broadcast
from shared.taskqueue import EnqueueError, enqueue_batches

log = logging.getLogger(__name__)

bp = Blueprint("actions", __name__, url_prefix="/v1/broadcasts")

RetryableStatus = Literal["failed", "unknown", "undelivered"]


class ActionResult(BaseModel):
    """What an action did; the same fields for all four (GET the broadcast for the rest)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    id: str = Field(description="The broadcast")
    action: Literal["pause", "resume", "cancel", "retry"]
    status: BroadcastStatusName = Field(description="The broadcast's status after it")
    retried: int = Field(description="Recipients sent again (retry)")
    skipped: int = Field(description="Recipients not sent: cancelled, or opted out (retry)")
    batches_enqueued: int = Field(description="New or resumed batches handed to the workers")
    warnings: list[str]


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    statuses: list[RetryableStatus] = Field(
        default=["failed"],
        min_length=1,
        description="Which recipients to send again. unknown and undelivered may have "
        "reached the phone already, so they are retried only when named",
    )


def _act(broadcast_id: str, action):
    """Run `action(session, id)` in one transaction, mapping refusals to 409; returns the
    broadcast id, what the action returned, and the broadcast's status after it."""
    settings = current_app.config["SETTINGS"]
    bid = parse_id(broadcast_id)
    try:
        with session_scope(settings.database_url) as session:
            g.broadcast_kind = load(session, broadcast_id).kind
            result = action(session, bid)
            status = session.scalar(select(Broadcast.status).where(Broadcast.id == bid))
    except lifecycle.ActionRefused as refused:
        raise ApiError(409, "conflict", str(refused)) from None
    return bid, result, status


def _result(bid, action: str, status: str, *, retried=0, skipped=0, batches=(), warnings=()):
    return jsonify(
        {
            "id": str(bid),
            "action": action,
            "status": status,
            "retried": retried,
            "skipped": skipped,
            "batches_enqueued": len(batches),
            "warnings": list(warnings),
        }
    )


def _enqueue(broadcast_id, batch_ids: list[int]) -> list[str]:
    """After commit; if the broker is down the reconciler enqueues them instead."""
    if not batch_ids:
        return []
    try:
        redis_url = current_app.config["SETTINGS"].redis_url
        enqueue_batches(redis_url, g.broadcast_kind, broadcast_id, batch_ids)
    except EnqueueError:
        return ["the task broker is unavailable; the reconciler will enqueue the batches"]
    return []


ACTION_ERRORS = (404, 409)


@bp.post("/<broadcast_id>/pause")
@describe("broadcasts", {200: ActionResult}, ACTION_ERRORS)
def pause(broadcast_id: str):
    """Pause: no new batch starts

    Calls already in flight finish and are recorded. The slots its batches had booked go
    back to the sender. Pausing a paused broadcast is fine; a finished one is a 409."""
    settings = current_app.config["SETTINGS"]
    bid, _, status = _act(
        broadcast_id, lambda session, b: lifecycle.pause(session, b, settings=settings)
    )
    log_event(log, "broadcast.paused", broadcast_id=bid, api_key_id=g.api_key_id)
    return _result(bid, "pause", status)


@bp.post("/<broadcast_id>/resume")
@describe("broadcasts", {200: ActionResult}, ACTION_ERRORS)
def resume(broadcast_id: str):
    """Resume a paused broadcast: its pending batches are enqueued again"""
    bid, (_, batch_ids), status = _act(broadcast_id, lifecycle.resume)
    warnings = _enqueue(bid, batch_ids)
    log_event(log, "broadcast.resumed", broadcast_id=bid, batches=len(batch_ids))
    return _result(bid, "resume", status, batches=batch_ids, warnings=warnings)


@bp.post("/<broadcast_id>/cancel")
@describe("broadcasts", {200: ActionResult}, ACTION_ERRORS)
def cancel(broadcast_id: str):
    """Cancel: recipients not yet handed to Plivo are skipped (cancelled)

    The slots its batches had booked go back to the sender."""
    settings = current_app.config["SETTINGS"]
    bid, (_, skipped), status = _act(
        broadcast_id, lambda session, b: lifecycle.cancel(session, b, settings=settings)
    )
    log_event(log, "broadcast.cancelled", broadcast_id=bid, skipped=skipped)
    return _result(bid, "cancel", status, skipped=skipped)


def _retry_statuses() -> list[str]:
    """`statuses` from an optional JSON body: no body at all means failed."""
    if not request.get_data(cache=True):
        return ["failed"]
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise ApiError(
            400, "invalid_request", 'body must be JSON {"statuses": [...]}, or no body at all'
        )
    try:
        return RetryRequest.model_validate(payload).statuses
    except ValidationError as error:
        raise field_errors(error) from None


@bp.post("/<broadcast_id>/retry")
@describe(
    "broadcasts",
    {202: ActionResult},
    (400, 404, 409),
    body=RetryRequest,
    extra={"requestBody": {"required": False}},
)
def retry(broadcast_id: str):
    """Send again to the recipients in `statuses` (default failed), in new batches

    `unknown` and `undelivered` must be asked for: they may have reached the phone
    already. Opted-out numbers are skipped."""
    statuses = _retry_statuses()
    settings = current_app.config["SETTINGS"]
    bid, plan, status = _act(
        broadcast_id, lambda session, b: lifecycle.retry(session, b, statuses, settings)
    )
    warnings = _enqueue(bid, plan.batch_ids)
    log_event(log, "broadcast.retried", broadcast_id=bid, retried=plan.retried)
    answer = _result(
        bid,
        "retry",
        status,
        retried=plan.retried,
        skipped=plan.skipped,
        batches=plan.batch_ids,
        warnings=warnings,
    )
    return answer, 202
