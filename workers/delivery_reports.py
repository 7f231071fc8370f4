"""Applying Plivo's delivery reports in bulk: take the due rows of `delivery_reports` (the
API committed them before answering 200), move each recipient forward (never back) and mark
the reports applied, in one transaction.

A report can beat the worker's write of its uuid (the callback races the send's commit), or
belong to a uuid we never record: it is kept, looked at again later and later, and after
ORPHAN_REPORT_AFTER marked an orphan (listed at GET /v1/delivery-reports/orphans, still
applied should its uuid appear). Applied reports are purged after RETENTION; until then
their nonces refuse replays."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ARRAY, any_, bindparam, case, delete, func, select, text, update
from sqlalchemy.orm import Session

from shared import metrics
from shared.config import Settings, get_settings
from shared.db import chunked, is_postgres, session_scope
from shared.logs import log_event
from shared.models import DeliveryReport, Recipient, RecipientStatus, utcnow
from shared.opt_outs import add_opt_outs
from shared.plivo_codes import OPTED_OUT, meaning
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
FINAL_RANK = 3  # any status not in RANK (rejected, skipped) is final too
REPORTED = {"queued", "sent", "delivered", "undelivered", "failed", "rejected"}
CHUNK = 2000  # reports per transaction

# A report whose uuid is not recorded yet is looked at again after half its age, between
# FIRST_RETRY and MAX_RETRY: the usual case (the send's commit is a moment late) is applied
# within seconds, and a thousand waiting reports cost a few statements a minute, not a
# rescan every second.
FIRST_RETRY = 2.0
MAX_RETRY = 60.0
# Orphans are still looked at, rarely: an operator may record a uuid by hand.
ORPHAN_RESCAN = 300.0
# Applied reports are kept this long so that a replayed signed request is still refused
# (Plivo's own retries span 7 minutes), then deleted, at most once per PURGE_EVERY.
RETENTION = timedelta(hours=24)
PURGE_EVERY = 600.0
PURGE_CHUNK = 5000


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
    counts, _recorded = _apply(session, reports, await_reports, list(best.values()))
    return counts


def _apply(
    session: Session, reports: list[Report], await_reports: bool, opting_out: list[Report]
) -> tuple[dict, set[str]]:
    """apply_reports, plus the uuids it found recorded (the others' reports must wait).
    Error 200 in `opting_out` adds the number to the opt-out list."""
    best = latest_per_message(reports)
    rows = []
    for condition in _in(session, Recipient.message_uuid, list(best)):
        rows += session.execute(
            select(
                Recipient.id, Recipient.message_uuid, Recipient.status, Recipient.broadcast_id
            ).where(condition)
        ).all()
    now = utcnow()
    changes = []
    touched = set()
    for rid, message_uuid, status, broadcast_id in rows:
        report = best[message_uuid]
        if report.rank <= RANK.get(status, FINAL_RANK):
            continue
        final = report.rank == FINAL_RANK
        changes.append(
            {
                "rid": rid,
                "new_rank": report.rank,
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
    metrics.messages_reported((c["new_status"], c["code"]) for c in changes)
    recorded = {message_uuid for _, message_uuid, _, _ in rows}
    opted_out = {_e164(report.to) for report in opting_out if report.error_code == OPTED_OUT}
    if opted_out:
        add_opt_outs(session, opted_out, source="error_200", reason="Plivo error 200")
    for broadcast_id in touched:
        batches.finish_broadcast_if_done(session, broadcast_id, await_reports)
    unknown = len(best) - len(rows)
    counts = {"reports": len(reports), "applied": len(changes), "unknown_uuid": unknown}
    return counts, recorded


def _in(session: Session, column, values: list) -> list:
    """`column IN values` as few conditions as the database allows: one array parameter on
    PostgreSQL (an IN list of thousands costs more to build than to run), SQLite's chunks."""
    if not values:
        return []
    if is_postgres(session):
        return [column == any_(bindparam("values", values, type_=ARRAY(column.type)))]
    return [column.in_(chunk) for chunk in chunked(values)]


def _e164(to: str) -> str:
    return to if to.startswith("+") else f"+{to}"


# The status's rank in SQL: the guard of the UPDATE compares ranks, not the status read
# earlier, so that two appliers holding reports of one message (a `sent` and a `delivered`)
# cannot make the later commit drop the further report.
_RANK_SQL = (
    "CASE r.status "
    + " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in RANK.items())
    + f" ELSE {FINAL_RANK} END"
)


def _update(session: Session, changes: list[dict], now: datetime) -> None:
    if not changes:
        return
    if is_postgres(session):
        # One statement per chunk.
        session.execute(
            text(
                "UPDATE recipients AS r SET status = v.new_status, "
                "error_code = COALESCE(v.code, r.error_code), "
                "error_reason = COALESCE(v.reason, r.error_reason), "
                "units = COALESCE(v.units, r.units), "
                "sent_at = COALESCE(r.sent_at, v.sent_at), "
                "finished_at = COALESCE(v.finished_at, r.finished_at), updated_at = :now "
                "FROM unnest(CAST(:rid AS bigint[]), CAST(:new_rank AS int[]), "
                "CAST(:new_status AS text[]), CAST(:code AS text[]), CAST(:reason AS text[]), "
                "CAST(:units AS int[]), CAST(:sent_at AS timestamptz[]), "
                "CAST(:finished_at AS timestamptz[])) "
                "AS v(rid, new_rank, new_status, code, reason, units, sent_at, finished_at) "
                f"WHERE r.id = v.rid AND {_RANK_SQL} < v.new_rank"
            ),
            {key: [change[key] for change in changes] for key in changes[0]} | {"now": now},
        )
        return
    table = Recipient.__table__
    c = table.c
    rank = case(RANK, value=c.status, else_=FINAL_RANK)
    session.execute(
        update(table)
        .where(c.id == bindparam("rid"), rank < bindparam("new_rank"))
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


def apply_due(session: Session, settings: Settings, now: datetime) -> dict[str, int]:
    """One bulk of due reports: apply those whose uuid is recorded and mark them applied;
    push the others back (and make the old ones orphans). Two appliers on PostgreSQL take
    disjoint rows (SKIP LOCKED)."""
    rows = session.execute(
        select(
            DeliveryReport.id,
            DeliveryReport.message_uuid,
            DeliveryReport.params,
            DeliveryReport.received_at,
            (DeliveryReport.due_at == DeliveryReport.received_at).label("first_look"),
            DeliveryReport.orphaned_at,
        )
        .where(DeliveryReport.applied_at.is_(None), DeliveryReport.due_at <= now)
        .order_by(DeliveryReport.due_at)
        .limit(CHUNK)
        .with_for_update(skip_locked=True)
    ).all()
    parsed = [(row, parse(row.params)) for row in rows]
    reports = [report for _, report in parsed if report is not None]
    # Error 200 says the number opted out whoever sent the message: acted on when the report
    # is first seen, uuid recorded or not, and never again (a later START must stand).
    first_looks = [report for row, report in parsed if report is not None and row.first_look]
    await_reports = settings.status_callback_url is not None
    counts, recorded = _apply(session, reports, await_reports, first_looks)
    # A status we do not track (Plivo's `read`, say) is done with as soon as it is seen.
    done = [row.id for row, report in parsed if report is None or row.message_uuid in recorded]
    metrics.reports_applied(now, [row for row, _ in parsed], done)
    for condition in _in(session, DeliveryReport.id, done):
        session.execute(
            update(DeliveryReport)
            .where(condition)
            .values(applied_at=now)
            .execution_options(synchronize_session=False)
        )
    waiting = [
        row for row, report in parsed if report is not None and row.message_uuid not in recorded
    ]
    orphaned = _push_back(session, settings, waiting, now)
    return {
        "reports": len(rows),
        "applied": counts["applied"],
        "waiting": len(waiting),
        "orphaned": orphaned,
    }


def _push_back(session: Session, settings: Settings, waiting: list, now: datetime) -> int:
    """Set each waiting report's next look (grouped by whole seconds: a few statements);
    those older than ORPHAN_REPORT_AFTER become orphans. Returns how many just did."""
    groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
    new_orphans = []
    for row in waiting:
        age = (now - row.received_at).total_seconds()
        orphan = row.orphaned_at is not None or age >= settings.orphan_report_after
        if orphan and row.orphaned_at is None:
            new_orphans.append(row)
        wait = ORPHAN_RESCAN if orphan else min(max(age / 2, FIRST_RETRY), MAX_RETRY)
        groups[(math.ceil(wait), orphan and row.orphaned_at is None)].append(row.id)
    for (wait, becomes_orphan), all_ids in groups.items():
        values = {"due_at": now + timedelta(seconds=wait)}
        if becomes_orphan:
            values["orphaned_at"] = now
        for condition in _in(session, DeliveryReport.id, all_ids):
            session.execute(
                update(DeliveryReport)
                .where(condition)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
    if new_orphans:
        log_event(
            log,
            "reports.orphaned",
            logging.WARNING,
            count=len(new_orphans),
            waited_seconds=settings.orphan_report_after,
            example_uuid=new_orphans[0].message_uuid,
        )
    return len(new_orphans)


def purge_applied(database_url: str, retention: timedelta = RETENTION) -> int:
    """Delete reports applied more than `retention` ago; returns how many."""
    cutoff = utcnow() - retention
    purged = 0
    while True:
        with session_scope(database_url) as session:
            oldest = (
                select(DeliveryReport.id)
                .where(DeliveryReport.applied_at < cutoff)
                .order_by(DeliveryReport.applied_at)
                .limit(PURGE_CHUNK)
            )
            deleted = session.execute(
                delete(DeliveryReport)
                .where(DeliveryReport.id.in_(oldest.scalar_subquery()))
                .execution_options(synchronize_session=False)
            ).rowcount
        purged += deleted
        if deleted < PURGE_CHUNK:
            return purged


_last_purge = -math.inf


def drain(settings: Settings, budget_seconds: float = 5.0) -> dict[str, int]:
    """Apply what is due, for up to `budget_seconds`, then purge old applied reports when
    that is due in this process."""
    global _last_purge
    totals = {"reports": 0, "applied": 0, "waiting": 0, "orphaned": 0, "purged": 0}
    deadline = time.monotonic() + budget_seconds
    while True:
        with session_scope(settings.database_url) as session:
            counts = apply_due(session, settings, utcnow())
        for key, value in counts.items():
            totals[key] += value
        # A short read means nothing more is due: leave what arrives next to the next pass
        # (beat, every second) so reports are applied in bulk, not a few at a time.
        if counts["reports"] < CHUNK or time.monotonic() > deadline:
            break
    if time.monotonic() - _last_purge >= PURGE_EVERY:
        _last_purge = time.monotonic()
        totals["purged"] = purge_applied(settings.database_url)
    if totals["reports"] or totals["purged"]:
        log_event(log, "reports.applied", **totals)
    return totals


@celery_app.task(name=APPLY_STATUS_EVENTS, queue=WEBHOOKS_QUEUE, ignore_result=True)
def apply_status_events() -> dict[str, int]:
    return drain(get_settings())
