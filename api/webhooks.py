"""Inbound replies from Plivo (STOP / START / HELP), applied at once after the signature
check. Delivery reports arrive through api/status_intake.py instead."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, request
from sqlalchemy import select

from api.errors import ApiError
from api.signatures import public_url, verified_nonce
from shared.db import session_scope
from shared.keywords import action_for
from shared.logs import log_event
from shared.models import InboundMessage
from shared.opt_outs import add_opt_outs, remove_opt_out
from shared.phone import InvalidNumber, normalise

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks/plivo")
log = logging.getLogger(__name__)


def _signed_nonce() -> str:
    settings = current_app.config["SETTINGS"]
    query = request.query_string.decode()
    url = public_url(settings, request.path, query, request.url)
    params = request.form.to_dict()
    nonce = verified_nonce(settings, request.method, url, params, request.headers.get)
    if nonce is None:
        log_event(log, "webhook.bad_signature", logging.WARNING, path=request.path)
        raise ApiError(403, "forbidden", "missing or invalid Plivo signature")
    return nonce


def _sender_number(raw: str) -> str:
    """Plivo sends From as digits without '+'."""
    try:
        return normalise(raw if raw.startswith("+") else f"+{raw}")
    except InvalidNumber:
        return raw[:32]


@bp.post("/inbound")
def inbound_message():
    """Store the reply; STOP-type words opt the number out, START-type words back in."""
    _signed_nonce()
    form = request.form
    phone = _sender_number(form.get("From", ""))
    text = form.get("Text")
    action = action_for(text, form.get("MessageIntent"))
    message_uuid = form.get("MessageUUID") or None
    settings = current_app.config["SETTINGS"]
    with session_scope(settings.database_url) as session:
        # Plivo may deliver one inbound message twice; acting twice could undo a later
        # START with an old STOP.
        if message_uuid and session.scalar(
            select(InboundMessage.id).where(InboundMessage.message_uuid == message_uuid)
        ):
            return "", 200
        session.add(
            InboundMessage(
                message_uuid=message_uuid,
                phone=phone,
                to=form.get("To", "")[:32],
                text=text,
                intent=form.get("MessageIntent") or None,
                action=action,
            )
        )
        if action == "opt_out":
            add_opt_outs(session, [phone], source="inbound", reason=(text or "").strip()[:200])
        elif action == "opt_in":
            remove_opt_out(session, phone)
    log_event(log, "inbound.received", action=action, message_uuid=message_uuid)
    return "", 200
