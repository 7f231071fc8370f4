"""/v1/inbound: the replies people sent to our numbers, keywords and all, newest first.

A reply to a campaign is kept even when it is no keyword ("what time does it start?"), so
someone can read and answer it; each one names the broadcast it most likely answers."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Literal

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.auth import sees_all
from api.errors import ApiError, int_param
from api.openapi import ID_CURSOR, Query, describe, id_cursor, text_param
from shared.db import session_scope
from shared.models import Batch, Broadcast, InboundMessage, Recipient, RecipientStatus
from shared.phone import InvalidNumber, normalise
from shared.progress import iso

bp = Blueprint("inbound", __name__, url_prefix="/v1/inbound")

PAGE_MAX = 200
# A reply answers a broadcast sent within this long before it; older ones are not looked at
# (each broadcast looked at costs one probe of the recipients' (broadcast, phone) index).
ANSWERS_WITHIN = timedelta(days=30)
E164 = r"^\+[1-9][0-9]{6,14}$"
# Recipients who were never texted cannot be answering.
NOT_TEXTED = (RecipientStatus.PENDING, RecipientStatus.SKIPPED)


class Answered(BaseModel):
    id: str
    name: str | None = Field(description="The broadcast's name, if it has one")


class InboundItem(BaseModel):
    id: int
    # `from` is a Python keyword: the model says from_, the JSON says from.
    from_: str = Field(alias="from", description="Who replied (E.164)")
    to: str = Field(description="The number they texted")
    text: str | None
    action: Literal["opt_out", "opt_in", "help"] | None = Field(
        description="What the keyword did; null: no keyword (a reply to read)"
    )
    received_at: datetime
    replied_at: datetime | None = Field(
        description="When the keyword's answer (STOP_REPLY, START_REPLY, HELP_REPLY) went"
    )
    broadcast: Answered | None = Field(
        description="The latest broadcast (of the last 30 days) that texted this person from "
        "the number they replied to, before the reply; null if none (a key without the "
        "admin scope is shown only its own broadcasts)"
    )


class InboundPage(BaseModel):
    items: list[InboundItem] = Field(description="Newest first")
    next_cursor: str | None = Field(description="For the next page; null on the last one")


class InboundQuery(Query):
    keyword: Literal["true", "false"] | None = Field(
        default=None,
        description="false: only replies that are no keyword (the ones to read); "
        "true: only STOP/START/HELP and the like",
    )
    phone: str | None = Field(
        default=None, pattern=E164, description="Only replies from this number (E.164)"
    )
    limit: int = Field(default=50, ge=1, le=PAGE_MAX, description="Replies per page")
    cursor: str | None = Field(
        default=None, pattern=ID_CURSOR, description="`next_cursor` of the page before"
    )


def _texted(phone, to, received_at):
    """The recipients rows showing a broadcast (correlated as Broadcast) texted `phone` from
    the number `to`, before `received_at`: values, or InboundMessage's columns to correlate.
    A batch's own sender wins; NULL means the broadcast's."""
    return (
        select(Recipient.id)
        .outerjoin(Batch, Batch.id == Recipient.batch_id)
        .where(
            Recipient.broadcast_id == Broadcast.id,
            Recipient.phone == phone,
            Recipient.status.not_in(NOT_TEXTED),
            func.coalesce(Batch.sender, Broadcast.sender) == to,
            Broadcast.created_at <= received_at,
        )
        # The broadcast (and the reply, when correlated) come from the enclosing queries,
        # however deep: left to itself, SQLAlchemy would look only one level up.
        .correlate_except(Recipient, Batch)
        .exists()
    )


def _answers_own(owner: str):
    """A key that is no admin reads only the replies of people its own broadcasts texted
    from the number they replied to: replies answer campaigns, and one key's campaigns (and
    the people they reach) are not another's to read."""
    return (
        select(Broadcast.id)
        .where(
            Broadcast.api_key_id == owner,
            _texted(InboundMessage.phone, InboundMessage.to, InboundMessage.received_at),
        )
        .exists()
    )


def _answered(session: Session, message: InboundMessage, owner: str | None) -> dict | None:
    """The broadcast this reply most likely answers: the latest one (of `owner`'s, unless
    None: all) created before the reply, whose recipient was this phone and whose batch
    went from the number texted."""
    query = select(Broadcast.id, Broadcast.name).where(
        Broadcast.created_at >= message.received_at - ANSWERS_WITHIN,
        _texted(message.phone, message.to, message.received_at),
    )
    if owner is not None:
        query = query.where(Broadcast.api_key_id == owner)
    found = session.execute(query.order_by(Broadcast.created_at.desc()).limit(1)).first()
    return None if found is None else {"id": str(found.id), "name": found.name}


def _item(session: Session, message: InboundMessage, owner: str | None) -> dict:
    return {
        "id": message.id,
        "from": message.phone,
        "to": message.to,
        "text": message.text,
        "action": message.action,
        "received_at": iso(message.received_at),
        "replied_at": iso(message.replied_at) if message.replied_at else None,
        "broadcast": _answered(session, message, owner),
    }


def _phone() -> str | None:
    """The `phone` filter in E.164, as replies are stored. E.164 is taken as it is (a number
    nobody replied from matches nothing); other spellings ("+1 (415) 555-0101") are read
    as a person would type them, and one that is no phone number is a 400."""
    raw = request.args.get("phone")
    if raw is None or re.fullmatch(E164, raw):
        return raw
    try:
        return normalise(raw[:64], current_app.config["SETTINGS"].default_region)
    except InvalidNumber as error:
        raise ApiError(
            400, "invalid_request", f"phone: {error} (E.164 such as +14155550100)"
        ) from None


@bp.get("")
@describe("inbound", {200: InboundPage}, (400,), query=InboundQuery)
def list_inbound():
    """Replies to our numbers, newest first: keywords and the messages to read

    `keyword=false` leaves out STOP/START/HELP; `phone` keeps one sender's. Each names the
    broadcast it most likely answers. A key without the admin scope sees only the replies
    of people its own broadcasts texted (from the number they replied to), and only its own
    broadcasts named."""
    limit = int_param("limit", 50, 1, PAGE_MAX)
    query = select(InboundMessage)
    keyword = text_param("keyword", "true|false", "must be true or false")
    if keyword == "false":
        query = query.where(InboundMessage.action.is_(None))
    elif keyword == "true":
        query = query.where(InboundMessage.action.is_not(None))
    if (phone := _phone()) is not None:
        query = query.where(InboundMessage.phone == phone)
    if (cursor := id_cursor()) is not None:
        query = query.where(InboundMessage.id < cursor)
    owner = None if sees_all() else g.api_key_id
    if owner is not None:
        query = query.where(_answers_own(owner))
    query = query.order_by(InboundMessage.id.desc()).limit(limit)
    with session_scope(current_app.config["SETTINGS"].database_url) as session:
        rows = list(session.scalars(query))
        items = [_item(session, row, owner) for row in rows]
    return jsonify(
        {"items": items, "next_cursor": str(rows[-1].id) if len(rows) == limit else None}
    )
