"""Automatic resolution of `unknown` batches: an attempt whose Plivo call may or may not
have gone through (a read timeout, a 500/504, a worker killed mid-call) is looked up in
Plivo's message list once it is UNKNOWN_RESOLVE_AFTER old, and each recipient matched by
destination among the sender's outbound messages of the attempt's time window.

Found: the recipient gets its uuid and Plivo's state. Not found: it was not sent, and with
RESEND_UNSENT it goes back to `pending` with its batch, to be sent once. `unknown` stays
only where Plivo could not be asked, and the batch says why.

Message list allows 20 requests a minute of 20 records each, so a 1000-recipient batch
takes ~50 pages, 2.5 minutes of the list budget. Each pass makes only the list requests due
now (a short pass on the maintenance worker, never in a send task), and the progress of a
batch (window offset, destinations found absent) is kept in Redis between passes; lost, the
search starts over, which costs budget but is never wrong, since every match is written to
the database as soon as it is found."""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared import metrics
from shared.config import Settings
from shared.db import chunked, redis_client, session_scope
from shared.logs import log_event
from shared.models import (
    Batch,
    BatchStatus,
    Broadcast,
    BroadcastStatus,
    Recipient,
    RecipientStatus,
    as_utc,
    utcnow,
)
from shared.plivo_client import (
    LIST_PAGE_SIZE,
    MessagePage,
    MessageRecord,
    PlivoClient,
    PlivoError,
    client_for,
)
from shared.taskqueue import RESOLVE_UNKNOWN
from workers import batches, delivery_reports
from workers.plivo_lookups import LookupBudget, as_report, exclusive_pass, log_lookup_error

log = logging.getLogger(__name__)

# Our clock against Plivo's (message_time has whole seconds): the window is widened by this
# on both sides. Too narrow and a sent message is missed and texted again; each second
# wider costs pages when the sender is busy.
CLOCK_SKEW = timedelta(seconds=5)
# Up to this many destinations, one `to_number` query each beats scanning the window.
PER_DESTINATION_MAX = 3
# A search that could not ask Plivo tries again after a backoff, this many times in all;
# then the batch stays `unknown`, resolved with the reason, so its broadcast can finish.
MAX_RESOLVE_ATTEMPTS = 8
BACKOFF_MAX = timedelta(hours=1)
BATCHES_PER_PASS = 20
PASS_SECONDS = 3.0
# Longer than any pass can take (a few seconds plus one slow Plivo answer).
PASS_LOCK_SECONDS = 60.0
STATE_TTL_SECONDS = 2 * 24 * 3600
FINISHED = (BroadcastStatus.COMPLETED, BroadcastStatus.COMPLETED_WITH_FAILURES)


@dataclass
class Attempt:
    """The ambiguous attempt of one batch, read in one short transaction."""

    batch_id: int
    broadcast_id: uuid.UUID
    broadcast_status: str
    sender: str
    started: datetime
    attempts: int
    resolve_attempts: int
    unknown: dict[str, int]  # E.164 → recipient id, still `unknown`

    def window(self, settings: Settings) -> tuple[datetime, datetime]:
        # Plivo stamps message_time when it accepts the call, within the call's timeout.
        return (
            self.started - CLOCK_SKEW,
            self.started + timedelta(seconds=settings.plivo_timeout) + CLOCK_SKEW,
        )


@dataclass
class Search:
    """How far the search of one attempt has got; kept in Redis between passes."""

    mode: str = ""  # "window" (page through the window) or "destination" (one per number)
    offset: int = 0
    absent: list[int] = field(default_factory=list)  # recipient ids no query found
    total: int = 0  # unknown recipients when the search began
    found: int = 0
    requests: int = 0
    done: bool = False


def due_batches(session: Session, settings: Settings) -> list[int]:
    """`unknown` batches not yet resolved whose attempt is UNKNOWN_RESOLVE_AFTER old (a
    record can appear at Plivo a little after acceptance) and whose next try is due."""
    now = utcnow()
    old_enough = now - timedelta(seconds=settings.unknown_resolve_after)
    started = Batch.submitting_at
    return list(
        session.scalars(
            select(Batch.id)
            .where(
                Batch.status == BatchStatus.UNKNOWN,
                Batch.resolved_at.is_(None),
                (Batch.resolve_after.is_(None)) | (Batch.resolve_after <= now),
                # Rows from before submitting_at existed: their last update is a bound.
                (started.is_(None) & (Batch.updated_at <= old_enough)) | (started <= old_enough),
            )
            .order_by(Batch.resolve_after, Batch.id)
            .limit(BATCHES_PER_PASS)
        )
    )


def resolve(settings: Settings) -> dict[str, int]:
    """One short pass over the due batches, within the list budget."""
    counts = {"resolved": 0, "in_progress": 0, "unreachable": 0, "requests": 0}
    try:
        with exclusive_pass(settings.redis_url, RESOLVE_UNKNOWN, PASS_LOCK_SECONDS) as mine:
            if mine:
                _resolve(settings, counts)
    except redis.RedisError as error:
        log_lookup_error("resolution.redis_unavailable", error)
    metrics.resolution_pass(counts)
    if counts["requests"] or counts["resolved"] or counts["unreachable"]:
        log_event(log, "resolution.pass", **counts)
    return counts


def _resolve(settings: Settings, counts: dict[str, int]) -> None:
    with session_scope(settings.database_url) as session:
        due = due_batches(session, settings)
    if not due:
        return
    budget = LookupBudget(settings, PASS_SECONDS, max_requests=10_000)
    client = client_for(settings)
    try:
        for batch_id in due:
            outcome = resolve_batch(settings, client, budget, batch_id)
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "unreachable" or budget.exhausted:
                break
    finally:
        counts["requests"] = budget.used


def resolve_batch(
    settings: Settings, client: PlivoClient, budget: LookupBudget, batch_id: int
) -> str:
    """Search on for one batch as far as the budget allows; returns "resolved",
    "in_progress" or "unreachable" (Plivo could not be asked)."""
    with session_scope(settings.database_url) as session:
        attempt = load_attempt(session, batch_id)
    if attempt is None:
        return "resolved"  # someone else got there (a late answer, an operator)
    store = _SearchStore(settings.redis_url, attempt)
    search = store.load() or Search(total=len(attempt.unknown))
    if not search.mode:
        search.mode = "destination" if len(attempt.unknown) <= PER_DESTINATION_MAX else "window"
    try:
        while not search.done and attempt.unknown:
            if search.mode == "window":
                if not _window_step(settings, client, budget, attempt, search):
                    break
            elif not _destination_step(settings, client, budget, attempt, search):
                break
            store.save(search)
    except PlivoError as error:
        store.save(search)
        if error.status == 429:
            # Plivo's list limit, spent elsewhere on the account: not a failure to count.
            budget.exhausted = True
            return "in_progress"
        with session_scope(settings.database_url) as session:
            give_up = record_unreachable(session, attempt, error, settings)
        log_lookup_error(
            "resolution.unreachable", error, batch_id=batch_id, status=error.status, gave_up=give_up
        )
        return "unreachable"
    if attempt.unknown and not search.done:
        with session_scope(settings.database_url) as session:
            _show_progress(session, attempt, search)
        return "in_progress"
    with session_scope(settings.database_url) as session:
        conclude(session, settings, attempt, search)
    store.delete()
    return "resolved"


def load_attempt(session: Session, batch_id: int) -> Attempt | None:
    row = session.execute(
        select(
            Batch.broadcast_id,
            Broadcast.status,
            # A pooled broadcast's batch was sent from its own sender.
            func.coalesce(Batch.sender, Broadcast.sender),
            Batch.submitting_at,
            Batch.updated_at,
            Batch.attempts,
            Batch.resolve_attempts,
        )
        .join(Broadcast, Broadcast.id == Batch.broadcast_id)
        .where(
            Batch.id == batch_id,
            Batch.status == BatchStatus.UNKNOWN,
            Batch.resolved_at.is_(None),
        )
    ).first()
    if row is None:
        return None
    broadcast_id, status, sender, submitting_at, updated_at, attempts, resolve_attempts = row
    unknown = session.execute(
        select(Recipient.phone, Recipient.id).where(
            Recipient.batch_id == batch_id, Recipient.status == RecipientStatus.UNKNOWN
        )
    ).all()
    return Attempt(
        batch_id=batch_id,
        broadcast_id=broadcast_id,
        broadcast_status=status,
        sender=sender,
        # Without submitting_at (rows from before it existed) the call began at most a
        # lease before the batch was marked unknown.
        started=as_utc(submitting_at) if submitting_at else as_utc(updated_at),
        attempts=attempts,
        resolve_attempts=resolve_attempts or 0,
        unknown=dict(unknown),
    )


def _window_step(settings, client, budget, attempt: Attempt, search: Search) -> bool:
    """One page of the attempt's window. Switches to per-destination queries when the rest
    of the window (other traffic of a busy sender) would cost more pages than numbers left."""
    if not budget.take_list():
        return False
    start, end = attempt.window(settings)
    page = client.list_messages(attempt.sender, start, end, offset=search.offset)
    search.requests += 1
    _record_matches(settings, attempt, search, page.records)
    if not page.has_next:
        search.done = True
        return True
    search.offset = page.next_offset or search.offset + len(page.records)
    if _pages_left(page, search.offset) > len(attempt.unknown):
        search.mode = "destination"
    return True


def _pages_left(page: MessagePage, offset: int) -> int:
    # Without a total there is nothing to weigh: keep paging.
    if page.total_count is None:
        return 0
    return math.ceil(max(page.total_count - offset, 0) / LIST_PAGE_SIZE)


def _destination_step(settings, client, budget, attempt: Attempt, search: Search) -> bool:
    """One `to_number` query for the next destination not yet looked for."""
    absent = set(search.absent)
    todo = sorted(phone for phone, rid in attempt.unknown.items() if rid not in absent)
    if not todo:
        search.done = True
        return True
    if not budget.take_list():
        return False
    phone = todo[0]
    start, end = attempt.window(settings)
    # One page: more than 20 messages to one number in a window of seconds is not a
    # broadcast; the first one not recorded elsewhere is this attempt's.
    page = client.list_messages(attempt.sender, start, end, to_number=phone)
    search.requests += 1
    rid = attempt.unknown[phone]
    _record_matches(settings, attempt, search, page.records)
    if phone in attempt.unknown:
        search.absent.append(rid)
    return True


def _record_matches(settings, attempt: Attempt, search: Search, records) -> None:
    """Match Plivo's records to this attempt's unknown recipients by destination and
    write every match at once (uuid and Plivo's state)."""
    candidates = [record for record in records if record.to in attempt.unknown]
    if not candidates:
        return
    with session_scope(settings.database_url) as session:
        # A uuid we already hold belongs to another send to the same number (another
        # broadcast, the same moment): never this attempt's.
        known = set(
            session.scalars(
                select(Recipient.message_uuid).where(
                    Recipient.message_uuid.in_([record.uuid for record in candidates])
                )
            )
        )
        matches: dict[int, MessageRecord] = {}
        for record in candidates:
            rid = attempt.unknown.get(record.to)
            if rid is not None and record.uuid not in known and rid not in matches:
                matches[rid] = record
        found = record_found(session, matches, settings.status_callback_url is not None)
    for record in matches.values():
        attempt.unknown.pop(record.to, None)
    search.found += found


def record_found(session: Session, matches: dict[int, MessageRecord], await_reports: bool) -> int:
    """Recipients found at Plivo: their uuid, then Plivo's state applied like a delivery
    report (forward only; error 200 adds an opt-out)."""
    now = utcnow()
    found = 0
    for rid, record in matches.items():
        found += session.execute(
            update(Recipient)
            .where(Recipient.id == rid, Recipient.status == RecipientStatus.UNKNOWN)
            .values(
                message_uuid=record.uuid,
                status=RecipientStatus.QUEUED,
                error_code=None,
                error_reason=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
    reports = [report for report in map(as_report, matches.values()) if report is not None]
    if reports:
        delivery_reports.apply_reports(session, reports, await_reports)
    return found


def conclude(session: Session, settings: Settings, attempt: Attempt, search: Search) -> None:
    """The search is complete: whoever is still `unknown` was not sent. The batch ends
    `submitted` (all found), back in `pending` for the rest (RESEND_UNSENT), or resolved
    with its unsent recipients explained; the broadcast completes if that was all."""
    now = utcnow()
    unsent = list(attempt.unknown.values())
    found = search.found
    total = max(search.total, found + len(unsent))
    summary = f"found {found} of {total} at Plivo"
    batch = update(Batch).where(
        Batch.id == attempt.batch_id,
        Batch.status == BatchStatus.UNKNOWN,
        Batch.resolved_at.is_(None),
    )
    closed = {"claim_token": None, "lease_expires_at": None, "resolved_at": now, "updated_at": now}
    if not unsent:
        resolution = summary if total else "nothing left to resolve (retried meanwhile)"
        session.execute(
            batch.values(
                status=BatchStatus.SUBMITTED,
                submitted_at=attempt.started,
                resolution=resolution,
                **closed,
            )
        )
    elif (
        settings.resend_unsent
        and attempt.broadcast_status not in FINISHED
        and (attempt.attempts <= settings.max_retries)
    ):
        resolution = f"{summary}; {len(unsent)} not sent, back to pending"
        _set_recipients(session, unsent, RecipientStatus.PENDING, None, now)
        # Due at once and without a task: the reconciler enqueues it on its next pass.
        # The slot booked for the ambiguous attempt is spent: it books a new one.
        values = {"not_before": None, "slot_at": None, "enqueued_at": None}
        session.execute(
            batch.values(status=BatchStatus.PENDING, resolution=resolution, **values, **closed)
        )
    else:
        if not settings.resend_unsent:
            why, status = "not re-sent: RESEND_UNSENT is off", RecipientStatus.UNKNOWN
        elif attempt.broadcast_status in FINISHED:
            why, status = "not re-sent: the broadcast had finished", RecipientStatus.UNKNOWN
        else:
            why = f"failed: {attempt.attempts} attempts, none certain"
            status = RecipientStatus.FAILED
        resolution = f"{summary}; {len(unsent)} not sent ({why})"
        reason = f"not sent: Plivo has no record of it ({why})"
        _set_recipients(session, unsent, status, reason, now)
        final_status = BatchStatus.SUBMITTED if found else BatchStatus.UNKNOWN
        values = {"submitted_at": attempt.started} if found else {}
        session.execute(
            batch.values(status=final_status, resolution=resolution, **values, **closed)
        )
    metrics.unknown_batch_resolved(found, len(unsent))
    log_event(
        log,
        "batch.resolved",
        batch_id=attempt.batch_id,
        broadcast_id=attempt.broadcast_id,
        found=found,
        not_sent=len(unsent),
        requests=search.requests,
        resolution=json.dumps(resolution),
    )
    batches.finish_broadcast_if_done(
        session, attempt.broadcast_id, settings.status_callback_url is not None
    )


def record_unreachable(
    session: Session, attempt: Attempt, error: PlivoError, settings: Settings
) -> bool:
    """Plivo could not be asked: try again after a backoff, or after MAX_RESOLVE_ATTEMPTS
    leave the batch `unknown` for good, saying why. Returns True when it gave up."""
    now = utcnow()
    tries = attempt.resolve_attempts + 1
    base = timedelta(seconds=settings.unknown_resolve_after)
    retry_at = now + min(base * 2 ** (tries - 1), BACKOFF_MAX)
    give_up = tries >= MAX_RESOLVE_ATTEMPTS
    if give_up:
        resolution = f"Plivo could not be asked ({tries} tries; last: {error}); still unknown"
    else:
        resolution = f"Plivo could not be asked ({error}); try {tries + 1} at {retry_at:%H:%M:%S}Z"
    session.execute(
        update(Batch)
        .where(
            Batch.id == attempt.batch_id,
            Batch.status == BatchStatus.UNKNOWN,
            Batch.resolved_at.is_(None),
        )
        .values(
            resolve_attempts=tries,
            resolve_after=retry_at,
            resolution=resolution[:2000],
            resolved_at=now if give_up else None,
            updated_at=now,
        )
    )
    if give_up:
        batches.finish_broadcast_if_done(
            session, attempt.broadcast_id, settings.status_callback_url is not None
        )
    return give_up


def _show_progress(session: Session, attempt: Attempt, search: Search) -> None:
    """What operators see while a large search is spread over passes."""
    session.execute(
        update(Batch)
        .where(
            Batch.id == attempt.batch_id,
            Batch.status == BatchStatus.UNKNOWN,
            Batch.resolved_at.is_(None),
        )
        .values(
            resolution=(
                f"searching Plivo: {search.found} of {search.total} found so far "
                f"({search.requests} list requests)"
            )
        )
        .execution_options(synchronize_session=False)
    )


def _set_recipients(
    session: Session, ids: list[int], status: str, reason: str | None, now: datetime
) -> None:
    for chunk in chunked(ids):
        session.execute(
            update(Recipient)
            .where(Recipient.id.in_(chunk), Recipient.status == RecipientStatus.UNKNOWN)
            .values(status=status, error_reason=reason, updated_at=now)
            .execution_options(synchronize_session=False)
        )


class _SearchStore:
    """One attempt's Search in Redis; the key names the attempt, so a batch re-sent and
    ambiguous again starts a fresh search."""

    def __init__(self, redis_url: str, attempt: Attempt) -> None:
        self._client = redis_client(redis_url)
        stamp = f"{attempt.started.timestamp():.6f}"
        self._key = f"bulksms:resolve:{attempt.batch_id}:{stamp}"

    def load(self) -> Search | None:
        raw = self._client.get(self._key)
        return Search(**json.loads(raw)) if raw else None

    def save(self, search: Search) -> None:
        self._client.set(self._key, json.dumps(asdict(search)), ex=STATE_TTL_SECONDS)

    def delete(self) -> None:
        self._client.delete(self._key)
