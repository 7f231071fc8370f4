"""Carrier rules applied at intake: who may be texted from an alphanumeric sender, and the
opt-out wording a marketing text may carry."""

from __future__ import annotations

import re

import phonenumbers

ALPHANUMERIC_RULE = (
    "US and Canadian carriers do not deliver from alphanumeric sender IDs: texts to +1 "
    "numbers need a phone number, short code or toll-free sender (or configure "
    "NUMERIC_FALLBACK_SENDER)"
)
_NUMERIC_SENDER = re.compile(r"\+[1-9]\d{6,14}")


def is_alphanumeric(sender: str) -> bool:
    return not _NUMERIC_SENDER.fullmatch(sender)


_NANP_REGIONS: dict[str, str | None] = {}  # "+1415" -> "US"; a few hundred area codes
# The US territories in the North American plan: their carriers work under the US rules
# (10DLC, toll-free, short codes; no alphanumeric sender IDs), so they count as the US here.
US_TERRITORIES = ("PR", "VI", "GU", "AS", "MP")
# None: an area code phonenumbers cannot place (new or unassigned). Refusing a sender or an
# MMS recipient wrongly is a 400 the caller can act on; sending wrongly is a silent loss.
_US_CARRIER_RULES = frozenset({"US", "CA", *US_TERRITORIES, None})


def _nanp_region(number: str) -> str | None:
    area = number[:5]
    if area not in _NANP_REGIONS:
        _NANP_REGIONS[area] = phonenumbers.region_code_for_number(phonenumbers.parse(number))
    return _NANP_REGIONS[area]


def in_us_or_canada(number: str) -> bool:
    """Whether an E.164 number is under US or Canadian carrier rules: the US with its
    territories (Puerto Rico, the US Virgin Islands, Guam, American Samoa, the Northern
    Mariana Islands) and Canada, not the +1 Caribbean countries. The area code decides the
    country in the North American plan, so one lookup per area code serves every number in
    it. The alphanumeric-sender rule and MMS's reach both use it."""
    if not number.startswith("+1"):
        return False
    return _nanp_region(number) in _US_CARRIER_RULES


def opt_out_suffix(opt_out_text: str) -> str:
    """What `append_opt_out_text` adds to every text (a space, then the configured words)."""
    return " " + opt_out_text.strip()
