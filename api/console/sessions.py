"""Console sessions: an API key exchanged for a cookie.

The cookie holds 256 random bits; the database keeps only their SHA-256 (a stolen table
opens no session), the key_id the session acts as, a CSRF token and an expiry. Every page
re-checks the key (api.auth.caller_by_key_id), so revoking it ends its sessions."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from flask import Response, current_app, request
from sqlalchemy import delete

from api.auth import Caller, caller_by_key_id
from shared.db import session_scope
from shared.models import ConsoleSession, as_utc, utcnow

COOKIE = "bulksms_console"
# A double-submit token for the sign-in form itself (there is no session yet to hold one),
# so another site cannot sign a browser in as the attacker's key.
SIGNIN_COOKIE = "bulksms_console_signin"
COOKIE_PATH = "/console"
LIFETIME = timedelta(hours=12)
# last_seen_at is for operators looking at sessions; a write per page would be waste.
SEEN_PRECISION = timedelta(minutes=1)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _secure() -> bool:
    """Secure cookies when the browser came over HTTPS, or the service says it is public
    over HTTPS (behind a proxy that terminates TLS, the request itself looks like http)."""
    public = current_app.config["SETTINGS"].public_base_url or ""
    return request.is_secure or public.startswith("https://")


def _set(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=_secure(),
        httponly=True,
        samesite="Strict",
    )


def _database_url() -> str:
    return current_app.config["SETTINGS"].database_url


def start(response: Response, caller: Caller) -> None:
    """A new session for `caller`, its cookie set on `response`."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with session_scope(_database_url()) as session:
        # Expired sessions go whenever anyone signs in: no sweeper needed for a small table.
        session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))
        session.add(
            ConsoleSession(
                id=_digest(token),
                key_id=caller.key_id,
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                expires_at=now + LIFETIME,
                last_seen_at=now,
            )
        )
    _set(response, COOKIE, token, int(LIFETIME.total_seconds()))
    response.delete_cookie(SIGNIN_COOKIE, path=COOKIE_PATH)


def current() -> tuple[Caller, str] | None:
    """(caller, csrf token) of the request's session, or None: no cookie, unknown, expired,
    or its key revoked (the row is deleted then)."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 128:
        return None
    now = utcnow()
    with session_scope(_database_url()) as session:
        row = session.get(ConsoleSession, _digest(token))
        if row is None:
            return None
        if as_utc(row.expires_at) <= now:
            session.delete(row)
            return None
        caller = caller_by_key_id(row.key_id)
        if caller is None:
            session.delete(row)
            return None
        if row.last_seen_at is None or now - as_utc(row.last_seen_at) > SEEN_PRECISION:
            row.last_seen_at = now
        return caller, row.csrf_token


def end(response: Response) -> None:
    """Sign out: the row goes, so the cookie is worthless even if it was copied."""
    token = request.cookies.get(COOKIE)
    if token:
        with session_scope(_database_url()) as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.id == _digest(token)))
    response.delete_cookie(COOKIE, path=COOKIE_PATH)


def signin_token(response: Response) -> str:
    """The sign-in form's token, also set as a short-lived cookie to be compared on POST."""
    token = request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(32)
    _set(response, SIGNIN_COOKIE, token, 3600)
    return token


def signin_token_matches(submitted: str) -> bool:
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    return bool(expected) and hmac.compare_digest(expected.encode(), submitted.encode())


def csrf_matches(expected: str, submitted: str) -> bool:
    return hmac.compare_digest(expected.encode(), submitted.encode())
