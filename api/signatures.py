"""Plivo's request signatures, checked with the SDK against the URL Plivo called."""

from __future__ import annotations

from flask import Request
from plivo.utils import validate_signature
from plivo.utils.signature_v3 import validate_v3_signature

from shared.config import Settings


def public_url(request: Request, settings: Settings) -> str:
    """The URL as Plivo saw it. Behind a proxy the Host and scheme we receive are not the
    ones Plivo signed, so PUBLIC_BASE_URL (when set) supplies them."""
    if not settings.public_base_url:
        return request.url
    query = request.query_string.decode()
    return settings.public_base_url + request.path + (f"?{query}" if query else "")


def verified_nonce(request: Request, settings: Settings) -> str | None:
    """The nonce of a valid V3 (or V2) signature, or None when the request is not from
    Plivo's account."""
    token = settings.plivo_credentials[1]
    url = public_url(request, settings)
    nonce = request.headers.get("X-Plivo-Signature-V3-Nonce")
    signature = request.headers.get("X-Plivo-Signature-V3")
    if nonce and signature:
        params = request.form.to_dict() if request.method == "POST" else {}
        try:
            valid = validate_v3_signature(request.method, url, nonce, token, signature, params)
        except Exception:  # the SDK raises on malformed input; that is a bad signature
            valid = False
        return nonce if valid else None
    nonce = request.headers.get("X-Plivo-Signature-V2-Nonce")
    signature = request.headers.get("X-Plivo-Signature-V2")
    if nonce and signature and validate_signature(url, nonce, signature, token):
        return nonce
    return None
