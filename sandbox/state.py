"""What the sandbox has been asked to send: counters for /stats and one record per message."""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from dataclasses import dataclass
from itertools import repeat

from sandbox.config import SandboxConfig
from sandbox.delivery import Outcome, Run
from sandbox.lookups import micros
from sandbox.messages import MessageRequest
from sandbox.queues import Queues

MAX_DUPLICATE_EXAMPLES = 20
FAULT_KINDS = ("drop_before", "5xx", "429", "drop_after", "slow", "fail_after_accept")
# Faults that answer in place of the Message API: the request is never processed.
REFUSING_FAULTS = frozenset({"drop_before", "5xx", "429"})
# Message Get and List answers; Get and List requests are not counted in `requests`, which
# stays the number of create requests.
LOOKUP_COUNTERS = (
    "gets",  # Get requests answered 200 or 404
    "gets_not_found",  # of which 404
    "lists",  # List requests answered 200
    "list_too_many_requests",  # 429 from the list's own limit
    "too_many_requests",  # 429 from the account's request limit
    "bad_requests",
    "auth_failures",
)


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
    media_urls: list[str]
    media_ids: list[str]
    send_time: float | None  # None when it expires in the queue
    status: str  # as of the moment the record was made
    error_code: int | None


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
        self.too_many_requests = 0
        self.duplicates = 0
        self.expired = 0
        self._faults: Counter[str] = Counter(dict.fromkeys(FAULT_KINDS, 0))
        # `sent`: stayed sent for good (share_stays_sent), the carrier never reported.
        self._outcomes: Counter[str] = Counter(delivered=0, undelivered=0, failed=0, sent=0)
        self._by_type: Counter[str] = Counter(sms=0, mms=0)
        self._duplicate_examples: list[str] = []
        self._sends: Counter[str] = Counter()
        # (digits, text) pairs already accepted: the same text to the same person again is
        # exactly the double-send a broadcaster must never do.
        self._texted: set[tuple[str, str]] = set()
        # uuid -> (the request it came in, its index there): one shared Run per call keeps a
        # million records cheap to build and to hold.
        self._records: dict[str, tuple[Run, int]] = {}
        # Every Run in acceptance order, and its acceptance time in microseconds: the Message
        # list finds a time window by bisection instead of scanning every record.
        self._runs: list[Run] = []
        self._run_micros: list[int] = []
        self._lookups: Counter[str] = Counter(dict.fromkeys(LOOKUP_COUNTERS, 0))
        # (epoch, sender, type, messages) per accepted request, for achieved-rate benchmarks.
        self._request_log: list[tuple[float, str, str, int]] = []
        self._queues = Queues()

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

    def record_too_many_requests(self) -> None:
        with self._lock:
            self.requests += 1
            self.too_many_requests += 1

    def record_fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1
            if kind in REFUSING_FAULTS:
                self.requests += 1
            if kind == "429":
                self.too_many_requests += 1

    def record_accepted(
        self,
        request: MessageRequest,
        uuids: list[str],
        config: SandboxConfig,
        outcomes: list[Outcome] | None = None,
    ) -> Run:
        """Queues the messages on the account's timeline and returns them as one Run."""
        # Everything here runs as C-level bulk operations or O(1) arithmetic (no per-number
        # Python code on the common path): a 1000-number request must cost well under a
        # millisecond.
        destinations = request.destinations
        count = len(destinations)
        sender = (request.src or request.powerpack_uuid or "").removeprefix("+")
        expiry = request.message_expiry
        if expiry is None:
            expiry = config.message_expiry
        account_mps = config.mms_mps if request.type == "mms" else config.sms_mps
        keys = [(digits, request.text) for digits in destinations]
        with self._lock:
            # Never before the previous request, even if the wall clock steps back: the list's
            # bisection needs acceptance times in order.
            now = max(time.time(), self._runs[-1].accepted if self._runs else 0.0)
            schedule = self._queues.enqueue(
                sender,
                request.type,
                count,
                now,
                expiry,
                account_mps,
                config.sender_mps.get(sender, 0.0),
            )
            run = Run(request, uuids, now, schedule, expiry, config.delivery_delay, outcomes)
            self.requests += 1
            self.messages += count
            self.invalid += len(request.invalid_numbers)
            self._by_type[request.type] += count
            self._request_log.append((now, sender, request.type, count))
            self._count_outcomes(run)
            self._sends.update(destinations)
            if not self._texted.isdisjoint(keys):
                self._count_duplicates([key for key in keys if key in self._texted])
            self._texted.update(keys)
            self._records.update(zip(uuids, zip(repeat(run), range(count)), strict=True))
            self._runs.append(run)
            self._run_micros.append(micros(now))
        return run

    def _count_outcomes(self, run: Run) -> None:
        kept = run.schedule.kept
        expired = len(run.uuids) - kept
        self.expired += expired
        self._outcomes["failed"] += expired
        if run.outcomes is None:
            self._outcomes["delivered"] += kept
            return
        decided = Counter(outcome[0] if outcome else "delivered" for outcome in run.outcomes[:kept])
        self._outcomes.update(decided)

    def _count_duplicates(self, repeated: list[tuple[str, str]]) -> None:
        self.duplicates += len(repeated)
        examples = self._duplicate_examples
        for digits, _ in repeated:
            if len(examples) >= MAX_DUPLICATE_EXAMPLES:
                break
            if digits not in examples:
                examples.append(digits)

    def entry(self, uuid: str) -> tuple[Run, int] | None:
        """The Run a message came in and its index there."""
        with self._lock:
            return self._records.get(uuid)

    def runs_between(self, earliest: int, latest: int | None) -> list[Run]:
        """Runs accepted from `earliest` to `latest` (microseconds, inclusive), newest first."""
        with self._lock:
            start = bisect.bisect_left(self._run_micros, earliest)
            stop = len(self._runs)
            if latest is not None:
                stop = bisect.bisect_right(self._run_micros, latest, lo=start)
            return self._runs[start:stop][::-1]

    def record_lookup(self, counter: str) -> None:
        with self._lock:
            self._lookups[counter] += 1

    def message(self, uuid: str) -> MessageRecord | None:
        entry = self.entry(uuid)
        if entry is None:
            return None
        run, index = entry
        request = run.request
        status, error_code = run.status(index, time.time())
        return MessageRecord(
            uuid=uuid,
            dst=request.destinations[index],
            src=request.src,
            powerpack_uuid=request.powerpack_uuid,
            text=request.text,
            type=request.type,
            url=request.url,
            method=request.method,
            time=run.accepted,
            media_urls=request.media_urls,
            media_ids=request.media_ids,
            send_time=run.schedule.send_time(index) if index < run.schedule.kept else None,
            status=status,
            error_code=error_code,
        )

    def request_log(self) -> list[dict]:
        with self._lock:
            log = list(self._request_log)
        return [{"t": t, "src": src, "type": type_, "count": count} for t, src, type_, count in log]

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
                "too_many_requests": self.too_many_requests,
                "faults": dict(self._faults),
                "expired": self.expired,
                "max_queue_depth": dict(self._queues.max_depth),
                "queue_depth": self._queues.depths(time.time()),
                "outcomes": dict(self._outcomes),
                "by_type": dict(self._by_type),
                "lookups": dict(self._lookups),
            }
