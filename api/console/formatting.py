"""How the console writes numbers, times and durations (Jinja filters)."""

from __future__ import annotations

from datetime import datetime

from api.console import bp

# Recipient statuses in the order a message travels, for bars and tables.
RECIPIENT_ORDER = (
    "delivered",
    "sent",
    "queued",
    "pending",
    "undelivered",
    "failed",
    "rejected",
    "unknown",
    "skipped",
)


@bp.app_template_filter("count")
def count(value) -> str:
    return f"{int(value or 0):,}"


@bp.app_template_filter("duration")
def duration(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(float(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@bp.app_template_filter("when")
def when(value) -> str:
    """ISO 8601 from the API as `2030-01-31 09:00:05 UTC`."""
    if not value:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("label")
def label(status: str | None) -> str:
    return (status or "").replace("_", " ")


@bp.app_template_global()
def in_travel_order(by_status: dict) -> list[tuple[str, int]]:
    """(status, count) for the statuses present, in RECIPIENT_ORDER, then any others."""
    known = [(s, by_status[s]) for s in RECIPIENT_ORDER if by_status.get(s)]
    rest = [(s, n) for s, n in sorted(by_status.items()) if s not in RECIPIENT_ORDER and n]
    return known + rest


@bp.app_template_global()
def bar_segments(by_status: dict) -> list[dict]:
    """Recipients by status as segments of a 100-wide bar (SVG attributes, not inline
    styles: the CSP allows no style attribute)."""
    total = sum(by_status.values())
    segments, x = [], 0.0
    for status, number in in_travel_order(by_status):
        width = 100.0 * number / total if total else 0.0
        segments.append({"status": status, "count": number, "x": round(x, 3), "width": width})
        x += width
    return segments
