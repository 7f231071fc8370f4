"""`bulksms keys`: named API keys with scopes, created, listed and revoked (admin key needed)."""

from __future__ import annotations

from urllib.parse import quote

import click

from cli import reports
from cli.client import ApiClient, pass_client
from cli.tables import every_item, listing, print_json

SCOPES = ("send", "read", "admin")
PAGE = 500


@click.group()
def keys() -> None:
    """API keys: `send` creates and acts on its own broadcasts (and reads them), `read` reads
    limits and opt-outs, `admin` does everything. Keys in API_KEYS are admin keys."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    type=click.Choice(SCOPES),
    multiple=True,
    required=True,
    help="A scope of the key; repeat for several.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON (key included).")
@pass_client
def create_key(client: ApiClient, name: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create key NAME and print it. It is shown this once: the API keeps only a hash."""
    body = client.call("POST", "/v1/keys", json={"name": name, "scopes": list(scopes)})
    if as_json:
        print_json(body)
        return
    # The key alone on stdout, so it can be piped into a secret store; the rest on stderr.
    click.echo(body["key"])
    click.echo(
        f"created key {body['name']} (key_id {body['key_id']}, scopes "
        f"{', '.join(body['scopes'])}); store it now, it cannot be shown again",
        err=True,
    )


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
@pass_client
def list_keys(client: ApiClient, as_json: bool) -> None:
    """Every key (never a secret), revoked ones included."""
    listing(
        every_item(client, "/v1/keys", PAGE),
        as_json,
        empty="no keys (only those in API_KEYS)",
        headers=["name", "key_id", "scopes", "created", "last used", "revoked"],
        row=lambda key: (
            key["name"],
            key["key_id"],
            ",".join(key["scopes"]),
            reports.when(key.get("created_at")),
            reports.when(key.get("last_used_at")),
            reports.when(key.get("revoked_at")) if key.get("revoked_at") else "active",
        ),
        keep_whole=["key_id", "scopes"],
    )


@keys.command("revoke")
@click.argument("name")
@pass_client
def revoke_key(client: ApiClient, name: str) -> None:
    """Revoke key NAME: its next request is refused (401). The name stays taken."""
    body = client.call("DELETE", f"/v1/keys/{quote(name, safe='')}")
    click.echo(f"revoked key {body['name']} (key_id {body['key_id']})")
