"""What the status sweep and the resolver of `unknown` batches share: one pass at a time, a
bounded budget of Plivo lookups paced through the account's limiters, and Plivo's message
state read as a delivery report."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from shared.config import Settings
from shared.db import redis_client
from shared.logs import log_event
from shared.plivo_client import MessageRecord
from workers import delivery_reports
from workers.pacing import Pacer

log = logging.getLogger(__name__)

# Compare-and-delete: a pass that outlived its lock must not release the next pass's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# A list slot booked by a pass that could not wait for it (Redis server time, seconds).
_LIST_RESERVED_KEY = "bulksms:lookups:list-reserved"

# Plivo's message_state → the Status a delivery report would carry. `read` (WhatsApp) is
# past delivered; `rejected` is parsed as `failed` like the callbacks' older wording.
_REPORTED_AS = {"read": "delivered"}


@contextmanager
def exclusive_pass(redis_url: str, name: str, seconds: float) -> Iterator[bool]:
    """Yields True for the one pass of `name` allowed to run now: beat may start another
    before the last one ended, and two would spend the lookup budget twice."""
    client = redis_client(redis_url)
    key, token = f"bulksms:pass:{name}", str(uuid.uuid4())
    acquired = bool(client.set(key, token, nx=True, px=int(seconds * 1000)))
    try:
        yield acquired
    finally:
        if acquired:
            client.eval(_RELEASE, 1, key, token)


class LookupBudget:
    """How much one pass may ask Plivo: at most `max_requests` requests within `seconds`,
    each booked on the account's request limiter (and Message list requests on the list
    limiter too). A pass never sleeps long: it shares a worker with the reconciler and the
    report applier, and sends come first. Thread-safe (the sweep looks up in parallel)."""

    def __init__(
        self, settings: Settings, seconds: float, max_requests: int, max_wait: float = 0.5
    ) -> None:
        self._pacer = Pacer.for_settings(settings)
        self._redis = redis_client(settings.redis_url)
        self._deadline = time.monotonic() + seconds
        self._left = max_requests
        self._max_wait = max_wait
        self._lock = threading.Lock()
        self.used = 0
        self.exhausted = False

    def take(self) -> bool:
        """Book one request on the account's limiter and sleep until it may be made;
        False when this pass should ask no more."""
        with self._lock:
            if self.exhausted or self._left <= 0 or time.monotonic() >= self._deadline:
                self.exhausted = True
                return False
            self._left -= 1
        wait = self._pacer.acquire_request()
        if wait > self._max_wait:
            # Sends are using the account's requests: yield to them (one booked request
            # goes unused, out of hundreds a window).
            self.exhausted = True
            return False
        time.sleep(wait)
        with self._lock:
            self.used += 1
        return True

    def take_list(self) -> bool:
        """Book one Message list request (20 a minute), then one account request."""
        with self._lock:
            if self.exhausted or time.monotonic() >= self._deadline:
                self.exhausted = True
                return False
        reserved = self._redis.get(_LIST_RESERVED_KEY)
        if reserved is not None:
            wait = float(reserved) - self._pacer.server_time()
            if wait > self._max_wait:
                self.exhausted = True
                return False
            self._redis.delete(_LIST_RESERVED_KEY)
        else:
            wait = self._pacer.acquire_list_request()
            if wait > self._max_wait:
                # Booked for later: kept for the pass that runs then, so a slot of the
                # tight list budget is never booked and thrown away.
                due = self._pacer.server_time() + wait
                self._redis.set(_LIST_RESERVED_KEY, f"{due:.6f}", px=int((wait + 60) * 1000))
                self.exhausted = True
                return False
        time.sleep(max(wait, 0.0))
        return self.take()


def as_report(record: MessageRecord) -> delivery_reports.Report | None:
    """Plivo's record of a message, as the delivery report it amounts to (None for a
    state no report would carry)."""
    status = _REPORTED_AS.get(record.state, record.state)
    return delivery_reports.parse(
        {
            "MessageUUID": record.uuid,
            "Status": status,
            "ErrorCode": record.error_code or "",
            "Units": "" if record.units is None else str(record.units),
            "To": record.to,
        }
    )


def log_lookup_error(event: str, error: Exception, **context) -> None:
    log_event(log, event, logging.WARNING, error=str(error)[:300], **context)
