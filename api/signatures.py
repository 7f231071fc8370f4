"""Plivo's request signatures, checked with the SDK's algorithm against the URL Plivo called."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from plivo.utils import validate_signature
from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3

from shared.config import Settings


def public_url(settings: Settings, path: str, query: str, request_url: str) -> str:
    """The URL as Plivo saw it. Behind a proxy the Host and scheme we receive are not the
    ones Plivo signed, so PUBLIC_BASE_URL (when set) supplies them."""
    if not settings.public_base_url:
        return request_url
    return settings.public_base_url + path + (f"?{query}" if query else "")


def verified_nonce(
    settings: Settings,
    method: str,
    url: str,
    params: dict[str, str],
    header: Callable[[str], str | None],
) -> str | None:
    """The nonce of a valid V3 signature (or V2, only with PLIVO_ACCEPT_V2_SIGNATURES), or
    None when the request is not from Plivo's account. `header(name)` reads a request header.
    The caller must still refuse a nonce it has seen (replay)."""
    token = settings.plivo_credentials[1]
    nonce = header("X-Plivo-Signature-V3-Nonce")
    signature = header("X-Plivo-Signature-V3")
    if nonce and signature:
        return nonce if _v3_matches(method, url, nonce, token, signature, params) else None
    if not settings.plivo_accept_v2_signatures:
        return None
    nonce = header("X-Plivo-Signature-V2-Nonce")
    signature = header("X-Plivo-Signature-V2")
    if nonce and signature and validate_signature(url, nonce, signature, token):
        return nonce
    return None


def _v3_matches(method, url, nonce, token, signature, params) -> bool:
    """The SDK's validate_v3_signature, minus its per-call argument validation (a third of
    a callback's cost at thousands a second), and compared in constant time."""
    build = construct_get_url if method == "GET" else construct_post_url
    base = build(url, dict(params)).decode()
    expected = get_signature_v3(token.encode(), base, nonce.encode())
    # Plivo may send several comma-separated candidates (during token rotation).
    return any(hmac.compare_digest(expected, c.strip().encode()) for c in signature.split(","))
