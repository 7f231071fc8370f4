"""Who is calling and what they may do: API keys (`X-API-Key`) and their scopes.

Keys in API_KEYS are bootstrap admin keys; every other key is a row in `api_keys`, stored as
a SHA-256 only. Every /v1 route is checked here, before its view runs, against SCOPES."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, current_app, g, request
from sqlalchemy import select

from api import request_limits
from api.errors import ApiError
from shared.db import session_scope
from shared.models import ApiKey, utcnow

SEND, READ, ADMIN = "send", "read", "admin"
ALL_SCOPES = (SEND, READ, ADMIN)
BOOTSTRAP_NAME = "bootstrap"
# Recognisable in logs and by secret scanners; also lets us skip the database for anything
# that cannot be one of our keys.
KEY_PREFIX = "bsk_"
# Writing last_used_at on every request would be a database write per request; a minute
# of precision is plenty for "is this key still in use?".
LAST_USED_PRECISION = timedelta(minutes=1)

# A key that sends may read the broadcasts it sent (to watch them); a non-admin key only
# ever sees its own broadcasts (see `sees_all`).
_OWN_BROADCASTS = frozenset({READ, SEND})
_SEND = frozenset({SEND})
_READ = frozenset({READ})
_ADMIN = frozenset({ADMIN})

# The scopes that may call each /v1 endpoint; `admin` may call all of them. A /v1 endpoint
# missing here needs `admin`: a new route stays closed until someone decides who may use it.
SCOPES: dict[str, frozenset[str]] = {
    "broadcasts.create_broadcast": _SEND,
    "mms.create_mms": _SEND,
    "mms.upload_media": _SEND,
    "broadcasts.list_broadcasts": _OWN_BROADCASTS,
    "broadcasts.get_broadcast": _OWN_BROADCASTS,
    "recipients.list_recipients": _OWN_BROADCASTS,
    "actions.pause": _SEND,
    "actions.resume": _SEND,
    "actions.cancel": _SEND,
    "actions.retry": _SEND,
    "limits.show_limits": _READ,
    "limits.update_limits": _ADMIN,
    "opt_outs.list_opt_outs": _READ,
    # Replies to its own broadcasts only, unless admin (api/inbound.py).
    "inbound.list_inbound": _OWN_BROADCASTS,
    # Adding a number only ever stops messages, so a sending application may record the
    # unsubscribes it collects itself; removing one (texting someone who said STOP) may not.
    "opt_outs.add": _SEND,
    "opt_outs.remove": _ADMIN,
    # Reports nobody's broadcast claims: they can be anyone's numbers.
    "delivery_reports.list_orphans": _ADMIN,
    "keys.create_key": _ADMIN,
    "keys.list_keys": _ADMIN,
    "keys.revoke_key": _ADMIN,
    "audit.list_events": _ADMIN,
    # Templates and contact lists, like broadcasts, belong to the key that made them.
    "templates.create_template": _SEND,
    "templates.list_templates": _OWN_BROADCASTS,
    "templates.get_template": _OWN_BROADCASTS,
    "templates.update_template": _SEND,
    "templates.delete_template": _SEND,
    "contact_lists.create_list": _SEND,
    "contact_lists.list_lists": _OWN_BROADCASTS,
    "contact_lists.get_list": _OWN_BROADCASTS,
    "contact_lists.delete_list": _SEND,
    "contact_lists.add_contacts": _SEND,
    "contact_lists.list_contacts": _OWN_BROADCASTS,
    "contact_lists.remove_contact": _SEND,
}


# The WSGI environ key under which the console hands identify() a session's caller.
CONSOLE_CALLER = "bulksms.console_caller"


@dataclass(frozen=True)
class Caller:
    key_id: str
    name: str
    scopes: frozenset[str]


def hash_key(key: str) -> str:
    """SHA-256, unsalted. The keys are 256-bit random strings, so a leaked hash cannot be
    brute-forced however fast the hash is; a slow password hash (bcrypt, argon2) would cost
    ~100 ms of CPU on every request and, being salted, could not be looked up by value."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str:
    """A stable, non-secret name for a key (scopes idempotency keys; safe to log)."""
    return hash_key(key)[:16]


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def is_protected() -> bool:
    """Every route under /v1 needs a key; webhooks, health checks and the docs do not."""
    rule = request.url_rule
    return rule is not None and rule.rule.startswith("/v1/")


def _bootstrap(presented: str) -> Caller | None:
    matched = None
    # No early exit: the time taken must not reveal which key (or how much of one) matched.
    for key in current_app.config["SETTINGS"].effective_api_keys:
        if hmac.compare_digest(presented.encode(), key.encode()):
            matched = key
    if matched is None:
        return None
    return Caller(key_id(matched), BOOTSTRAP_NAME, _ADMIN)


def _stored(presented: str) -> Caller | None:
    if not presented.startswith(KEY_PREFIX) or len(presented) > 128:
        return None
    # Looked up by its hash: the index search's timing can at most reveal how much of a
    # SHA-256 matched a stored one, which tells nothing about any key, so there is nothing
    # for a constant-time comparison to protect here.
    digest = hash_key(presented)
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        return _caller_from_row(session.scalar(select(ApiKey).where(ApiKey.key_hash == digest)))


def caller_by_key_id(wanted: str) -> Caller | None:
    """The caller a key_id names while its key is still good (a bootstrap key still in
    API_KEYS, a stored key not revoked): the console re-checks its session's key with it on
    every page, so revoking the key ends the session."""
    for key in current_app.config["SETTINGS"].effective_api_keys:
        if hmac.compare_digest(key_id(key), wanted):
            return Caller(wanted, BOOTSTRAP_NAME, _ADMIN)
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        return _caller_from_row(session.scalar(select(ApiKey).where(ApiKey.key_id == wanted)))


def _caller_from_row(row: ApiKey | None) -> Caller | None:
    """The caller a stored key names, unless it is missing or revoked; notes its use (in
    the caller's session, written when it commits)."""
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_PRECISION:
        row.last_used_at = now
    return Caller(row.key_id, row.name, frozenset(row.scopes))


def identify() -> None:
    """`before_request`: on /v1 routes, sets g.api_key_id, g.key_name and g.scopes for a
    valid key. Refusing is left to `authorize`, so the limiter in between can count the
    failure against the client's address.

    The console (api/console/) calls these routes in-process for a signed-in session and
    puts its Caller in the WSGI environ under CONSOLE_CALLER: a key no HTTP client can
    set (servers only ever add headers as HTTP_*), so the session is trusted as the key it
    was signed in with, and nothing else changes."""
    if not is_protected():
        return
    console_caller = request.environ.get(CONSOLE_CALLER)
    if isinstance(console_caller, Caller):
        g.api_key_id, g.key_name = console_caller.key_id, console_caller.name
        g.scopes = console_caller.scopes
        return
    presented = request.headers.get("X-API-Key", "")
    caller = _bootstrap(presented) if presented else None
    if presented and caller is None:
        caller = _stored(presented)
    if caller is not None:
        g.api_key_id, g.key_name, g.scopes = caller.key_id, caller.name, caller.scopes


def authorize() -> None:
    """`before_request`: 401 without a valid key, 403 when its scopes do not cover the
    route (see SCOPES)."""
    if not is_protected():
        return
    if "api_key_id" not in g:
        raise ApiError(
            401, "unauthorized", "X-API-Key header is missing, not a valid key, or revoked"
        )
    allowed = SCOPES.get(request.endpoint or "", _ADMIN)
    if ADMIN in g.scopes or allowed & g.scopes:
        return
    needed = " or ".join(sorted(allowed))
    has = ", ".join(sorted(g.scopes)) or "none"
    raise ApiError(
        403,
        "forbidden",
        f"this API key needs the {needed} scope for {request.method} {request.path} "
        f"(its scopes: {has})",
    )


def sees_all() -> bool:
    """Admin keys see every broadcast; any other key only those it created (and gets 404,
    not 403, for the rest, so broadcast ids never leak between keys)."""
    return ADMIN in g.scopes


def init_app(app: Flask) -> None:
    """Identify, then count (request_limits), then authorize: the limiter keys each request
    by the key identified, and must see a failed authentication before it is refused."""
    app.before_request(identify)
    request_limits.init_app(app, applies=is_protected)
    app.before_request(authorize)
