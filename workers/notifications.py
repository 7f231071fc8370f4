"""Completion notices: a signed POST to the client's callback_url once a broadcast is final."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid

import requests

from shared.config import Settings, get_settings
from shared.db import session_scope
from shared.logs import log_event
from shared.models import Broadcast
from shared.progress import summarize
from shared.taskqueue import NOTIFY_COMPLETION, WEBHOOKS_QUEUE, celery_app
from shared.urls import UnsafeUrl, check_resolved

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
    try:
        check_resolved(url, allow_internal=settings.sandbox_mode)
    except UnsafeUrl as error:
        log_event(log, "notice.refused", logging.WARNING, broadcast_id=broadcast_id, error=error)
        return "refused"
    payload = body.encode()
    headers = {
        "Content-Type": "application/json",
        "X-Bulksms-Signature": signature(
            settings.effective_callback_secret, int(time.time()), payload
        ),
    }
    try:
        response = requests.post(url, data=payload, headers=headers, timeout=TIMEOUT_SECONDS)
    except requests.RequestException as error:
        raise ReceiverUnavailable(type(error).__name__) from error
    if response.status_code >= 500:
        raise ReceiverUnavailable(f"HTTP {response.status_code}")
    log_event(log, "notice.sent", broadcast_id=broadcast_id, status=response.status_code)
    return f"HTTP {response.status_code}"


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
