"""The sending rate and delivery over time of one broadcast, as data for a server-rendered
SVG chart: handed to Plivo (from its batches) and delivered or failed (from delivery
reports), per time bucket. Counted in SQL from an index, so a 100,000-recipient broadcast
costs one statement, not a loop over its recipients."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Integer, bindparam, func, literal, select, union_all
from sqlalchemy.orm import Session

from shared.models import Batch, Broadcast, Recipient, UTCDateTime, as_utc, utcnow

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


# Stand-ins for "no bound" at either end, valid in both databases' date ranges.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _counts_by_bucket():
    """For each bucket (a row of a derived table, its bounds parameters), a count of each
    series over a range of the index on recipients (broadcast_id, status, finished_at), read
    alone: nothing is computed or hashed per recipient, so 100,000 recipients cost a few
    milliseconds on PostgreSQL. (Grouping by a bucket expression instead evaluated and
    hashed it once per recipient, and made up most of the page's time.) Built once: only
    the parameters change from one page to the next, so SQLAlchemy compiles it once too."""
    edges = union_all(*(
        select(
            literal(i, Integer).label("i"),
            bindparam(f"low{i}", type_=UTCDateTime()).label("low"),
            bindparam(f"high{i}", type_=UTCDateTime()).label("high"),
        )
        for i in range(BUCKETS)
    )).subquery("edges")  # fmt: skip

    def count(statuses: tuple[str, ...]):
        return (
            select(func.count())
            .where(
                Recipient.broadcast_id == bindparam("broadcast_id"),
                Recipient.status.in_(statuses),
                Recipient.finished_at >= edges.c.low,
                Recipient.finished_at < edges.c.high,
            )
            .scalar_subquery()
        )

    return select(edges.c.i, *(count(s) for s in REPORTED.values()))


COUNTS_BY_BUCKET = _counts_by_bucket()


def _reported(session: Session, broadcast: Broadcast, start: datetime, seconds: int) -> dict:
    """Recipients delivered, and failed or undelivered, per bucket of `finished_at`. The
    first and last buckets are open-ended, so a report stamped before the start or after the
    end still counts, at the edge."""
    bounds = [start + timedelta(seconds=seconds * i) for i in range(1, BUCKETS)]
    params: dict = {"broadcast_id": broadcast.id}
    for i, (low, high) in enumerate(zip([EARLIEST, *bounds], [*bounds, LATEST], strict=True)):
        params[f"low{i}"], params[f"high{i}"] = low, high
    reported = {name: [0.0] * BUCKETS for name in REPORTED}
    for index, *numbers in session.execute(COUNTS_BY_BUCKET, params):
        for name, number in zip(REPORTED, numbers, strict=True):
            reported[name][index] = float(number)
    return reported


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
    reported = _reported(session, broadcast, start, seconds)
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
