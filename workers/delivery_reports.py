"""Applying Plivo's delivery reports in bulk: read the Redis stream as a consumer group,
move each recipient forward (never back), commit, then acknowledge the entries."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime

import redis
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.orm import Session

from shared.config import Settings, get_settings
from shared.db import chunked, is_postgres, redis_client, session_scope
from shared.logs import log_event
from shared.models import Recipient, RecipientStatus, utcnow
from shared.opt_outs import add_opt_outs
from shared.plivo_codes import OPTED_OUT, meaning
from shared.status_events import GROUP, STREAM
from shared.taskqueue import APPLY_STATUS_EVENTS, WEBHOOKS_QUEUE, celery_app
from workers import batches

log = logging.getLogger(__name__)

# Delivery progress; a report only ever moves a recipient to a higher rank, so duplicates
# and late arrivals (a `sent` after `delivered`) change nothing.
RANK = {
    RecipientStatus.PENDING: 0,
    RecipientStatus.UNKNOWN: 0,
    RecipientStatus.QUEUED: 1,
    RecipientStatus.SENT: 2,
    RecipientStatus.DELIVERED: 3,
    RecipientStatus.UNDELIVERED: 3,
    RecipientStatus.FAILED: 3,
}
REPORTED = {"queued", "sent", "delivered", "undelivered", "failed", "rejected"}
CHUNK = 2000
RECLAIM_IDLE_MS = 30_000


@dataclass
class Report:
    message_uuid: str
    status: str
    sequence: int
    error_code: str | None
    units: int | None
    to: str

    @property
    def rank(self) -> int:
        return RANK[self.status]


def parse(fields: dict[str, str]) -> Report | None:
    status = (fields.get("Status") or "").lower()
    if status not in REPORTED:
        return None
    if status == "rejected":  # older docs: rejected before the carrier, i.e. failed
        status = RecipientStatus.FAILED
    units = fields.get("Units")
    sequence = fields.get("Sequence")
    return Report(
        message_uuid=fields.get("MessageUUID", ""),
        status=status,
        sequence=int(sequence) if sequence and sequence.isdigit() else 0,
        error_code=(fields.get("ErrorCode") or "").strip() or None,
        units=int(units) if units and units.isdigit() else None,
        to=fields.get("To", ""),
    )


def latest_per_message(reports: list[Report]) -> dict[str, Report]:
    """The furthest report per message (ties: the highest Sequence)."""
    best: dict[str, Report] = {}
    for report in reports:
        current = best.get(report.message_uuid)
        if current is None or (report.rank, report.sequence) > (current.rank, current.sequence):
            best[report.message_uuid] = report
    return best


def apply_reports(session: Session, reports: list[Report], await_reports: bool) -> dict:
    """Apply in one transaction; returns counts for the log and the tests."""
    best = latest_per_message(reports)
    rows = []
    for chunk in chunked(list(best)):
        rows += session.execute(
            select(
                Recipient.id, Recipient.message_uuid, Recipient.status, Recipient.broadcast_id
            ).where(Recipient.message_uuid.in_(chunk))
        ).all()
    now = utcnow()
    changes = []
    touched = set()
    for rid, message_uuid, status, broadcast_id in rows:
        report = best[message_uuid]
        if report.rank <= RANK.get(status, 3):
            continue
        final = report.rank == 3
        changes.append(
            {
                "rid": rid,
                "expected": status,
                "new_status": report.status,
                "code": report.error_code,
                "reason": meaning(report.error_code),
                "units": report.units,
                "sent_at": now if report.status == RecipientStatus.SENT else None,
                "finished_at": now if final else None,
            }
        )
        touched.add(broadcast_id)
    _update(session, changes, now)
    opted_out = {_e164(report.to) for report in best.values() if report.error_code == OPTED_OUT}
    if opted_out:
        add_opt_outs(session, opted_out, source="error_200", reason="Plivo error 200")
    for broadcast_id in touched:
        batches.finish_broadcast_if_done(session, broadcast_id, await_reports)
    unknown = len(best) - len(rows)
    return {"reports": len(reports), "applied": len(changes), "unknown_uuid": unknown}


def _e164(to: str) -> str:
    return to if to.startswith("+") else f"+{to}"


def _update(session: Session, changes: list[dict], now: datetime) -> None:
    if not changes:
        return
    if is_postgres(session):
        # One statement per chunk; the `expected` guard makes a concurrent applier harmless.
        session.execute(
            text(
                "UPDATE recipients AS r SET status = v.new_status, "
                "error_code = COALESCE(v.code, r.error_code), "
                "error_reason = COALESCE(v.reason, r.error_reason), "
                "units = COALESCE(v.units, r.units), "
                "sent_at = COALESCE(r.sent_at, v.sent_at), "
                "finished_at = COALESCE(v.finished_at, r.finished_at), updated_at = :now "
                "FROM unnest(CAST(:rid AS bigint[]), CAST(:expected AS text[]), "
                "CAST(:new_status AS text[]), CAST(:code AS text[]), CAST(:reason AS text[]), "
                "CAST(:units AS int[]), CAST(:sent_at AS timestamptz[]), "
                "CAST(:finished_at AS timestamptz[])) "
                "AS v(rid, expected, new_status, code, reason, units, sent_at, finished_at) "
                "WHERE r.id = v.rid AND r.status = v.expected"
            ),
            {key: [change[key] for change in changes] for key in changes[0]} | {"now": now},
        )
        return
    table = Recipient.__table__
    c = table.c
    session.execute(
        update(table)
        .where(c.id == bindparam("rid"), c.status == bindparam("expected"))
        .values(
            status=bindparam("new_status"),
            error_code=func.coalesce(bindparam("code"), c.error_code),
            error_reason=func.coalesce(bindparam("reason"), c.error_reason),
            units=func.coalesce(bindparam("units"), c.units),
            sent_at=func.coalesce(c.sent_at, bindparam("sent_at", type_=c.sent_at.type)),
            finished_at=func.coalesce(
                bindparam("finished_at", type_=c.finished_at.type), c.finished_at
            ),
            updated_at=now,
        ),
        changes,
    )


def _consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def drain(settings: Settings, budget_seconds: float = 5.0) -> dict[str, int]:
    """Apply what the stream holds, for up to `budget_seconds`. Entries another consumer
    read but never acknowledged (it died) are reclaimed after RECLAIM_IDLE_MS."""
    client = redis_client(settings.redis_url)
    _ensure_group(client)
    consumer = _consumer_name()
    totals = {"reports": 0, "applied": 0, "unknown_uuid": 0}
    deadline = time.monotonic() + budget_seconds
    _, reclaimed, _ = client.xautoclaim(
        STREAM, GROUP, consumer, RECLAIM_IDLE_MS, start_id="0-0", count=CHUNK
    )
    entries = reclaimed
    while True:
        if not entries:
            read = client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=CHUNK)
            entries = read[0][1] if read else []
        if not entries:
            break
        _apply_entries(settings, client, entries, totals)
        # A short read means the stream is drained: leave the rest to the next pass (beat,
        # every second) so reports are applied in bulk, not a few at a time.
        if len(entries) < CHUNK or time.monotonic() > deadline:
            break
        entries = []
    if totals["reports"]:
        log_event(log, "reports.applied", **totals)
    return totals


def _apply_entries(settings, client, entries, totals) -> None:
    ids = [entry_id for entry_id, _ in entries]
    reports = []
    for _, fields in entries:
        report = parse(json.loads(fields[b"e"]))
        if report is not None:
            reports.append(report)
    with session_scope(settings.database_url) as session:
        counts = apply_reports(session, reports, settings.status_callback_url is not None)
    # Only after the commit: a crash before this point leaves the entries pending, to be
    # reclaimed and applied again (harmless: reports only move recipients forward).
    client.xack(STREAM, GROUP, *ids)
    client.xdel(STREAM, *ids)
    if counts["unknown_uuid"]:
        log_event(log, "reports.unknown_uuid", logging.WARNING, count=counts["unknown_uuid"])
    for key in totals:
        totals[key] += counts[key]


@celery_app.task(name=APPLY_STATUS_EVENTS, queue=WEBHOOKS_QUEUE, ignore_result=True)
def apply_status_events() -> dict[str, int]:
    return drain(get_settings())
