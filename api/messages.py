"""What each recipient of a campaign gets (its text, its sender, when quiet hours let it go)
and the batches that follow from it: one Plivo call has one source and one text, and never
mixes recipients who may be texted now with ones who must wait."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from api.errors import ApiError
from shared.compliance import ALPHANUMERIC_RULE, in_us_or_canada, is_alphanumeric
from shared.encoding import TextCost, measure, too_long, ucs2_characters
from shared.rendering import MissingField, Template
from shared.senders import choose_senders

INVALID_SHOWN = 20


@dataclass
class Group:
    """Recipients (positions in the audience) that share one sender, text and release."""

    sender: str
    text: str
    cost: TextCost
    zone: str | None
    hold_until: datetime | None
    positions: list[int] = field(default_factory=list)


@dataclass
class Messages:
    """The audience's messages, grouped; positions dropped as invalid are listed apart."""

    groups: list[Group]
    dropped: list[int]
    invalid: list[dict]
    remember: dict[str, str]
    segments_total: int
    segments_longest: int
    encodings: set[str]
    ucs2_characters: list[str]


@dataclass
class Audience:
    """What `plan_messages` needs to know about each recipient."""

    numbers: Sequence[str]
    # Per position: the recipient's own fields (None: none) and how to name it in an error.
    fields: Callable[[int], Mapping[str, str] | None]
    describe: Callable[[int], dict]


@dataclass
class Rules:
    template: Template
    defaults: Mapping[str, str]
    suffix: str
    sender: str
    pool: Sequence[str] | None
    fallback: str
    zone_of: Callable[[str], str] | None
    release: Callable[[str], datetime | None] | None
    skip_invalid: bool


def plan_messages(session: Session, audience: Audience, rules: Rules) -> Messages:
    """Render, choose senders, apply the carrier rule and quiet hours, and group. Raises a
    400 naming the recipients (index, field) unless `skip_invalid` drops them."""
    numbers = audience.numbers
    remember: dict[str, str] = {}
    if rules.pool:
        senders, remember = choose_senders(session, numbers, rules.pool)
    else:
        senders = None
    costs: dict[str, TextCost] = {}
    releases: dict[str, datetime | None] = {}
    groups: dict[tuple, Group] = {}
    problems: list[dict] = []
    dropped: list[int] = []
    alphanumeric_to_nanp = 0
    template, defaults, suffix = rules.template, rules.defaults, rules.suffix
    for position, number in enumerate(numbers):
        if template.personalised:
            own = audience.fields(position)
            try:
                text = template.render({**defaults, **own} if own else defaults) + suffix
            except MissingField as missing:
                problems.append(
                    audience.describe(position)
                    | {"reason": f"no value for {{{missing.field}}} (fields.{missing.field})"}
                )
                dropped.append(position)
                continue
        else:
            text = template.parts[0] + suffix
        cost = costs.get(text)
        if cost is None:
            cost = costs[text] = measure(text)
        if cost.segments > 1 and (problem := too_long(cost)):
            problems.append(audience.describe(position) | {"reason": f"text: {problem}"})
            dropped.append(position)
            continue
        sender = senders[position] if senders is not None else rules.sender
        if number.startswith("+1") and is_alphanumeric(sender) and in_us_or_canada(number):
            if not rules.fallback:
                alphanumeric_to_nanp += 1
                continue
            sender = rules.fallback
            remember.pop(number, None)
        zone = hold = None
        if rules.zone_of is not None:
            zone = rules.zone_of(number)
            if zone in releases:
                hold = releases[zone]
            else:
                hold = releases[zone] = rules.release(zone)
        key = (sender, text, zone, hold)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(sender, text, cost, zone, hold)
        group.positions.append(position)
    if alphanumeric_to_nanp:
        raise ApiError(
            400,
            "invalid_request",
            f"sender: {alphanumeric_to_nanp} recipient(s) are US or Canadian numbers: "
            f"{ALPHANUMERIC_RULE}",
        )
    if problems and not rules.skip_invalid:
        first = problems[0]
        if first.get("index") is not None:
            where = f"recipients.{first['index']}"
        else:
            where = f"list_ids: list {first.get('list_id')}, contact {first['value']}"
        raise ApiError(
            400,
            "invalid_recipients",
            f"{where}: {first['reason']}; {len(problems)} recipient(s) cannot get this "
            "text, or set skip_invalid to send to the rest",
            {"invalid": problems[:INVALID_SHOWN], "invalid_total": len(problems)},
        )
    encodings = {group.cost.encoding for group in groups.values()}
    characters: dict[str, None] = {}
    for text, cost in costs.items():
        if cost.encoding == "UCS-2":
            characters.update(dict.fromkeys(ucs2_characters(text)))
    total = sum(group.cost.segments * len(group.positions) for group in groups.values())
    longest = max((group.cost.segments for group in groups.values()), default=0)
    return Messages(
        groups=list(groups.values()),
        dropped=dropped,
        invalid=problems,
        remember=remember,
        segments_total=total,
        segments_longest=longest,
        encodings=encodings,
        ucs2_characters=list(characters),
    )
