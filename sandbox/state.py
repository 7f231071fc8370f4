"""What the sandbox has been asked to send: counters for /stats and one record per message."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from itertools import repeat

from sandbox.messages import MessageRequest

MAX_DUPLICATE_EXAMPLES = 20


@dataclass(frozen=True, slots=True)
class MessageRecord:
    uuid: str
    dst: str  # digits, no '+', as Plivo reports `To` in callbacks
    src: str | None
    powerpack_uuid: str | None
    text: str
    type: str
    url: str | None
    method: str
    time: float  # epoch seconds at acceptance


@dataclass(frozen=True, slots=True)
class _Accepted:
    request: MessageRequest
    time: float


class SandboxState:
    """Thread-safe: the server is threaded and a benchmark sends from many workers at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.requests = 0
        self.messages = 0
        self.invalid = 0
        self.auth_failures = 0
        self.bad_requests = 0
        self.duplicates = 0
        self._duplicate_examples: list[str] = []
        self._sends: Counter[str] = Counter()
        # (digits, text) pairs already accepted: the same text to the same person again is
        # exactly the double-send a broadcaster must never do.
        self._texted: set[tuple[str, str]] = set()
        # uuid -> (digits, the request it came in): one shared request object per call keeps a
        # million records cheap to build and to hold.
        self._records: dict[str, tuple[str, _Accepted]] = {}

    def reset(self) -> None:
        with self._lock:
            self._clear()

    def record_auth_failure(self) -> None:
        with self._lock:
            self.requests += 1
            self.auth_failures += 1

    def record_bad_request(self, invalid_numbers: int = 0) -> None:
        with self._lock:
            self.requests += 1
            self.bad_requests += 1
            self.invalid += invalid_numbers

    def record_accepted(self, request: MessageRequest, uuids: list[str]) -> None:
        # Everything here runs as C-level bulk operations (no per-number Python code on the
        # common path): a 1000-number request must cost well under a millisecond.
        accepted = _Accepted(request, time.time())
        destinations = request.destinations
        keys = [(digits, request.text) for digits in destinations]
        with self._lock:
            self.requests += 1
            self.messages += len(destinations)
            self.invalid += len(request.invalid_numbers)
            self._sends.update(destinations)
            if not self._texted.isdisjoint(keys):
                self._count_duplicates([key for key in keys if key in self._texted])
            self._texted.update(keys)
            self._records.update(zip(uuids, zip(destinations, repeat(accepted)), strict=True))

    def _count_duplicates(self, repeated: list[tuple[str, str]]) -> None:
        self.duplicates += len(repeated)
        examples = self._duplicate_examples
        for digits, _ in repeated:
            if len(examples) >= MAX_DUPLICATE_EXAMPLES:
                break
            if digits not in examples:
                examples.append(digits)

    def message(self, uuid: str) -> MessageRecord | None:
        with self._lock:
            entry = self._records.get(uuid)
        if entry is None:
            return None
        dst, accepted = entry
        request = accepted.request
        return MessageRecord(
            uuid=uuid,
            dst=dst,
            src=request.src,
            powerpack_uuid=request.powerpack_uuid,
            text=request.text,
            type=request.type,
            url=request.url,
            method=request.method,
            time=accepted.time,
        )

    def stats(self) -> dict:
        with self._lock:
            return {
                "requests": self.requests,
                "messages": self.messages,
                "unique_numbers": len(self._sends),
                "duplicates": self.duplicates,
                "duplicate_numbers": list(self._duplicate_examples),
                "sends": dict(self._sends),
                "invalid": self.invalid,
                "auth_failures": self.auth_failures,
                "bad_requests": self.bad_requests,
            }
