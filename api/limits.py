"""/v1/limits: read and change the pacing limits while workers run (Redis overrides)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import require_api_key
from api.errors import ApiError, field_errors
from shared.limits import read_limits, set_limit

bp = Blueprint("limits", __name__, url_prefix="/v1/limits")
bp.before_request(require_api_key)


class KindLimits(BaseModel):
    """Messages per second; 0 means unlimited, null removes the override."""

    model_config = ConfigDict(extra="forbid")

    sms_mps: float | None = Field(default=None, ge=0)
    mms_mps: float | None = Field(default=None, ge=0)


class LimitsUpdate(KindLimits):
    senders: dict[str, KindLimits] = Field(default_factory=dict)


@bp.get("")
def show_limits():
    return jsonify(read_limits(current_app.config["SETTINGS"]))


@bp.put("")
def update_limits():
    """Only the fields present change; the next reservation of every worker sees them."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    try:
        update = LimitsUpdate.model_validate(payload)
    except ValidationError as error:
        raise field_errors(error) from None
    settings = current_app.config["SETTINGS"]
    for kind in ("sms", "mms"):
        if f"{kind}_mps" in update.model_fields_set:
            set_limit(settings, kind, getattr(update, f"{kind}_mps"))
    for sender, limits in update.senders.items():
        for kind in ("sms", "mms"):
            if f"{kind}_mps" in limits.model_fields_set:
                set_limit(settings, kind, getattr(limits, f"{kind}_mps"), sender=sender)
    return jsonify(read_limits(settings))
