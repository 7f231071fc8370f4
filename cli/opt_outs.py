"""`bulksms opt-outs`: import a list of numbers that must never be texted, export the list,
take a number off it."""

from __future__ import annotations

from urllib.parse import quote

import click

from cli.client import ApiClient, copy_stream, pass_client


@click.group("opt-outs")
def opt_outs() -> None:
    """The numbers no broadcast may text (STOP replies and imports)."""


@opt_outs.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--reason", help="Recorded with each number (e.g. 'CRM unsubscribe').")
@click.option("--skip-invalid", is_flag=True, help="Import the valid numbers, count the rest.")
@pass_client
def import_opt_outs(client: ApiClient, file: str, reason: str | None, skip_invalid: bool) -> None:
    """Add the numbers in FILE (CSV, first column; a header row is fine)."""
    params = {"reason": reason, "skip_invalid": "true" if skip_invalid else None}
    # The file object is streamed as the body, so a large list is never read into memory here.
    with open(file, "rb") as body:
        result = client.call(
            "POST",
            "/v1/opt-outs",
            data=body,
            params=params,
            headers={"Content-Type": "text/csv"},
        )
    click.echo(
        f"added {result.get('added', 0):,}, already opted out {result.get('already', 0):,}, "
        f"invalid {result.get('invalid', 0):,}"
    )


@opt_outs.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True),
    default="-",
    help="Write the CSV here instead of stdout.",
)
@pass_client
def export_opt_outs(client: ApiClient, output: str) -> None:
    """Every opted-out number as CSV (phone, source, reason, created_at), streamed."""
    with client.csv_download("/v1/opt-outs") as chunks:
        with click.open_file(output, "wb") as out:
            _, lines = copy_stream(chunks, out)
    if output != "-":
        click.echo(f"wrote {max(0, lines - 1):,} opt-out(s) to {output}", err=True)


@opt_outs.command("remove")
@click.argument("number")
@pass_client
def remove_opt_out(client: ApiClient, number: str) -> None:
    """Take NUMBER off the list, so broadcasts may text it again (admin key).

    Only for someone who asked to be texted again: a person who replied STOP is put back on
    the list by their START reply anyway. The removal is in the audit trail."""
    # Quoted: "+1 415..." as typed must stay one path segment; the API normalises it.
    client.request("DELETE", f"/v1/opt-outs/{quote(number, safe='')}")
    click.echo(f"removed {number} from the opt-out list")
