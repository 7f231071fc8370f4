"""The console acts through the JSON API itself: each call is dispatched in-process to the
API's own route, as the session's caller, so validation, scopes, request limits and the
audit trail are exactly the API's (nothing of intake is repeated here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request

from api.auth import CONSOLE_CALLER, Caller


@dataclass
class Answer:
    status: int
    body: Any  # the parsed JSON, or None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The API's own words for an error ("text: must not be empty"), for the page."""
        error = (self.body or {}).get("error") if isinstance(self.body, dict) else None
        if isinstance(error, dict):
            return str(error.get("message") or error.get("code"))
        return f"the API answered {self.status}"

    @property
    def code(self) -> str | None:
        error = (self.body or {}).get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


def _environ(caller: Caller | None, headers: dict | None) -> dict:
    environ: dict[str, Any] = {
        # The browser's address, so the API's per-address limits see the real client.
        "REMOTE_ADDR": request.remote_addr or "127.0.0.1",
    }
    if caller is not None:
        environ[CONSOLE_CALLER] = caller
    if request.headers.get("X-Request-Id"):
        environ["HTTP_X_REQUEST_ID"] = request.headers["X-Request-Id"]
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _context(method: str, path: str, caller: Caller | None, **kwargs):
    app = current_app._get_current_object()
    headers = kwargs.pop("headers", None)
    return app, app.test_request_context(
        path, method=method, environ_base=_environ(caller, headers), **kwargs
    )


def call(
    method: str,
    path: str,
    *,
    caller: Caller | None = None,
    query: dict | None = None,
    json_body: Any = None,
    data: bytes | str | None = None,
    content_type: str | None = None,
    headers: dict | None = None,
    anonymous: bool = False,
    capture_caller: bool = False,
) -> Answer:
    """One API request as `caller` (default: the signed-in session's; `anonymous`: nobody,
    so `headers` must carry a key). A fresh app context keeps the inner request's `g` apart
    from the page's. With `capture_caller`, the answer carries who the API identified
    instead of its body (sign-in checks a key exactly as the API does)."""
    if caller is None and not anonymous:
        caller = g.console_caller
    kwargs: dict[str, Any] = {"query_string": {k: v for k, v in (query or {}).items() if v}}
    if json_body is not None:
        kwargs["data"] = json.dumps(json_body)
        kwargs["content_type"] = "application/json"
    elif data is not None:
        kwargs["data"] = data
        kwargs["content_type"] = content_type
    app, context = _context(method, path, caller, headers=headers, **kwargs)
    with app.app_context(), context:
        response = app.full_dispatch_request()
        body = response.get_json(silent=True) if response.is_json else None
        answer = Answer(response.status_code, body)
        if capture_caller and "api_key_id" in g:
            answer.body = {"caller": Caller(g.api_key_id, g.key_name, frozenset(g.scopes))}
        response.close()
    return answer


def stream(path: str, query: dict, caller: Caller) -> Iterator[bytes]:
    """The body of a streamed API answer (a CSV export). The request is built now, in the
    page's context; it is dispatched and read chunk by chunk in a context of its own when
    the server iterates, by which time the page's context is gone."""
    app, context = _context("GET", path, caller, query_string=query)

    def chunks() -> Iterator[bytes]:
        with app.app_context(), context:
            response = app.full_dispatch_request()
            try:
                for chunk in response.response:
                    yield chunk if isinstance(chunk, bytes) else chunk.encode()
            finally:
                response.close()

    return chunks()
