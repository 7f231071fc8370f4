"""The status sweep: carriers often send no final report, and a lost callback is never sent
again. A recipient still `queued`/`sent` REPORT_TIMEOUT after its batch was submitted is
looked up at Plivo (Message Get) and takes Plivo's state, forward only; one Plivo still
shows only `queued`/`sent` is marked checked and counts as final ("sent, no delivery
report"), so every broadcast completes."""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import metrics
from shared.config import Settings
from shared.db import chunked, session_scope
from shared.logs import log_event
from shared.models import (
    Batch,
    BatchStatus,
    Broadcast,
    BroadcastStatus,
    Recipient,
    RecipientStatus,
    utcnow,
)
from shared.plivo_client import ErrorKind, MessageNotFound, PlivoError, client_for
from shared.taskqueue import SWEEP_REPORTS, SWEEP_REPORTS_EVERY
from workers import batches, delivery_reports
from workers.plivo_lookups import LookupBudget, as_report, exclusive_pass, log_lookup_error

log = logging.getLogger(__name__)

# The sweep may use this share of the account's request limit; sends need the rest (and
# far fewer: one request per batch of up to 1000 messages).
REQUEST_SHARE = 0.25
# A lookup that would wait longer than this for the request limiter means sends are busy:
# the pass ends and leaves the rest to the next one.
MAX_WAIT = 0.5
# A pass shares its worker with the reconciler and the report applier: keep it short.
PASS_SECONDS = 2.0
LOOKUP_THREADS = 4
# Longer than any pass can take (a few seconds plus one slow Plivo answer).
PASS_LOCK_SECONDS = 60.0
# Results are written every so many lookups, so a crash mid-pass loses little.
WRITE_EVERY = 50
WAITING = (RecipientStatus.QUEUED, RecipientStatus.SENT)
FINAL = (RecipientStatus.DELIVERED, RecipientStatus.UNDELIVERED, RecipientStatus.FAILED)
NOT_FOUND_REASON = "no record at Plivo (Message Get: 404)"


@dataclass
class Lookup:
    recipient_id: int
    broadcast_id: uuid.UUID
    message_uuid: str


@dataclass
class Findings:
    """What one run of lookups learnt, to be written in one transaction."""

    checked: list[Lookup] = field(default_factory=list)
    reports: list[delivery_reports.Report] = field(default_factory=list)
    not_found: list[int] = field(default_factory=list)


def lookups_per_pass(settings: Settings) -> int:
    """REQUEST_SHARE of the requests the account allows in one pass interval."""
    per_second = settings.request_limit * (1 - settings.request_margin) / settings.request_window
    return max(1, int(REQUEST_SHARE * per_second * SWEEP_REPORTS_EVERY))


def due_lookups(session: Session, settings: Settings, limit: int) -> list[Lookup]:
    """Recipients still waiting for a final report REPORT_TIMEOUT after their batch was
    submitted, oldest batch first. Only broadcasts still open: a finished one has none."""
    cutoff = utcnow() - timedelta(seconds=settings.report_timeout)
    rows = session.execute(
        select(Recipient.id, Recipient.broadcast_id, Recipient.message_uuid)
        .join(Batch, Batch.id == Recipient.batch_id)
        .join(Broadcast, Broadcast.id == Batch.broadcast_id)
        .where(
            Broadcast.status.not_in(BroadcastStatus.FINAL),
            Batch.status == BatchStatus.SUBMITTED,
            Batch.submitted_at <= cutoff,
            Recipient.status.in_(WAITING),
            Recipient.report_checked_at.is_(None),
            Recipient.message_uuid.is_not(None),
        )
        .order_by(Batch.submitted_at, Recipient.id)
        .limit(limit)
    ).all()
    return [Lookup(*row) for row in rows]


def record_findings(session: Session, findings: Findings, await_reports: bool) -> None:
    """Plivo's states, applied like delivery reports (forward only, opt-outs on error 200);
    every recipient looked up is marked checked, and its broadcast completed if done."""
    if findings.reports:
        delivery_reports.apply_reports(session, findings.reports, await_reports)
    now = utcnow()
    for chunk in chunked(findings.not_found):
        session.execute(
            update(Recipient)
            .where(Recipient.id.in_(chunk), Recipient.status.in_(WAITING))
            .values(error_reason=NOT_FOUND_REASON, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    for chunk in chunked([lookup.recipient_id for lookup in findings.checked]):
        session.execute(
            update(Recipient)
            .where(Recipient.id.in_(chunk))
            .values(report_checked_at=now)
            .execution_options(synchronize_session=False)
        )
    for broadcast_id in {lookup.broadcast_id for lookup in findings.checked}:
        batches.finish_broadcast_if_done(session, broadcast_id, await_reports)


def sweep(settings: Settings) -> dict[str, int]:
    """One bounded pass. Only with delivery reports on: without them nothing waits for a
    report, and looking up every message would spend the account's requests for nothing."""
    counts = {"due": 0, "looked_up": 0, "final": 0, "still_sent": 0, "not_found": 0, "errors": 0}
    if settings.status_callback_url is None:
        return counts
    try:
        with exclusive_pass(settings.redis_url, SWEEP_REPORTS, PASS_LOCK_SECONDS) as mine:
            if mine:
                _sweep(settings, counts)
    except redis.RedisError as error:
        # No limiter, no lookups: the next pass tries again.
        log_lookup_error("sweep.redis_unavailable", error)
    metrics.sweep_pass(counts)
    if counts["looked_up"] or counts["errors"]:
        log_event(log, "sweep.pass", **counts)
    return counts


def _sweep(settings: Settings, counts: dict[str, int]) -> None:
    limit = lookups_per_pass(settings)
    with session_scope(settings.database_url) as session:
        due = due_lookups(session, settings, limit)
    counts["due"] = len(due)
    if not due:
        return
    budget = LookupBudget(settings, PASS_SECONDS, limit, MAX_WAIT)
    await_reports = settings.status_callback_url is not None
    findings = Findings()
    # A few lookups in flight at once: one at a time, a round trip to Plivo each, a pass
    # would look up too few to ever catch up with a large broadcast.
    with ThreadPoolExecutor(LOOKUP_THREADS) as pool:
        answers = pool.map(lambda lookup: _look_up(settings, budget, lookup), due)
        for lookup, answer in zip(due, answers, strict=True):
            if answer is _SKIPPED:
                continue
            if isinstance(answer, PlivoError):
                counts["errors"] += 1
                log_lookup_error("sweep.lookup_failed", answer, status=answer.status)
                if answer.kind is not ErrorKind.PERMANENT:
                    continue  # asked again on a later pass
                # Refused for good (a 4xx on this uuid): asking every pass would not help.
            elif answer is None:
                findings.not_found.append(lookup.recipient_id)
                counts["not_found"] += 1
            else:
                report = as_report(answer)
                if report is not None:
                    findings.reports.append(report)
                final = report is not None and report.status in FINAL
                counts["final" if final else "still_sent"] += 1
            findings.checked.append(lookup)
            counts["looked_up"] += 1
            if len(findings.checked) >= WRITE_EVERY:
                _write(settings, findings, await_reports)
                findings = Findings()
    _write(settings, findings, await_reports)


_SKIPPED = object()


def _look_up(settings: Settings, budget: LookupBudget, lookup: Lookup):
    """Plivo's record, None when Plivo has none, a PlivoError, or _SKIPPED (no budget)."""
    if not budget.take():
        return _SKIPPED
    try:
        return client_for(settings).get_message(lookup.message_uuid)
    except MessageNotFound:
        return None
    except PlivoError as error:
        if error.kind is not ErrorKind.PERMANENT:
            # Rate-limited, Plivo unwell, or the account refused: stop for this pass.
            budget.exhausted = True
        return error


def _write(settings: Settings, findings: Findings, await_reports: bool) -> None:
    if findings.checked:
        with session_scope(settings.database_url) as session:
            record_findings(session, findings, await_reports)
