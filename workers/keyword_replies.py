"""Answers to keyword replies: a STOP confirmation, a START confirmation, the HELP text.

One answer per inbound message, however often its task runs: the message's row is claimed
with a conditional UPDATE of `replied_at` just before the Plivo call, so a webhook delivered
twice or a redelivered task finds it taken. It goes from the number that was texted, on that
number's pacing timelines like any batch (high priority: a carrier expects the confirmation
promptly), so answers never push the account past its limit; a task whose turn has not come
goes back to the queue with a countdown instead of sleeping. A STOP confirmation is the one
message an opted-out number may get; HELP and START answers are not sent to a number that is
opted out by the time they go, and HELP to a US or Canadian number is left to Plivo, which
answers it itself."""

from __future__ import annotations

import logging
import random
from datetime import datetime

import redis
from sqlalchemy import update

from shared.config import Settings, get_settings
from shared.db import session_scope
from shared.keywords import SEND_KEYWORD_REPLY, answered_by_plivo, reply_text
from shared.logs import log_event
from shared.models import InboundMessage, OptOut, utcnow
from shared.plivo_client import ErrorKind, PlivoError, client_for
from shared.taskqueue import WEBHOOKS_QUEUE, celery_app
from shared.timelines import give_back
from workers.pacing import SHORTEST_RETRY, Pacer

log = logging.getLogger(__name__)

KIND = "sms"


class Later(Exception):
    """Not now: run the task again in `after` seconds, with the slot it booked and the
    request it was granted, if any. `failed`: a failure (counted against MAX_RETRIES), not
    a wait for its turn."""

    def __init__(
        self,
        after: float,
        slot: float | None = None,
        booking: str = "",
        failed: bool = False,
        request_at: float | None = None,
    ):
        super().__init__(after)
        self.after = after
        self.slot = slot
        self.booking = booking
        self.failed = failed
        self.request_at = request_at


@celery_app.task(name=SEND_KEYWORD_REPLY, queue=WEBHOOKS_QUEUE, bind=True, max_retries=None)
def send_keyword_reply(
    self,
    inbound_id: int,
    slot: float | None = None,
    booking: str = "",
    failures: int = 0,
    request_at: float | None = None,
) -> dict:
    """Answer inbound message `inbound_id` once (its keyword's configured text)."""
    settings = get_settings()
    try:
        return reply(
            settings,
            inbound_id,
            slot=slot,
            booking=booking,
            failures=failures,
            request_at=request_at,
        )
    except Later as later:
        kwargs = {
            "inbound_id": inbound_id,
            "slot": later.slot,
            "booking": later.booking,
            "failures": failures + later.failed,
            "request_at": later.request_at,
        }
        # Countdowns stay short (a pacing wait, or a backoff below RETRY_BACKOFF_MAX), far
        # below the broker's visibility timeout.
        raise self.retry(kwargs=kwargs, countdown=max(later.after, 0.0)) from None


def reply(
    settings: Settings,
    inbound_id: int,
    *,
    slot: float | None = None,
    booking: str = "",
    failures: int = 0,
    request_at: float | None = None,
) -> dict:
    """Send the answer if it is still owed; raises Later when its turn has not come."""
    with session_scope(settings.database_url) as session:
        message = session.get(InboundMessage, inbound_id)
        if message is None:
            return _outcome(inbound_id, "missing")
        phone, sender, action = message.phone, message.to, message.action
        owed = message.replied_at is None
        opted_out = session.get(OptOut, phone) is not None
    text = reply_text(settings, action)
    outcome = None
    if not owed:
        outcome = "already_replied"
    elif answered_by_plivo(action, sender):
        outcome = "answered_by_plivo"
    elif text is None:
        outcome = "no_reply"
    elif opted_out and action != "opt_out":
        outcome = "opted_out"
    elif not sender:
        outcome = "no_sender"
    if outcome is not None:
        # A run that comes back for its slot may find the answer no longer owed.
        _give_back(settings, sender, booking)
        return _outcome(inbound_id, outcome)

    if settings.global_pacing:
        try:
            booking = _take_turn(settings, inbound_id, sender, slot, booking, request_at)
        except redis.RedisError as error:
            # No pacing, no sending: the account limit is not ours to guess.
            log_event(log, "reply.pacing_unavailable", logging.WARNING, inbound_id=inbound_id)
            raise Later(_backoff(settings, failures), failed=True) from error

    claimed_at = _claim(settings, inbound_id)
    if claimed_at is None:
        # Another run answered it meanwhile: nothing goes out at this slot.
        _give_back(settings, sender, booking)
        return _outcome(inbound_id, "already_replied")
    # No session is open during the Plivo call.
    try:
        result = client_for(settings).send(sender, [phone], text, message_type=KIND)
    except PlivoError as error:
        return _failed(settings, inbound_id, claimed_at, error, failures)
    message_uuid = next(iter(result.uuids.values()), None)
    log_event(
        log,
        "reply.sent",
        inbound_id=inbound_id,
        action=action,
        sender=sender,
        message_uuid=message_uuid,
        invalid=bool(result.invalid),
    )
    return {"inbound_id": inbound_id, "outcome": "sent", "message_uuid": message_uuid}


def _outcome(inbound_id: int, outcome: str) -> dict:
    if outcome != "sent":
        log_event(log, "reply.not_sent", inbound_id=inbound_id, outcome=outcome)
    return {"inbound_id": inbound_id, "outcome": outcome}


def _take_turn(
    settings: Settings,
    inbound_id: int,
    sender: str,
    slot: float | None,
    booking: str,
    request_at: float | None,
) -> str:
    """Return the booking when this answer may go now; otherwise raise Later to come back
    when it may, keeping what it holds (its slot, then its grant on the account's request
    limit), as a batch keeps its slot. It never sleeps: this task shares the one-process
    events worker with delivery reports and the reconciler, which must not wait behind a
    wave of STOPs."""
    pacer = Pacer.for_settings(settings)
    now = pacer.server_time()
    if request_at is not None:
        # The slot came and the request was granted: only the grant's time is awaited.
        if request_at > now:
            raise Later(request_at - now, slot, booking, request_at=request_at)
        return booking
    if slot is None or slot < now - settings.pacing_lead:
        # None yet, or missed by more than the lead (sent now, it would bunch up with the
        # messages booked after it): book afresh.
        reservation = pacer.reserve(
            KIND,
            sender,
            1,
            batch_id=f"reply-{inbound_id}",
            broadcast_id=f"reply-{inbound_id}",
            priority="high",
            readmit=slot is not None,
        )
        if not reservation.booked:
            raise Later(max(reservation.delay, SHORTEST_RETRY))
        # The booking's own clock reading: a slot free at once is due at once.
        slot, booking, now = reservation.slot, reservation.booking, reservation.now
    if slot > now:
        raise Later(slot - now, slot, booking)
    # The account's request limit too: answers are requests like any send.
    grant = pacer.request_grant()
    if grant.wait > 0:
        raise Later(grant.wait, slot, booking, request_at=grant.at)
    return booking


def _claim(settings: Settings, inbound_id: int) -> datetime | None:
    """Mark the message answered, only if nobody did; the time written is the claim's
    token (a failed attempt gives back only its own claim)."""
    now = utcnow()
    with session_scope(settings.database_url) as session:
        changed = session.execute(
            update(InboundMessage)
            .where(InboundMessage.id == inbound_id, InboundMessage.replied_at.is_(None))
            .values(replied_at=now)
        ).rowcount
    return now if changed == 1 else None


def _release(settings: Settings, inbound_id: int, claimed_at: datetime) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(
            update(InboundMessage)
            .where(InboundMessage.id == inbound_id, InboundMessage.replied_at == claimed_at)
            .values(replied_at=None)
        )


def _failed(
    settings: Settings, inbound_id: int, claimed_at: datetime, error: PlivoError, failures: int
) -> dict:
    """An ambiguous failure keeps the claim: the answer may have gone, and a second one
    must not. Any other failure sent nothing, so the message is owed its answer again;
    a transient one is retried with backoff, up to MAX_RETRIES."""
    log_event(
        log,
        "reply.error",
        logging.WARNING,
        inbound_id=inbound_id,
        kind=error.kind,
        status=error.status,
        error=str(error)[:200],
    )
    if error.kind is ErrorKind.AMBIGUOUS:
        return {"inbound_id": inbound_id, "outcome": "unknown"}
    _release(settings, inbound_id, claimed_at)
    if error.kind is ErrorKind.TRANSIENT and failures < settings.max_retries:
        raise Later(_backoff(settings, failures), failed=True)
    return {"inbound_id": inbound_id, "outcome": "failed"}


def _backoff(settings: Settings, failures: int) -> float:
    """Exponential with full jitter, as the send tasks back off."""
    return random.uniform(0, min(settings.retry_backoff * 2**failures, settings.retry_backoff_max))


def _give_back(settings: Settings, sender: str, booking: str) -> None:
    if not booking:
        return
    try:
        give_back(settings, KIND, sender, [booking])
    except redis.RedisError:
        pass  # the slot just goes unused: never more than the pacing horizon
