"""Every error leaves the API as {"error": {"code", "message", "details"}}; and the request
bodies no route should ever parse are refused here, once, before any route runs."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from flask import Flask, current_app, jsonify, request
from pydantic import ValidationError
from sqlalchemy import and_, or_, select
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

# Our bodies nest two or three levels; past this it is an attack on the parser (Python's json
# raises RecursionError near 1000 levels, and every model validator recurses too).
MAX_JSON_DEPTH = 32


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_response(status: int, code: str, message: str, details: Any = None):
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return jsonify({"error": body}), status


def int_param(name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high], or a 400 naming it."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name}: must be a whole number") from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_request", f"{name}: must be between {low} and {high}")
    return value


def uuid_cursor() -> uuid.UUID | None:
    """The `cursor` parameter when it is the id of the last row of the page before."""
    raw = request.args.get("cursor")
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", "cursor: not a cursor this API gave out") from None


def newest_first_after(model):
    """The `where` of a newest-first page after the `cursor` parameter (the id of the last
    row of the page before): rows older than it, or as old with a smaller id. None without
    a cursor; a cursor that names no row ends the list."""
    if (row_id := uuid_cursor()) is None:
        return None
    created = select(model.created_at).where(model.id == row_id).scalar_subquery()
    return or_(model.created_at < created, and_(model.created_at == created, model.id < row_id))


def field_errors(error: ValidationError) -> ApiError:
    """pydantic's errors, each naming the field the client sent."""
    details = [
        {"field": ".".join(str(p) for p in item["loc"]) or "body", "message": item["msg"]}
        for item in error.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return ApiError(400, "invalid_request", summary, details)


# Routes that read their body as a stream under their own limit (request.max_content_length,
# which Werkzeug enforces on a chunked stream too): reading it here would hold it whole.
STREAMED_BODIES = frozenset({"contact_lists.add_contacts"})


def _refuse_overlong_stream() -> None:
    """A chunked body has no Content-Length for Werkzeug to compare with MAX_CONTENT_LENGTH;
    it reads such a body up to the limit and stops there silently, so a cut body would be
    parsed as if whole. One byte more in the raw stream means it was over."""
    data = request.get_data(cache=True)
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and len(data) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


class _NonFinite:
    """What `NaN`, `Infinity` and `-Infinity` (which Python's json accepts) parse to here."""


def _needs_walk(raw: bytes) -> bool:
    """False when `raw` cannot hold deep nesting, a lone surrogate or a non-finite number:
    a few byte scans, much cheaper than walking 100k recipients."""
    return (
        raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH
        or b"\\u" in raw  # an escape, which may spell a surrogate
        or b"\xed" in raw  # how UTF-8 would spell one (json.loads lets it through)
        or b"NaN" in raw
        or b"Infinity" in raw
        or json.detect_encoding(raw) != "utf-8"
    )


def _field(path: tuple) -> str:
    return ".".join(str(part) for part in path) or "body"


def _escaped(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode()


def _lone_surrogate(text: str) -> str | None:
    """The first lone surrogate in `text`, escaped (json.loads decodes "\\ud800" to one; no
    database or encoder takes it). UTF-8 encoding finds it at C speed."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return _escaped(text[error.start])
    return None


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        if found := _lone_surrogate(value):
            return f"contains a lone surrogate ({found}), which is not valid Unicode text"
    elif isinstance(value, _NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
        return "must be a finite number (NaN and Infinity are not JSON)"
    return None


def _json_problem(document: Any) -> ApiError | None:
    """The first value found that no route can store or answer with, named by its field
    path as pydantic names fields. Iterative: the depth is what is being checked."""
    if not isinstance(document, dict | list):
        problem = _scalar_problem(document)
        return ApiError(400, "invalid_request", f"body: {problem}") if problem else None
    stack: list[tuple[dict | list, tuple, int]] = [(document, (), 1)]
    while stack:
        container, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return ApiError(
                400, "invalid_json", f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels"
            )
        values = list(container.values()) if isinstance(container, dict) else container
        texts = [value for value in values if isinstance(value, str)]
        keys = "".join(container) if isinstance(container, dict) else ""
        if len(texts) == len(values) and not _lone_surrogate(keys + "".join(texts)):
            continue  # only clean text, such as 100k recipients: one scan, no loop
        items = container.items() if isinstance(container, dict) else enumerate(container)
        nested = []
        for key, value in items:
            if isinstance(key, str) and _lone_surrogate(key):
                return ApiError(
                    400,
                    "invalid_request",
                    f"{_field((*path, _escaped(key)))}: a key with a lone surrogate "
                    "is not valid Unicode text",
                )
            if problem := _scalar_problem(value):
                return ApiError(400, "invalid_request", f"{_field((*path, key))}: {problem}")
            if isinstance(value, dict | list):
                nested.append((value, (*path, key), depth + 1))
        stack.extend(reversed(nested))
    return None


def _check_json(raw: bytes) -> None:
    if not raw or not _needs_walk(raw):
        return
    try:
        document = json.loads(raw, parse_constant=lambda _name: _NonFinite())
    except RecursionError:
        raise ApiError(
            400, "invalid_json", f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError:
        return  # not JSON at all: the route refuses it in its own words
    problem = _json_problem(document)
    if problem is not None:
        raise problem


def _close_request_body() -> None:
    """Before every route (and before any route's own parsing): a chunked body over the
    limit is 413, and a JSON body nested too deep, holding a lone surrogate or a non-finite
    number is 400 naming the field, instead of a 500 or a write that fails halfway."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    if (
        request.content_length is None
        and request.environ.get("wsgi.input_terminated")
        and not (request.endpoint in STREAMED_BODIES and not request.is_json)
    ):
        _refuse_overlong_stream()
    if request.is_json:
        _check_json(request.get_data(cache=True))


def init_app(app: Flask) -> None:
    app.before_request(_close_request_body)

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return error_response(error.status, error.code, error.message, error.details)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        code = (error.name or "error").lower().replace(" ", "_")
        message = error.description or error.name
        if error.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body exceeds the limit of {limit} bytes (MAX_BODY_BYTES)"
        response, status = error_response(error.code or 500, code, message)
        # Werkzeug's own headers for the error: `Allow` on 405, `WWW-Authenticate` on 401.
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status
