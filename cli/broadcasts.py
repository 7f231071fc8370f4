"""Broadcast commands: send (and watch), list, show, recipients, retry, pause, resume, cancel."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click

from cli import reports
from cli.client import ApiClient, copy_stream, pass_client
from cli.progress import WaitTimedOut, watch
from cli.recipient_files import read_recipients, read_text

# Exit statuses of `send --wait`: scripts and CI branch on these.
EXIT_COMPLETED = 0
EXIT_NOT_ALL_SENT = 1  # completed_with_failures or cancelled
EXIT_STILL_RUNNING = 3  # --max-wait passed first; the broadcast goes on
EXIT_INTERRUPTED = 130  # Ctrl-C while watching; the broadcast goes on
DEFAULT_RETRY_STATUSES = ("failed",)
RECIPIENT_PAGE = 500


def print_json(body: object) -> None:
    click.echo(json.dumps(body, indent=2))


def _send_at(value: str | None) -> str | None:
    """An ISO 8601 time with its zone, checked here so a typo fails before anything is sent."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time such as 2030-01-31T09:00:00+01:00",
            param_hint="--send-at",
        ) from None
    if moment.utcoffset() is None:
        # A time without a zone means different instants on the client and the server.
        raise click.BadParameter(
            f"{value!r} has no time zone: add one, e.g. {value}Z or {value}+01:00",
            param_hint="--send-at",
        )
    return moment.isoformat()


def _text(text: str | None, text_file: str | None) -> str:
    if (text is None) == (text_file is None):
        raise click.UsageError("give the message with exactly one of --text or --text-file")
    if text_file is not None:
        # Editors end files with a newline; sending it would cost a character per message.
        return read_text(text_file).rstrip("\r\n")
    return text or ""


def _final_exit(broadcast: dict) -> int:
    return EXIT_COMPLETED if broadcast.get("status") == "completed" else EXIT_NOT_ALL_SENT


@click.command()
@click.option("--to", "numbers", multiple=True, metavar="NUMBER", help="A recipient; repeat.")
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="CSV (phone column, else the first) or text file, one number per line; '-' is stdin.",
)
@click.option("--text", help="The message.")
@click.option(
    "--text-file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="Read the message from a UTF-8 file (trailing newlines dropped).",
)
@click.option("--sender", help="Sender number or alphanumeric id (default: the API's).")
@click.option("--skip-invalid", is_flag=True, help="Send to the valid numbers and count the rest.")
@click.option("--idempotency-key", help="Resending with the same key returns the same broadcast.")
@click.option("--send-at", help="Start at this ISO 8601 time with zone (scheduled broadcast).")
@click.option("--callback-url", help="Where the API POSTs a signed notice once it is final.")
@click.option("--wait", is_flag=True, help="Watch progress until final; exit 0 only if all sent.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between polls with --wait.",
)
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0),
    help="Stop watching after this many seconds (exit 3; the broadcast goes on).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the broadcast id.")
@pass_client
@click.pass_context
def send(
    ctx: click.Context,
    client: ApiClient,
    numbers: tuple[str, ...],
    files: tuple[str, ...],
    text: str | None,
    text_file: str | None,
    sender: str | None,
    skip_invalid: bool,
    idempotency_key: str | None,
    send_at: str | None,
    callback_url: str | None,
    wait: bool,
    interval: float,
    max_wait: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Send one message to many recipients (POST /v1/broadcasts).

    \b
    Exit status with --wait: 0 completed, 1 completed with failures or cancelled,
    2 usage or API error, 3 still running after --max-wait.
    """
    message = _text(text, text_file)
    recipients = [n.strip() for n in numbers if n.strip()]
    for path in files:
        recipients += read_recipients(path)
    if not recipients:
        raise click.UsageError("no recipients: give --to NUMBER or --file FILE")
    payload: dict = {"recipients": recipients, "text": message}
    if sender is not None:
        payload["sender"] = sender
    if skip_invalid:
        payload["skip_invalid"] = True
    if callback_url is not None:
        payload["callback_url"] = callback_url
    if send_at is not None:
        payload["send_at"] = _send_at(send_at)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    body = client.call("POST", "/v1/broadcasts", json=payload, headers=headers)
    if quiet:
        click.echo(body["id"])
    elif as_json and not wait:
        print_json(body)
    elif not as_json:
        click.echo(reports.accepted(body))
    if not wait:
        return
    broadcast = _watch(client, body["id"], interval, max_wait)
    if as_json:
        print_json(broadcast)
    elif not quiet:
        click.echo("")
        click.echo(reports.summary(broadcast))
    ctx.exit(_final_exit(broadcast))


def _watch(client: ApiClient, broadcast_id: str, interval: float, max_wait: float | None) -> dict:
    try:
        return watch(client, broadcast_id, interval, max_wait)
    except WaitTimedOut as stopped:
        status = stopped.broadcast.get("status", "unknown")
        click.echo(
            f"still {status} after {max_wait:g}s; the broadcast goes on: "
            f"bulksms show {broadcast_id}",
            err=True,
        )
        sys.exit(EXIT_STILL_RUNNING)
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped watching; the broadcast goes on: bulksms show {broadcast_id}", err=True
        )
        sys.exit(EXIT_INTERRUPTED)


@click.command()
@click.argument("broadcast_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.option("--wait", is_flag=True, help="Watch progress until final, as `send --wait`.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
@click.option("--max-wait", type=click.FloatRange(min=0))
@pass_client
@click.pass_context
def show(
    ctx: click.Context,
    client: ApiClient,
    broadcast_id: str,
    as_json: bool,
    wait: bool,
    interval: float,
    max_wait: float | None,
) -> None:
    """One broadcast: status, progress, recipients by status, errors by code."""
    if wait:
        broadcast = _watch(client, broadcast_id, interval, max_wait)
    else:
        broadcast = client.call(
            "GET", client.broadcast_path(broadcast_id), broadcast_id=broadcast_id
        )
    if as_json:
        print_json(broadcast)
    else:
        click.echo(reports.summary(broadcast))
    if wait:
        ctx.exit(_final_exit(broadcast))


def _percent(row: dict) -> str:
    progress = row.get("progress") or {}
    percent = progress.get("percent")
    return "-" if percent is None else f"{percent:.1f}%"


@click.command("list")
@click.option("--status", "statuses", multiple=True, help="Only broadcasts in this status; repeat.")
@click.option("--created-after", metavar="ISO8601", help="Only broadcasts created at or after.")
@click.option("--created-before", metavar="ISO8601", help="Only broadcasts created before.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--cursor", help="Continue after a previous page (printed under the table).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@pass_client
def list_broadcasts(
    client: ApiClient,
    statuses: tuple[str, ...],
    created_after: str | None,
    created_before: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Broadcasts, newest first."""
    params = {
        "status": ",".join(statuses) or None,
        "created_after": created_after,
        "created_before": created_before,
        "limit": limit,
        "cursor": cursor,
    }
    body = client.call("GET", "/v1/broadcasts", params=params)
    if as_json:
        print_json(body)
        return
    broadcasts = body.get("items", [])
    if not broadcasts:
        click.echo("no broadcasts" + (f" with status {', '.join(statuses)}" if statuses else ""))
        return
    headers = ["id", "kind", "status", "created", "accepted", "skipped", "invalid", "sender"]
    # Progress costs the API a count per broadcast, so a listing may leave it out.
    with_progress = any("progress" in row for row in broadcasts)
    if with_progress:
        headers.append("done")
    rows = []
    for row in broadcasts:
        counts = row.get("counts") or {}
        cells = [
            row.get("id"),
            row.get("kind"),
            row.get("status"),
            reports.when(row.get("created_at")),
            counts.get("accepted"),
            counts.get("skipped"),
            counts.get("invalid"),
            row.get("sender"),
        ]
        if with_progress:
            cells.append(_percent(row))
        rows.append(cells)
    click.echo(reports.table(headers, rows))
    if body.get("next_cursor"):
        click.echo(f"\nmore: bulksms list --limit {limit} --cursor {body['next_cursor']}")


RECIPIENT_COLUMNS = (("phone", 16), ("status", 11), ("error", 6), ("units", 5), ("uuid", 36))


def _recipient_line(values: list[str]) -> str:
    # Fixed widths: pages are printed as they arrive, before later rows are known.
    fixed = len(RECIPIENT_COLUMNS)
    cells = [
        value.ljust(width)
        for value, (_, width) in zip(values[:fixed], RECIPIENT_COLUMNS, strict=True)
    ]
    return "  ".join(cells + values[fixed:]).rstrip()


@click.command()
@click.argument("broadcast_id", metavar="ID")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    help="Only recipients in this status (e.g. failed, unknown); repeat.",
)
@click.option("--csv", "as_csv", is_flag=True, help="Stream every row as CSV to stdout.")
@click.option(
    "--limit", type=click.IntRange(min=1), help="Print at most this many rows (default: all)."
)
@click.option(
    "--page-size",
    type=click.IntRange(1, 1000),
    default=RECIPIENT_PAGE,
    show_default=True,
    help="Rows per API request.",
)
@pass_client
def recipients(
    client: ApiClient,
    broadcast_id: str,
    statuses: tuple[str, ...],
    as_csv: bool,
    limit: int | None,
    page_size: int,
) -> None:
    """A broadcast's recipients: number, status, error, Plivo message uuid."""
    path = client.broadcast_path(broadcast_id, "recipients")
    status = ",".join(statuses) or None
    if as_csv:
        params = {"status": status}
        with client.csv_download(path, params, broadcast_id=broadcast_id) as chunks:
            copy_stream(chunks, click.get_binary_stream("stdout"))
        return
    shown = 0
    cursor = None
    # Bounded by the API: each page moves the cursor forward until it hands back none.
    while limit is None or shown < limit:
        size = page_size if limit is None else min(page_size, limit - shown)
        params = {"status": status, "limit": size, "cursor": cursor}
        page = client.call("GET", path, params=params, broadcast_id=broadcast_id)
        if cursor is None:
            # After the first answer, so an unknown id prints only the error.
            click.echo(_recipient_line([name for name, _ in RECIPIENT_COLUMNS] + ["reason"]))
        for row in page.get("items", []):
            values = [
                row.get("phone") or "",
                row.get("status") or "",
                row.get("error_code") or "-",
                str(row.get("units") if row.get("units") is not None else "-"),
                row.get("message_uuid") or "-",
                row.get("error_reason") or "",
            ]
            click.echo(_recipient_line(values))
            shown += 1
        cursor = page.get("next_cursor")
        if not cursor or not page.get("items"):
            break
    click.echo(f"{shown:,} recipient(s)", err=True)


@click.command()
@click.argument("broadcast_id", metavar="ID")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    help="Recipient status to retry; repeat. Default: failed. unknown and undelivered may "
    "already have been delivered, so they are retried only when named.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@pass_client
def retry(client: ApiClient, broadcast_id: str, statuses: tuple[str, ...], as_json: bool) -> None:
    """Send again to the recipients in the given statuses (new batches)."""
    wanted = list(statuses or DEFAULT_RETRY_STATUSES)
    body = client.call(
        "POST",
        client.broadcast_path(broadcast_id, "retry"),
        json={"statuses": wanted},
        broadcast_id=broadcast_id,
    )
    if as_json:
        print_json(body)
        return
    click.echo(
        f"retrying {body.get('retried', 0):,} recipient(s) ({', '.join(wanted)}) in "
        f"{body.get('batches_enqueued', 0):,} batch(es); "
        f"{body.get('skipped', 0):,} skipped (opted out)"
    )
    _warn(body)


def _warn(body: dict) -> None:
    for warning in body.get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)


def _action(name: str, summary: str) -> click.Command:
    @click.command(name, help=summary)
    @click.argument("broadcast_id", metavar="ID")
    @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
    @pass_client
    def command(client: ApiClient, broadcast_id: str, as_json: bool) -> None:
        body = client.call(
            "POST", client.broadcast_path(broadcast_id, name), broadcast_id=broadcast_id
        )
        if as_json:
            print_json(body)
            return
        line = f"{body.get('id', broadcast_id)}  {body.get('status', '?')}"
        if body.get("status_reason"):
            line += f" ({body['status_reason']})"
        if body.get("skipped"):
            line += f"; {body['skipped']:,} recipient(s) skipped"
        if body.get("batches_enqueued"):
            line += f"; {body['batches_enqueued']:,} batch(es) enqueued"
        click.echo(line)
        _warn(body)

    return command


pause = _action("pause", "Start no new batches; calls already in flight finish.")
resume = _action("resume", "Carry on with a paused broadcast.")
cancel = _action("cancel", "Stop for good: recipients not yet sent become skipped (cancelled).")

COMMANDS = (send, list_broadcasts, show, recipients, retry, pause, resume, cancel)
