"""Cells of the CSV exports, made safe to open in a spreadsheet (OWASP "CSV injection").

Text that came from outside (Plivo's error codes, an opted-out person's reply, a client's
opt-out reason) is written into files people open in Excel or LibreOffice, which run a cell
starting with `=`, `+`, `-` or `@` as a formula (and strip a leading tab or CR first). Such
a cell gets a leading single quote, which spreadsheets show as text and do not run."""

from __future__ import annotations

import re

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def text_cell(value: object) -> object:
    """`value`, with a leading quote if a spreadsheet would run it as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def phone_cell(value: str) -> str:
    """A phone number as stored: E.164 (`+` and digits only, validated by shared/phone.py)
    is left alone, because a `+` followed by digits is a number to a spreadsheet, not a
    formula, and quoting it would change every row of every export. Anything else (a raw
    `From` Plivo sent that was not a number) is treated as text."""
    return value if _E164.fullmatch(value) else text_cell(value)
