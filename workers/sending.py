"""The send tasks: one batch, one Plivo call, every outcome written back to the database."""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from shared.config import Settings, get_settings
from shared.db import session_scope
from shared.logs import log_event
from shared.models import BatchStatus, RecipientStatus
from shared.plivo_client import ErrorKind, PlivoError, client_for
from shared.taskqueue import SEND_SMS_BATCH, SMS_QUEUE, celery_app
from workers import batches

log = logging.getLogger(__name__)

_settings = get_settings()

MAX_TRANSIENT_RETRIES = 5
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 300.0


def _per_worker_rate() -> str | None:
    """Celery's rate_limit counts tasks per worker process; a batch carries up to
    batch_size messages, so the guard is MPS / batch_size tasks a second."""
    tasks_per_minute = _settings.effective_sms_mps * 60 / _settings.batch_size
    return f"{tasks_per_minute:.6g}/m"


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter, capped (and far below the visibility timeout)."""
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))


class RetryLater(Exception):
    """A transient failure: the batch is pending again; run the task again after `countdown`."""

    def __init__(self, countdown: float, error: PlivoError):
        super().__init__(str(error))
        self.countdown = countdown
        self.error = error


@celery_app.task(name=SEND_SMS_BATCH, bind=True, queue=SMS_QUEUE, rate_limit=_per_worker_rate())
def send_sms_batch(self, batch_id: int, broadcast_id: str | None = None) -> dict:
    """Claim batch `batch_id`, send it in one Plivo call, record uuids or the error."""
    try:
        return deliver_batch(get_settings(), batch_id, attempt=self.request.retries)
    except RetryLater as later:
        raise self.retry(countdown=later.countdown, exc=later.error) from None


def deliver_batch(settings: Settings, batch_id: int, attempt: int = 0) -> dict:
    """The whole life of one attempt at one batch; the task is a thin shell around it."""
    url = settings.database_url
    lease = timedelta(seconds=settings.plivo_timeout * 3 + 60)
    with session_scope(url) as session:
        token = batches.claim_batch(session, batch_id, lease)
    if token is None:
        log_event(log, "batch.not_claimed", batch_id=batch_id)
        return {"batch_id": batch_id, "outcome": "not_claimed"}

    with session_scope(url) as session:
        job = batches.load_job(session, batch_id)
        if not batches.mark_submitting(session, batch_id, token):
            return {"batch_id": batch_id, "outcome": "lost_claim"}
    # The session is closed before the slow HTTP call so no connection or lock is held
    # while Plivo answers.
    if not job.recipients:
        outcome = _finish(url, batch_id, token, job, None)
        return {"batch_id": batch_id, "outcome": outcome}
    try:
        result = client_for(settings).send(
            job.sender,
            list(job.recipients),
            job.text,
            callback_url=settings.status_callback_url,
        )
    except PlivoError as error:
        return _handle_error(attempt, url, batch_id, token, job, error)
    outcome = _finish(url, batch_id, token, job, result)
    log_event(
        log,
        "batch.submitted",
        batch_id=batch_id,
        broadcast_id=job.broadcast_id,
        accepted=len(result.uuids),
        rejected=len(result.invalid),
        api_id=result.api_id,
    )
    return {"batch_id": batch_id, "outcome": outcome, "accepted": len(result.uuids)}


def _finish(url, batch_id, token, job, result) -> str:
    with session_scope(url) as session:
        if result is None:
            batches.record_outcome(session, batch_id, token, BatchStatus.SUBMITTED, None, "")
        else:
            batches.record_submitted(session, batch_id, token, job, result)
    with session_scope(url) as session:
        batches.finish_broadcast_if_done(session, job.broadcast_id)
    return "submitted"


def _handle_error(attempt, url, batch_id, token, job, error: PlivoError) -> dict:
    """Every failure leaves a visible state and reason; nothing is dropped silently."""
    reason = str(error)
    log_event(
        log,
        "batch.error",
        logging.WARNING,
        batch_id=batch_id,
        broadcast_id=job.broadcast_id,
        kind=error.kind,
        status=error.status,
    )
    if error.kind is ErrorKind.TRANSIENT and attempt < MAX_TRANSIENT_RETRIES:
        # Nothing reached Plivo: hand the batch back, then let the retried task claim it.
        with session_scope(url) as session:
            batches.record_outcome(session, batch_id, token, BatchStatus.PENDING, None, reason)
        raise RetryLater(backoff_seconds(attempt), error)
    if error.kind is ErrorKind.ACCOUNT:
        # Sending more would only burn the rest: pause the broadcast, keep the batch.
        with session_scope(url) as session:
            batches.record_outcome(session, batch_id, token, BatchStatus.PENDING, None, reason)
            batches.pause_broadcast(session, job.broadcast_id, reason)
        return {"batch_id": batch_id, "outcome": "paused"}
    if error.kind is ErrorKind.AMBIGUOUS:
        batch_status, recipient_status = BatchStatus.UNKNOWN, RecipientStatus.UNKNOWN
    else:
        batch_status, recipient_status = BatchStatus.FAILED, RecipientStatus.FAILED
    with session_scope(url) as session:
        batches.record_outcome(session, batch_id, token, batch_status, recipient_status, reason)
    with session_scope(url) as session:
        batches.finish_broadcast_if_done(session, job.broadcast_id)
    return {"batch_id": batch_id, "outcome": batch_status}
