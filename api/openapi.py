"""/openapi.json and /docs: the API described from the same pydantic models that validate
requests, so the description cannot drift from what is enforced."""

from __future__ import annotations

from html import escape

from flask import Blueprint, jsonify

from api.intake import BroadcastRequest
from api.limits import LimitsUpdate
from api.mms import MmsRequest

bp = Blueprint("openapi", __name__)

ERROR = {"$ref": "#/components/schemas/Error"}
KEY = [{"apiKey": []}]


def _op(summary: str, body: str | None = None, status: str = "200", **extra) -> dict:
    operation = {
        "summary": summary,
        "security": KEY,
        "responses": {
            status: {"description": "OK"},
            "4XX": {"description": "error", "content": {"application/json": {"schema": ERROR}}},
        },
    }
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    operation.update(extra)
    return operation


def _id_param() -> list[dict]:
    return [
        {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "format": "uuid"},
        }
    ]


def spec() -> dict:
    by_id = {"parameters": _id_param()}
    paths = {
        "/v1/broadcasts": {
            "post": _op(
                "Create an SMS broadcast (202); Idempotency-Key header supported",
                "BroadcastRequest",
                "202",
            ),
            "get": _op(
                "List broadcasts, newest first (status, created_after|before, limit, cursor)"
            ),
        },
        "/v1/broadcasts/{id}": {
            "get": _op("Status, counts by status and error code, progress, rate, ETA"),
            **by_id,
        },
        "/v1/broadcasts/{id}/recipients": {
            "get": _op("Recipients (status, limit, cursor); Accept: text/csv streams them all"),
            **by_id,
        },
        "/v1/broadcasts/{id}/pause": {"post": _op("Pause: no new batch starts"), **by_id},
        "/v1/broadcasts/{id}/resume": {"post": _op("Resume a paused broadcast"), **by_id},
        "/v1/broadcasts/{id}/cancel": {"post": _op("Cancel: what is left is skipped"), **by_id},
        "/v1/broadcasts/{id}/retry": {
            "post": _op('Retry recipients by status ({"statuses": [...]})', status="202"),
            **by_id,
        },
        "/v1/mms": {"post": _op("Create an MMS broadcast (202)", "MmsRequest", "202")},
        "/v1/media": {
            "post": _op("Upload a media file (multipart field `file`) to Plivo", status="201")
        },
        "/v1/opt-outs": {
            "get": _op("List opt-outs (limit, after); Accept: text/csv exports them"),
            "post": _op('Add opt-outs: {"phones": [...]} or a CSV body', status="201"),
        },
        "/v1/opt-outs/{phone}": {"delete": _op("Remove an opt-out", status="204")},
        "/v1/limits": {
            "get": _op("Pacing limits in force"),
            "put": _op("Change pacing limits live", "LimitsUpdate"),
        },
        "/webhooks/plivo/status": {
            "post": {
                "summary": "Plivo delivery reports (signed)",
                "responses": {"200": {"description": "buffered"}},
            }
        },
        "/webhooks/plivo/inbound": {
            "post": {
                "summary": "Plivo inbound messages (signed)",
                "responses": {"200": {"description": "stored"}},
            }
        },
        "/healthz": {
            "get": {"summary": "The process answers", "responses": {"200": {"description": "OK"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Database and Redis answer",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
    }
    schemas = {
        "BroadcastRequest": BroadcastRequest.model_json_schema(),
        "MmsRequest": MmsRequest.model_json_schema(),
        "LimitsUpdate": LimitsUpdate.model_json_schema(ref_template="#/components/schemas/{model}"),
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {},
                    },
                }
            },
        },
    }
    schemas.update(schemas["LimitsUpdate"].pop("$defs", {}))
    return {
        "openapi": "3.1.0",
        "info": {"title": "bulksms", "version": "1", "description": "Bulk SMS and MMS on Plivo"},
        "components": {
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": schemas,
        },
        "paths": paths,
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(spec())


@bp.get("/docs")
def docs():
    """A plain page (no scripts from elsewhere) listing every route and its request body."""
    document = spec()
    rows = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{escape(path)}</code></td>"
                f"<td>{escape(operation['summary'])}</td><td>{escape(ref)}</td></tr>"
            )
    return (
        "<!doctype html><title>bulksms API</title><h1>bulksms API</h1>"
        "<p>Every <code>/v1</code> route needs <code>X-API-Key</code>. "
        'Machine-readable: <a href="/openapi.json">/openapi.json</a>.</p>'
        "<table border=1 cellpadding=4><tr><th>method</th><th>path</th><th>what</th>"
        f"<th>body</th></tr>{''.join(rows)}</table>"
    )
