"""Broadcast commands: send and mms (and watch), list, show, recipients, retry (and watch),
pause, resume, cancel."""

from __future__ import annotations

import json
import mimetypes
import re
import sys
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click

from cli import quotes, reports, tables
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


def _text(text: str | None, text_file: str | None, template: str | None = None) -> str | None:
    if template is not None:
        if text is not None or text_file is not None:
            raise click.UsageError("give --template or the message (--text/--text-file), not both")
        return None
    if (text is None) == (text_file is None):
        raise click.UsageError(
            "give the message with exactly one of --text or --text-file (or --template ID)"
        )
    if text_file is not None:
        # Editors end files with a newline; sending it would cost a character per message.
        return read_text(text_file).rstrip("\r\n")
    return text or ""


_CLOCK = r"([01]?\d|2[0-3]):[0-5]\d"


def _quiet_hours(value: str | None) -> tuple[bool, dict | None]:
    """(given, value): `21:00-08:00` → {"start", "end"}; `off` → null (none for this
    broadcast); not given → the API's default (QUIET_HOURS)."""
    if value is None:
        return False, None
    if value.strip().lower() == "off":
        return True, None
    found = re.fullmatch(rf"\s*({_CLOCK})\s*-\s*({_CLOCK})\s*", value)
    if not found:
        raise click.BadParameter(
            f"{value!r} is not START-END such as 21:00-08:00, or off", param_hint="--quiet-hours"
        )
    start, end = found.group(1), found.group(3)
    return True, {"start": start.zfill(5), "end": end.zfill(5)}


def _fields(pairs: tuple[str, ...]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(
                f"{pair!r} is not NAME=VALUE such as first_name=friend", param_hint="--field"
            )
        fields[name.strip()] = value
    return fields


def _max_cost(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        amount = Decimal(-1)
    if not amount.is_finite() or amount < 0:
        raise click.BadParameter(
            f"{value!r} is not an amount such as 25.00", param_hint="--max-cost"
        )
    return float(amount)


def _senders(senders: str | None, sender_pool: str | None, sender: str | None) -> dict:
    if sum(value is not None for value in (sender, senders, sender_pool)) > 1:
        raise click.UsageError("give one of --sender, --senders or --sender-pool")
    if senders is not None:
        pool = [part.strip() for part in senders.split(",") if part.strip()]
        if not pool:
            raise click.BadParameter("no sender in the list", param_hint="--senders")
        return {"senders": pool}
    if sender_pool is not None:
        return {"sender_pool": sender_pool}
    return {"sender": sender} if sender is not None else {}


def _final_exit(broadcast: dict) -> int:
    return EXIT_COMPLETED if broadcast.get("status") == "completed" else EXIT_NOT_ALL_SENT


def _recipients(numbers: tuple[str, ...], files: tuple[str, ...]) -> list[str]:
    recipients = [n.strip() for n in numbers if n.strip()]
    for path in files:
        recipients += read_recipients(path)
    return recipients


def _sending_options(command):
    """What `send` and `mms` both take: how to send, what to watch, how to print."""
    for option in reversed(
        [
            click.option(
                "--skip-invalid",
                is_flag=True,
                help="Send to the valid numbers and count the rest.",
            ),
            click.option(
                "--idempotency-key",
                help="Resending with the same key returns the same broadcast.",
            ),
            click.option(
                "--send-at", help="Start at this ISO 8601 time with zone (scheduled broadcast)."
            ),
            click.option(
                "--callback-url", help="Where the API POSTs a signed notice once it is final."
            ),
            _watch_options,
            click.option("--json", "as_json", is_flag=True, help="Print the API's JSON."),
            click.option("-q", "--quiet", is_flag=True, help="Print only the broadcast id."),
        ]
    ):
        command = option(command)
    return command


def _watch_options(command):
    """--wait, --interval and --max-wait, as every command that can follow a broadcast has."""
    for option in reversed(
        [
            click.option(
                "--wait", is_flag=True, help="Watch progress until final; exit 0 only if all sent."
            ),
            click.option(
                "--interval",
                type=click.FloatRange(min=0.1),
                default=2.0,
                show_default=True,
                help="Seconds between polls with --wait.",
            ),
            click.option(
                "--max-wait",
                type=click.FloatRange(min=0),
                help="Stop watching after this many seconds (exit 3; the broadcast goes on).",
            ),
        ]
    ):
        command = option(command)
    return command


_AUDIENCE = [
    click.option("--to", "numbers", multiple=True, metavar="NUMBER", help="A recipient; repeat."),
    click.option(
        "--file",
        "files",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, allow_dash=True),
        help="CSV (phone column, else the first) or text file, one number per line; '-' is stdin.",
    ),
]


def _audience_options(command):
    for option in reversed(_AUDIENCE):
        command = option(command)
    return command


def _submit(
    ctx: click.Context,
    client: ApiClient,
    path: str,
    payload: dict,
    idempotency_key: str | None,
    wait: bool,
    interval: float,
    max_wait: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """POST a new broadcast, print the answer, and with --wait follow it to the end."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    body = client.call("POST", path, json=payload, headers=headers)
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


@click.command()
@_audience_options
@click.option(
    "--list",
    "list_ids",
    multiple=True,
    metavar="ID",
    help="A contact list whose contacts (and their fields) get it; repeat.",
)
@click.option("--text", help="The message; {first_name} and the like are filled per recipient.")
@click.option(
    "--text-file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="Read the message from a UTF-8 file (trailing newlines dropped).",
)
@click.option("--template", metavar="ID", help="A stored template instead of --text.")
@click.option(
    "--field",
    "field_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A default for a placeholder, for recipients without their own; repeat.",
)
@click.option("--name", help="What to call the broadcast in listings ('Spring sale').")
@click.option("--sender", help="Sender number or alphanumeric id (default: the API's).")
@click.option("--senders", metavar="A,B,C", help="A pool of senders; each recipient sticks to one.")
@click.option("--sender-pool", metavar="NAME", help="A sender pool configured in SENDER_POOLS.")
@click.option(
    "--quiet-hours",
    metavar="START-END|off",
    help="No texts in this window of each recipient's local time (21:00-08:00), or off; "
    "default: the API's QUIET_HOURS.",
)
@click.option(
    "--append-opt-out-text", is_flag=True, help="Add the opt-out line (OPT_OUT_TEXT) to the text."
)
@click.option(
    "--max-cost", metavar="AMOUNT", help="Refuse the broadcast if its estimate is higher."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the quote (countries, encoding, segments, cost, duration); send nothing.",
)
@_sending_options
@pass_client
@click.pass_context
def send(
    ctx: click.Context,
    client: ApiClient,
    numbers: tuple[str, ...],
    files: tuple[str, ...],
    list_ids: tuple[str, ...],
    text: str | None,
    text_file: str | None,
    template: str | None,
    field_pairs: tuple[str, ...],
    name: str | None,
    sender: str | None,
    senders: str | None,
    sender_pool: str | None,
    quiet_hours: str | None,
    append_opt_out_text: bool,
    max_cost: str | None,
    dry_run: bool,
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
    message = _text(text, text_file, template)
    recipients = _recipients(numbers, files)
    if not recipients and not list_ids:
        raise click.UsageError("no recipients: give --to NUMBER, --file FILE or --list ID")
    if dry_run and wait:
        raise click.UsageError("--dry-run sends nothing, so there is nothing to --wait for")
    payload: dict = {"recipients": recipients} if recipients else {}
    if list_ids:
        payload["list_ids"] = list(list_ids)
    if template is not None:
        payload["template_id"] = template
    else:
        payload["text"] = message
    if field_pairs:
        payload["fields"] = _fields(field_pairs)
    if name is not None:
        payload["name"] = name
    payload |= _senders(senders, sender_pool, sender)
    given, hours = _quiet_hours(quiet_hours)
    if given:
        payload["quiet_hours"] = hours
    if append_opt_out_text:
        payload["append_opt_out_text"] = True
    if (cost := _max_cost(max_cost)) is not None:
        payload["max_cost"] = cost
    if skip_invalid:
        payload["skip_invalid"] = True
    if callback_url is not None:
        payload["callback_url"] = callback_url
    if send_at is not None:
        payload["send_at"] = _send_at(send_at)
    if dry_run:
        payload["dry_run"] = True
        quote = client.call("POST", "/v1/broadcasts", json=payload)
        if as_json:
            print_json(quote)
        else:
            tables.show(quotes.render(quote))
        return
    _submit(
        ctx, client, "/v1/broadcasts", payload, idempotency_key, wait, interval, max_wait,
        as_json, quiet,
    )  # fmt: skip


def _upload(client: ApiClient, path: str) -> str:
    """A local file into Plivo's media store (POST /v1/media); its media_id."""
    kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as data:
        body = client.call("POST", "/v1/media", files={"file": (Path(path).name, data, kind)})
    return body["media_id"]


@click.command()
@_audience_options
@click.option("--text", help="Words to go with the media (optional).")
@click.option(
    "--media-url",
    "media_urls",
    multiple=True,
    metavar="URL",
    help="A public https URL of an image, video or audio file; repeat.",
)
@click.option(
    "--media",
    "media_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A local file, uploaded first (POST /v1/media); repeat.",
)
@click.option("--media-id", "media_ids", multiple=True, metavar="ID", help="An uploaded media id.")
@click.option("--sender", help="Sender number (default: the API's).")
@_sending_options
@pass_client
@click.pass_context
def mms(
    ctx: click.Context,
    client: ApiClient,
    numbers: tuple[str, ...],
    files: tuple[str, ...],
    text: str | None,
    media_urls: tuple[str, ...],
    media_files: tuple[str, ...],
    media_ids: tuple[str, ...],
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
    """Send a picture message to US and Canadian numbers (POST /v1/mms).

    \b
    Exit status as for send.
    """
    recipients = _recipients(numbers, files)
    if not recipients:
        raise click.UsageError("no recipients: give --to NUMBER or --file FILE")
    if not (media_urls or media_files or media_ids):
        raise click.UsageError("no media: give --media-url URL, --media FILE or --media-id ID")
    ids = list(media_ids) + [_upload(client, path) for path in media_files]
    payload: dict = {"recipients": recipients}
    if text is not None:
        payload["text"] = text
    if media_urls:
        payload["media_urls"] = list(media_urls)
    if ids:
        payload["media_ids"] = ids
    if sender is not None:
        payload["sender"] = sender
    if skip_invalid:
        payload["skip_invalid"] = True
    if callback_url is not None:
        payload["callback_url"] = callback_url
    if send_at is not None:
        payload["send_at"] = _send_at(send_at)
    _submit(
        ctx, client, "/v1/mms", payload, idempotency_key, wait, interval, max_wait, as_json, quiet
    )


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


# Names may be 200 characters; a listing shows the start of each.
NAME_SHOWN = 40


def _sender_cell(row: dict) -> str | None:
    """The broadcast's sender, or its pool (`+1415…0001 +2`)."""
    pool = row.get("senders")
    if isinstance(pool, list) and len(pool) > 1:
        return f"{pool[0]} +{len(pool) - 1}"
    return row.get("sender")


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
    headers = ["id", "name", "kind", "status", "created", "accepted", "skipped", "invalid"]
    headers.append("sender")
    # Progress costs the API a count per broadcast, so a listing may leave it out.
    with_progress = any("progress" in row for row in broadcasts)
    if with_progress:
        headers.append("done")
    rows = []
    for row in broadcasts:
        counts = row.get("counts") or {}
        cells = [
            row.get("id"),
            row.get("name"),  # None for broadcasts from before names
            row.get("kind"),
            row.get("status"),
            reports.when(row.get("created_at")),
            counts.get("accepted"),
            counts.get("skipped"),
            counts.get("invalid"),
            _sender_cell(row),
        ]
        if with_progress:
            cells.append(_percent(row))
        rows.append(cells)
    tables.show(
        tables.table(
            headers,
            rows,
            right=("accepted", "skipped", "invalid", "done"),
            keep_whole=("id",),
            widest={"name": NAME_SHOWN},
        )
    )
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
@_watch_options
@pass_client
@click.pass_context
def retry(
    ctx: click.Context,
    client: ApiClient,
    broadcast_id: str,
    statuses: tuple[str, ...],
    as_json: bool,
    wait: bool,
    interval: float,
    max_wait: float | None,
) -> None:
    """Send again to the recipients in the given statuses (new batches).

    \b
    With --wait, follow the broadcast until final, as `send --wait`: exit 0 only if
    nothing failed this time; 1 if failures remain; 3 still running after --max-wait.
    """
    wanted = list(statuses or DEFAULT_RETRY_STATUSES)
    body = client.call(
        "POST",
        client.broadcast_path(broadcast_id, "retry"),
        json={"statuses": wanted},
        broadcast_id=broadcast_id,
    )
    if as_json and not wait:
        print_json(body)
        return
    if not as_json:
        click.echo(
            f"retrying {body.get('retried', 0):,} recipient(s) ({', '.join(wanted)}) in "
            f"{body.get('batches_enqueued', 0):,} batch(es); "
            f"{body.get('skipped', 0):,} skipped (opted out)"
        )
    _warn(body)
    if not wait:
        return
    broadcast = _watch(client, broadcast_id, interval, max_wait)
    if as_json:
        print_json(broadcast)
    else:
        click.echo("")
        click.echo(reports.summary(broadcast))
    ctx.exit(_final_exit(broadcast))


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

COMMANDS = (send, mms, list_broadcasts, show, recipients, retry, pause, resume, cancel)
