"""Every error leaves the API as {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException


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


def field_errors(error: ValidationError) -> ApiError:
    """pydantic's errors, each naming the field the client sent."""
    details = [
        {"field": ".".join(str(p) for p in item["loc"]) or "body", "message": item["msg"]}
        for item in error.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return ApiError(400, "invalid_request", summary, details)


def init_app(app: Flask) -> None:
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
        return error_response(error.code or 500, code, message)
