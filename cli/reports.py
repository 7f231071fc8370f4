"""What the CLI prints: broadcast summaries and aligned tables, plain text that reads well in
a terminal and survives being pasted into a ticket."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from cli.progress import FINAL_STATUSES, clock, ordered


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], indent: str = "") -> str:
    """Columns as wide as their widest cell; numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        bool(cells) and all(_is_number(row[i]) for row in cells) for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(row, widths, numeric, strict=True)
        ]
        return (indent + "  ".join(padded)).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == int(value):
            return f"{int(value):,}"
        # 0.25 MMS per second must not print as 0.2.
        return f"{value:,.3f}".rstrip("0")
    return str(value)


def _is_number(text: str) -> bool:
    return text == "-" or text.replace(",", "").replace(".", "", 1).rstrip("%").isdigit()


def when(moment: str | None) -> str:
    """An API timestamp as `YYYY-MM-DD HH:MM:SS UTC` (the API speaks UTC)."""
    if not moment:
        return "-"
    try:
        parsed = datetime.fromisoformat(moment)
    except ValueError:
        return moment
    return parsed.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if parsed.utcoffset() is not None else "")


def _took(broadcast: dict) -> str:
    try:
        started = datetime.fromisoformat(broadcast["created_at"])
        ended = datetime.fromisoformat(broadcast["finished_at"])
    except (KeyError, TypeError, ValueError):
        return ""
    seconds = (ended - started).total_seconds()
    return f" (after {seconds:.1f} s)" if seconds < 60 else f" (after {clock(seconds)})"


def _segments(broadcast: dict) -> str:
    segments = broadcast.get("segments")
    if isinstance(segments, dict):
        per, total = segments.get("per_message"), segments.get("total")
        text = f"{per} segment(s) per message"
        return text + (f", {total:,} in all" if isinstance(total, int) else "")
    if segments is None:
        return ""
    return f"{segments} segment(s) per message"


def intake_counts(counts: dict) -> str:
    return (
        f"{counts.get('accepted', 0):,} accepted, {counts.get('invalid', 0):,} invalid, "
        f"{counts.get('duplicates', 0):,} duplicates, "
        f"{counts.get('skipped', 0):,} skipped (opted out)"
    )


def accepted(body: dict) -> str:
    """The answer to a new broadcast (202)."""
    status = body.get("status", "?")
    lines = [
        f"broadcast  {body.get('id')}",
        f"status     {status}",
        f"sender     {body.get('sender') or '-'} ({(body.get('kind') or 'sms').upper()})",
        f"counts     {intake_counts(body.get('counts') or {})}",
        f"batches    {(body.get('batches') or {}).get('total', 0)}",
        f"encoding   {body.get('encoding') or '-'}, {_segments(body)}",
    ]
    invalid = body.get("invalid") or []
    for item in invalid:
        lines.append(f"invalid    #{item.get('index')} {item.get('value')!r}: {item.get('reason')}")
    shown = len(invalid)
    more = (body.get("counts") or {}).get("invalid", 0) - shown
    if shown and more > 0:
        lines.append(f"           ... and {more:,} more invalid")
    for warning in body.get("warnings") or []:
        lines.append(f"warning    {warning}")
    return "\n".join(lines)


def summary(broadcast: dict) -> str:
    """A broadcast as an operator reads it: state, intake, recipients, batches, errors."""
    status = broadcast.get("status", "?")
    if broadcast.get("status_reason"):
        status += f" ({broadcast['status_reason']})"
    kind = (broadcast.get("kind") or "sms").upper()
    lines = [
        f"broadcast  {broadcast.get('id')}",
        f"status     {status}",
        f"sender     {broadcast.get('sender') or '-'} ({kind}, "
        f"{broadcast.get('priority') or 'normal'} priority)",
        f"encoding   {broadcast.get('encoding') or '-'}, {_segments(broadcast)}",
        f"intake     {intake_counts(broadcast.get('counts') or {})}",
        f"created    {when(broadcast.get('created_at'))}",
    ]
    if broadcast.get("scheduled_at"):
        lines.append(f"scheduled  {when(broadcast['scheduled_at'])}")
    if broadcast.get("finished_at"):
        lines.append(f"finished   {when(broadcast['finished_at'])}{_took(broadcast)}")
    elif broadcast.get("updated_at"):
        lines.append(f"updated    {when(broadcast['updated_at'])}")
    progress = broadcast.get("progress")
    if isinstance(progress, dict) and "percent" in progress:
        line = (
            f"progress   {progress['percent']:.1f}% final "
            f"({progress.get('final', 0):,} of {progress.get('total', 0):,})"
        )
        rate = (broadcast.get("rate") or {}).get("messages_per_second")
        if rate is not None:
            line += f", {rate:,.1f} msg/s"
        if broadcast.get("status") not in FINAL_STATUSES and "eta_seconds" in broadcast:
            line += f", ETA {clock(broadcast['eta_seconds'])}"
        lines.append(line)
    if broadcast.get("waiting_for") and broadcast.get("status") not in FINAL_STATUSES:
        lines.append(f"waiting    for {broadcast['waiting_for']}")

    recipients = broadcast.get("recipients") or {}
    rows = ordered(recipients.get("by_status") or {})
    lines += ["", table(["recipients", "count"], [*rows, ("total", recipients.get("total", 0))])]

    batches = broadcast.get("batches")
    if isinstance(batches, dict):
        rows = sorted((batches.get("by_status") or {}).items())
        lines += ["", table(["batches", "count"], [*rows, ("total", batches.get("total", 0))])]

    errors = broadcast.get("errors") or {}
    if errors:
        rows = [
            (code, detail.get("count"), detail.get("meaning") or "")
            for code, detail in sorted(errors.items(), key=lambda item: -item[1].get("count", 0))
        ]
        lines += ["", table(["error", "count", "meaning"], rows)]
    return "\n".join(lines)


def limit_cell(limit: dict | None) -> str:
    """`5 msg/s (config)`; 0 is the API's word for no limit."""
    if not limit:
        return "-"
    value = limit.get("value")
    shown = "unlimited" if value == 0 else f"{_cell(value)} msg/s"
    return f"{shown} ({limit.get('source', '?')})"


def limits(body: dict) -> str:
    rows = [("account", limit_cell(body.get("sms_mps")), limit_cell(body.get("mms_mps")))]
    for sender, kinds in sorted((body.get("senders") or {}).items()):
        rows.append((sender, limit_cell(kinds.get("sms_mps")), limit_cell(kinds.get("mms_mps"))))
    return table(["scope", "sms", "mms"], rows)
