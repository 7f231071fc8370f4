"""SMS encoding (GSM-7 or UCS-2) and the segments Plivo will bill for a text."""

from __future__ import annotations

import math
from dataclasses import dataclass

# GSM 03.38 basic character set (the default alphabet as Plivo and carriers use it).
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each costs an escape septet plus itself, so it counts double.
GSM_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM_MAX_CHARS = 1600
UCS2_MAX_CHARS = 737


@dataclass(frozen=True)
class TextCost:
    encoding: str  # "GSM" or "UCS-2"
    length: int  # septets for GSM, UTF-16 code units for UCS-2
    segments: int


def measure(text: str) -> TextCost:
    """Encoding, billable length and segment count of one message."""
    if all(ch in GSM_BASIC or ch in GSM_EXTENSION for ch in text):
        length = len(text) + sum(1 for ch in text if ch in GSM_EXTENSION)
        single, part = 160, 153
        encoding = "GSM"
    else:
        # Characters beyond the BMP take two UTF-16 units (emoji count double).
        length = len(text.encode("utf-16-le")) // 2
        single, part = 70, 67
        encoding = "UCS-2"
    segments = 1 if length <= single else math.ceil(length / part)
    return TextCost(encoding=encoding, length=length, segments=segments)


def too_long(cost: TextCost) -> str | None:
    """The rule a text breaks by its length, or None."""
    limit = GSM_MAX_CHARS if cost.encoding == "GSM" else UCS2_MAX_CHARS
    if cost.length > limit:
        return f"{cost.length} characters exceed the {cost.encoding} maximum of {limit}"
    return None


def ucs2_characters(text: str) -> list[str]:
    """The characters of `text` outside GSM-7, in order of first use: the ones that made it
    UCS-2 (one curly quote halves what a segment holds)."""
    return list(dict.fromkeys(ch for ch in text if ch not in GSM_BASIC and ch not in GSM_EXTENSION))
