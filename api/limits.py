"""/v1/limits: read and change the pacing limits while workers run (Redis overrides)."""

from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import ApiError, field_errors
from api.openapi import describe
from shared.db import session_scope
from shared.lifecycle import wake_waiting
from shared.limits import read_limits, set_limit

bp = Blueprint("limits", __name__, url_prefix="/v1/limits")


class KindLimits(BaseModel):
    """Messages per second; 0 means unlimited, null removes the override."""

    model_config = ConfigDict(extra="forbid")

    # strict: a number, not `true` or "5" (which pydantic would otherwise read as 1 and 5).
    sms_mps: float | None = Field(default=None, ge=0, strict=True)
    mms_mps: float | None = Field(default=None, ge=0, strict=True)


# A sender as broadcasts name theirs (an E.164 number, or up to 11 letters and digits): a
# limit for anything else could never apply.
SenderId = Annotated[str, Field(pattern=r"^(\+[1-9][0-9]{6,14}|[A-Za-z0-9 ]{1,11})$")]


class LimitsUpdate(KindLimits):
    senders: dict[SenderId, KindLimits] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False}
    )


class Limit(BaseModel):
    value: float = Field(description="Messages per second; 0: no limit")
    source: Literal["config", "override"] = Field(description="override: set here, in Redis")


class SenderLimits(BaseModel):
    sms_mps: Limit | None = Field(default=None, description="Absent: the default applies")
    mms_mps: Limit | None = Field(default=None, description="Absent: the default applies")


class Limits(BaseModel):
    sms_mps: Limit = Field(description="The account's SMS limit")
    mms_mps: Limit = Field(description="The account's MMS limit")
    senders: dict[str, SenderLimits] = Field(description="Per sender, where one is set")
    default_sender_mps: Limit = Field(description="For senders with no limit of their own")


@bp.get("")
@describe("limits", {200: Limits})
def show_limits():
    """The pacing limits in force, each with where it comes from"""
    return jsonify(read_limits(current_app.config["SETTINGS"]))


@bp.put("")
@describe("limits", {200: Limits}, (400,), body=LimitsUpdate)
def update_limits():
    """Change pacing limits live; only the fields present change

    The next reservation of every worker sees them, and every batch waiting unbooked for a
    changed kind (or sender) tries again at once instead of at the time its old estimate
    said."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    try:
        update = LimitsUpdate.model_validate(payload)
    except ValidationError as error:
        raise field_errors(error) from None
    settings = current_app.config["SETTINGS"]
    changed: list[tuple[str, str | None]] = []
    for kind in ("sms", "mms"):
        if f"{kind}_mps" in update.model_fields_set:
            set_limit(settings, kind, getattr(update, f"{kind}_mps"))
            changed.append((kind, None))
    for sender, limits in update.senders.items():
        for kind in ("sms", "mms"):
            if f"{kind}_mps" in limits.model_fields_set:
                set_limit(settings, kind, getattr(limits, f"{kind}_mps"), sender=sender)
                changed.append((kind, sender))
    # After the new limits are in Redis, so the woken batches book under them.
    with session_scope(settings.database_url) as session:
        for kind, sender in changed:
            wake_waiting(session, kind, sender)
    return jsonify(read_limits(settings))
