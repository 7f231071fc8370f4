"""What can meet a request around Plivo's processing of it: the account's request limits and
the faults injected into create requests to rehearse a client's error handling."""

from __future__ import annotations

import random
import threading
from collections import deque

from sandbox.config import SandboxConfig

SERVER_ERRORS = {500: "internal server error", 502: "bad gateway", 503: "service unavailable"}
# What a client may see although Plivo took the request: the app failed after queueing, or the
# gateway gave up waiting for it.
AFTER_ACCEPT_ERRORS = {500: "internal server error", 504: "gateway timeout"}


class RequestLimit:
    """A sliding window: at most `limit` admitted requests in any `window` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._admitted: deque[float] = deque()

    def admit(self, limit: int, window: float, now: float) -> bool:
        if limit <= 0:
            return True
        with self._lock:
            admitted = self._admitted
            # Bounded: each pass removes one of at most `limit` + 1 entries.
            while admitted and admitted[0] <= now - window:
                admitted.popleft()
            if len(admitted) >= limit:
                return False
            admitted.append(now)
            return True

    def reset(self) -> None:
        with self._lock:
            self._admitted.clear()


class Faults:
    """Draws at most one fault per create request, from the shares in the config."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def reseed(self, seed: int | None) -> None:
        with self._lock:
            self._rng.seed(seed)

    def draw(self, config: SandboxConfig) -> str | None:
        shares = (
            ("drop_before", config.drop_before),
            ("5xx", config.fail_5xx),
            ("429", config.fail_429),
            ("drop_after", config.drop_after),
            ("slow", config.slow),
            # Last, so switching it on leaves the draws of the older faults as they were.
            ("fail_after_accept", config.fail_after_accept),
        )
        if not any(share for _, share in shares):
            return None  # no draw, so a seeded sequence starts when faults are switched on
        with self._lock:
            draw = self._rng.random()
        for kind, share in shares:
            if draw < share:
                return kind
            draw -= share
        return None

    def server_error(self) -> int:
        with self._lock:
            return self._rng.choice(list(SERVER_ERRORS))

    def after_accept_error(self) -> int:
        with self._lock:
            return self._rng.choice(list(AFTER_ACCEPT_ERRORS))
