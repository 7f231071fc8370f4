"""Plivo's Message Get and Message List: message detail records and the list's filters.

A record is rendered from the Run its message came in, at the moment it is asked for: its
state is what Plivo would say then, whether or not any status callback got through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlencode

from sandbox.delivery import MCC, MNC, RATES, Run

MAX_LIST_LIMIT = 20
# Without a message_time filter Plivo lists the last 24 hours; it keeps 90 days in all.
DEFAULT_LIST_SPAN = 24 * 3600 * 1_000_000
RETENTION = 90 * 24 * 3600 * 1_000_000
DIRECTIONS = ("inbound", "outbound")
# What the SDK lets through, and `received` of inbound records, which the list also knows.
LIST_STATES = (
    "queued",
    "sent",
    "failed",
    "delivered",
    "undelivered",
    "rejected",
    "read",
    "received",
)
LIST_TYPES = ("sms", "mms", "whatsapp")
# Plivo reports a delivered message's error code as "000"; one not final yet has none.
NO_ERROR = "000"
# Plivo's filter format: YYYY-MM-DD HH:MM[:SS[.ffffff]], taken as UTC.
_FILTER_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?", re.ASCII
)
_WHOLE = re.compile(r"-?\d+", re.ASCII)
_TIME_FILTERS = (
    "message_time",
    "message_time__gt",
    "message_time__gte",
    "message_time__lt",
    "message_time__lte",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidQuery(ValueError):
    """A list request Plivo answers with 400."""


def micros(epoch: float) -> int:
    """Whole microseconds: both the shown message_time and the filters compare at this
    precision, so a time read from a record and sent back as a filter matches that record."""
    return round(epoch * 1_000_000)


def message_time(at_micros: int, offset_minutes: int = 0) -> str:
    """'2026-12-01 15:04:05.123456+00:00', as Plivo's records show it (with an offset)."""
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = (_EPOCH + timedelta(microseconds=at_micros)).astimezone(zone)
    return moment.isoformat(sep=" ", timespec="microseconds")


def error_code(state: str, code: int | None) -> str:
    if code is not None:
        return str(code)
    return NO_ERROR if state == "delivered" else ""


def message_record(run: Run, index: int, now: float, auth_id: str, offset_minutes: int) -> dict:
    """One message detail record, without api_id (a Get adds it; list objects have none)."""
    request = run.request
    state, code = run.status(index, now)
    units = run.units()
    rate = RATES[request.type]
    # A message Plivo never handed to a carrier costs nothing.
    billed = state in ("sent", "delivered", "undelivered")
    message_uuid = run.uuids[index]
    return {
        "error_code": error_code(state, code),
        "from_number": (request.src or "").removeprefix("+"),
        "mcc": MCC,
        "mnc": MNC,
        "message_direction": "outbound",
        "message_state": state,
        "message_time": message_time(micros(run.accepted), offset_minutes),
        "message_type": request.type,
        "message_uuid": message_uuid,
        "powerpack_id": request.powerpack_uuid or "",
        "resource_uri": f"/v1/Account/{auth_id}/Message/{message_uuid}/",
        "to_number": request.destinations[index],
        "total_amount": f"{float(rate) * units if billed else 0:.5f}",
        "total_rate": rate,
        "units": units,
    }


@dataclass(frozen=True)
class ListQuery:
    """The filters of one list request. Times are inclusive bounds in UTC microseconds."""

    direction: str | None
    from_number: str | None
    to_number: str | None
    state: str | None
    type: str | None
    error_code: str | None
    earliest: int
    latest: int | None
    limit: int
    offset: int
    # The filters as the client sent them, carried into meta.next and meta.previous.
    echoed: tuple[tuple[str, str], ...]

    def run_matches(self, run: Run) -> bool:
        request = run.request
        if self.direction == "inbound":
            return False  # the sandbox records no inbound messages
        if self.type is not None and request.type != self.type:
            return False
        # Compared as Plivo stores it (digits, no '+'): a '+' in the filter matches nothing.
        return self.from_number is None or (request.src or "").removeprefix("+") == (
            self.from_number
        )

    def matching_indices(self, run: Run, now: float) -> Sequence[int]:
        """The run's matching messages, newest first (the last of a request counts as newer)."""
        indices: Sequence[int] = range(len(run.uuids) - 1, -1, -1)
        if self.to_number is not None:
            # A request's destinations are deduplicated: a number is in it once at most.
            try:
                indices = [run.request.destinations.index(self.to_number)]
            except ValueError:
                return []
        if self.state is None and self.error_code is None:
            return indices
        matched = []
        for index in indices:
            state, code = run.status(index, now)
            if self.state is not None and state != self.state:
                continue
            if self.error_code is not None and error_code(state, code) != self.error_code:
                continue
            matched.append(index)
        return matched

    def page_uri(self, auth_id: str, offset: int) -> str:
        query = urlencode([*self.echoed, ("limit", self.limit), ("offset", offset)])
        return f"/v1/Account/{auth_id}/Message/?{query}"


def parse_list_query(args: Mapping[str, str], now: float) -> ListQuery:
    """The list's arguments as Plivo reads them; InvalidQuery names the first bad one.

    Arguments the sandbox does not model (subaccount, powerpack_id, ...) are ignored.
    """
    limit = _whole(args, "limit", MAX_LIST_LIMIT)
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidQuery(f"limit must be from 1 to {MAX_LIST_LIMIT}, got {limit}")
    offset = _whole(args, "offset", 0)
    if offset < 0:
        raise InvalidQuery(f"offset must be 0 or more, got {offset}")

    direction = _choice(args, "message_direction", DIRECTIONS)
    state = _choice(args, "message_state", LIST_STATES)
    type_ = _choice(args, "message_type", LIST_TYPES)

    now_micros = micros(now)
    earliest, latest = now_micros - RETENTION, None
    given = [name for name in _TIME_FILTERS if args.get(name)]
    if not given:
        earliest = now_micros - DEFAULT_LIST_SPAN
    for name in given:
        at = parse_filter_time(name, args[name])
        if name in ("message_time", "message_time__gte", "message_time__gt"):
            earliest = max(earliest, at + (name == "message_time__gt"))
        if name in ("message_time", "message_time__lte", "message_time__lt"):
            bound = at - (name == "message_time__lt")
            latest = bound if latest is None else min(latest, bound)

    # A werkzeug MultiDict keeps the client's order; items() gives a repeated name's first value.
    echoed = tuple(
        (name, value)
        for name, value in args.items()
        if name not in ("limit", "offset") and value != ""
    )
    return ListQuery(
        direction=direction,
        from_number=args.get("from_number") or None,
        to_number=args.get("to_number") or None,
        state=state,
        type=type_,
        error_code=args.get("error_code") or None,
        earliest=earliest,
        latest=latest,
        limit=limit,
        offset=offset,
        echoed=echoed,
    )


def parse_filter_time(name: str, text: str) -> int:
    """'2026-12-01 15:04[:05[.123]]' (UTC) -> epoch microseconds."""
    match = _FILTER_TIME.fullmatch(text)
    if not match:
        raise InvalidQuery(f"{name} {text!r}: use YYYY-MM-DD HH:MM[:SS[.ffffff]] (UTC)")
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), tzinfo=UTC
        )
    except ValueError as error:
        raise InvalidQuery(f"{name} {text!r}: {error}") from None
    # '.5' is half a second: the digits are the leading ones of the microseconds.
    return (moment - _EPOCH) // timedelta(microseconds=1) + int((fraction or "0").ljust(6, "0"))


def list_page(
    query: ListQuery, runs: Iterable[Run], now: float, auth_id: str, offset_minutes: int
) -> dict:
    """meta and objects of one page; `runs` come newest first, already inside the window."""
    total = 0
    page: list[tuple[Run, int]] = []
    start, stop = query.offset, query.offset + query.limit
    for run in runs:
        if not query.run_matches(run):
            continue
        indices = query.matching_indices(run, now)
        first, total = total, total + len(indices)
        if total > start and first < stop:
            page.extend((run, index) for index in indices[max(0, start - first) : stop - first])
    next_offset = stop if stop < total else None
    previous_offset = max(0, start - query.limit) if start > 0 else None
    return {
        "meta": {
            "limit": query.limit,
            "next": None if next_offset is None else query.page_uri(auth_id, next_offset),
            "offset": query.offset,
            "previous": None
            if previous_offset is None
            else query.page_uri(auth_id, previous_offset),
            "total_count": total,
        },
        "objects": [
            message_record(run, index, now, auth_id, offset_minutes) for run, index in page
        ],
    }


def _whole(args: Mapping[str, str], name: str, default: int) -> int:
    text = args.get(name)
    if text is None or text == "":
        return default
    if not _WHOLE.fullmatch(text):
        raise InvalidQuery(f"{name} must be a whole number, got {text!r}")
    return int(text)


def _choice(args: Mapping[str, str], name: str, allowed: Sequence[str]) -> str | None:
    value = args.get(name) or None
    if value is not None and value not in allowed:
        raise InvalidQuery(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value
