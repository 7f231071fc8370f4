"""A broadcast's quote (`send --dry-run`) as an operator reads it before pressing send: who
would get it, what forces the dearer encoding, what it costs per country, how long it takes."""

from __future__ import annotations

import unicodedata

from rich.console import Group
from rich.text import Text

from cli.progress import clock
from cli.tables import cell, table


def character(char: str) -> str:
    """`’ (U+2019 RIGHT SINGLE QUOTATION MARK)`: a curly quote and a straight one look alike,
    so the name says which one to replace."""
    name = unicodedata.name(char, "")
    code = " ".join(f"U+{ord(c):04X}" for c in char)
    shown = repr(char)[1:-1] if not char.isprintable() else char
    return f"{shown} ({code}{' ' + name if name else ''})"


def _money(value: object) -> str:
    """Decimal strings exactly as the API gives them (never through a float)."""
    return "-" if value is None else str(value)


def encoding_line(quote: dict) -> str:
    encoding = quote.get("encoding") or "-"
    forcing = quote.get("ucs2_characters") or []
    if forcing:
        names = ", ".join(character(c) for c in forcing)
        return f"{encoding}, forced by {names}"
    return encoding


def render(quote: dict) -> Group:
    """The quote as lines and a per-country table."""
    counts = quote.get("counts") or {}
    segments = quote.get("segments") or {}
    cost = quote.get("cost") or {}
    currency = cost.get("currency") or ""
    lines = [
        "dry run: nothing was saved or sent",
        "recipients  "
        + ", ".join(
            f"{cell(counts.get(name, 0))} {name}"
            for name in ("accepted", "invalid", "duplicates", "skipped", "rejected")
            if name in counts or name == "accepted"
        ),
        f"encoding    {encoding_line(quote)}",
        f"segments    {cell(segments.get('total'))} in all, "
        f"at most {cell(segments.get('longest'))} per message",
        f"cost        {_money(cost.get('total'))} {currency}".rstrip()
        + (f" (price table {cost['price_table']})" if cost.get("price_table") else ""),
    ]
    if cost.get("unpriced"):
        unpriced = ", ".join(map(str, cost["unpriced"]))
        lines.append(f"unpriced    {unpriced} (not in the price table: not in the total)")
    duration = quote.get("duration_seconds")
    if duration is not None:
        lines.append(f"duration    about {clock(duration)} at the current limits")
    quiet = quote.get("quiet_hours")
    if isinstance(quiet, dict):
        line = f"quiet hours {quiet.get('start')}-{quiet.get('end')} in each recipient's time"
        if quiet.get("waiting"):
            line += f"; {cell(quiet['waiting'])} wait"
            if quiet.get("first_release"):
                line += f", the first released at {quiet['first_release']}"
        lines.append(line)
    countries = quote.get("countries") or []
    rows = [
        (
            row.get("country"),
            row.get("recipients"),
            row.get("segments"),
            _money(row.get("price")),
            _money(row.get("cost")),
        )
        for row in countries
    ]
    parts: list[object] = [Text("\n".join(lines))]
    if rows:
        rows.append(("total", counts.get("accepted"), segments.get("total"), "", cost.get("total")))
        parts += [
            Text(""),
            table(
                ["country", "recipients", "segments", "price", f"cost {currency}".strip()],
                rows,
                right=["recipients", "segments", "price", f"cost {currency}".strip()],
            ),
        ]
    return Group(*parts)
