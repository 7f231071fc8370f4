"""`bulksms limits`: the pacing limits every worker obeys, read and changed while they run."""

from __future__ import annotations

import json

import click

from cli import reports
from cli.client import ApiClient, pass_client


@click.group()
def limits() -> None:
    """Messages per second, account-wide and per sender."""


@limits.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@pass_client
def show_limits(client: ApiClient, as_json: bool) -> None:
    """The effective limits and where each comes from (config or a live override)."""
    body = client.call("GET", "/v1/limits")
    click.echo(json.dumps(body, indent=2) if as_json else _limits(body))


@limits.command("set")
@click.option("--sms-mps", type=click.FloatRange(min=0), help="SMS per second (0: unlimited).")
@click.option("--mms-mps", type=click.FloatRange(min=0), help="MMS per second (0: unlimited).")
@click.option("--sender", help="Change this sender's limits instead of the account's.")
@click.option(
    "--clear",
    is_flag=True,
    help="Remove the SMS and MMS overrides of the account (or --sender), falling back to "
    "configuration.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@pass_client
def set_limits(
    client: ApiClient,
    sms_mps: float | None,
    mms_mps: float | None,
    sender: str | None,
    clear: bool,
    as_json: bool,
) -> None:
    """Override limits now; every worker's next batch obeys them, no restart needed, and
    batches waiting for their turn try again under them at once."""
    if clear and (sms_mps is not None or mms_mps is not None):
        raise click.UsageError("--clear removes the overrides; it takes no --sms-mps/--mms-mps")
    if clear:
        # null is the API's word for "drop the override, use the configured value".
        change: dict = {"sms_mps": None, "mms_mps": None}
    else:
        change = {
            key: value
            for key, value in (("sms_mps", sms_mps), ("mms_mps", mms_mps))
            if value is not None
        }
    if not change:
        raise click.UsageError("nothing to change: give --sms-mps, --mms-mps or --clear")
    payload = {"senders": {sender: change}} if sender else change
    body = client.call("PUT", "/v1/limits", json=payload)
    click.echo(json.dumps(body, indent=2) if as_json else _limits(body))


def _limits(body: dict) -> str:
    """The table, then how the two limits combine (a blank line apart, so the table ends)."""
    default = (body.get("default_sender_mps") or {}).get("value") or 0
    others = f"{default:g} msg/s (DEFAULT_SENDER_MPS)" if default else "no limit of their own"
    return (
        f"{reports.limits(body)}\n\n"
        "Every batch obeys both its account's and its sender's limit; all senders share the "
        f"account's.\nSenders not listed: {others}."
    )
