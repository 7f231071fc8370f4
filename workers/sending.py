"""The send tasks: one batch, one paced Plivo call, every outcome written back to the database."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy.exc import SQLAlchemyError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from shared import metrics
from shared.config import Settings, get_settings
from shared.db import session_scope
from shared.logs import log_event
from shared.models import BatchStatus, RecipientStatus, utcnow
from shared.plivo_client import ErrorKind, PlivoError, SendResult, client_for
from shared.quiet_hours import parse_window, release_at
from shared.taskqueue import (
    MMS_QUEUE,
    SEND_MMS_BATCH,
    SEND_SMS_BATCH,
    SMS_QUEUE,
    EnqueueError,
    celery_app,
    enqueue_batches,
)
from shared.timelines import booking_member, give_back, leave_line
from workers import batches
from workers.pacing import Pacer

log = logging.getLogger(__name__)

SLEEP_SLACK = 0.25

_settings = get_settings()


def per_worker_rate(mps: float, batch_size: int) -> str | None:
    """Celery's rate_limit counts tasks per worker process, so it cannot be the real limit
    (N workers would send N times it): without global pacing it is all there is (the naive
    setup, for bench/pacing.py). With global pacing there is none: a batch's task runs
    several times while it waits its turn in its sender's line, and a task Celery holds
    back for its rate limit still fills the worker's prefetch window, so the worker stops
    taking tasks (measured: about one a second) and every batch's turn comes late."""
    if not mps or _settings.global_pacing:
        return None
    return f"{mps * 60 / batch_size:.6g}/m"


class RetryLater(Exception):
    """A transient failure: nothing was sent and the batch is pending again."""

    def __init__(self, error: PlivoError):
        super().__init__(str(error))
        self.error = error


RETRY_OPTIONS = {
    "bind": True,
    "autoretry_for": (RetryLater,),
    # Exponential backoff with full jitter, capped below the broker's visibility timeout.
    "retry_backoff": _settings.retry_backoff,
    "retry_backoff_max": int(_settings.retry_backoff_max),
    "retry_jitter": True,
    # deliver_batch gives up (batch `failed`) first; this only bounds Celery's own count.
    "max_retries": _settings.max_retries + 1,
}


@celery_app.task(
    name=SEND_SMS_BATCH,
    queue=SMS_QUEUE,
    rate_limit=per_worker_rate(_settings.effective_sms_mps, _settings.batch_size),
    **RETRY_OPTIONS,
)
def send_sms_batch(self, batch_id: int, broadcast_id: str | None = None) -> dict:
    """Claim batch `batch_id`, wait for its slot, send it in one Plivo call, record it."""
    return deliver_batch(get_settings(), batch_id, attempt=self.request.retries)


@celery_app.task(
    name=SEND_MMS_BATCH,
    queue=MMS_QUEUE,
    rate_limit=per_worker_rate(_settings.mms_mps, _settings.mms_batch_size),
    **RETRY_OPTIONS,
)
def send_mms_batch(self, batch_id: int, broadcast_id: str | None = None) -> dict:
    """The same life as an SMS batch, on its own queue and paced at the MMS rate."""
    return deliver_batch(get_settings(), batch_id, attempt=self.request.retries)


def deliver_batch(settings: Settings, batch_id: int, attempt: int = 0) -> dict:
    """The whole life of one attempt at one batch; the task is a thin shell around it."""
    url = settings.database_url
    lease = timedelta(seconds=settings.lease_seconds)
    early = timedelta(seconds=settings.pacing_lead)
    with session_scope(url) as session:
        token = batches.claim_batch(session, batch_id, lease, early)
    if token is None:
        log_event(log, "batch.not_claimed", batch_id=batch_id)
        return {"batch_id": batch_id, "outcome": "not_claimed"}
    with session_scope(url) as session:
        job = batches.load_job(session, batch_id)
    until = quiet_until(job)
    if until is not None:
        return _hold(settings, batch_id, token, job, until)

    if job.recipients and settings.global_pacing:
        try:
            wait = _wait_for_slot(settings, batch_id, token, job)
        except redis.RedisError as error:
            # No pacing, no sending: hand the batch back for the reconciler to re-enqueue
            # once Redis answers again, rather than hold it until the lease expires.
            with session_scope(url) as session:
                batches.release(
                    session, batch_id, token, not_before=None, enqueued=False, error=repr(error)
                )
            log_event(log, "batch.pacing_unavailable", logging.WARNING, batch_id=batch_id)
            return {"batch_id": batch_id, "outcome": "pacing_unavailable"}
        if wait is not None:
            return {"batch_id": batch_id, "outcome": "deferred", "wait": round(wait, 3)}

    with session_scope(url) as session:
        submitting = batches.mark_submitting(session, batch_id, token, lease)
        if not submitting:
            # Paused or cancelled meanwhile (nothing is sent), or our lease was released.
            owned = batches.holds_claim(session, batch_id, token)
            outcome = batches.stand_down(session, batch_id, token) or "lost_claim"
    if not submitting:
        # Committed: nothing will be sent at this batch's slot, so the sender gets it back.
        _give_back_booking(settings, batch_id, job, owned)
        log_event(log, "batch.stood_down", batch_id=batch_id, outcome=outcome)
        return {"batch_id": batch_id, "outcome": outcome}
    # The session is closed before the slow HTTP call so no connection or lock is held
    # while Plivo answers.
    if not job.recipients:
        result = SendResult(api_id="")
    else:
        try:
            media = job.media or {}
            result = client_for(settings).send(
                job.sender,
                list(job.recipients),
                job.text,
                callback_url=settings.status_callback_url,
                message_type=job.kind,
                media_urls=media.get("media_urls") or None,
                media_ids=media.get("media_ids") or None,
            )
        except PlivoError as error:
            return _handle_error(settings, attempt, batch_id, token, job, error)
    _record_accepted(settings, batch_id, token, job, result)
    metrics.messages_sent(len(result.uuids), len(result.invalid))
    with session_scope(url) as session:
        batches.finish_broadcast_if_done(
            session, job.broadcast_id, settings.status_callback_url is not None
        )
    log_event(
        log,
        "batch.submitted",
        batch_id=batch_id,
        broadcast_id=job.broadcast_id,
        accepted=len(result.uuids),
        rejected=len(result.invalid),
        api_id=result.api_id,
    )
    return {"batch_id": batch_id, "outcome": "submitted", "accepted": len(result.uuids)}


def quiet_until(job: batches.Job) -> datetime | None:
    """When the batch's quiet hours end, if they hold it now (None: send). Intake held the
    batches it could foresee; this catches a broadcast that ran long, a pause resumed at
    night, a retry: the window is checked again in the batch's zone at send time."""
    if not job.recipients or not job.quiet_hours or not job.zone:
        return None
    return release_at(job.zone, parse_window(job.quiet_hours), utcnow())


def _hold(settings: Settings, batch_id: int, token: str, job, until: datetime) -> dict:
    with session_scope(settings.database_url) as session:
        held = batches.hold(session, batch_id, token, until)
    # A slot an earlier attempt booked will not be used: the sender gets it back.
    _give_back_booking(settings, batch_id, job, owned=held)
    log_event(
        log,
        "batch.held",
        batch_id=batch_id,
        broadcast_id=job.broadcast_id,
        zone=job.zone,
        hold_until=until.isoformat(),
    )
    return {"batch_id": batch_id, "outcome": "held" if held else "lost_claim"}


def _record_accepted(settings: Settings, batch_id: int, token: str, job, result) -> None:
    """Plivo has the messages: their uuids must not be lost to a database blip. The
    recipient id → uuid map is logged first (the record of last resort), then the write is
    retried for half the lease; only if the database stays away does the batch end
    `unknown`, to be resolved from Plivo's message list."""
    log_event(
        log,
        "batch.accepted",
        batch_id=batch_id,
        api_id=result.api_id,
        uuids=json.dumps(
            {job.recipients[number]: uuid_ for number, uuid_ in result.uuids.items()},
            separators=(",", ":"),
        ),
    )
    for attempt in Retrying(
        retry=retry_if_exception_type(SQLAlchemyError),
        wait=wait_exponential_jitter(multiplier=0.2, max=5),
        stop=stop_after_delay(settings.lease_seconds / 2),
        before_sleep=lambda state: log_event(
            log,
            "batch.record_retry",
            logging.WARNING,
            batch_id=batch_id,
            attempt=state.attempt_number,
            error=type(state.outcome.exception()).__name__,
        ),
        reraise=True,
    ):
        with attempt, session_scope(settings.database_url) as session:
            batches.record_submitted(session, batch_id, token, job, result)


def _wait_for_slot(settings: Settings, batch_id: int, token: str, job) -> float | None:
    """Sleep until the batch's slot when it is close and return None (send now). Otherwise
    hand the batch back and return the wait: booked, it keeps its slot and a countdown task
    comes back for it; not booked (its slot would be past the horizon, or others are ahead
    in its sender's line), it keeps nothing, and its `not_before` says when to try again."""
    # Built per call (cheap: the Redis pool is shared), so it always uses these settings.
    pacer = Pacer.for_settings(settings)
    now = pacer.server_time()
    # A slot missed by more than the lead (its task came late: workers busy, the broker's
    # queue long, a crashed worker's lease ran out) is not used: sent now, the batch would
    # bunch up with the ones booked after it, faster than the limit. It books afresh.
    if job.slot is not None and job.slot.timestamp() >= now - settings.pacing_lead:
        slot = job.slot.timestamp()
        wait = slot - now
    else:
        reservation = pacer.reserve(
            job.kind,
            job.sender,
            len(job.recipients),
            batch_id=batch_id,
            broadcast_id=job.broadcast_id,
            priority=job.priority,
            readmit=job.slot is not None,
        )
        if not reservation.booked:
            return _wait_unbooked(settings, batch_id, token, job, reservation)
        job.slot, job.booking = reservation.slot_at, reservation.booking
        slot, wait = reservation.slot, reservation.delay
    # Sleep only through the lead (what a countdown task arrives early by, give or take the
    # timer's and the clocks' slack): a pool of sleeping workers would stop taking tasks, and
    # the broker's first-in-first-out order would then decide who sends next instead of the
    # sender's line (priority, turns).
    if wait <= settings.pacing_lead + SLEEP_SLACK:
        metrics.pacing_wait(job.kind, wait)
        time.sleep(max(wait, 0.0))
        # The account's request limit is taken at send time: its waits are short.
        time.sleep(pacer.acquire_request())
        return None
    countdown = wait - settings.pacing_lead
    by_task = countdown <= settings.countdown_max
    with session_scope(settings.database_url) as session:
        released, sendable = batches.hand_back(
            session,
            batch_id,
            token,
            job.broadcast_id,
            not_before=job.slot,
            slot_at=job.slot,
            enqueued=by_task,
        )
    if not (released and sendable):
        # The claim was taken from us, or the broadcast stopped meanwhile (and the batch
        # kept nothing): nobody will send at this slot.
        _give_back_booking(settings, batch_id, job, owned=released)
    _enqueue_later(settings, job, batch_id, released and sendable and by_task, countdown)
    log_event(log, "batch.deferred", batch_id=batch_id, wait=round(wait, 3), by_task=by_task)
    return wait


def _wait_unbooked(settings: Settings, batch_id: int, token: str, job, reservation) -> float:
    """Not booked: hand the batch back holding nothing, with `not_before` at the time the
    line said to try again (capped at COUNTDOWN_MAX, sooner when its turn is near). The
    reconciler sends it then, unless that is sooner than its next pass: a worker holding
    many countdown tasks takes new ones from Redis only about once a second (kombu's
    prefetch window fills with them), which would hold up every batch's turn."""
    retry = reservation.delay
    not_before = datetime.fromtimestamp(reservation.now + retry, UTC)
    by_task = retry < settings.reconcile_interval
    with session_scope(settings.database_url) as session:
        released, sendable = batches.hand_back(
            session,
            batch_id,
            token,
            job.broadcast_id,
            not_before=not_before,
            slot_at=None,
            enqueued=by_task,
        )
    if not sendable:
        # Stopped while this batch joined the line (after the pause took the broadcast out
        # of it): nobody should wait behind it.
        try:
            leave_line(settings, job.kind, job.sender, job.broadcast_id)
        except redis.RedisError:
            pass  # the line forgets it once it is overdue
    _enqueue_later(settings, job, batch_id, released and sendable and by_task, retry)
    log_event(
        log,
        "batch.waiting",
        batch_id=batch_id,
        broadcast_id=job.broadcast_id,
        retry=round(retry, 3),
        expected=round(reservation.slot - reservation.now, 3),
        ahead=reservation.ahead,
    )
    return retry


def _enqueue_later(settings: Settings, job, batch_id: int, enqueue: bool, countdown: float):
    if not enqueue:
        return
    try:
        enqueue_batches(
            settings.redis_url, job.kind, job.broadcast_id, [batch_id], countdown=countdown
        )
    except EnqueueError:
        with session_scope(settings.database_url) as session:
            batches.mark_not_enqueued(session, [batch_id])


def _give_back_booking(settings: Settings, batch_id: int, job, owned: bool) -> None:
    """The batch will not be sent at its slot: the sender gets the capacity back at once.
    A booking this attempt made is known to nobody else; a slot loaded from the database is
    this attempt's to give only if it still held the claim when it let the batch go (then
    it cleared the slot, so no later attempt can use it)."""
    if job.booking:
        member = job.booking
    elif owned and job.slot is not None:
        member = booking_member(batch_id, job.slot)
    else:
        return
    try:
        give_back(settings, job.kind, job.sender, [member])
    except redis.RedisError:
        pass  # the slot just goes unused: never more than the pacing horizon


def _handle_error(settings, attempt, batch_id, token, job, error: PlivoError) -> dict:
    """Every failure leaves a visible state and reason; nothing is dropped silently."""
    url = settings.database_url
    reason = str(error)
    log_event(
        log,
        "batch.error",
        logging.WARNING,
        batch_id=batch_id,
        broadcast_id=job.broadcast_id,
        kind=error.kind,
        status=error.status,
        attempt=attempt,
    )
    if error.kind is ErrorKind.TRANSIENT and attempt < settings.max_retries:
        # Nothing reached Plivo: hand the batch back (its slot is spent, so it books a new
        # one) and let Celery retry with backoff.
        with session_scope(url) as session:
            batches.release(session, batch_id, token, not_before=None, enqueued=True, error=reason)
        raise RetryLater(error)
    if error.kind is ErrorKind.ACCOUNT:
        # Sending more would only burn the rest: pause the broadcast, keep the batch.
        with session_scope(url) as session:
            batches.release(session, batch_id, token, not_before=None, enqueued=False, error=reason)
            batches.pause_broadcast(session, job.broadcast_id, reason)
        return {"batch_id": batch_id, "outcome": "paused"}
    if error.kind is ErrorKind.AMBIGUOUS:
        batch_status, recipient_status = BatchStatus.UNKNOWN, RecipientStatus.UNKNOWN
    else:
        batch_status, recipient_status = BatchStatus.FAILED, RecipientStatus.FAILED
    with session_scope(url) as session:
        batches.record_failure(session, batch_id, token, batch_status, recipient_status, reason)
    with session_scope(url) as session:
        batches.finish_broadcast_if_done(
            session, job.broadcast_id, settings.status_callback_url is not None
        )
    return {"batch_id": batch_id, "outcome": batch_status}
