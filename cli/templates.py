"""`bulksms templates`: stored texts with placeholders ({first_name}) and default values, for
`send --template`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import click

from cli import reports
from cli.client import ApiClient, CliError, pass_client
from cli.tables import every_item, listing, print_json

PAGE = 200


def _path(template_id: str) -> str:
    return f"/v1/templates/{quote(template_id, safe='')}"


def _fields(pairs: tuple[str, ...]) -> dict[str, str]:
    fields = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--field")
        fields[name] = value
    return fields


def _text(text: str | None, text_file: str | None) -> str | None:
    if text is not None and text_file is not None:
        raise click.UsageError("give --text or --text-file, not both")
    if text_file is None:
        return text
    try:
        return Path(text_file).read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"{text_file}: {error}") from None


def _print(body: dict) -> None:
    click.echo(f"{body['name']} ({body['id']})")
    click.echo(f"  text: {body['text']}")
    click.echo(f"  placeholders: {', '.join(body['placeholders']) or '-'}")
    for name, value in body["fields"].items():
        click.echo(f"  default {name}: {value}")
    click.echo(f"  updated {reports.when(body.get('updated_at'))}")


TEXT = click.option("--text", help="The text; placeholders such as {first_name}.")
TEXT_FILE = click.option(
    "--text-file", type=click.Path(exists=True, dir_okay=False), help="Read the text from a file."
)
FIELD = click.option(
    "--field",
    "field_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A default value for a placeholder (repeatable).",
)
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print the template as JSON.")


@click.group()
def templates() -> None:
    """Stored texts with placeholders ({first_name}) and their default values."""


@templates.command("create")
@click.argument("name")
@TEXT
@TEXT_FILE
@FIELD
@AS_JSON
@pass_client
def create_template(
    client: ApiClient,
    name: str,
    text: str | None,
    text_file: str | None,
    field_pairs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Store a template called NAME."""
    wanted = _text(text, text_file)
    if wanted is None:
        raise click.UsageError("give the text: --text or --text-file")
    body = client.call(
        "POST",
        "/v1/templates",
        json={"name": name, "text": wanted, "fields": _fields(field_pairs)},
    )
    if as_json:
        print_json(body)
        return
    _print(body)


@templates.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the templates as JSON.")
@pass_client
def list_templates(client: ApiClient, as_json: bool) -> None:
    """Every template, by name."""
    listing(
        every_item(client, "/v1/templates", PAGE),
        as_json,
        empty="no templates (create one: bulksms templates create NAME --text ...)",
        headers=["id", "name", "placeholders", "text"],
        row=lambda t: (t["id"], t["name"], ", ".join(t["placeholders"]), t["text"]),
        keep_whole=["id"],
        widest={"name": 40, "text": 60},
    )


@templates.command("show")
@click.argument("template_id")
@AS_JSON
@pass_client
def show_template(client: ApiClient, template_id: str, as_json: bool) -> None:
    """One template: its text, placeholders and default values."""
    body = client.call("GET", _path(template_id))
    if as_json:
        print_json(body)
        return
    _print(body)


@templates.command("update")
@click.argument("template_id")
@click.option("--name", help="A new name.")
@TEXT
@TEXT_FILE
@FIELD
@click.option("--clear-fields", is_flag=True, help="Remove every default value.")
@AS_JSON
@pass_client
def update_template(
    client: ApiClient,
    template_id: str,
    name: str | None,
    text: str | None,
    text_file: str | None,
    field_pairs: tuple[str, ...],
    clear_fields: bool,
    as_json: bool,
) -> None:
    """Change a template; --field values replace all its defaults."""
    change: dict = {}
    if name is not None:
        change["name"] = name
    if (wanted := _text(text, text_file)) is not None:
        change["text"] = wanted
    if field_pairs or clear_fields:
        change["fields"] = _fields(field_pairs)
    if not change:
        raise click.UsageError("nothing to change: give --name, --text, --field or --clear-fields")
    body = client.call("PUT", _path(template_id), json=change)
    if as_json:
        print_json(body)
        return
    _print(body)


@templates.command("delete")
@click.argument("template_id")
@pass_client
def delete_template(client: ApiClient, template_id: str) -> None:
    """Delete a template (broadcasts sent with it keep their texts)."""
    client.request("DELETE", _path(template_id))
    click.echo(f"deleted template {template_id}")
