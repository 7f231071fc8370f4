"""Tables through rich: bold headers and the terminal's width on a terminal; plain aligned
text in a pipe, wide enough that no cell wraps (scripts grep it, tickets quote it)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from cli.client import ApiClient

# In a pipe there is no terminal width; rich would assume 80 and wrap ids and names.
PIPE_WIDTH = 240


def console() -> Console:
    """A console on standard output."""
    terminal = sys.stdout.isatty()
    return Console(width=None if terminal else PIPE_WIDTH, highlight=False, soft_wrap=False)


def cell(value: object) -> str:
    """How one value reads: `-` for nothing, thousands separated."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return str(value)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    right: Iterable[str] = (),
    keep_whole: Iterable[str] = (),
    widest: dict[str, int] | None = None,
) -> Table:
    """Columns separated by two spaces, no box: `right` columns right-aligned (numbers),
    `keep_whole` never wrapped or cut (ids), `widest` cut with an ellipsis (free text)."""
    right, keep_whole, widest = set(right), set(keep_whole), widest or {}
    shown = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        shown.add_column(
            header,
            justify="right" if header in right else "left",
            no_wrap=header in keep_whole or header in widest,
            overflow="ellipsis" if header in widest else "fold",
            max_width=widest.get(header),
        )
    for row in rows:
        # Text, not str: rich would read `[...]` in a name or a reply as its own markup.
        shown.add_row(*(Text(cell(value)) for value in row))
    return shown


def show(*renderables: object) -> None:
    """Print to standard output."""
    out = console()
    for renderable in renderables:
        out.print(renderable)


def every_item(client: ApiClient, path: str, page: int) -> list[dict]:
    """Every item of a paged API listing, following `next_cursor` to the last page."""
    found: list[dict] = []
    cursor = None
    while True:
        body = client.call("GET", path, params={"limit": page, "cursor": cursor})
        found.extend(body.get("items", []))
        cursor = body.get("next_cursor")
        if not cursor:
            return found


def print_json(body: object) -> None:
    click.echo(json.dumps(body, indent=2))


def listing(
    items: list[dict],
    as_json: bool,
    *,
    empty: str,
    headers: Sequence[str],
    row: Callable[[dict], Sequence[object]],
    **options: Any,
) -> None:
    """`items` as JSON (--json), as `empty` when there are none, or as a table of one `row`
    per item (`options` as `table` takes them)."""
    if as_json:
        print_json(items)
    elif not items:
        click.echo(empty)
    else:
        show(table(headers, [row(item) for item in items], **options))
