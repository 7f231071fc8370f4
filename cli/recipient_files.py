"""Recipients from a file: a CSV with a phone column (or the numbers in its first column), or
plain text with one number per line. Numbers go to the API as written: it alone decides
what is valid, so the CLI and the API can never disagree about a number."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from cli.client import CliError

# Header cells that name the number column, most specific first.
_PHONE_WORDS = ("phone", "mobile", "msisdn")
_PHONE_NAMES = ("number", "cell", "to", "recipient", "recipients", "destination", "dst")
# Enough lines for csv.Sniffer to see the delimiter without reading a huge file twice.
SNIFF_CHARS = 64 * 1024


def read_text(path: str) -> str:
    """The UTF-8 text of the file at `path` (`-` is standard input)."""
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        # utf-8-sig: spreadsheets often save CSV with a byte-order mark before the header.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CliError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None


def read_recipients(path: str) -> list[str]:
    """The numbers in the file at `path` (`-` is standard input)."""
    return parse_recipients(read_text(path))


def _phone_column(header: list[str]) -> int | None:
    names = [cell.strip().lower() for cell in header]
    for index, name in enumerate(names):
        if any(word in name for word in _PHONE_WORDS):
            return index
    for index, name in enumerate(names):
        if name in _PHONE_NAMES:
            return index
    return None


def parse_recipients(text: str) -> list[str]:
    """Numbers from CSV or one-per-line text; a header row is recognised and dropped."""
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
            text[:SNIFF_CHARS], delimiters=",;\t"
        )
    except csv.Error:
        # No delimiter at all: a plain list, one number per line.
        dialect = csv.excel
    rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(c.strip() for c in row)]
    if not rows:
        return []
    column = _phone_column(rows[0])
    if column is not None:
        rows = rows[1:]
    else:
        column = 0
        if not any(ch.isdigit() for ch in rows[0][0]):
            rows = rows[1:]  # a header such as "name,tel": no digits, so not a number
    return [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
