"""/v1/templates: stored texts with placeholders ({first_name}) and default field values, which
a broadcast names by `template_id` instead of giving `text`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request, url_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError

from api.auth import sees_all
from api.errors import ApiError, field_errors, int_param, uuid_cursor
from api.openapi import Query, describe
from shared.db import session_scope
from shared.encoding import measure, too_long
from shared.models import Template, utcnow
from shared.progress import iso
from shared.rendering import TemplateError, parse

bp = Blueprint("templates", __name__, url_prefix="/v1/templates")

PAGE_MAX = 200
NAME_MAX = 200
# No database text column stores NUL, and a name is for people to read.
NAME_RULE = r"^[^\x00-\x1f]*\S[^\x00-\x1f]*$"
FieldValues = dict[str, str]


class NewTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=NAME_MAX,
        pattern=NAME_RULE,
        description="For people; unique among this key's templates",
    )
    text: str = Field(
        min_length=1,
        description="With placeholders such as {first_name} (names only: no attributes, "
        "indexes or format specs; {{ and }} are literal braces)",
    )
    fields: FieldValues = Field(
        default_factory=dict,
        description="Default values of placeholders, used when a recipient has none",
    )


class TemplateChange(BaseModel):
    """PUT: the parts given replace the stored ones."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX, pattern=NAME_RULE)
    text: str | None = Field(default=None, min_length=1)
    fields: FieldValues | None = Field(default=None, description="Replaces all defaults")


class TemplateBody(BaseModel):
    id: str
    name: str
    text: str
    fields: FieldValues
    placeholders: list[str] = Field(description="The names in `text`, in order of first use")
    created_at: datetime
    updated_at: datetime


class TemplatePage(BaseModel):
    items: list[TemplateBody] = Field(description="By name")
    next_cursor: str | None = Field(description="For the next page; null on the last one")


class TemplateQuery(Query):
    limit: int = Field(default=50, ge=1, le=PAGE_MAX, description="Templates per page")
    cursor: uuid.UUID | None = Field(default=None, description="`next_cursor` of the page before")


def _settings():
    return current_app.config["SETTINGS"]


def check_text(text: str) -> list[str]:
    """The placeholder names of a template text, or a 400 naming `text` and the rule."""
    if "\x00" in text:
        raise ApiError(400, "invalid_request", "text: must not contain NUL (\\u0000)")
    if not text.strip():
        raise ApiError(400, "invalid_request", "text: must not be empty")
    try:
        template = parse(text)
    except TemplateError as error:
        raise ApiError(400, "invalid_request", f"text: {error}") from None
    # The text as written (placeholders unfilled) already over the limit can only grow.
    problem = too_long(measure(text))
    if problem:
        raise ApiError(400, "invalid_request", f"text: {problem}")
    return list(dict.fromkeys(template.names))


def _body(row: Template) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "name": row.name,
        "text": row.text,
        "fields": row.fields or {},
        "placeholders": list(dict.fromkeys(parse(row.text).names)),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def _payload(model: type[BaseModel]) -> BaseModel:
    if not request.is_json:
        raise ApiError(
            415, "unsupported_media_type", "body must be JSON (Content-Type: application/json)"
        )
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise field_errors(error) from None


def _name_taken(name: str) -> ApiError:
    return ApiError(409, "conflict", f"name: a template named {name!r} exists already")


def _load(session, template_id: str) -> Template:
    """The template, if the caller's key may see it (admin: any; others: their own)."""
    try:
        wanted = uuid.UUID(template_id)
    except ValueError:
        raise ApiError(404, "not_found", f"no template {template_id!r}") from None
    row = session.get(Template, wanted)
    if row is None or not (sees_all() or row.api_key_id == g.api_key_id):
        raise ApiError(404, "not_found", f"no template {template_id!r}")
    return row


@bp.post("")
@describe("templates", {201: TemplateBody}, (400, 409, 415), body=NewTemplate)
def create_template():
    """Store a text with placeholders and their default values"""
    wanted = _payload(NewTemplate)
    check_text(wanted.text)
    try:
        with session_scope(_settings().database_url) as session:
            row = Template(
                name=wanted.name.strip(),
                text=wanted.text,
                fields=wanted.fields,
                api_key_id=g.api_key_id,
            )
            session.add(row)
            session.flush()
            body = _body(row)
    except IntegrityError:
        raise _name_taken(wanted.name.strip()) from None
    response = jsonify(body)
    response.status_code = 201
    response.headers["Location"] = url_for("templates.get_template", template_id=body["id"])
    return response


@bp.get("")
@describe("templates", {200: TemplatePage}, (400,), query=TemplateQuery)
def list_templates():
    """Templates by name"""
    limit = int_param("limit", 50, 1, PAGE_MAX)
    query = select(Template).order_by(Template.name, Template.id).limit(limit)
    if not sees_all():
        query = query.where(Template.api_key_id == g.api_key_id)
    if (after := _after_cursor()) is not None:
        query = query.where(after)
    with session_scope(_settings().database_url) as session:
        rows = list(session.scalars(query))
        items = [_body(row) for row in rows]
    return jsonify(
        {"items": items, "next_cursor": str(rows[-1].id) if len(rows) == limit else None}
    )


def _after_cursor():
    """Templates after the cursor's by name, then id: names repeat across keys, and the
    admin key lists every key's."""
    if (template_id := uuid_cursor()) is None:
        return None
    name = select(Template.name).where(Template.id == template_id).scalar_subquery()
    return or_(Template.name > name, and_(Template.name == name, Template.id > template_id))


@bp.get("/<template_id>")
@describe("templates", {200: TemplateBody}, (404,))
def get_template(template_id: str):
    """One template, with the placeholder names its text uses"""
    with session_scope(_settings().database_url) as session:
        return jsonify(_body(_load(session, template_id)))


@bp.put("/<template_id>")
@describe("templates", {200: TemplateBody}, (400, 404, 409, 415), body=TemplateChange)
def update_template(template_id: str):
    """Change a template's name, text or default fields (those given replace the stored)

    Broadcasts already accepted keep the texts they were sent with."""
    change = _payload(TemplateChange)
    if change.text is not None:
        check_text(change.text)
    try:
        with session_scope(_settings().database_url) as session:
            row = _load(session, template_id)
            if change.name is not None:
                row.name = change.name.strip()
            if change.text is not None:
                row.text = change.text
            if change.fields is not None:
                row.fields = change.fields
            row.updated_at = utcnow()
            session.flush()
            body = _body(row)
    except IntegrityError:
        raise _name_taken((change.name or "").strip()) from None
    return jsonify(body)


@bp.delete("/<template_id>")
@describe("templates", {204: None}, (404,))
def delete_template(template_id: str):
    """Delete a template; broadcasts sent with it keep their texts"""
    with session_scope(_settings().database_url) as session:
        session.delete(_load(session, template_id))
    return "", 204
