"""The sending rate and delivery over time of one broadcast, as data for a server-rendered
SVG chart: handed to Plivo (from its batches) and delivered or failed (from delivery
reports), per time bucket. Grouped in SQL, so a 100,000-recipient broadcast costs one
aggregate query, not a loop over its recipients."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from shared.models import Batch, Broadcast, Recipient, as_utc, utcnow

BUCKETS = 60
WIDTH, HEIGHT = 640, 200
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 48, 28, 10
REPORTED = {"delivered": ("delivered",), "failed": ("failed", "undelivered")}


@dataclass
class Series:
    name: str
    label: str
    values: list[float]  # messages per second in each bucket
    points: str = ""


@dataclass
class Chart:
    start: datetime
    bucket_seconds: int
    series: list[Series]
    peak: float
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.bucket_seconds * BUCKETS)

    @property
    def empty(self) -> bool:
        return self.peak == 0


def _bucket(session: Session, column, start: datetime, seconds: int):
    """The bucket number of `column` in SQL, on either database."""
    if session.get_bind().dialect.name == "postgresql":
        offset = func.extract("epoch", column - start)
        return cast(func.floor(offset / seconds), Integer)
    # SQLite keeps UTC as text; julianday() reads it (days as a float).
    start_text = start.replace(tzinfo=None).isoformat(sep=" ")
    offset = (func.julianday(column) - func.julianday(start_text)) * 86400.0
    return cast(offset / seconds, Integer)


def build(session: Session, broadcast: Broadcast) -> Chart:
    start = as_utc(broadcast.created_at)
    end = as_utc(broadcast.finished_at) if broadcast.finished_at else utcnow()
    span = max(1.0, (end - start).total_seconds())
    seconds = max(1, math.ceil(span / BUCKETS))
    handed = [0.0] * BUCKETS
    # Batches: at most a few hundred rows even for a huge broadcast.
    for submitted_at, size in session.execute(
        select(Batch.submitted_at, Batch.size).where(
            Batch.broadcast_id == broadcast.id, Batch.submitted_at.is_not(None)
        )
    ):
        index = int((as_utc(submitted_at) - start).total_seconds() // seconds)
        handed[min(max(index, 0), BUCKETS - 1)] += size
    reported = {name: [0.0] * BUCKETS for name in REPORTED}
    bucket = _bucket(session, Recipient.finished_at, start, seconds)
    wanted = [status for statuses in REPORTED.values() for status in statuses]
    rows = session.execute(
        select(bucket, Recipient.status, func.count())
        .where(
            Recipient.broadcast_id == broadcast.id,
            Recipient.status.in_(wanted),
            Recipient.finished_at.is_not(None),
        )
        .group_by(bucket, Recipient.status)
    ).all()
    for index, status, number in rows:
        name = "delivered" if status == "delivered" else "failed"
        reported[name][min(max(int(index or 0), 0), BUCKETS - 1)] += number
    series = [
        Series("handed", "handed to Plivo", [n / seconds for n in handed]),
        Series("delivered", "delivered", [n / seconds for n in reported["delivered"]]),
        Series("failed", "failed or undelivered", [n / seconds for n in reported["failed"]]),
    ]
    peak = max(max(s.values) for s in series)
    chart = Chart(start, seconds, series, peak)
    _plot(chart)
    return chart


def _plot(chart: Chart) -> None:
    inner_w = chart.width - PAD_LEFT - 8
    inner_h = chart.height - PAD_BOTTOM - PAD_TOP
    top = chart.peak or 1.0
    for series in chart.series:
        points = []
        for index, value in enumerate(series.values):
            x = PAD_LEFT + inner_w * (index + 0.5) / BUCKETS
            y = PAD_TOP + inner_h * (1 - value / top)
            points.append(f"{x:.1f},{y:.1f}")
        series.points = " ".join(points)


def geometry() -> dict:
    return {
        "left": PAD_LEFT,
        "right": WIDTH - 8,
        "top": PAD_TOP,
        "bottom": HEIGHT - PAD_BOTTOM,
    }
