"""Operator actions: POST /v1/broadcasts/{id}/pause|resume|cancel|retry, each safe twice."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, g, jsonify, request

from api.auth import require_api_key
from api.broadcasts import load, parse_id
from api.errors import ApiError
from shared import lifecycle
from shared.db import session_scope
from shared.logs import log_event
from shared.taskqueue import EnqueueError, enqueue_batches

log = logging.getLogger(__name__)

bp = Blueprint("actions", __name__, url_prefix="/v1/broadcasts")
bp.before_request(require_api_key)


def _act(broadcast_id: str, action):
    """Run `action(session, id)` in one transaction, mapping refusals to 409."""
    settings = current_app.config["SETTINGS"]
    bid = parse_id(broadcast_id)
    try:
        with session_scope(settings.database_url) as session:
            g.broadcast_kind = load(session, broadcast_id).kind
            result = action(session, bid)
    except lifecycle.ActionRefused as refused:
        raise ApiError(409, "conflict", str(refused)) from None
    return bid, result


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


@bp.post("/<broadcast_id>/pause")
def pause(broadcast_id: str):
    """No new batch starts; calls already in flight finish and are recorded."""
    bid, status = _act(broadcast_id, lifecycle.pause)
    log_event(log, "broadcast.paused", broadcast_id=bid, api_key_id=g.api_key_id)
    return jsonify({"id": str(bid), "status": status})


@bp.post("/<broadcast_id>/resume")
def resume(broadcast_id: str):
    bid, (status, batch_ids) = _act(broadcast_id, lifecycle.resume)
    warnings = _enqueue(bid, batch_ids)
    log_event(log, "broadcast.resumed", broadcast_id=bid, batches=len(batch_ids))
    return jsonify(
        {"id": str(bid), "status": status, "batches": len(batch_ids), "warnings": warnings}
    )


@bp.post("/<broadcast_id>/cancel")
def cancel(broadcast_id: str):
    """Recipients not yet handed to Plivo are skipped (cancelled)."""
    bid, (status, skipped) = _act(broadcast_id, lifecycle.cancel)
    log_event(log, "broadcast.cancelled", broadcast_id=bid, skipped=skipped)
    return jsonify({"id": str(bid), "status": status, "skipped": skipped})


@bp.post("/<broadcast_id>/retry")
def retry(broadcast_id: str):
    """New batches for the recipients in `statuses` (default failed). `unknown` and
    `undelivered` must be asked for: they may have reached the phone already."""
    payload = request.get_json(silent=True) or {}
    if not isinstance(payload, dict) or set(payload) - {"statuses"}:
        raise ApiError(400, "invalid_request", 'body must be {"statuses": [...]} or empty')
    statuses = payload.get("statuses", ["failed"])
    if (
        not isinstance(statuses, list)
        or not statuses
        or not set(statuses) <= set(lifecycle.RETRYABLE)
    ):
        allowed = ", ".join(lifecycle.RETRYABLE)
        raise ApiError(400, "invalid_request", f"statuses: a non-empty list of {allowed}")
    settings = current_app.config["SETTINGS"]
    bid, plan = _act(
        broadcast_id, lambda session, b: lifecycle.retry(session, b, statuses, settings)
    )
    warnings = _enqueue(bid, plan.batch_ids)
    log_event(log, "broadcast.retried", broadcast_id=bid, retried=plan.retried)
    return (
        jsonify(
            {
                "id": str(bid),
                "retried": plan.retried,
                "skipped": plan.skipped,
                "batches": len(plan.batch_ids),
                "warnings": warnings,
            }
        ),
        202,
    )
