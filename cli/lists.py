"""`bulksms lists`: contact lists for broadcasts (`send --list`), created, imported from a
CSV (streamed, with a progress bar), shown and deleted."""

from __future__ import annotations

import os
from typing import IO
from urllib.parse import quote

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from cli import reports
from cli.client import ApiClient, pass_client
from cli.tables import every_item, listing, print_json, show, table

PAGE = 200
CONTACTS_SHOWN = 20
# The API merges the whole file before it answers: a million rows take a minute or so,
# more than the default --timeout allows.
IMPORT_TIMEOUT = 900.0


def _path(list_id: str, rest: str = "") -> str:
    # Quoted so an id like "../keys" cannot address another route.
    return f"/v1/lists/{quote(list_id, safe='')}{rest}"


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the lists as JSON.")
@click.pass_context
def lists(ctx: click.Context, as_json: bool) -> None:
    """Contact lists: `bulksms lists` lists them; see the commands below."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_lists, as_json=as_json)


@lists.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the lists as JSON.")
@pass_client
def list_lists(client: ApiClient, as_json: bool) -> None:
    """Every list, newest first, with its number of contacts."""
    listing(
        every_item(client, "/v1/lists", PAGE),
        as_json,
        empty="no contact lists (create one: bulksms lists create NAME)",
        headers=["id", "name", "contacts", "updated"],
        row=lambda item: (
            item["id"],
            item["name"],
            item["contacts"],
            reports.when(item.get("updated_at")),
        ),
        right=["contacts"],
        keep_whole=["id"],
        widest={"name": 60},
    )


@lists.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the new list as JSON.")
@pass_client
def create_list(client: ApiClient, name: str, as_json: bool) -> None:
    """Create an empty list called NAME; prints its id."""
    body = client.call("POST", "/v1/lists", json={"name": name})
    if as_json:
        print_json(body)
        return
    click.echo(f"created list {body['name']!r}: {body['id']}")
    click.echo(f"add contacts: bulksms lists import {body['id']} contacts.csv")


class _Upload:
    """The file as a request body: requests sends its length as Content-Length and reads
    it block by block, so the bar moves as the bytes leave, and the file is never whole in
    memory."""

    def __init__(self, file: IO[bytes], size: int, progress: Progress, task):
        self._file = file
        self._size = size
        self._progress = progress
        self._task = task

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._progress.advance(self._task, len(data))
        if not data or self._file.tell() >= self._size:
            self._progress.update(self._task, description="merging on the server")
        return data


def _invalid_lines(body: dict) -> list[str]:
    lines = [
        f"  line {item.get('line', item.get('index'))}: {item.get('value')!r}: {item.get('reason')}"
        for item in body.get("invalid", [])[:5]
    ]
    more = body.get("invalid_total", 0) - len(lines)
    if more > 0:
        lines.append(f"  ... and {more:,} more")
    return lines


@lists.command("import")
@click.argument("list_id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer as JSON.")
@pass_client
def import_contacts(client: ApiClient, list_id: str, file: str, as_json: bool) -> None:
    """Add the contacts in FILE (CSV) to list LIST_ID.

    The header row names the columns: the number's column is found by name (phone, mobile,
    number, to, msisdn, ...), every other column becomes a field for personalised texts
    ({first_name}). Invalid rows are listed with their line numbers and skipped; numbers
    already on the list have their fields updated."""
    size = os.path.getsize(file)
    client.timeout = max(client.timeout, IMPORT_TIMEOUT)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress, open(file, "rb") as handle:
        task = progress.add_task("uploading", total=size)
        body = client.call(
            "POST",
            _path(list_id, "/contacts"),
            data=_Upload(handle, size, progress, task),
            headers={"Content-Type": "text/csv"},
        )
    if as_json:
        print_json(body)
        return
    click.echo(
        f"imported {body['imported']:,}, updated {body['updated']:,}, "
        f"duplicates merged {body['duplicates']:,}, invalid {body['invalid_total']:,}, "
        f"opted out (kept, never texted) {body['opted_out']:,}"
    )
    for line in _invalid_lines(body):
        click.echo(line)


@lists.command("show")
@click.argument("list_id")
@click.option(
    "--contacts",
    "shown",
    type=click.IntRange(0, 1000),
    default=CONTACTS_SHOWN,
    show_default=True,
    help="How many contacts to print (by number).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@pass_client
def show_list(client: ApiClient, list_id: str, shown: int, as_json: bool) -> None:
    """A list: its size, its opted-out numbers, and its first contacts."""
    body = client.call("GET", _path(list_id))
    page = (
        client.call("GET", _path(list_id, "/contacts"), params={"limit": shown})
        if shown
        else {"items": []}
    )
    if as_json:
        print_json({**body, "contacts_shown": page["items"]})
        return
    click.echo(f"{body['name']} ({body['id']})")
    click.echo(
        f"  {body['contacts']:,} contacts, {body['opted_out']:,} opted out (never texted); "
        f"updated {reports.when(body.get('updated_at'))}"
    )
    if not page["items"]:
        return
    names = sorted({name for item in page["items"] for name in item["fields"]})
    rows = [
        (item["phone"], *(item["fields"].get(name) for name in names), item["opted_out"])
        for item in page["items"]
    ]
    show(table(["phone", *names, "opted out"], rows, keep_whole=["phone"]))
    if body["contacts"] > len(rows):
        click.echo(f"  ... {body['contacts'] - len(rows):,} more")


@lists.command("delete")
@click.argument("list_id")
@click.confirmation_option(prompt="Delete the list and all its contacts?")
@pass_client
def delete_list(client: ApiClient, list_id: str) -> None:
    """Delete list LIST_ID and its contacts (broadcasts already sent are not affected)."""
    client.request("DELETE", _path(list_id))
    click.echo(f"deleted list {list_id}")
