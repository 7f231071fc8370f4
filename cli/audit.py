"""`bulksms audit`: who paused, cancelled, retried, changed limits, opt-outs or keys, and when."""

from __future__ import annotations

import json

import click

from cli import reports
from cli.client import ApiClient, pass_client

PAGE = 200


def _details(details: object) -> str:
    if not details:
        return ""
    return json.dumps(details, separators=(",", ":"), sort_keys=True)


@click.command("audit")
@click.option("--action", "actions", multiple=True, help="Only this action (e.g. broadcast.pause).")
@click.option("--actor", help="Only events by this key (name or key_id).")
@click.option("--since", metavar="ISO8601", help="Only events at or after this time.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON.")
@pass_client
def audit(
    client: ApiClient,
    actions: tuple[str, ...],
    actor: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The audit trail, newest first (needs an admin key)."""
    params = {"action": ",".join(actions) or None, "actor": actor, "since": since}
    events: list[dict] = []
    cursor = None
    while len(events) < limit:
        page = min(PAGE, limit - len(events))
        body = client.call("GET", "/v1/audit", params={**params, "limit": page, "cursor": cursor})
        events.extend(body.get("items", []))
        cursor = body.get("next_cursor")
        if not cursor:
            break
    if as_json:
        click.echo(json.dumps(events, indent=2))
        return
    if not events:
        click.echo("no audit events")
        return
    rows = [
        (
            reports.when(event.get("at")),
            f"{event['actor']['name']} ({event['actor']['key_id']})",
            event.get("action"),
            event.get("target"),
            _details(event.get("details")),
        )
        for event in events
    ]
    click.echo(reports.table(["at", "actor", "action", "target", "details"], rows))
