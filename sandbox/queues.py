"""Plivo's send queues as a virtual timeline: no thread drains anything, times are computed.

Plivo accepts whatever it is sent and queues it. The account's queue (one per message type)
releases messages at the account's MPS; each sender then sends at its own MPS. So a message
released at `a` by the account is sent at t = max(a, the sender's next free slot). A message
whose send time lies more than its expiry after acceptance never goes out: it fails with 420
and takes no slot.

All messages of one request share a sender and a type and sit in consecutive slots, so their
times form two arithmetic series and a request costs O(1) however many numbers it has:
    a_i = a_0 + i * account_step,   t_i = max(t_0 + i * sender_step, a_i)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Absorbs float rounding when a time lands exactly on a slot or a deadline.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Schedule:
    """The send times of one request's messages; only the first `kept` are ever sent."""

    first_release: float
    first_send: float
    account_step: float
    sender_step: float
    kept: int

    def send_time(self, index: int) -> float:
        return max(
            self.first_send + index * self.sender_step,
            self.first_release + index * self.account_step,
        )

    def last_send_time(self) -> float:
        return self.send_time(self.kept - 1)

    def sent_by(self, when: float) -> int:
        """How many of the kept messages have a send time at or before `when`."""
        return min(
            _slots_until(self.first_send, self.sender_step, self.kept, when),
            _slots_until(self.first_release, self.account_step, self.kept, when),
        )


def _slots_until(start: float, step: float, count: int, when: float) -> int:
    """How many of start, start + step, ... (count of them) are at or before `when`."""
    if start > when + _EPSILON:
        return 0
    if step == 0:
        return count
    return min(count, int((when - start) / step + _EPSILON) + 1)


class _Waiting:
    """One sender's schedules of one type still sending, oldest first.

    Within a (sender, type) each schedule starts after the previous one ends (both stages are
    FIFO), so only the oldest few can be part-sent: counting costs O(1), not O(backlog), even
    when a naive client queues 50,000 one-number requests. (A run-time MPS change can break
    that order for a while; the count is then slightly off until the old schedules drain.)
    """

    def __init__(self) -> None:
        self.schedules: deque[Schedule] = deque()
        self.kept = 0  # messages in `schedules`

    def add(self, schedule: Schedule) -> None:
        self.schedules.append(schedule)
        self.kept += schedule.kept

    def depth(self, now: float) -> int:
        schedules = self.schedules
        while schedules and schedules[0].last_send_time() <= now:
            self.kept -= schedules.popleft().kept
        depth = self.kept
        for schedule in schedules:
            if schedule.first_send > now:
                break
            depth -= schedule.sent_by(now)
        return depth


class Queues:
    """The timelines of one account. Not thread-safe: the caller holds a lock."""

    def __init__(self) -> None:
        self._account_free: dict[str, float] = {}  # message type -> next free release slot
        self._sender_free: dict[str, float] = {}  # sender -> next free send slot
        # sender -> message type -> what still waits: enough to count the queue.
        self._waiting: dict[str, dict[str, _Waiting]] = {}
        self.max_depth: dict[str, int] = {}

    def enqueue(
        self,
        sender: str,
        type_: str,
        count: int,
        now: float,
        expiry: float,
        account_mps: float,
        sender_mps: float,
    ) -> Schedule:
        """Slots for `count` messages accepted at `now`; returns their schedule."""
        account_step = 1 / account_mps if account_mps > 0 else 0.0
        sender_step = 1 / sender_mps if sender_mps > 0 else 0.0
        # An unlimited stage has no backlog, even if it was limited a moment ago.
        first_release = max(now, self._account_free.get(type_, now)) if account_step else now
        first_send = first_release
        if sender_step:
            first_send = max(first_release, self._sender_free.get(sender, now))
        deadline = now + expiry
        kept = min(
            _slots_until(first_send, sender_step, count, deadline),
            _slots_until(first_release, account_step, count, deadline),
        )
        schedule = Schedule(first_release, first_send, account_step, sender_step, kept)
        if kept:
            if account_step:
                self._account_free[type_] = first_release + kept * account_step
            if sender_step:
                self._sender_free[sender] = schedule.last_send_time() + sender_step
            if schedule.last_send_time() > now:
                self._waiting.setdefault(sender, {}).setdefault(type_, _Waiting()).add(schedule)
        self.max_depth[sender] = max(self.max_depth.get(sender, 0), self.depth(sender, now))
        return schedule

    def depth(self, sender: str, now: float) -> int:
        """Messages of `sender` accepted but not yet at their send time."""
        return sum(waiting.depth(now) for waiting in self._waiting.get(sender, {}).values())

    def depths(self, now: float) -> dict[str, int]:
        return {sender: self.depth(sender, now) for sender in self.max_depth}
