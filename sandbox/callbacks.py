"""Posts status callbacks as Plivo does: signed, on schedule, retried, off the request path.

A broadcast means 100k+ callbacks, so there is no thread per callback and no work per message
on the request path: accepting a request pushes one entry for the whole request onto a
time-ordered heap. A small pool of threads, each with its own requests.Session, pops what is
due. The first pop of a request expands it into one entry per message; a message's entry
holds its remaining callbacks and goes back on the heap after each one, so one message's
callbacks are never in flight at once and arrive in the planned order.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import requests

from sandbox.config import SandboxConfig
from sandbox.delivery import Run, Step
from sandbox.signature import signature_headers

log = logging.getLogger("sandbox.callbacks")

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Longest a worker sleeps before looking again: bounds how late it notices a shutdown.
_MAX_IDLE = 0.5


@dataclass(slots=True)
class _MessageCallbacks:
    run: Run
    index: int
    steps: list[Step]
    position: int = 0
    attempt: int = 0


class CallbackSender:
    def __init__(self, settings: Callable[[], SandboxConfig], seed: int | None = None) -> None:
        self._settings = settings  # the current config, re-read for every callback
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        # (due, tie-breaker, generation, Run to expand or _MessageCallbacks)
        self._heap: list[tuple[float, int, int, object]] = []
        self._order = itertools.count()
        # Bumped by reset(): work popped before it is dropped instead of rescheduled.
        self._generation = 0
        self._workers: list[threading.Thread] = []
        self._closed = False
        self.sent = self.failed = self.pending = 0
        # Callbacks never sent on purpose (share_no_final_report, share_no_callbacks).
        self.withheld = 0

    def schedule(self, run: Run) -> None:
        with self._cond:
            if self._closed:
                return
            self.pending += run.callback_count()
            self._push(run.accepted, run)
            self._start_workers(self._settings().callback_workers)

    def counts(self) -> dict[str, int]:
        with self._cond:
            return {
                "sent": self.sent,
                "failed": self.failed,
                "pending": self.pending,
                "withheld": self.withheld,
            }

    def reset(self) -> None:
        with self._cond:
            self._generation += 1
            self._heap.clear()
            self.sent = self.failed = self.pending = self.withheld = 0

    def reseed(self, seed: int | None) -> None:
        with self._cond:
            self._rng.seed(seed)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout=self._settings().callback_timeout + 2 * _MAX_IDLE)

    def _push(self, due: float, item: object) -> None:
        heapq.heappush(self._heap, (due, next(self._order), self._generation, item))
        self._cond.notify()

    def _start_workers(self, count: int) -> None:
        while len(self._workers) < count:
            worker = threading.Thread(
                target=self._work, name=f"sandbox-callbacks-{len(self._workers)}", daemon=True
            )
            self._workers.append(worker)
            worker.start()

    def _work(self) -> None:
        with callback_session() as session:
            # Bounded by close(): _next() returns None once the sender is closed.
            while (job := self._next()) is not None:
                generation, item = job
                if isinstance(item, Run):
                    self._expand(generation, item)
                else:
                    self._deliver(session, generation, item)

    def _next(self) -> tuple[int, object] | None:
        with self._cond:
            while not self._closed:
                wait = _MAX_IDLE
                if self._heap:
                    wait = min(wait, self._heap[0][0] - time.time())
                    if wait <= 0:
                        _, _, generation, item = heapq.heappop(self._heap)
                        return generation, item
                self._cond.wait(wait)
            return None

    def _expand(self, generation: int, run: Run) -> None:
        config = self._settings()
        plans = [run.callback_plan(index, config, self._rng) for index in range(len(run.uuids))]
        messages = [
            _MessageCallbacks(run, index, plan.steps)
            for index, plan in enumerate(plans)
            if plan.steps
        ]
        withheld = sum(plan.withheld for plan in plans)
        # Duplicates add to what callback_count() expected, withheld callbacks take from it.
        planned = sum(len(message.steps) for message in messages)
        with self._cond:
            if generation != self._generation:
                return
            self.pending += planned - run.callback_count()
            self.withheld += withheld
            for message in messages:
                self._push(message.steps[0].due, message)

    def _deliver(self, session: requests.Session, generation: int, message: _MessageCallbacks):
        config = self._settings()
        delivered = self._post(session, config, message)
        with self._cond:
            if generation != self._generation:
                return
            if not delivered and message.attempt < config.callback_retries:
                # Plivo retries a receiver that is down or failing, backing off.
                delay = config.callback_retry_delay * 2**message.attempt
                message.attempt += 1
                self._push(time.time() + delay, message)
                return
            if delivered:
                self.sent += 1
            else:
                self.failed += 1
            self.pending -= 1
            message.position += 1
            message.attempt = 0
            if message.position < len(message.steps):
                self._push(message.steps[message.position].due, message)

    @staticmethod
    def _post(session: requests.Session, config: SandboxConfig, message: _MessageCallbacks):
        """True when the receiver answered with anything but a 5xx."""
        request = message.run.request
        params = message.run.callback_params(message.index, message.steps[message.position])
        headers = signature_headers(config.auth_token, request.method, request.url, params)
        # Encoded here, once: requests would encode a dict twice, a cost felt at 100k callbacks.
        encoded = urlencode(params)
        try:
            if request.method == "GET":
                response = session.get(
                    request.url, params=encoded, headers=headers, timeout=config.callback_timeout
                )
            else:
                headers["Content-Type"] = FORM_CONTENT_TYPE
                response = session.post(
                    request.url, data=encoded, headers=headers, timeout=config.callback_timeout
                )
        # Anything a receiver can do wrong (refuse, hang, answer garbage) must not end a worker.
        except Exception as error:
            log.debug("callback to %s failed: %s", request.url, error)
            return False
        return response.status_code < 500


def callback_session() -> requests.Session:
    session = requests.Session()
    # Straight to the URL given: no proxy or netrc from the environment (and cheaper per call).
    session.trust_env = False
    return session
