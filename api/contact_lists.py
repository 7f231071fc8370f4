"""/v1/lists: contact lists a broadcast is sent to (`list_ids`), and their contacts, added as
JSON or imported from a CSV streamed from the request (a million rows, bounded memory)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request, url_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from werkzeug.exceptions import RequestEntityTooLarge

from api.auth import sees_all
from api.errors import ApiError, field_errors, int_param, newest_first_after
from api.openapi import CSV, Query, describe, text_param
from shared.contact_import import (
    INVALID_SHOWN,
    BadImport,
    ImportReport,
    csv_rows,
    import_contacts,
    json_rows,
)
from shared.db import session_scope
from shared.logs import log_event
from shared.models import Contact, ContactList, OptOut, utcnow
from shared.phone import InvalidNumber, normalise
from shared.progress import iso

bp = Blueprint("contact_lists", __name__, url_prefix="/v1/lists")
log = logging.getLogger(__name__)

LIST_PAGE_MAX = 200
CONTACT_PAGE_MAX = 1000
NAME_MAX = 200
NAME_RULE = r"^[^\x00-\x1f]*\S[^\x00-\x1f]*$"
PHONE_CURSOR = r"\+[0-9]{1,15}"
NUMBER_RULE = "a possible phone number, in E.164 such as +14155550100"


class NewList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=NAME_RULE)


class ListBody(BaseModel):
    id: str
    name: str
    contacts: int = Field(description="Numbers on the list, opted-out ones included")
    created_at: datetime
    updated_at: datetime


class ListDetail(ListBody):
    opted_out: int = Field(description="Numbers on the list that are opted out (never texted)")


class ListPage(BaseModel):
    items: list[ListBody] = Field(description="Newest first")
    next_cursor: str | None = Field(description="For the next page; null on the last one")


class ListQuery(Query):
    limit: int = Field(default=50, ge=1, le=LIST_PAGE_MAX, description="Lists per page")
    cursor: uuid.UUID | None = Field(default=None, description="`next_cursor` of the page before")


class NewContact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="The number, as people type it")
    fields: dict[str, str] = Field(
        default_factory=dict, description="Values for the placeholders of a text ({first_name})"
    )


class NewContacts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contacts: list[NewContact | str] = Field(
        min_length=1, description="Each a number or {to, fields}"
    )


class InvalidContact(BaseModel):
    line: int | None = Field(default=None, description="CSV line (the header is line 1)")
    index: int | None = Field(default=None, description="Index in `contacts` (JSON)")
    value: Any = Field(description="The number as given")
    reason: str


class ImportResult(BaseModel):
    imported: int = Field(description="Numbers new on the list")
    updated: int = Field(description="Numbers already on it, their fields merged")
    duplicates: int = Field(
        description="Rows repeating a number earlier in this import "
        "(merged into it: later values win)"
    )
    invalid: list[InvalidContact] = Field(description=f"The first {INVALID_SHOWN} rows refused")
    invalid_total: int
    opted_out: int = Field(
        description="Numbers of this import on the opt-out list: kept, never texted"
    )


class ContactBody(BaseModel):
    phone: str = Field(description="E.164")
    fields: dict[str, str]
    opted_out: bool = Field(description="On the opt-out list: broadcasts skip it")
    created_at: datetime
    updated_at: datetime


class ContactPage(BaseModel):
    items: list[ContactBody] = Field(description="By number")
    next_cursor: str | None = Field(description="For the next page; null on the last one")


class ContactQuery(Query):
    limit: int = Field(default=100, ge=1, le=CONTACT_PAGE_MAX, description="Contacts per page")
    cursor: str | None = Field(
        default=None, pattern=f"^{PHONE_CURSOR}$", description="`next_cursor` of the page before"
    )


class ContactFile(BaseModel):
    file: bytes = Field(description="A CSV whose header row names the columns")


def _settings():
    return current_app.config["SETTINGS"]


def _load(session: Session, list_id: str) -> ContactList:
    """The list, if the caller's key may see it (admin: any; others: their own)."""
    try:
        wanted = uuid.UUID(list_id)
    except ValueError:
        raise ApiError(404, "not_found", f"no list {list_id!r}") from None
    row = session.get(ContactList, wanted)
    if row is None or not (sees_all() or row.api_key_id == g.api_key_id):
        raise ApiError(404, "not_found", f"no list {list_id!r}")
    return row


def _counts(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not ids:
        return {}
    query = (
        select(Contact.list_id, func.count())
        .where(Contact.list_id.in_(ids))
        .group_by(Contact.list_id)
    )
    return dict(session.execute(query).all())


def _list_body(row: ContactList, contacts: int) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "name": row.name,
        "contacts": contacts,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


@bp.post("")
@describe("lists", {201: ListBody}, (400, 415), body=NewList)
def create_list():
    """Create an empty contact list"""
    if not request.is_json:
        raise ApiError(
            415, "unsupported_media_type", "body must be JSON (Content-Type: application/json)"
        )
    try:
        wanted = NewList.model_validate(request.get_json(silent=True))
    except ValidationError as error:
        raise field_errors(error) from None
    with session_scope(_settings().database_url) as session:
        row = ContactList(name=wanted.name.strip(), api_key_id=g.api_key_id)
        session.add(row)
        session.flush()
        body = _list_body(row, 0)
    response = jsonify(body)
    response.status_code = 201
    response.headers["Location"] = url_for("contact_lists.get_list", list_id=body["id"])
    return response


@bp.get("")
@describe("lists", {200: ListPage}, (400,), query=ListQuery)
def list_lists():
    """Contact lists, newest first, each with its number of contacts"""
    limit = int_param("limit", 50, 1, LIST_PAGE_MAX)
    query = select(ContactList)
    if not sees_all():
        query = query.where(ContactList.api_key_id == g.api_key_id)
    if (after := newest_first_after(ContactList)) is not None:
        query = query.where(after)
    query = query.order_by(ContactList.created_at.desc(), ContactList.id.desc()).limit(limit)
    with session_scope(_settings().database_url) as session:
        rows = list(session.scalars(query))
        counts = _counts(session, [row.id for row in rows])
    return jsonify(
        {
            "items": [_list_body(row, counts.get(row.id, 0)) for row in rows],
            "next_cursor": str(rows[-1].id) if len(rows) == limit else None,
        }
    )


@bp.get("/<list_id>")
@describe("lists", {200: ListDetail}, (404,))
def get_list(list_id: str):
    """One contact list: its contacts, and how many of them are opted out"""
    with session_scope(_settings().database_url) as session:
        row = _load(session, list_id)
        body = _list_body(row, _counts(session, [row.id]).get(row.id, 0))
        body["opted_out"] = session.scalar(
            select(func.count())
            .select_from(Contact)
            .join(OptOut, OptOut.phone == Contact.phone)
            .where(Contact.list_id == row.id)
        )
    return jsonify(body)


@bp.delete("/<list_id>")
@describe("lists", {204: None}, (404,))
def delete_list(list_id: str):
    """Delete a list and its contacts; broadcasts already sent to it are not affected"""
    with session_scope(_settings().database_url) as session:
        row = _load(session, list_id)
        # Explicitly, not only by the foreign key's cascade: SQLite enforces that only
        # with its pragma on, and the ORM would otherwise load every contact first.
        session.execute(delete(Contact).where(Contact.list_id == row.id))
        session.delete(row)
    return "", 204


def _too_large() -> ApiError:
    limit = _settings().max_import_bytes
    return ApiError(
        413,
        "request_entity_too_large",
        f"body: an import may be at most {limit} bytes (MAX_IMPORT_BYTES); split the file",
    )


def _contact_rows(report: ImportReport, region: str | None):
    """The rows of this request's body: a CSV (text/csv body, or multipart part `file`)
    read as a stream, or JSON `{"contacts": [...]}`."""
    if request.mimetype in ("text/csv", "multipart/form-data"):
        # Only imports may be this large; the body is read as a stream, never whole.
        request.max_content_length = _settings().max_import_bytes
        if request.mimetype == "text/csv":
            return csv_rows(request.stream, region, report)
        upload = request.files.get("file")
        if upload is None:
            raise ApiError(400, "invalid_request", "file: send the CSV as multipart field 'file'")
        return csv_rows(upload.stream, region, report)
    if not request.is_json:
        raise ApiError(
            415,
            "unsupported_media_type",
            'body must be JSON {"contacts": [...]}, a CSV (Content-Type: text/csv), '
            "or multipart/form-data with a CSV in field 'file'",
        )
    try:
        wanted = NewContacts.model_validate(request.get_json(silent=True))
    except ValidationError as error:
        raise field_errors(error) from None
    report.where = "index"
    contacts = (
        (item, {}) if isinstance(item, str) else (item.to, item.fields) for item in wanted.contacts
    )
    return json_rows(contacts, region, report)


@bp.post("/<list_id>/contacts")
@describe(
    "lists",
    {200: ImportResult},
    (400, 404, 413, 415),
    body=NewContacts,
    form=ContactFile,
    extra={"requestBody": {"content": {"text/csv": CSV}}},
)
def add_contacts(list_id: str):
    """Add contacts: JSON, or a CSV import streamed from the body (text/csv or multipart)

    The CSV's header row names the columns: the number's column is found by name (phone,
    number, mobile, to, msisdn, ...; case does not matter), every other column is a field
    for personalised texts. Invalid rows are reported with their line numbers and skipped;
    a number given twice is merged (later values win); a number already on the list has its
    fields merged. Opted-out numbers are kept on the list and never texted. A file that
    cannot be read (no header, no phone column, not UTF-8) writes nothing."""
    settings = _settings()
    report = ImportReport()
    try:
        with session_scope(settings.database_url) as session:
            contact_list = _load(session, list_id)
            rows = _contact_rows(report, settings.default_region)
            import_contacts(session, contact_list, rows, report)
            if not report.rows:
                raise ApiError(400, "invalid_request", "body: no contacts in it")
    except BadImport as error:
        raise ApiError(400, "invalid_request", str(error)) from None
    except RequestEntityTooLarge:
        raise _too_large() from None
    log_event(
        log,
        "contacts.imported",
        list_id=list_id,
        imported=report.imported,
        updated=report.updated,
        duplicates=report.duplicates,
        invalid=report.invalid_total,
        api_key_id=g.api_key_id,
    )
    return jsonify(report.as_dict())


@bp.get("/<list_id>/contacts")
@describe("lists", {200: ContactPage}, (400, 404), query=ContactQuery)
def list_contacts(list_id: str):
    """A list's contacts, by number, with their fields and whether they are opted out"""
    limit = int_param("limit", 100, 1, CONTACT_PAGE_MAX)
    after = text_param("cursor", PHONE_CURSOR, "not a cursor this API gave out") or ""
    with session_scope(_settings().database_url) as session:
        contact_list = _load(session, list_id)
        rows = list(
            session.scalars(
                select(Contact)
                .where(Contact.list_id == contact_list.id, Contact.phone > after)
                .order_by(Contact.phone)
                .limit(limit)
            )
        )
        phones = [row.phone for row in rows]
        opted_out = set(session.scalars(select(OptOut.phone).where(OptOut.phone.in_(phones))))
    items = [
        {
            "phone": row.phone,
            "fields": row.fields or {},
            "opted_out": row.phone in opted_out,
            "created_at": iso(row.created_at),
            "updated_at": iso(row.updated_at),
        }
        for row in rows
    ]
    return jsonify({"items": items, "next_cursor": phones[-1] if len(rows) == limit else None})


@bp.delete("/<list_id>/contacts/<phone>")
@describe("lists", {204: None}, (400, 404))
def remove_contact(list_id: str, phone: str):
    """Take one number off a list"""
    try:
        number = normalise(phone, _settings().default_region)
    except InvalidNumber as error:
        raise ApiError(400, "invalid_request", f"phone: {error} ({NUMBER_RULE})") from None
    with session_scope(_settings().database_url) as session:
        contact_list = _load(session, list_id)
        removed = session.execute(
            delete(Contact).where(Contact.list_id == contact_list.id, Contact.phone == number)
        ).rowcount
        if not removed:
            raise ApiError(404, "not_found", f"{number} is not on list {list_id}")
        contact_list.updated_at = utcnow()
    return "", 204
