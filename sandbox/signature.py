"""How Plivo signs the requests it makes to a customer's server (callbacks, inbound messages).

Written from Plivo's description, not from the SDK, so that the SDK's validator checking these
signatures is a real cross-check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit


def v3_signature(auth_token: str, method: str, url: str, params: Mapping[str, str], nonce: str):
    """X-Plivo-Signature-V3 of a request with form `params` (POST) or query `params` (GET)."""
    parts = urlsplit(url)
    signed = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if method.upper() == "GET":
        # The params travel in the query string, next to any the URL already had.
        query += params.items()
        if query:
            signed += "?" + _sorted_query(query)
    elif params:
        signed += "?" + (_sorted_query(query) + "." if query else "")
        signed += "".join(key + params[key] for key in sorted(params))
    elif query:
        signed += "?" + _sorted_query(query)
    return _hmac_base64(auth_token, f"{signed}.{nonce}")


def v2_signature(auth_token: str, url: str, nonce: str) -> str:
    """X-Plivo-Signature-V2: the URL without its query, then the nonce."""
    parts = urlsplit(url)
    return _hmac_base64(auth_token, f"{parts.scheme}://{parts.netloc}{parts.path}{nonce}")


def signature_headers(
    auth_token: str, method: str, url: str, params: Mapping[str, str]
) -> dict[str, str]:
    """Both signature versions: which one Plivo puts on SMS callbacks is not settled."""
    nonce = str(secrets.randbelow(10**20)).zfill(20)
    return {
        "X-Plivo-Signature-V3": v3_signature(auth_token, method, url, params, nonce),
        "X-Plivo-Signature-V3-Nonce": nonce,
        "X-Plivo-Signature-V2": v2_signature(auth_token, url, nonce),
        "X-Plivo-Signature-V2-Nonce": nonce,
    }


def _sorted_query(pairs: list[tuple[str, str]]) -> str:
    # Sorted by key, then value; decoded, not re-escaped.
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))


def _hmac_base64(auth_token: str, text: str) -> str:
    digest = hmac.new(auth_token.encode(), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()
