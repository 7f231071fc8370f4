"""Completion notices: a signed POST to the client's callback_url once a broadcast is final."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid

from shared.config import Settings, get_settings
from shared.db import session_scope
from shared.logs import log_event
from shared.models import Broadcast
from shared.progress import summarize
from shared.safe_http import Unreachable, UnsafeUrl, request
from shared.taskqueue import NOTIFY_COMPLETION, WEBHOOKS_QUEUE, celery_app

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 5


class ReceiverUnavailable(Exception):
    """The client's endpoint failed in a way worth retrying (connection, 5xx)."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the timestamp lets the receiver
    refuse old replays; the secret is CALLBACK_SECRET."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def deliver_notice(settings: Settings, broadcast_id: str) -> str:
    """POST the summary; returns what happened. Raises ReceiverUnavailable to retry."""
    with session_scope(settings.database_url) as session:
        broadcast = session.get(Broadcast, uuid.UUID(broadcast_id))
        if broadcast is None or not broadcast.callback_url:
            return "nothing_to_send"
        url = broadcast.callback_url
        body = json.dumps(
            {"event": "broadcast.finished", "broadcast": summarize(session, broadcast)}
        )
    payload = body.encode()
    headers = {
        "Content-Type": "application/json",
        "X-Bulksms-Signature": signature(
            settings.effective_callback_secret, int(time.time()), payload
        ),
    }
    sandbox = settings.sandbox_mode  # local receivers over plain http, as at intake
    try:
        answer = request(
            "POST",
            url,
            body=payload,
            headers=headers,
            allow_http=sandbox,
            allow_internal=sandbox,
            timeout=(TIMEOUT_SECONDS, TIMEOUT_SECONDS),
        )
    except UnsafeUrl as error:
        log_event(log, "notice.refused", logging.WARNING, broadcast_id=broadcast_id, error=error)
        return "refused"
    except Unreachable as error:
        raise ReceiverUnavailable(str(error)) from error
    if answer.status >= 500:
        raise ReceiverUnavailable(f"HTTP {answer.status}")
    if answer.redirect_to is not None:
        # Never followed: the receiver's host was checked, the redirect target was not, and
        # following it would hand the signed body to whoever that is. Retrying changes nothing.
        log_event(
            log,
            "notice.redirect_not_followed",
            logging.WARNING,
            broadcast_id=broadcast_id,
            status=answer.status,
        )
        return f"HTTP {answer.status} (redirect not followed)"
    log_event(log, "notice.sent", broadcast_id=broadcast_id, status=answer.status)
    return f"HTTP {answer.status}"


@celery_app.task(
    name=NOTIFY_COMPLETION,
    queue=WEBHOOKS_QUEUE,
    autoretry_for=(ReceiverUnavailable,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=8,
    ignore_result=True,
)
def notify_completion(broadcast_id: str) -> str:
    return deliver_notice(get_settings(), broadcast_id)
