"""API keys: `X-API-Key`, compared in constant time against every configured key."""

from __future__ import annotations

import hashlib
import hmac

from flask import current_app, g, request

from api.errors import ApiError


def key_id(key: str) -> str:
    """A stable, non-secret name for a key (scopes idempotency keys; safe to log)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def require_api_key() -> None:
    """`before_request` hook for /v1: sets g.api_key_id or answers 401."""
    presented = request.headers.get("X-API-Key", "")
    matched = None
    # No early exit: the time taken must not reveal which key (or how much of one) matched.
    for key in current_app.config["SETTINGS"].effective_api_keys:
        if hmac.compare_digest(presented.encode(), key.encode()):
            matched = key
    if not presented or matched is None:
        raise ApiError(401, "unauthorized", "X-API-Key header is missing or not a valid key")
    g.api_key_id = key_id(matched)
