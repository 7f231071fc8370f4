"""`bulksms inbox`: the replies people sent to our numbers (GET /v1/inbound), so answers to a
campaign are read, not lost. Keywords (STOP, START, HELP) are handled by the service and
left out unless asked for."""

from __future__ import annotations

import json
import sys
import time

import click

from cli import reports, tables
from cli.client import ApiClient, CliError, pass_client

EXIT_INTERRUPTED = 130
PAGE = 200
# A long --follow should survive an API restart or a proxy blip.
POLL_FAILURES_TOLERATED = 5
TEXT_SHOWN = 60


def _params(show_all: bool, phone: str | None, limit: int) -> dict:
    return {"keyword": None if show_all else "false", "phone": phone, "limit": limit}


def _answers(item: dict) -> str | None:
    broadcast = item.get("broadcast")
    if not isinstance(broadcast, dict):
        return None
    return broadcast.get("name") or broadcast.get("id")


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _line(item: dict, show_all: bool) -> str:
    """One reply as a line: when, who to which number, what it answers, what it says."""
    parts = [
        reports.when(item.get("received_at")),
        f"{item.get('from')} -> {item.get('to')}",
    ]
    if show_all and item.get("action"):
        replied = "answered" if item.get("replied_at") else "not answered"
        parts.append(f"[{item['action']}, {replied}]")
    if answers := _answers(item):
        parts.append(f"re: {answers}")
    parts.append(_one_line(item.get("text")))
    return "  ".join(parts)


def _print_items(items: list[dict], show_all: bool, as_json: bool) -> None:
    for item in items:
        click.echo(json.dumps(item) if as_json else _line(item, show_all))


def _newer_than(client: ApiClient, params: dict, last_id: int) -> list[dict]:
    """Every reply with an id above `last_id`, oldest first (the API pages newest first)."""
    found: list[dict] = []
    cursor = None
    while True:
        page = client.call("GET", "/v1/inbound", params={**params, "cursor": cursor})
        items = page.get("items") or []
        fresh = [item for item in items if item.get("id", 0) > last_id]
        found += fresh
        cursor = page.get("next_cursor")
        if len(fresh) < len(items) or not cursor:
            return list(reversed(found))


def _follow(
    client: ApiClient,
    params: dict,
    last_id: int,
    show_all: bool,
    as_json: bool,
    interval: float,
    max_wait: float | None,
) -> None:
    started = time.monotonic()
    failures = 0
    while max_wait is None or time.monotonic() - started < max_wait:
        time.sleep(interval)
        try:
            fresh = _newer_than(client, params, last_id)
            failures = 0
        except CliError as error:
            failures += 1
            if not error.transient or failures > POLL_FAILURES_TOLERATED:
                raise
            click.echo(f"{error.format_message()}; retrying", err=True)
            continue
        _print_items(fresh, show_all, as_json)
        if fresh:
            last_id = fresh[-1]["id"]


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Include STOP, START and HELP replies.")
@click.option("--phone", metavar="NUMBER", help="Only replies from this number.")
@click.option("--limit", type=click.IntRange(1, PAGE), default=20, show_default=True)
@click.option("--cursor", help="Continue after a previous page (printed under the table).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new replies as they come.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between polls with --follow.",
)
@click.option(
    "--max-wait", type=click.FloatRange(min=0), help="Stop following after this many seconds."
)
@click.option("--json", "as_json", is_flag=True, help="The API's JSON (one line a reply with -f).")
@pass_client
def inbox(
    client: ApiClient,
    show_all: bool,
    phone: str | None,
    limit: int,
    cursor: str | None,
    follow: bool,
    interval: float,
    max_wait: float | None,
    as_json: bool,
) -> None:
    """Replies to our numbers, newest first, with the broadcast each one answers."""
    params = _params(show_all, phone, limit)
    body = client.call("GET", "/v1/inbound", params={**params, "cursor": cursor})
    items = body.get("items") or []
    if follow:
        # Oldest first, so the new ones follow on below.
        _print_items(list(reversed(items)), show_all, as_json)
        last_id = max((item.get("id", 0) for item in items), default=0)
        try:
            _follow(
                client, {**params, "limit": PAGE}, last_id, show_all, as_json, interval, max_wait
            )
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
        return
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    if not items:
        click.echo("no replies" + ("" if show_all else " (besides keywords: --all shows them)"))
        return
    headers = ["received", "from", "to"]
    if show_all:
        headers += ["keyword", "answered"]
    headers += ["broadcast", "text"]
    rows = []
    for item in items:
        row = [reports.when(item.get("received_at")), item.get("from"), item.get("to")]
        if show_all:
            row += [item.get("action"), reports.when(item.get("replied_at"))]
        row += [_answers(item), _one_line(item.get("text"))]
        rows.append(row)
    tables.show(
        tables.table(
            headers, rows, keep_whole=("from", "to"), widest={"broadcast": 30, "text": TEXT_SHOWN}
        )
    )
    if body.get("next_cursor"):
        again = " --all" if show_all else ""
        again += f" --phone {phone}" if phone else ""
        click.echo(f"\nmore: bulksms inbox{again} --limit {limit} --cursor {body['next_cursor']}")
