"""Turning a POSTed broadcast into rows: validate everything first, then write it all in one
transaction with bulk inserts, so a bad request writes nothing and a good one is whole."""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import redis
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from api import list_audience
from api.errors import ApiError, field_errors
from api.list_audience import ListAudience
from api.messages import Audience as MessageAudience
from api.messages import Group, Messages, Rules, plan_messages
from shared import models
from shared.compliance import opt_out_suffix
from shared.config import Settings
from shared.db import is_postgres
from shared.encoding import measure, too_long, ucs2_characters
from shared.limits import limits_in_force
from shared.models import (
    Batch,
    BatchStatus,
    Broadcast,
    BroadcastStatus,
    Contact,
    ContactList,
    Recipient,
    RecipientStatus,
    Template,
    utcnow,
)
from shared.opt_outs import opted_out_among
from shared.phone import InvalidNumber, normalise
from shared.quiet_hours import Window, parse_window, release_at, zone_key
from shared.quotes import (
    Load,
    build_quote,
    duration_seconds,
    quiet_summary,
    weigh,
    weigh_counted,
)
from shared.rendering import TemplateError, field_values
from shared.rendering import parse as parse_template
from shared.senders import remember_senders
from shared.urls import UnsafeUrl, check_url

INVALID_SHOWN = 20
NULL = "\\N"  # COPY text format
REJECTED_REASON = "MMS can only be sent to US and Canadian numbers"
_E164_SENDER = re.compile(r"\+[1-9]\d{6,14}")
_ALPHANUMERIC_SENDER = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
# On PostgreSQL, a list broadcast with nothing to do per recipient is resolved in SQL
# (api/list_audience.py). False: the Python path everywhere (the tests compare the two).
LISTS_IN_SQL = True


# `high` (alerts, one-time codes) books its sender's pacing slots before `normal` broadcasts
# waiting on the same sender.
Priority = Literal["normal", "high"]


FieldValue = StrictStr | StrictInt | StrictFloat
Fields = dict[Annotated[str, Field(min_length=1, max_length=64)], FieldValue]


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, local time")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, local time")


class BroadcastRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        # What /docs fills in to try it, and what Schemathesis sends first.
        json_schema_extra={
            "examples": [
                {"recipients": ["+14155550101", "+14155550102"], "text": "Hello from bulksms"}
            ]
        },
    )

    recipients: list[Any] | None = Field(
        default=None,
        min_length=1,
        description="Phone numbers: E.164, or as people type them with DEFAULT_REGION; or "
        'objects {"to": "+1...", "fields": {"first_name": "Ana"}} for personalised texts. '
        "Duplicates are sent once, opted-out numbers skipped. May be left out with list_ids",
    )
    list_ids: list[UUID] | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="Contact lists whose contacts (with their fields) are the audience, "
        "merged with `recipients`; up to MAX_LIST_RECIPIENTS in all",
    )
    text: str | None = Field(
        default=None,
        description="GSM-7 up to 1600 characters, or UCS-2 up to 737; may hold placeholders "
        "such as {first_name} (names only; {{ and }} for literal braces). Or template_id",
    )
    template_id: UUID | None = Field(
        default=None, description="A stored template (POST /v1/templates) instead of text"
    )
    fields: Fields | None = Field(
        default=None,
        description="Default placeholder values; a recipient's own fields win, and these "
        "win over the template's",
    )
    name: str | None = Field(
        default=None, min_length=1, max_length=200, description="Shown in listings"
    )
    sender: str | None = Field(
        default=None, description="E.164 or 1-11 letters and digits; default PLIVO_SENDER"
    )
    senders: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="A sender pool: each recipient sticks to one of these (the one that "
        "texted it last, else one chosen by a hash of its number). Not with sender",
    )
    sender_pool: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The name of a pool configured in SENDER_POOLS. Not with sender(s)",
    )
    quiet_hours: QuietHours | None = Field(
        default=None,
        description="Nobody is texted between start and end in their own local time; "
        "recipients inside it wait, pending. Left out: QUIET_HOURS; null: none",
    )
    append_opt_out_text: bool = Field(
        default=False,
        strict=True,
        description='Append " Reply STOP to opt out" (OPT_OUT_TEXT), counted in segments',
    )
    dry_run: bool = Field(
        default=False,
        strict=True,
        description="Validate and answer 200 with the quote (cost, segments, duration); "
        "nothing is written or sent",
    )
    max_cost: Decimal | None = Field(
        default=None,
        ge=0,
        max_digits=20,
        decimal_places=6,
        description="Refuse the broadcast (400) when its estimated cost is higher",
    )
    skip_invalid: bool = Field(
        default=False,
        strict=True,  # true or false, not 0 or "yes"
        description="Send to the valid numbers and count the rest, instead of a 400",
    )
    callback_url: str | None = Field(
        default=None, description="Where to POST a signed notice once the broadcast is final"
    )
    send_at: datetime | None = Field(
        default=None, description="ISO 8601 with a zone; it waits, `scheduled`, until then"
    )
    priority: Priority = Field(
        default="normal", description="high books its sender's pacing before normal"
    )


@dataclass
class Plan:
    """A validated broadcast, ready to be written."""

    sender: str
    text: str | None
    encoding: str | None
    segments: int
    to_send: list[str]
    skipped: list[str]
    invalid: list[dict] = field(default_factory=list)
    duplicates: int = 0
    callback_url: str | None = None
    send_at: datetime | None = None
    kind: str = "sms"
    media: dict | None = None
    # Valid numbers this kind cannot reach (MMS outside the US and Canada), kept as
    # `rejected` when the client asked to skip them.
    rejected: list[str] = field(default_factory=list)
    priority: str = "normal"
    # Campaigns: set when recipients differ in text, sender or release (else one group, the
    # broadcast's own sender and text, sendable at once).
    groups: list[Group] | None = None
    messages: Messages | None = None
    name: str | None = None
    template_id: UUID | None = None
    list_ids: list[str] | None = None
    senders: list[str] | None = None
    quiet_hours: dict | None = None
    quote: dict | None = None
    dry_run: bool = False
    max_cost: Decimal | None = None
    # Contacts resolved in SQL, sent after `to_send` (the request's own numbers); only with
    # no groups.
    lists: ListAudience | None = None

    @property
    def accepted(self) -> int:
        if self.groups is None:
            return len(self.to_send) + (self.lists.accepted if self.lists else 0)
        return sum(len(group.positions) for group in self.groups)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped) + (self.lists.skipped if self.lists else 0)


def parse_request(payload: Any, settings: Settings, model: type[BaseModel] = BroadcastRequest):
    """The request model from a JSON body, or a 4xx naming the field."""
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    recipients = payload.get("recipients")
    # Checked before the model so an oversized list is refused without validating it.
    if isinstance(recipients, list) and len(recipients) > settings.max_recipients:
        raise ApiError(
            413,
            "too_many_recipients",
            f"recipients: {len(recipients)} recipients exceed the maximum of "
            f"{settings.max_recipients} per broadcast (MAX_RECIPIENTS)",
        )
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise field_errors(error) from None


def request_fingerprint(payload: Any) -> str:
    """What an Idempotency-Key is bound to: SHA-256 of the body as canonical JSON (sorted
    keys, no whitespace), so the same request re-serialised by another client is a replay,
    not a conflict."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_sender(sender: str | None, settings: Settings) -> str:
    chosen = sender if sender is not None else settings.default_sender
    if not chosen:
        raise ApiError(
            400, "invalid_request", "sender: required, because no PLIVO_SENDER is configured"
        )
    if not (_E164_SENDER.fullmatch(chosen) or _ALPHANUMERIC_SENDER.fullmatch(chosen)):
        raise ApiError(
            400,
            "invalid_request",
            "sender: must be an E.164 number such as +14155550100 or 1-11 letters and digits",
        )
    return chosen


def check_callback_url(url: str | None, settings: Settings) -> str | None:
    if url is None:
        return None
    if not settings.effective_callback_secret:
        raise ApiError(
            400, "invalid_request", "callback_url: needs CALLBACK_SECRET to be configured"
        )
    try:
        # Sandbox mode is local development: plain http and local receivers are fine.
        sandbox = settings.sandbox_mode
        return check_url(url, allow_http=sandbox, allow_internal=sandbox)
    except UnsafeUrl as error:
        raise ApiError(400, "invalid_request", f"callback_url: {error}") from None


def check_send_at(send_at: datetime | None) -> datetime | None:
    if send_at is None:
        return None
    if send_at.tzinfo is None:
        raise ApiError(400, "invalid_request", "send_at: must include a time zone (Z or +HH:MM)")
    if send_at <= utcnow():
        raise ApiError(400, "invalid_request", "send_at: is in the past")
    return send_at


def check_text(text: str) -> tuple[str, int]:
    if not text.strip():
        raise ApiError(400, "invalid_request", "text: must not be empty")
    cost = measure(text)
    problem = too_long(cost)
    if problem:
        raise ApiError(400, "invalid_request", f"text: {problem}")
    return cost.encoding, cost.segments


def normalise_all(values: list[Any], region: str | None) -> tuple[dict[str, int], list[dict], int]:
    """Unique E.164 numbers (each with the index it was first given at) in the order given,
    the invalid ones, and the duplicate count."""
    seen: dict[str, int] = {}
    invalid: list[dict] = []
    duplicates = 0
    for index, value in enumerate(values):
        try:
            number = normalise(value, region)
        except InvalidNumber as error:
            if isinstance(value, Malformed):
                invalid.append({"index": index, "value": value.value, "reason": value.reason})
            else:
                invalid.append({"index": index, "value": value, "reason": str(error)})
            continue
        if number in seen:
            duplicates += 1
        else:
            seen[number] = index
    return seen, invalid, duplicates


@dataclass
class Audience:
    """Recipients after normalising, de-duplicating, and checking the opt-out list."""

    to_send: list[str]
    skipped: list[str]
    invalid: list[dict]
    duplicates: int
    rejected: list[str]
    lists: ListAudience | None = None


def plan_audience(
    session: Session,
    values: list[Any],
    sender: str,
    skip_invalid: bool,
    settings: Settings,
    reachable=None,
    why: str = "",
    contacts: Iterable[str] = (),
    senders: Iterable[str] = (),
    first_index: dict[str, int | None] | None = None,
    list_ids: list[UUID] | None = None,
) -> Audience:
    """Refuses (400, listing index/value/reason) any invalid number unless skip_invalid.
    `reachable(number)` filters numbers this kind of message cannot reach. `contacts` (E.164
    numbers of contact lists) join after `values`; `senders` are the other senders of a
    pool (never texted: Plivo refuses a call to its own source). `first_index`, when given,
    is filled with each number's index in `values` (None: from a list). `list_ids` (with no
    `contacts`, `senders` or `reachable`): lists whose contacts join after `values` too,
    counted in SQL and never loaded (PostgreSQL)."""
    seen, invalid, duplicates = normalise_all(values, settings.default_region)
    if first_index is None:
        first_index = seen
    else:
        first_index.update(seen)
    for phone in contacts:
        if phone in first_index:
            duplicates += 1
        else:
            first_index[phone] = None
    lists = None
    total = len(first_index)
    if list_ids:
        lists = list_audience.summarise(session, list_ids, list(first_index), sender)
        duplicates += lists.duplicates
        total += lists.fresh
    if total > max(settings.max_recipients, settings.max_list_recipients):
        raise ApiError(
            413,
            "too_many_recipients",
            f"list_ids: {total} recipients exceed the maximum of "
            f"{settings.max_list_recipients} per broadcast (MAX_LIST_RECIPIENTS)",
        )
    for own in {sender, *senders}:
        if own in first_index:
            # Plivo (and its SDK) refuse a whole call whose destinations include its source.
            index = first_index.pop(own)
            value = values[index] if index is not None else own
            invalid.append({"index": index, "value": value, "reason": "is the sender's number"})
    if lists is not None and lists.has_sender:
        invalid.append({"index": None, "value": sender, "reason": "is the sender's number"})
    rejected, unreachable = [], []
    if reachable is not None:
        for number, index in list(first_index.items()):
            if not reachable(number):
                del first_index[number]
                rejected.append(number)
                unreachable.append({"index": index, "value": values[index], "reason": why})
    problems = sorted(invalid + unreachable, key=_index_order)
    if problems and not skip_invalid:
        # Each rule broken, in its own words: a UK number sent by MMS is a fine E.164
        # number, and being told to send E.164 would not help.
        rules = []
        if invalid:
            rules.append(
                f"{len(invalid)} invalid phone number(s) (each must be a possible number, "
                "in E.164 such as +14155550100, and not the sender's)"
            )
        if unreachable:
            rules.append(f"{len(unreachable)} number(s) this cannot reach: {why}")
        raise ApiError(
            400,
            "invalid_recipients",
            f"recipients: {'; '.join(rules)}; or set skip_invalid to send to the rest",
            {"invalid": problems[:INVALID_SHOWN], "invalid_total": len(problems)},
        )
    invalid.sort(key=_index_order)
    numbers = list(first_index)
    if not numbers and not (lists and lists.accepted + lists.skipped):
        raise ApiError(400, "invalid_request", "recipients: no valid phone number left")
    blocked = opted_out_among(session, numbers) if numbers else set()
    to_send = [n for n in numbers if n not in blocked] if blocked else numbers
    skipped = [n for n in numbers if n in blocked]
    return Audience(to_send, skipped, invalid, duplicates, rejected, lists)


def _index_order(item: dict) -> float:
    index = item.get("index")
    return float("inf") if index is None else index


class Malformed:
    """A recipient object that is not {"to", "fields"}: refused as an invalid recipient."""

    reason = 'a recipient object is {"to": "+1...", "fields": {name: string or number}}'

    def __init__(self, value: Any):
        self.value = value


def split_recipients(values: list[Any]) -> tuple[list[Any], list[dict | None] | None]:
    """Recipients given as objects ({"to", "fields"}) split into numbers and fields (None
    when every one is a plain number: the common case stays a plain list)."""
    if all(type(value) is str for value in values):
        return values, None
    numbers: list[Any] = []
    fields: list[dict | None] = []
    for value in values:
        if not isinstance(value, dict):
            numbers.append(value)
            fields.append(None)
            continue
        own = field_values(value.get("fields", {}))
        if not isinstance(value.get("to"), str) or own is None or set(value) - {"to", "fields"}:
            numbers.append(Malformed(value))
            fields.append(None)
            continue
        numbers.append(value["to"])
        fields.append(own)
    return numbers, fields


@dataclass
class ListContacts:
    phones: list[str]
    # Only for personalised texts: each contact's fields and list (to name it in errors).
    fields: dict[str, dict | None]
    lists: dict[str, str]


def check_lists(session: Session, list_ids: list[UUID], api_key_id: str | None) -> None:
    """404 naming a list that does not exist or is another key's."""
    found = {
        row.id: row
        for row in session.scalars(select(ContactList).where(ContactList.id.in_(list_ids)))
    }
    for index, list_id in enumerate(list_ids):
        row = found.get(list_id)
        if row is None or (api_key_id is not None and row.api_key_id != api_key_id):
            raise ApiError(404, "not_found", f"list_ids.{index}: no contact list {list_id}")


def load_contacts(
    session: Session, list_ids: list[UUID], personalised: bool, api_key_id: str | None
) -> ListContacts:
    """The contacts of the lists, in list order then as added (404 naming a list that does
    not exist or is another key's). Rows are streamed: a million contacts never exist as
    ORM objects."""
    check_lists(session, list_ids, api_key_id)
    phones: list[str] = []
    fields: dict[str, dict | None] = {}
    lists: dict[str, str] = {}
    for list_id in dict.fromkeys(list_ids):
        columns = (Contact.phone, Contact.fields) if personalised else (Contact.phone,)
        query = select(*columns).where(Contact.list_id == list_id).order_by(Contact.id)
        rows = session.execute(query.execution_options(yield_per=20_000))
        if not personalised:
            phones.extend(rows.scalars())
            continue
        for phone, own in rows:
            phones.append(phone)
            if phone not in fields:
                fields[phone] = field_values(own) if own else None
                lists[phone] = str(list_id)
    return ListContacts(phones, fields, lists)


def check_pool(request: BroadcastRequest, settings: Settings) -> list[str] | None:
    """The sender pool asked for (`senders`, or `sender_pool` by name), each checked."""
    given = [
        name for name in ("sender", "senders", "sender_pool") if getattr(request, name) is not None
    ]
    if len(given) > 1:
        raise ApiError(400, "invalid_request", f"{', '.join(given)}: give only one of them")
    if request.sender_pool is not None:
        pool = settings.sender_pools.get(request.sender_pool)
        if not pool:
            known = ", ".join(sorted(settings.sender_pools)) or "none are configured"
            raise ApiError(
                400,
                "invalid_request",
                f"sender_pool: no pool {request.sender_pool!r} in SENDER_POOLS ({known})",
            )
        field_name = "sender_pool"
    elif request.senders is not None:
        pool, field_name = request.senders, "senders"
    else:
        return None
    checked = []
    for index, sender in enumerate(pool):
        if not (_E164_SENDER.fullmatch(sender) or _ALPHANUMERIC_SENDER.fullmatch(sender)):
            raise ApiError(
                400,
                "invalid_request",
                f"{field_name}.{index}: must be an E.164 number such as +14155550100 or 1-11 "
                "letters and digits",
            )
        checked.append(sender)
    return list(dict.fromkeys(checked))


def check_source(
    session: Session, request: BroadcastRequest, api_key_id: str | None
) -> tuple[str, dict[str, str], str]:
    """The text (or the template's), the template's default fields, and the field to name
    in errors about it."""
    if (request.text is None) == (request.template_id is None):
        raise ApiError(400, "invalid_request", "text, template_id: give exactly one of them")
    if request.text is not None:
        return request.text, {}, "text"
    template = session.get(Template, request.template_id)
    if template is None or (api_key_id is not None and template.api_key_id != api_key_id):
        raise ApiError(404, "not_found", f"template_id: no template {request.template_id}")
    return template.text, field_values(template.fields or {}) or {}, "template_id"


def check_quiet_hours(request: BroadcastRequest, settings: Settings) -> Window | None:
    if "quiet_hours" in request.model_fields_set:
        raw = request.quiet_hours.model_dump() if request.quiet_hours else None
        name = "quiet_hours"
    else:
        raw, name = settings.quiet_hours or None, "QUIET_HOURS"
    try:
        return parse_window(raw)
    except ValueError as error:
        raise ApiError(400, "invalid_request", f"{name}: {error}") from None


def plan_broadcast(
    session: Session,
    request: BroadcastRequest,
    settings: Settings,
    api_key_id: str | None = None,
    lists_in_sql: bool | None = None,
) -> Plan:
    """All validation, before anything is written. Raises ApiError naming the field.
    `api_key_id`: lists and templates must be this key's (None: any, for admin keys).
    `lists_in_sql`: resolve contact lists in SQL (None: whenever it can)."""
    if request.recipients is None and request.list_ids is None:
        raise ApiError(400, "invalid_request", "recipients, list_ids: give at least one")
    pool = check_pool(request, settings)
    sender = check_sender(pool[0] if pool else request.sender, settings)
    raw_text, template_fields, text_field = check_source(session, request, api_key_id)
    try:
        template = parse_template(raw_text)
    except TemplateError as error:
        raise ApiError(400, "invalid_request", f"{text_field}: {error}") from None
    if not raw_text.strip():
        raise ApiError(400, "invalid_request", f"{text_field}: must not be empty")
    suffix = opt_out_suffix(settings.opt_out_text) if request.append_opt_out_text else ""
    if template.personalised:
        # Placeholders stay in the broadcast's text; each batch carries its rendering.
        text = raw_text + suffix
        encoding, segments = None, 0
    else:
        text = template.parts[0] + suffix
        encoding, segments = check_text(text)
    window = check_quiet_hours(request, settings)
    callback_url = check_callback_url(request.callback_url, settings)
    send_at = check_send_at(request.send_at)
    values, inline_fields = split_recipients(request.recipients or [])
    if lists_in_sql is None:
        # Nothing to render, choose or hold per recipient: the database can do it all.
        lists_in_sql = bool(
            LISTS_IN_SQL
            and request.list_ids
            and is_postgres(session)
            and not template.personalised
            and not pool
            and window is None
        )
    contacts = ListContacts([], {}, {})
    if lists_in_sql:
        check_lists(session, request.list_ids, api_key_id)
    elif request.list_ids:
        contacts = load_contacts(session, request.list_ids, template.personalised, api_key_id)
    first_index: dict[str, int | None] = {}
    audience = plan_audience(
        session,
        values,
        sender,
        request.skip_invalid,
        settings,
        contacts=contacts.phones,
        senders=pool or (),
        first_index=first_index,
        list_ids=list(dict.fromkeys(request.list_ids)) if lists_in_sql else None,
    )
    plan = Plan(
        sender=sender,
        text=text,
        encoding=encoding,
        segments=segments,
        callback_url=callback_url,
        send_at=send_at,
        priority=request.priority,
        name=request.name,
        template_id=request.template_id,
        list_ids=[str(list_id) for list_id in request.list_ids] if request.list_ids else None,
        senders=pool,
        quiet_hours=window.as_dict() if window else None,
        dry_run=request.dry_run,
        max_cost=request.max_cost,
        **vars(audience),  # shallow: asdict would copy 100k numbers one by one
    )
    fallback = settings.numeric_fallback_sender
    needs_rules = (
        template.personalised
        or pool
        or window is not None
        or (
            not _E164_SENDER.fullmatch(sender)
            and (
                any(n.startswith("+1") for n in plan.to_send)
                or (plan.lists is not None and plan.lists.nanp > 0)
            )
        )
    )
    if needs_rules and plan.lists is not None:
        # An alphanumeric sender to +1 numbers: the carrier rule is applied per recipient.
        return plan_broadcast(session, request, settings, api_key_id, lists_in_sql=False)
    if not needs_rules or not plan.to_send:
        return plan
    to_send = plan.to_send
    defaults = {**template_fields, **(request.fields and field_values(request.fields) or {})}

    def fields_of(position: int) -> dict | None:
        number = to_send[position]
        index = first_index.get(number)
        if index is not None:
            return inline_fields[index] if inline_fields is not None else None
        return contacts.fields.get(number)

    def describe(position: int) -> dict:
        number = to_send[position]
        index = first_index.get(number)
        if index is not None:
            return {"index": index, "value": values[index]}
        return {"index": None, "value": number, "list_id": contacts.lists.get(number)}

    now = models.utcnow()
    start = max(now, send_at) if send_at else now
    messages = plan_messages(
        session,
        MessageAudience(to_send, fields_of, describe),
        Rules(
            template=template,
            defaults=defaults,
            suffix=suffix,
            sender=sender,
            pool=pool,
            fallback=fallback,
            zone_of=zone_key if window is not None else None,
            release=(lambda zone: release_at(zone, window, start)) if window else None,
            skip_invalid=request.skip_invalid,
        ),
    )
    if not any(group.positions for group in messages.groups):
        raise ApiError(400, "invalid_request", "recipients: no recipient left to send to")
    plan.invalid = sorted(plan.invalid + messages.invalid, key=_index_order)
    plan.groups = messages.groups
    plan.messages = messages
    if template.personalised:
        plan.encoding = next(iter(messages.encodings)) if len(messages.encodings) == 1 else "mixed"
        plan.segments = messages.segments_longest
    return plan


def intake_counts(plan: Plan) -> dict[str, int]:
    """What became of the numbers in the request (the broadcast's `counts`)."""
    return {
        "accepted": plan.accepted,
        "invalid": len(plan.invalid),
        "duplicates": plan.duplicates,
        "skipped": plan.skipped_count,
        "rejected": len(plan.rejected),
    }


def _weighted(plan: Plan) -> list[tuple[str, int, int]]:
    """The plan's messages counted per number prefix, for pricing."""
    if plan.groups is None:
        weighted = weigh(plan.to_send, plan.segments)
        if plan.lists is not None:
            weighted += weigh_counted(plan.lists.prefixes, plan.segments)
        return weighted
    to_send = plan.to_send
    weighted = []
    for group in plan.groups:
        numbers = [to_send[position] for position in group.positions]
        weighted += weigh(numbers, group.cost.segments)
    return weighted


def _rates(settings: Settings, kind: str, senders: set[str]) -> tuple[float, dict[str, float]]:
    """The account's rate and each sender's own, as a reservation would use them now."""
    from shared.limits import account_mps_configured, sender_mps_configured

    try:
        own = {sender: limits_in_force(settings, kind, sender) for sender in senders}
        account = next(iter(own.values()))[0] if own else account_mps_configured(settings, kind)
        return account, {sender: limits[1] for sender, limits in own.items()}
    except redis.RedisError:
        account = account_mps_configured(settings, kind)
        return account, {s: sender_mps_configured(settings, kind, s) for s in senders}


def quote_plan(plan: Plan, settings: Settings) -> dict:
    """The quote of a validated plan: cost per country, segments, duration, quiet hours."""
    now = models.utcnow()
    start = (plan.send_at - now).total_seconds() if plan.send_at else 0.0
    waiting, first_release = 0, None
    if plan.groups is None:
        loads = [Load(start, plan.sender, plan.accepted)]
        encodings = {plan.encoding} if plan.encoding else set()
        ucs2 = ucs2_characters(plan.text) if plan.encoding == "UCS-2" and plan.text else []
        total = plan.segments * plan.accepted
        longest = plan.segments if plan.accepted else 0
    else:
        loads = []
        for group in plan.groups:
            offset = start
            if group.hold_until is not None:
                offset = max(offset, (group.hold_until - now).total_seconds())
                waiting += len(group.positions)
                if first_release is None or group.hold_until < first_release:
                    first_release = group.hold_until
            loads.append(Load(offset, group.sender, len(group.positions)))
        messages = plan.messages
        encodings, ucs2 = messages.encodings, messages.ucs2_characters
        total, longest = messages.segments_total, messages.segments_longest
    account, own = _rates(settings, plan.kind, {load.sender for load in loads})
    return build_quote(
        counts=intake_counts(plan),
        kind=plan.kind,
        encodings=encodings,
        ucs2_characters=ucs2,
        segments_total=total,
        segments_longest=longest,
        weighted=_weighted(plan),
        price_table=getattr(settings, "price_table", None),
        duration=duration_seconds(loads, account, own),
        quiet_hours=quiet_summary(plan.quiet_hours, waiting, first_release),
        dry_run=plan.dry_run,
    )


def check_max_cost(plan: Plan, quote: dict) -> None:
    """A real broadcast whose estimate is over `max_cost` is refused (so is one that cannot
    be estimated: a country missing from the price table)."""
    if plan.max_cost is None:
        return
    cost = quote["cost"]
    if cost["unpriced"]:
        raise ApiError(
            400,
            "over_max_cost",
            f"max_cost: the cost cannot be estimated: no price for {', '.join(cost['unpriced'])} "
            "in the price table",
            {"quote": quote},
        )
    if Decimal(cost["total"]) > plan.max_cost:
        raise ApiError(
            400,
            "over_max_cost",
            f"max_cost: the estimated cost {cost['total']} {cost['currency']} exceeds "
            f"max_cost {plan.max_cost}",
            {"quote": quote},
        )


# Batches whose tasks intake publishes itself. The rest of a broadcast this large is not
# due for minutes (a thousand numbers a batch at the account's rate), and the reconciler
# enqueues them in its next pass: publishing 1,000 tasks was 2.6 s of a 1M-contact 202.
ENQUEUED_AT_INTAKE = 100


def write_broadcast(
    session: Session,
    plan: Plan,
    settings: Settings,
    api_key_id: str,
    idempotency_key: str | None,
    request_hash: str | None,
) -> tuple[uuid.UUID, list[int]]:
    """Broadcast, batches and recipients in the caller's transaction; returns its id and
    the batch ids to enqueue after commit (not those quiet hours hold, and at most
    ENQUEUED_AT_INTAKE). The 202 body is the broadcast as read back in the same transaction
    (api/broadcast_body.py), so it is the body GET answers."""
    broadcast_id = uuid.uuid4()
    size = settings.batch_size_for(plan.kind)
    now = utcnow()
    batches = _batch_rows(plan, size, broadcast_id, now)
    if not batches:
        status = BroadcastStatus.COMPLETED
    elif plan.send_at:
        status = BroadcastStatus.SCHEDULED
    else:
        status = BroadcastStatus.QUEUED
    session.execute(
        insert(Broadcast).values(
            id=broadcast_id,
            kind=plan.kind,
            sender=plan.sender,
            text=plan.text,
            media=plan.media,
            encoding=plan.encoding,
            segments=plan.segments,
            status=status,
            counts=intake_counts(plan),
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            # Until the 202 body replaces it: the invalid numbers, which only intake knows.
            intake_response={"invalid": plan.invalid[:INVALID_SHOWN]},
            callback_url=plan.callback_url,
            scheduled_at=plan.send_at,
            priority=plan.priority,
            created_at=now,
            updated_at=now,
            finished_at=None if batches else now,
            name=plan.name,
            template_id=plan.template_id,
            list_ids=plan.list_ids,
            senders=plan.senders,
            quiet_hours=plan.quiet_hours,
            quote=plan.quote,
        )
    )
    batch_ids: list[int] = []
    if batches:
        session.execute(insert(Batch), batches)
        batch_ids = list(
            session.scalars(
                select(Batch.id).where(Batch.broadcast_id == broadcast_id).order_by(Batch.seq)
            )
        )
    if plan.groups is None:
        rows = [
            (batch_ids[index // size], phone, RecipientStatus.PENDING, None)
            for index, phone in enumerate(plan.to_send)
        ]
    else:
        batch_of = _batch_of_positions(plan, size, batch_ids)
        rows = [
            (batch_of[index], phone, RecipientStatus.PENDING, None)
            for index, phone in enumerate(plan.to_send)
            if batch_of[index] is not None
        ]
    rows += [(None, phone, RecipientStatus.SKIPPED, "opted out") for phone in plan.skipped]
    rows += [(None, phone, RecipientStatus.REJECTED, REJECTED_REASON) for phone in plan.rejected]
    _insert_recipients(session, broadcast_id, rows)
    if plan.lists is not None:
        # The lists' contacts go after the request's own numbers, in the same batches.
        list_audience.write_recipients(
            session, plan.lists, broadcast_id, batch_ids, len(plan.to_send), size
        )
    if plan.messages is not None and plan.messages.remember:
        remember_senders(session, plan.messages.remember, now)
    return broadcast_id, [
        batch_id
        for batch_id, row in zip(batch_ids, batches, strict=True)
        if row["hold_until"] is None and row["seq"] < ENQUEUED_AT_INTAKE
    ]


def _chunks(plan: Plan, size: int) -> Iterator[tuple[Group | None, list[int] | range]]:
    """Each batch's group and recipient positions, in seq order."""
    if plan.groups is None:
        # Contacts resolved in SQL (plan.lists) take the positions after plan.to_send.
        for start in range(0, plan.accepted, size):
            yield None, range(start, min(start + size, plan.accepted))
        return
    for group in plan.groups:
        for start in range(0, len(group.positions), size):
            yield group, group.positions[start : start + size]


def _batch_rows(plan: Plan, size: int, broadcast_id: uuid.UUID, now: datetime) -> list[dict]:
    rows = []
    for seq, (group, positions) in enumerate(_chunks(plan, size)):
        row = {
            "broadcast_id": broadcast_id,
            "seq": seq,
            "size": len(positions),
            "status": BatchStatus.PENDING,
            "attempts": 0,
            # Enqueued right after commit (NULL if the broker refuses); a scheduled
            # broadcast's batches wait for the reconciler to start it, and so do batches
            # held by quiet hours (released when hold_until comes) and those after the
            # first ENQUEUED_AT_INTAKE (enqueued by the next reconcile pass).
            "enqueued_at": None if plan.send_at or seq >= ENQUEUED_AT_INTAKE else now,
            "created_at": now,
            "updated_at": now,
            "sender": None,
            "text": None,
            "encoding": None,
            "segments": None,
            "zone": None,
            "hold_until": None,
        }
        if group is not None:
            # NULL where the batch says what the broadcast says: the worker falls back.
            row["sender"] = group.sender if group.sender != plan.sender else None
            row["text"] = group.text if group.text != plan.text else None
            row["encoding"] = group.cost.encoding if group.cost.encoding != plan.encoding else None
            row["segments"] = group.cost.segments if group.cost.segments != plan.segments else None
            row["zone"] = group.zone
            row["hold_until"] = group.hold_until
            if group.hold_until is not None:
                row["enqueued_at"] = None
        rows.append(row)
    return rows


def _batch_of_positions(plan: Plan, size: int, batch_ids: list[int]) -> list[int | None]:
    batch_of: list[int | None] = [None] * len(plan.to_send)
    for batch_id, (_group, positions) in zip(batch_ids, _chunks(plan, size), strict=True):
        for position in positions:
            batch_of[position] = batch_id
    return batch_of


def _insert_recipients(session: Session, broadcast_id: uuid.UUID, rows: list[tuple]) -> None:
    if is_postgres(session):
        # COPY is several times faster than multi-row INSERT for 100k rows, and runs on
        # the session's own connection, so it is part of the same transaction.
        buffer = io.StringIO()
        bid = str(broadcast_id)
        for batch_id, phone, status, reason in rows:
            batch = NULL if batch_id is None else batch_id
            buffer.write(f"{bid}\t{batch}\t{phone}\t{status}\t{reason or NULL}\n")
        buffer.seek(0)
        cursor = session.connection().connection.dbapi_connection.cursor()
        cursor.copy_expert(
            "COPY recipients (broadcast_id, batch_id, phone, status, error_reason) FROM STDIN",
            buffer,
        )
        return
    session.execute(
        insert(Recipient.__table__),
        [
            {
                "broadcast_id": broadcast_id,
                "batch_id": batch_id,
                "phone": phone,
                "status": status,
                "error_reason": reason,
            }
            for batch_id, phone, status, reason in rows
        ],
    )
