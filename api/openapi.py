"""/openapi.json and /docs: the API described from the pydantic models its routes use.

The library is spectree: its decorator goes on the blueprint views we already have and
takes pydantic v2 models as they are. flask-openapi3 would move every route onto its own
blueprint and app classes, and flask-smorest builds from marshmallow schemas, not pydantic.

spectree here describes and does not validate (`_DescribeOnly`). The views keep their own
checks: 413 before a 100k-number list is parsed, 415 for a body that is not JSON, rules no
JSON Schema can state (possible phone numbers, sender ids, message length in segments), all
in our error shape naming the field; letting spectree validate first would change those
answers, and its wrapper reads a streamed CSV answer into memory to check it. Instead the
answers are checked against this document by Schemathesis in `make test`
(tests/test_api_schema.py).

What spectree cannot say is added once, in `document()`: CSV bodies and answers, response
headers (Location, Retry-After), the answers every /v1 route may give (401, 403, 429), the
delivery-report webhook (answered before Flask routes it), links between operations, and
`maxItems` from MAX_RECIPIENTS. /docs is Swagger UI from the swagger-ui-bundle-v2 package,
served from here: no CDN, and nothing inline for the CSP to block."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request, send_from_directory
from pydantic import BaseModel, ConfigDict, Field
from spectree import Response as Answers
from spectree import SecurityScheme, SecuritySchemeData, SpecTree
from spectree.plugins.flask_plugin import FlaskPlugin
from swagger_ui_bundle import swagger_ui_path

from api.errors import ApiError

bp = Blueprint("openapi", __name__)

API_KEY_SCHEME = "apiKey"
TAGS = {
    "broadcasts": "SMS broadcasts: create, watch, act on",
    "mms": "MMS broadcasts and media uploads",
    "opt-outs": "Numbers no broadcast may text",
    "templates": "Stored texts with placeholders and default values",
    "lists": "Contact lists (with fields for personalised texts) and their imports",
    "inbound": "Replies to our numbers: keywords, and the messages to read",
    "limits": "Pacing limits, changed live",
    "keys": "API keys and their scopes (admin)",
    "audit": "Who did what (admin)",
    "delivery reports": "Reports from Plivo",
    "health": "Liveness and readiness",
}


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable, e.g. invalid_request, not_found")
    message: str = Field(description="The field and the rule that was broken")
    details: Any = Field(default=None, description="More, when there is more to say")


class Error(BaseModel):
    """Every error the API answers: `{"error": {"code", "message", "details"}}`."""

    error: ErrorBody


def _drop_null_choice(schema: dict[str, Any]) -> None:
    """Query parameters are absent or a value, never null: `str | None = None` becomes a
    plain optional string parameter."""
    for name, prop in schema.get("properties", {}).items():
        choices = prop.pop("anyOf", None)
        if choices is not None:
            kept = [choice for choice in choices if choice.get("type") != "null"]
            if len(kept) == 1:
                prop.update(kept[0])
            else:
                prop["anyOf"] = kept
        if "default" in prop and prop["default"] is None:
            del prop["default"]
        schema["properties"][name] = prop


class Query(BaseModel):
    """Base of the query- and header-parameter models. For the document only: the views
    read request.args and request.headers themselves (see the module docstring)."""

    model_config = ConfigDict(json_schema_extra=lambda schema, _model: _drop_null_choice(schema))


# A row id as a cursor: digits, few enough to stay below 2**63 (a BIGINT).
ID_CURSOR = r"^[0-9]{1,18}$"


def text_param(name: str, pattern: str, rule: str) -> str | None:
    """A query parameter that must match `pattern` when given; present but empty is a 400
    too, so what is refused is what the document says is refused."""
    value = request.args.get(name)
    if value is not None and not re.fullmatch(pattern, value):
        raise ApiError(400, "invalid_request", f"{name}: {rule}")
    return value


def id_cursor() -> int | None:
    value = text_param("cursor", ID_CURSOR, "not a cursor this API gave out")
    return None if value is None else int(value)


def time_param(name: str) -> datetime | None:
    """A `format: date-time` query parameter (RFC 3339, which ISO 8601 readers take too),
    as UTC; no zone means UTC. A time too far out to have a UTC year 1-9999 is clamped:
    as a filter bound it means "from the start" or "to the end" either way."""
    value = request.args.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        raise ApiError(
            400, "invalid_request", f"{name}: must be an ISO 8601 time such as 2030-01-31T09:00Z"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


class _DescribeOnly(FlaskPlugin):
    """spectree's Flask plugin less its run-time validation: the view runs as written."""

    def validate(self, func: Callable, *_spectree_args: Any, **view_args: Any) -> Any:
        return func(**view_args)


spec = SpecTree(
    "flask",
    backend=_DescribeOnly,
    mode="strict",  # only described routes; tests/test_api_schema.py checks none is missing
    annotations=False,
    title="bulksms",
    version="1",
    description=(
        "Bulk SMS and MMS on Plivo. Every `/v1` route needs an API key in `X-API-Key`; "
        "errors are `{\"error\": {\"code\", \"message\", \"details\"}}`; lists are "
        "`{\"items\": [...], \"next_cursor\"}`, and `cursor=next_cursor` fetches the next "
        "page (none when `next_cursor` is null); times are ISO 8601 with a zone."
    ),
    naming_strategy=lambda model: model.__name__,
    nested_naming_strategy=lambda _parent, child: child,
    validation_error_status=400,
    validation_error_model=Error,
    security_schemes=[
        SecurityScheme(
            name=API_KEY_SCHEME,
            data=SecuritySchemeData(type="apiKey", name="X-API-Key", field_in="header"),
        )
    ],
)


def describe(
    tag: str,
    ok: dict[int, type[BaseModel] | None],
    errors: Iterable[int] = (),
    *,
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
    extra: dict[str, Any] | None = None,
) -> Callable:
    """Describe a view: its answers (`ok` status → model, None for no body; `errors`, each
    with the Error body), query, JSON `body`, multipart `form` and `headers` models, and
    `extra`, raw OpenAPI merged into the operation for what spectree cannot express. The
    summary and description come from the view's docstring."""
    errors = tuple(errors)
    codes = {f"HTTP_{status}": model for status, model in ok.items()}
    codes |= {f"HTTP_{status}": Error for status in errors}

    def decorate(view: Callable) -> Callable:
        described = spec.validate(
            query=query,
            json=body,
            form=form,
            headers=headers,
            resp=Answers(**codes),
            tags=(tag,),
        )(view)
        described.openapi_extra = {"errors": errors, "extra": extra or {}}
        return described

    return decorate


def _merge(target: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _error(description: str, headers: dict | None = None) -> dict:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        answer["headers"] = headers
    return answer


SECONDS = {"type": "integer", "minimum": 0}
RATE_LIMITED = _error(
    "Over API_RATE_LIMIT for this key, or AUTH_FAILURE_LIMIT for this address",
    {
        "Retry-After": {"required": True, "description": "Seconds to wait", "schema": SECONDS},
        "RateLimit-Limit": {"schema": SECONDS},
        "RateLimit-Remaining": {"schema": SECONDS},
        "RateLimit-Reset": {"description": "Seconds until the window resets", "schema": SECONDS},
    },
)
CSV = {"schema": {"type": "string"}}


def _needs_scope(endpoint: str) -> bool:
    from api.auth import ALL_SCOPES, SCOPES

    return not set(ALL_SCOPES) <= SCOPES.get(endpoint, frozenset()) | {"admin"}


def _fix_operation(op: dict, rule_path: str, endpoint: str, described: dict) -> None:
    op["operationId"] = endpoint.replace(".", "_")  # e.g. broadcasts_get_broadcast
    answers = op["responses"]
    if 400 not in described["errors"]:
        answers.pop("400", None)  # spectree lists its validation status on every operation
    if rule_path.startswith("/v1/"):
        op["security"] = [{API_KEY_SCHEME: []}]
        answers["401"] = _error("No X-API-Key, or not a valid key, or a revoked one")
        if _needs_scope(endpoint):
            answers["403"] = _error("The key's scopes do not cover this route")
        answers["429"] = RATE_LIMITED
    _merge(op, described["extra"])


def _form(required: list[str], *fields: str) -> dict:
    return {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": required,
                    "properties": {name: {"type": "string"} for name in fields},
                }
            }
        },
    }


SIGNED = _error("Signature missing or wrong, or the request replayed")
# Routes described here rather than by a decorator: the delivery-report webhook is answered
# before Flask routes it (api/status_intake.py); the inbound webhook and /metrics belong to
# modules that are not part of the client API (api/webhooks.py, api/metrics.py).
UNDECORATED = {
    "/webhooks/plivo/status": {
        "post": {
            "tags": ["delivery reports"],
            "summary": "Plivo's delivery reports (signed: X-Plivo-Signature-V3)",
            "operationId": "plivo_status_webhook",
            "requestBody": _form(["MessageUUID", "Status"], "MessageUUID", "Status", "ErrorCode"),
            "responses": {
                "200": {"description": "Stored; the workers apply it"},
                "400": _error("Not a delivery report"),
                "403": SIGNED,
            },
        }
    },
    "/webhooks/plivo/inbound": {
        "post": {
            "tags": ["opt-outs"],
            "summary": "Plivo's inbound messages (signed): kept; STOP opts out, START opts "
            "in, and keywords are answered (STOP_REPLY, START_REPLY, HELP_REPLY)",
            "operationId": "webhooks_inbound_message",
            "requestBody": _form(
                ["From", "Text"], "From", "To", "Text", "MessageUUID", "MessageIntent"
            ),
            "responses": {
                "200": {"description": "Stored and applied"},
                "400": _error("Not an inbound message"),
                "403": SIGNED,
                "503": _error("Replays cannot be checked now; Plivo retries"),
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["health"],
            "summary": "Prometheus metrics (Authorization: Bearer METRICS_TOKEN)",
            "operationId": "metrics_scrape",
            "responses": {
                "200": {
                    "description": "Prometheus text exposition",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": _error("No token, or the wrong one"),
                "404": _error("METRICS_TOKEN is not set"),
            },
        }
    },
}


def document(max_recipients: int) -> dict:
    """The OpenAPI document of the app serving this request."""
    doc = copy.deepcopy(spec.spec)  # spectree caches it; we amend a copy
    doc["tags"] = [{"name": name, "description": text} for name, text in TAGS.items()]
    for rule in current_app.url_map.iter_rules():
        view = current_app.view_functions[rule.endpoint]
        described = getattr(view, "openapi_extra", None)
        if described is None:
            continue
        path, _ = spec.backend.parse_path(rule, None)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            _fix_operation(doc["paths"][path][method.lower()], rule.rule, rule.endpoint, described)
    for path, item in UNDECORATED.items():
        doc["paths"].setdefault(path, copy.deepcopy(item))
    schemas = doc["components"]["schemas"]
    for name in ("BroadcastRequest", "MmsRequest"):
        if name in schemas:
            schemas[name]["properties"]["recipients"]["maxItems"] = max_recipients
    return doc


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(document(current_app.config["SETTINGS"].max_recipients))


# Swagger UI's own files, served from the installed package (nothing from a CDN).
UI_FILES = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"}
)
# The start-up script is a file of its own, not inline: the page's CSP forbids inline code.
UI_START = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    displayRequestDuration: true,
  });
});
"""
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>bulksms API</title>
<link rel="stylesheet" href="/docs/ui/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/ui/favicon-32x32.png" sizes="32x32">
</head>
<body>
<noscript>The interactive page needs JavaScript; the API is described in
<a href="/openapi.json">/openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="/docs/ui/swagger-ui-bundle.js"></script>
<script src="/docs/ui/start.js"></script>
</body>
</html>
"""


@bp.get("/docs")
def docs():
    """Swagger UI: read the API and send requests to it ("Authorize" takes an API key)."""
    return PAGE


@bp.get("/docs/ui/<name>")
def docs_file(name: str):
    if name == "start.js":
        return Response(UI_START, mimetype="text/javascript")
    if name not in UI_FILES:
        abort(404)
    return send_from_directory(swagger_ui_path, name, max_age=3600)
