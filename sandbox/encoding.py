"""How many billed parts (Units) a text costs: GSM 03.38 if every character fits, else UCS-2."""

from __future__ import annotations

import math

# The GSM 03.38 default alphabet, minus ESC (0x1b), which only introduces the extension table.
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Each costs two septets: ESC and the character.
GSM_EXTENSION = frozenset("\f^{}\\[~]|€")
GSM_CHARACTERS = GSM_BASIC | GSM_EXTENSION


def message_units(text: str) -> int:
    chars = set(text)
    if chars <= GSM_CHARACTERS:
        length = len(text)
        if chars & GSM_EXTENSION:
            length += sum(text.count(char) for char in chars & GSM_EXTENSION)
        single, per_part = 160, 153
    else:
        # UCS-2 counts 16-bit units: a character outside the BMP (most emoji) takes two.
        length = len(text.encode("utf-16-le")) // 2
        single, per_part = 70, 67
    return 1 if length <= single else math.ceil(length / per_part)
