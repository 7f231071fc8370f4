"""/v1/keys (admin): create a named key with scopes (its secret shown once), list keys
(never a secret), revoke one. Keys in API_KEYS are configuration and are not listed here."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.auth import BOOTSTRAP_NAME, hash_key, key_id, new_key
from api.errors import ApiError, field_errors, int_param
from api.openapi import Query, describe, text_param
from shared.db import session_scope
from shared.logs import log_event
from shared.models import ApiKey, utcnow
from shared.progress import iso

bp = Blueprint("keys", __name__, url_prefix="/v1/keys")
log = logging.getLogger(__name__)


# Safe in a URL path (DELETE /v1/keys/{name}) and in a terminal.
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PAGE_MAX = 500
Scope = Literal["send", "read", "admin"]


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME, description="Unique, kept after revocation")
    scopes: list[Scope] = Field(min_length=1)


class ApiKeyInfo(BaseModel):
    name: str
    key_id: str = Field(description="Not secret: names the key in logs and the audit trail")
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None = Field(description="To the minute")
    revoked_at: datetime | None


class CreatedKey(ApiKeyInfo):
    key: str = Field(description="The key itself: shown this once, only its hash is kept")


class KeyPage(BaseModel):
    items: list[ApiKeyInfo] = Field(description="By name, revoked keys included")
    next_cursor: str | None = Field(description="For the next page; null on the last one")


class KeyQuery(Query):
    limit: int = Field(default=100, ge=1, le=PAGE_MAX, description="Keys per page")
    cursor: str | None = Field(
        default=None, pattern=NAME, description="`next_cursor` of the page before"
    )


def _settings():
    return current_app.config["SETTINGS"]


def _row(key: ApiKey) -> dict[str, Any]:
    return {
        "name": key.name,
        "key_id": key.key_id,
        "scopes": key.scopes,
        "created_at": iso(key.created_at),
        "last_used_at": iso(key.last_used_at),
        "revoked_at": iso(key.revoked_at),
    }


def _taken(name: str) -> ApiError:
    return ApiError(
        409, "conflict", f"name: a key named {name!r} exists (revoked keys keep their name)"
    )


@bp.post("")
@describe("keys", {201: CreatedKey}, (400, 409), body=NewKey)
def create_key():
    """Create a named key with scopes (201, with the key itself under `key`)

    The only time the key is shown: only its hash is stored."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", 'body must be {"name": "...", "scopes": [...]}')
    try:
        wanted = NewKey.model_validate(payload)
    except ValidationError as error:
        raise field_errors(error) from None
    if wanted.name == BOOTSTRAP_NAME:
        # Taken, like any name in use: by the keys in API_KEYS (see the audit trail).
        raise ApiError(
            409, "conflict", f"name: {BOOTSTRAP_NAME!r} is taken by the keys in API_KEYS"
        )
    secret = new_key()
    key = ApiKey(
        name=wanted.name,
        key_id=key_id(secret),
        key_hash=hash_key(secret),
        scopes=sorted(set(wanted.scopes)),
    )
    try:
        with session_scope(_settings().database_url) as session:
            if session.scalar(select(ApiKey.id).where(ApiKey.name == wanted.name)):
                raise _taken(wanted.name)
            session.add(key)
    except IntegrityError:
        # Two creations of one name raced; the other one won.
        raise _taken(wanted.name) from None
    log_event(log, "api_key.created", name=key.name, key_id=key.key_id, scopes=key.scopes)
    return jsonify({**_row(key), "key": secret}), 201


@bp.get("")
@describe("keys", {200: KeyPage}, (400,), query=KeyQuery)
def list_keys():
    """Every key by name (never a secret), revoked ones included, with `revoked_at`"""
    limit = int_param("limit", 100, 1, PAGE_MAX)
    query = select(ApiKey).order_by(ApiKey.name).limit(limit)
    if after := text_param("cursor", NAME, "not a cursor this API gave out"):
        query = query.where(ApiKey.name > after)
    with session_scope(_settings().database_url) as session:
        keys = list(session.scalars(query))
    return jsonify(
        {
            "items": [_row(key) for key in keys],
            "next_cursor": keys[-1].name if len(keys) == limit else None,
        }
    )


@bp.delete("/<name>")
@describe("keys", {200: ApiKeyInfo}, (404,))
def revoke_key(name: str):
    """Revoke a key: its next request is refused (401); revoking twice is fine"""
    if not re.fullmatch(NAME, name):
        raise ApiError(404, "not_found", f"no key named {name!r}")
    with session_scope(_settings().database_url) as session:
        key = session.scalar(select(ApiKey).where(ApiKey.name == name))
        if key is None:
            raise ApiError(404, "not_found", f"no key named {name!r}")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
    log_event(log, "api_key.revoked", name=key.name, key_id=key.key_id)
    return jsonify(_row(key))
