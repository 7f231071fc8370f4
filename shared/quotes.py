"""The quote of a broadcast before it is sent (`dry_run`), kept on real ones as `quote`:
per-country cost from the price table, encoding and segments, and how long it will take at
the limits in force, quiet-hours waits included."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter

from shared.pricing import load_price_table, money, price_by_prefix

# A country code (at most 3 digits) and 4 national digits: what tells countries that share
# a code apart (shared/pricing.py), so every number under one such prefix is in one country.
# Contact lists are counted per prefix in SQL (api/list_audience.py) with the same length.
PREFIX_LENGTH = len("+") + 3 + 4
_CUT = itemgetter(slice(0, PREFIX_LENGTH))

ENCODING_NAMES = {"GSM": "GSM-7", "UCS-2": "UCS-2"}


@dataclass(frozen=True)
class Load:
    """Messages one sender may start sending `offset` seconds from now."""

    offset: float
    sender: str
    messages: int


def encoding_name(encodings: set[str]) -> str | None:
    """GSM-7, UCS-2, or mixed when personalised texts came out in both (None: MMS)."""
    if not encodings:
        return None
    if len(encodings) > 1:
        return "mixed"
    return ENCODING_NAMES.get(next(iter(encodings)), next(iter(encodings)))


def duration_seconds(
    loads: Sequence[Load], account_mps: float, sender_mps: dict[str, float]
) -> float:
    """Seconds until the last message is handed to Plivo: every load from its offset, all of
    them through the account's rate (0 = unlimited) and each through its sender's."""
    finish = 0.0
    account_free = 0.0
    sender_free: dict[str, float] = {}
    for load in sorted(loads, key=lambda item: item.offset):
        own = sender_mps.get(load.sender, 0.0)
        account_time = load.messages / account_mps if account_mps > 0 else 0.0
        own_time = load.messages / own if own > 0 else 0.0
        start = max(load.offset, account_free, sender_free.get(load.sender, 0.0))
        # The account timeline advances by the load's share; the sender's may be slower.
        account_free = start + account_time
        sender_free[load.sender] = start + max(account_time, own_time)
        finish = max(finish, sender_free[load.sender])
    return round(finish, 1)


def quiet_summary(window: dict | None, waiting: int, first_release: datetime | None) -> dict | None:
    if window is None:
        return None
    return {
        **window,
        "waiting": waiting,
        "first_release": first_release.isoformat() if first_release else None,
    }


def weigh(numbers: Sequence[str], segments: int) -> list[tuple[str, int, int]]:
    """Numbers that each get `segments`, as (one number, recipients, segments) per prefix:
    counted in C (map, Counter), since a quote of 100k numbers must not slow intake down."""
    prefixes = list(map(_CUT, numbers))
    numbers_by_prefix = dict(zip(prefixes, numbers, strict=True))
    return [
        (numbers_by_prefix[prefix], count, count * segments)
        for prefix, count in Counter(prefixes).items()
    ]


def weigh_counted(prefixes: Iterable[tuple[str, int]], segments: int) -> list[tuple[str, int, int]]:
    """`weigh` for numbers already counted per prefix, as (one number, recipients)."""
    return [(number, count, count * segments) for number, count in prefixes]


def build_quote(
    *,
    counts: dict[str, int],
    kind: str,
    encodings: set[str],
    ucs2_characters: list[str],
    segments_total: int,
    segments_longest: int,
    weighted: Iterable[tuple[str, int, int]],
    price_table: str | None,
    duration: float,
    quiet_hours: dict | None,
    dry_run: bool = True,
) -> dict:
    """The quote as POST /v1/broadcasts with `dry_run` answers it (`dry_run` false: the one
    kept on a real broadcast). `weighted`: the messages to be sent as `weigh` counts them;
    money is decimal strings."""
    table = load_price_table(price_table)
    countries, total, unpriced = price_by_prefix(weighted, kind, table)
    return {
        "dry_run": dry_run,
        "counts": counts,
        "encoding": encoding_name(encodings),
        "ucs2_characters": ucs2_characters,
        "segments": {"total": segments_total, "longest": segments_longest},
        "countries": countries,
        "cost": {
            "total": money(total),
            "currency": table.currency,
            "price_table": str(table.date),
            "unpriced": unpriced,
        },
        "duration_seconds": duration,
        "quiet_hours": quiet_hours,
    }
