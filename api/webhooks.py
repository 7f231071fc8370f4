"""Inbound replies from Plivo, applied at once after the signature and replay checks: every
message is kept (a campaign's replies are read with GET /v1/inbound); STOP-type words opt the
number out, START and UNSTOP back in (YES, RESUME and GO only a number that is opted out),
and a keyword's answer (STOP_REPLY, START_REPLY, HELP_REPLY) is left to a worker
(workers/keyword_replies.py), enqueued after the commit.
Delivery reports arrive through api/status_intake.py instead.

Replays are refused twice over. A V3 signature covers MessageUUID, and its unique row in
inbound_messages refuses the same message for good (a durable check, no extra schema). The
nonce is claimed in Redis as well, for what the uuid cannot catch: a V2 header pair (which
signs no fields, when PLIVO_ACCEPT_V2_SIGNATURES allows it) reused with another From or
uuid, and requests without a uuid. Inbound traffic is small, so nonces are kept for days."""

from __future__ import annotations

import logging
from contextlib import suppress

import redis
from flask import Blueprint, current_app, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.errors import ApiError
from api.signatures import public_url, verified_nonce
from shared.config import Settings
from shared.db import redis_client, session_scope
from shared.keywords import (
    SEND_KEYWORD_REPLY,
    action_for,
    answered_by_plivo,
    reply_text,
    soft_opt_in,
)
from shared.logs import log_event
from shared.models import InboundMessage
from shared.opt_outs import add_opt_outs, remove_opt_out
from shared.phone import InvalidNumber, normalise
from shared.taskqueue import WEBHOOKS_QUEUE, EnqueueError, enqueue_tasks

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks/plivo")
log = logging.getLogger(__name__)

# Far past Plivo's retries (the last one comes about 7 minutes after the first attempt).
INBOUND_NONCE_TTL = 7 * 24 * 3600


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
    """Plivo sends From and To as digits without '+'; stored in E.164, as our senders and
    recipients are (the reply goes out on the texted number's pacing timeline, and the
    broadcast a reply answers is found by that number)."""
    try:
        return normalise(raw if raw.startswith("+") else f"+{raw}")
    except InvalidNumber:
        return raw[:32]


def _claim_nonce(settings: Settings, nonce: str) -> str:
    """The Redis key now holding `nonce`; 403 if it was seen, 503 (Plivo retries) if Redis
    cannot say."""
    key = f"bulksms:inbound-nonce:{nonce}"
    try:
        first = redis_client(settings.redis_url).set(key, "1", nx=True, ex=INBOUND_NONCE_TTL)
    except redis.RedisError as error:
        log_event(log, "webhook.nonce_store_down", logging.ERROR, error=type(error).__name__)
        raise ApiError(503, "unavailable", "cannot check for replays now; retry later") from None
    if not first:
        log_event(log, "webhook.replayed", logging.WARNING, nonce=nonce, path=request.path)
        raise ApiError(403, "forbidden", "this signed request was already received")
    return key


@bp.post("/inbound")
def inbound_message():
    """Store the reply; STOP-type words opt the number out, START-type words back in."""
    settings = current_app.config["SETTINGS"]
    key = _claim_nonce(settings, _signed_nonce())
    try:
        action, message_uuid, reply_to = _apply(settings)
        if reply_to is not None:
            _enqueue_reply(settings, reply_to, message_uuid)
    except Exception:
        # Plivo retries this same signed request, which must not then be refused as a
        # replay. What was stored stays: the retry finds its MessageUUID and only enqueues
        # the answer again.
        with suppress(redis.RedisError):
            redis_client(settings.redis_url).delete(key)
        raise
    log_event(log, "inbound.received", action=action, message_uuid=message_uuid)
    return "", 200


def _enqueue_reply(settings: Settings, inbound_id: int, message_uuid: str | None) -> None:
    """Hand the keyword's answer to a worker. With the broker down, a message Plivo can
    retry (it has a uuid) gets a 503, and the retry enqueues again; the worker's claim on
    `replied_at` keeps the answer to one however often that happens."""
    try:
        enqueue_tasks(
            settings.redis_url, SEND_KEYWORD_REPLY, WEBHOOKS_QUEUE, [{"inbound_id": inbound_id}]
        )
    except EnqueueError as error:
        log_event(
            log,
            "inbound.reply_not_enqueued",
            logging.WARNING,
            inbound_id=inbound_id,
            error=type(error.__cause__).__name__,
        )
        if message_uuid:
            raise ApiError(
                503, "unavailable", "cannot queue the keyword's answer now; retry later"
            ) from None


def _apply(settings: Settings) -> tuple[str | None, str | None, int | None]:
    """(action, message uuid, id of a stored keyword message still owed its answer)."""
    form = request.form
    phone = _sender_number(form.get("From", ""))
    texted = _sender_number(form.get("To", ""))[:32]
    text = form.get("Text")
    action = action_for(text, form.get("MessageIntent"))
    message_uuid = form.get("MessageUUID") or None
    try:
        with session_scope(settings.database_url) as session:
            # Plivo may deliver one inbound message twice (with a new nonce); acting twice
            # could undo a later START with an old STOP.
            if message_uuid:
                seen = session.execute(
                    select(
                        InboundMessage.id,
                        InboundMessage.action,
                        InboundMessage.to,
                        InboundMessage.replied_at,
                    ).where(InboundMessage.message_uuid == message_uuid)
                ).first()
                if seen is not None:
                    # Whether the first delivery removed an opt-out is not kept: a START
                    # delivered again is answered again if still unanswered (the worker's
                    # claim keeps it to one answer) rather than risk a lost confirmation.
                    owed = seen.replied_at is None and _answer_owed(settings, seen.action, seen.to)
                    return None, message_uuid, seen.id if owed else None
            owed = True
            if action == "opt_out":
                reason = (text or "").strip()[:200]
                add_opt_outs(session, [phone], source="inbound", reason=reason)
            elif soft_opt_in(text):
                # "YES" to a campaign from someone never opted out is a reply to read,
                # even when Plivo's MessageIntent calls it an opt-in; and it undoes only the
                # person's own STOP, never an opt-out an operator or the carrier recorded.
                undone = remove_opt_out(session, phone, source="inbound")
                action = "opt_in" if undone else None
            elif action == "opt_in":
                # Only a removed opt-out has something to confirm.
                owed = remove_opt_out(session, phone)
            message = InboundMessage(
                message_uuid=message_uuid,
                phone=phone,
                to=texted,
                text=text,
                intent=form.get("MessageIntent") or None,
                action=action,
            )
            session.add(message)
            session.flush()
            inbound_id = message.id
    except IntegrityError:
        # The same message, delivered twice at once: the other one stored it and enqueues
        # its answer.
        return None, message_uuid, None
    owed = owed and _answer_owed(settings, action, texted)
    return action, message_uuid, inbound_id if owed else None


def _answer_owed(settings: Settings, action: str | None, texted: str | None) -> bool:
    return bool(reply_text(settings, action)) and not answered_by_plivo(action, texted)
