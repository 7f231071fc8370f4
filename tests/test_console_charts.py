"""The broadcast page's chart counts each delivery report in the right time bucket, on both
databases: the counts come from ranges of an index, one per bucket, so an off-by-one at a
bucket's edge or a report outside the broadcast's span would show here."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import insert

from api.console import charts
from shared.db import session_scope
from shared.models import Batch, Broadcast, Recipient, utcnow


def test_reports_fall_in_their_buckets_and_the_edges_catch_the_rest(db):
    now = utcnow()
    start = now - timedelta(hours=3)  # finished an hour later: 60 buckets of 60 s
    bid = uuid.uuid4()
    at = {  # seconds after the start -> (status, how many)
        -30: ("delivered", 2),  # before the start: the first bucket
        0: ("delivered", 3),  # exactly on an edge: the bucket it opens
        59: ("failed", 1),
        60: ("undelivered", 4),  # failed or undelivered: one series
        61: ("delivered", 5),
        1800: ("rejected", 6),  # not a series of the chart
        3599: ("delivered", 7),
        7200: ("failed", 8),  # after the end (a late report): the last bucket
    }
    recipients, n = [], 0
    for offset, (status, count) in at.items():
        for _ in range(count):
            n += 1
            recipients.append({"broadcast_id": bid, "phone": f"+1415555{n:04d}", "status": status,
                               "finished_at": start + timedelta(seconds=offset)})  # fmt: skip
    recipients.append({"broadcast_id": bid, "phone": "+14155559999", "status": "delivered"})
    with session_scope(db) as session:
        session.execute(insert(Broadcast), [{
            "id": bid, "kind": "sms", "sender": "+14155550000", "text": "Hi", "encoding": "GSM",
            "segments": 1, "status": "completed", "counts": {}, "api_key_id": "k",
            "created_at": start, "updated_at": start, "finished_at": start + timedelta(hours=1),
        }])  # fmt: skip
        session.execute(insert(Batch), [
            {"broadcast_id": bid, "seq": 1, "size": 30, "status": "submitted",
             "submitted_at": start + timedelta(seconds=90)},
            {"broadcast_id": bid, "seq": 2, "size": 10, "status": "pending"},
        ])  # fmt: skip
        session.execute(insert(Recipient), recipients)
    with session_scope(db) as session:
        chart = charts.build(session, session.get(Broadcast, bid))

    assert chart.bucket_seconds == 60
    counts = {s.name: [round(v * chart.bucket_seconds) for v in s.values] for s in chart.series}
    expected = {name: [0] * charts.BUCKETS for name in ("handed", "delivered", "failed")}
    expected["handed"][1] = 30
    expected["delivered"][0] = 2 + 3
    expected["delivered"][1] = 5
    expected["delivered"][59] = 7
    expected["failed"][0] = 1
    expected["failed"][1] = 4
    expected["failed"][59] = 8
    assert counts == expected
    assert chart.peak == 30 / 60
    assert chart.series[1].points.count(",") == charts.BUCKETS
