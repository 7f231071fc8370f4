"""What a broadcast will cost: a dated per-country price table and the quote built from it.

The table is a CSV (`shared/data/prices.csv` by default, `PRICE_TABLE` to replace it):
`# key: value` comment lines carry its `date` (required) and `currency` (default USD),
then a header `country,sms,mms` and one row per ISO 3166 country; an empty cell means no
price (the country is reported as unpriced, never guessed). Money is Decimal throughout
and leaves as strings.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneNumber

DEFAULT_PRICE_TABLE = Path(__file__).resolve().parent / "data" / "prices.csv"
UNKNOWN_COUNTRY = "ZZ"
KINDS = ("sms", "mms")
_META = re.compile(r"^#\s*([a-z_]+)\s*:\s*(.*?)\s*$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Prices are shown to the hundred-thousandth (Plivo's own rate precision).
_MONEY_PLACES = Decimal("0.00001")


class PriceTableError(ValueError):
    """The price table cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class PriceTable:
    date: str  # ISO date the prices were read
    currency: str
    source: str  # the file, for messages
    prices: dict[str, dict[str, Decimal]] = field(default_factory=dict)

    def price(self, country: str, kind: str) -> Decimal | None:
        """Price of one SMS segment or one MMS to `country`, or None if the table has none."""
        if kind not in KINDS:
            raise ValueError(f"kind must be sms or mms, not {kind!r}")
        return self.prices.get(country, {}).get(kind)


def money(value: Decimal) -> str:
    """A sum of money as a string, at least to the hundred-thousandth, never rounded up."""
    if value.as_tuple().exponent >= -5:  # type: ignore[operator]
        return str(value.quantize(_MONEY_PLACES))
    return str(value)


def _parse(text: str, source: str) -> PriceTable:
    meta: dict[str, str] = {}
    rows: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            found = _META.match(stripped)
            if found and found.group(1) in ("date", "currency"):
                meta[found.group(1)] = found.group(2)
            continue
        rows.append((number, line))
    if "date" not in meta:
        raise PriceTableError(f"{source}: needs a '# date: YYYY-MM-DD' line")
    try:
        table_date = date.fromisoformat(meta["date"]).isoformat()
    except ValueError:
        raise PriceTableError(f"{source}: date {meta['date']!r} is not YYYY-MM-DD") from None
    currency = meta.get("currency", "USD").upper()
    if not _CURRENCY.match(currency):
        raise PriceTableError(f"{source}: currency {currency!r} is not an ISO 4217 code")
    if not rows:
        raise PriceTableError(f"{source}: no header row (country,sms,mms)")
    header_line, header = rows[0]
    columns = [name.strip().lower() for name in next(csv.reader([header]))]
    if "country" not in columns or not set(KINDS) & set(columns):
        raise PriceTableError(
            f"{source} line {header_line}: header must name country and sms and/or mms, "
            f"got {header.strip()!r}"
        )
    prices: dict[str, dict[str, Decimal]] = {}
    for line_number, line in rows[1:]:
        cells = next(csv.reader([line]))
        if len(cells) != len(columns):
            raise PriceTableError(
                f"{source} line {line_number}: {len(cells)} cells, the header has {len(columns)}"
            )
        row = dict(zip(columns, (cell.strip() for cell in cells), strict=True))
        country = row["country"].upper()
        if country not in phonenumbers.SUPPORTED_REGIONS:
            raise PriceTableError(
                f"{source} line {line_number}: country {row['country']!r} is not an ISO "
                "3166 code phonenumbers knows (such as US or GB)"
            )
        if country in prices:
            raise PriceTableError(f"{source} line {line_number}: {country} is listed twice")
        prices[country] = {}
        for kind in KINDS:
            cell = row.get(kind, "")
            if not cell:
                continue
            try:
                value = Decimal(cell)
            except InvalidOperation:
                value = Decimal("NaN")
            if not value.is_finite() or value < 0:
                raise PriceTableError(
                    f"{source} line {line_number}: {kind} price {cell!r} is not a "
                    "non-negative decimal such as 0.00790"
                )
            prices[country][kind] = value
    return PriceTable(date=table_date, currency=currency, source=source, prices=prices)


@lru_cache(maxsize=8)
def _load(path: str, modified: float) -> PriceTable:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as error:
        raise PriceTableError(f"{path}: cannot be read ({error.strerror})") from None
    return _parse(text, path)


def load_price_table(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """The table at `path` (None → the shipped default), parsed once per file version."""
    resolved = str(path or DEFAULT_PRICE_TABLE)
    try:
        modified = os.stat(resolved).st_mtime
    except OSError as error:
        raise PriceTableError(f"{resolved}: cannot be read ({error.strerror})") from None
    return _load(resolved, modified)


def parse_price_table(text: str, source: str = "price table") -> PriceTable:
    """A table from CSV text (tests, uploads); same rules as a file."""
    return _parse(text, source)


_CODES = {str(code): code for code in COUNTRY_CODE_TO_REGION_CODE}


# Shared country codes are split between regions by leading national digits: NANPA by
# area code and exchange (NPA-NXX, the unit NANPA assigns), +44 by ranges such as Jersey's
# 7797, +61 by Christmas Island's 89164. Six digits tell every region apart in a sample of
# 114,000 valid numbers of every shared code and number type (five still confused +61 8919x).
_REGION_DEPTH = 6
# prefix → region, only for answers phonenumbers gave from a valid number: an invalid first
# sample must not decide for its whole prefix.
_REGION_BY_PREFIX: dict[str, str] = {}
# NANPA has about 200,000 area code + exchange pairs in use: room for all, and a bound.
_REGION_CACHE_MAX = 500_000


def country_of(number: str) -> str:
    """ISO region of an E.164 number (US, CA, GB, …), "ZZ" when phonenumbers cannot say.

    A country code used by one country answers at once. Shared codes (+1 NANPA, +7, +44,
    +61, …) are told apart by phonenumbers from the leading national digits (area codes,
    territory ranges such as Jersey's 7797): the answer is cached per country code and six
    national digits, computed from the first valid number seen with that prefix.
    """
    digits = number[1:] if number.startswith("+") else number
    code = _CODES.get(digits[:1]) or _CODES.get(digits[:2]) or _CODES.get(digits[:3])
    if code is None:
        return UNKNOWN_COUNTRY
    regions = COUNTRY_CODE_TO_REGION_CODE[code]
    if len(regions) == 1:
        return regions[0] if regions[0] != "001" else UNKNOWN_COUNTRY
    national = digits[len(str(code)) :]
    if not national.isdigit():
        return UNKNOWN_COUNTRY
    key = digits[: len(str(code)) + _REGION_DEPTH]
    region = _REGION_BY_PREFIX.get(key)
    if region is None:
        region = phonenumbers.region_code_for_number(
            PhoneNumber(country_code=code, national_number=int(national))
        )
        if region:
            if len(_REGION_BY_PREFIX) >= _REGION_CACHE_MAX:
                _REGION_BY_PREFIX.clear()  # bounded memory; refilled from the next numbers
            _REGION_BY_PREFIX[key] = region
    return region or UNKNOWN_COUNTRY


def price_countries(
    messages: Iterable[tuple[str, int]], kind: str, table: PriceTable
) -> tuple[list[dict[str, object]], Decimal, list[str]]:
    """Per-country recipients, segments and cost of `(number, segments)` pairs."""
    return price_by_prefix(((number, 1, parts) for number, parts in messages), kind, table)


def price_by_prefix(
    weighted: Iterable[tuple[str, int, int]], kind: str, table: PriceTable
) -> tuple[list[dict[str, object]], Decimal, list[str]]:
    """Per-country recipients, segments and cost from (one number, recipients, segments)
    per number prefix (shared/quotes.py counts them so), so phonenumbers is asked a few
    times, not once per number.

    Returns the countries (most recipients first; `price`/`cost` None where the table has
    no price), the total cost of the priced ones, and the unpriced countries.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be sms or mms, not {kind!r}")
    recipients: dict[str, int] = {}
    segments: dict[str, int] = {}
    for number, count, parts in weighted:
        country = country_of(number)
        recipients[country] = recipients.get(country, 0) + count
        segments[country] = segments.get(country, 0) + parts
    countries: list[dict[str, object]] = []
    total = Decimal(0)
    unpriced: list[str] = []
    for country in sorted(recipients, key=lambda name: (-recipients[name], name)):
        price = table.price(country, kind)
        cost = None if price is None else price * segments[country]
        if cost is None:
            unpriced.append(country)
        else:
            total += cost
        countries.append(
            {
                "country": country,
                "recipients": recipients[country],
                "segments": segments[country],
                "price": None if price is None else money(price),
                "cost": None if cost is None else money(cost),
            }
        )
    return countries, total, unpriced
