"""The audit trail: every operator action that succeeded, who did it, on what, and when.

Recorded in one place, an after_request hook that knows the audited endpoints (AUDITED), so
a route cannot forget to; read with GET /v1/audit (admin)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask.wrappers import Response
from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError

from api.errors import int_param
from api.openapi import ID_CURSOR, Query, describe, id_cursor, text_param, time_param
from shared.db import session_scope
from shared.logs import log_event
from shared.models import AuditEvent
from shared.phone import InvalidNumber, normalise
from shared.progress import iso

bp = Blueprint("audit", __name__, url_prefix="/v1/audit")
log = logging.getLogger(__name__)

PAGE_MAX = 500
REQUEST_ID_MAX = 64

# (action, target, details) of one successful request.
Event = tuple[str, str | None, dict[str, Any] | None]


def _answer(response: Response) -> dict[str, Any]:
    body = response.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def _broadcast(verb: str) -> Callable[[Response], Event]:
    def describe(response: Response) -> Event:
        answer = _answer(response)
        details = {key: value for key, value in answer.items() if key != "id"}
        if verb == "retry":
            body = request.get_json(silent=True)
            details["statuses"] = (body or {}).get("statuses", ["failed"])
        target = answer.get("id") or request.view_args["broadcast_id"]
        return f"broadcast.{verb}", target, details

    return describe


def _limits(response: Response) -> Event:
    return "limits.update", "limits", {"change": request.get_json(silent=True)}


def _phone(raw: object) -> str:
    try:
        return normalise(raw, current_app.config["SETTINGS"].default_region)
    except InvalidNumber:
        return str(raw)


def _opt_out_add(response: Response) -> Event:
    details = _answer(response)
    if request.mimetype == "text/csv":
        details["reason"] = request.args.get("reason")
        return "opt_out.import", None, details
    body = request.get_json(silent=True) or {}
    details["reason"] = body.get("reason")
    phones = body.get("phones") or []
    return "opt_out.add", _phone(phones[0]) if len(phones) == 1 else None, details


def _opt_out_delete(response: Response) -> Event:
    return "opt_out.delete", _phone(request.view_args["phone"]), None


def _key_create(response: Response) -> Event:
    answer = _answer(response)
    # Never the key itself: the answer carries it, the audit trail must not.
    details = {"key_id": answer.get("key_id"), "scopes": answer.get("scopes")}
    return "key.create", answer.get("name"), details


def _key_revoke(response: Response) -> Event:
    answer = _answer(response)
    return "key.revoke", request.view_args["name"], {"key_id": answer.get("key_id")}


def _list_import(response: Response) -> Event:
    answer = _answer(response)
    details = {key: value for key, value in answer.items() if key != "invalid"} or None
    return "list.import", request.view_args["list_id"], details


def _list_contact_delete(response: Response) -> Event:
    return (
        "list.contact_delete",
        request.view_args["list_id"],
        {"phone": _phone(request.view_args["phone"])},
    )


AUDITED: dict[str, Callable[[Response], Event]] = {
    "actions.pause": _broadcast("pause"),
    "actions.resume": _broadcast("resume"),
    "actions.cancel": _broadcast("cancel"),
    "actions.retry": _broadcast("retry"),
    "limits.update_limits": _limits,
    "opt_outs.add": _opt_out_add,
    "opt_outs.remove": _opt_out_delete,
    "keys.create_key": _key_create,
    "keys.revoke_key": _key_revoke,
    # Audience and texts of future broadcasts: who changed them is worth knowing.
    "contact_lists.delete_list": lambda r: ("list.delete", request.view_args["list_id"], None),
    "contact_lists.add_contacts": _list_import,
    "contact_lists.remove_contact": _list_contact_delete,
    "templates.update_template": lambda r: (
        "template.update",
        request.view_args["template_id"],
        None,
    ),
    "templates.delete_template": lambda r: (
        "template.delete",
        request.view_args["template_id"],
        None,
    ),
}


def _request_id() -> str | None:
    value = g.get("request_id") or request.headers.get("X-Request-Id")
    return str(value)[:REQUEST_ID_MAX] if value else None


def record(response: Response) -> Response:
    """`after_request`: write the event of a successful audited request. The action has
    committed by now: if this write fails the action stands, and the log keeps the event."""
    describe = AUDITED.get(request.endpoint or "")
    if describe is None or not 200 <= response.status_code < 300 or "api_key_id" not in g:
        return response
    action, target, details = describe(response)
    event = AuditEvent(
        actor_key_id=g.api_key_id,
        actor_name=g.key_name,
        action=action,
        target=str(target)[:255] if target is not None else None,
        details=details,
        request_id=_request_id(),
    )
    try:
        with session_scope(current_app.config["SETTINGS"].database_url) as session:
            session.add(event)
    except SQLAlchemyError as error:
        log_event(
            log,
            "audit.write_failed",
            logging.ERROR,
            action=action,
            target=event.target,
            actor_key_id=g.api_key_id,
            error=type(error).__name__,
        )
    return response


ACTIONS = (
    "broadcast.pause",
    "broadcast.resume",
    "broadcast.cancel",
    "broadcast.retry",
    "limits.update",
    "opt_out.add",
    "opt_out.import",
    "opt_out.delete",
    "key.create",
    "key.revoke",
    "list.delete",
    "list.import",
    "list.contact_delete",
    "template.update",
    "template.delete",
)
_ACTION = "|".join(re.escape(action) for action in ACTIONS)
# A key's name, or its key_id (16 hex digits), which the same pattern covers.
ACTOR = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Actor(BaseModel):
    key_id: str
    name: str = Field(description="The key's name; `bootstrap` for keys in API_KEYS")


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: Actor
    action: str = Field(description="One of " + ", ".join(ACTIONS))
    target: str | None = Field(description="A broadcast id, a number, a key name")
    details: dict[str, Any] | None
    request_id: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry] = Field(description="Newest first")
    next_cursor: str | None = Field(description="For the next page; null on the last one")


class AuditQuery(Query):
    action: str | None = Field(
        default=None,
        pattern=f"^({_ACTION})(,({_ACTION}))*$",
        description="Only these actions, comma-separated",
    )
    actor: str | None = Field(default=None, pattern=ACTOR, description="A key name or key_id")
    since: datetime | None = Field(default=None, description="At or after this time")
    limit: int = Field(default=50, ge=1, le=PAGE_MAX, description="Events per page")
    cursor: str | None = Field(
        default=None, pattern=ID_CURSOR, description="`next_cursor` of the page before"
    )


def _row(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": iso(event.at),
        "actor": {"key_id": event.actor_key_id, "name": event.actor_name},
        "action": event.action,
        "target": event.target,
        "details": event.details,
        "request_id": event.request_id,
    }


def _actions() -> list[str] | None:
    raw = text_param(
        "action",
        f"({_ACTION})(,({_ACTION}))*",
        "one or more of " + ", ".join(ACTIONS) + ", comma-separated",
    )
    return None if raw is None else raw.split(",")


@bp.get("")
@describe("audit", {200: AuditPage}, (400,), query=AuditQuery)
def list_events():
    """The audit trail, newest first: who did what, to what, and when

    Filter by action, actor (key name or key_id) and since (ISO 8601)."""
    limit = int_param("limit", 50, 1, PAGE_MAX)
    query = select(AuditEvent)
    if (actions := _actions()) is not None:
        query = query.where(AuditEvent.action.in_(actions))
    if actor := text_param("actor", ACTOR, "must be a key name or key_id"):
        query = query.where(or_(AuditEvent.actor_key_id == actor, AuditEvent.actor_name == actor))
    if (since := time_param("since")) is not None:
        query = query.where(AuditEvent.at >= since)
    if (cursor := id_cursor()) is not None:
        query = query.where(AuditEvent.id < cursor)
    query = query.order_by(AuditEvent.id.desc()).limit(limit)
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        rows = list(session.scalars(query))
    return jsonify(
        {
            "items": [_row(row) for row in rows],
            "next_cursor": str(rows[-1].id) if len(rows) == limit else None,
        }
    )


def init_app(app: Flask) -> None:
    app.after_request(record)
    app.register_blueprint(bp)
