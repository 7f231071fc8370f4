"""Watching a broadcast: poll the API until it is final, showing how far it has got, how fast
it goes and when it should end."""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from cli.client import ApiClient, CliError

FINAL_STATUSES = frozenset({"completed", "completed_with_failures", "cancelled"})
# Recipient statuses in the order they happen, so every display lists them the same way.
STATUS_ORDER = (
    "pending",
    "queued",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "rejected",
    "skipped",
    "unknown",
)
# The rate is averaged over this much history: one poll-to-poll delta is too jumpy, since
# batches of up to 1000 recipients land all at once.
RATE_WINDOW = 30.0
# Without a terminal, a line per poll would flood a CI log.
PLAIN_EVERY = 10.0
# A long broadcast should survive an API restart or a proxy blip while it is watched.
POLL_FAILURES_TOLERATED = 5
BAR_WIDTH = 20


class WaitTimedOut(Exception):
    """The broadcast was not final within --max-wait; it carries the last state seen."""

    def __init__(self, broadcast: dict):
        super().__init__(broadcast.get("status"))
        self.broadcast = broadcast


@dataclass(frozen=True)
class Progress:
    """One poll, reduced to what the progress line shows."""

    status: str
    reason: str | None
    final: int
    total: int
    percent: float
    by_status: dict[str, int]
    rate: float | None
    eta_seconds: float | None
    # Why it is not moving, when the API says (its sender's pacing, delivery reports).
    waiting_for: str | None = None
    priority: str | None = None


class RateEstimator:
    """Messages per second from successive polls, for an API that does not report a rate."""

    def __init__(self, window: float = RATE_WINDOW):
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> float | None:
        """Record `done` recipients at monotonic time `at`; the rate so far, once known."""
        self._samples.append((at, done))
        while len(self._samples) > 2 and at - self._samples[1][0] >= self.window:
            self._samples.popleft()
        first_at, first_done = self._samples[0]
        if at - first_at <= 0:
            return None
        return max(0.0, (done - first_done) / (at - first_at))


def ordered(by_status: dict[str, int]) -> list[tuple[str, int]]:
    """Statuses in lifecycle order, then any the CLI does not know yet."""
    known = [(s, by_status[s]) for s in STATUS_ORDER if by_status.get(s)]
    return known + sorted((s, n) for s, n in by_status.items() if s not in STATUS_ORDER and n)


def measure(broadcast: dict, estimator: RateEstimator, at: float) -> Progress:
    """The API's progress, rate and ETA when it reports them, else computed from the counts."""
    recipients = broadcast.get("recipients") or {}
    by_status = recipients.get("by_status") or {}
    reported = broadcast.get("progress") or {}
    total = reported.get("total", recipients.get("total", sum(by_status.values())))
    if "final" in reported:
        final = reported["final"]
    else:
        # Without the API's figure: a recipient no longer pending has been handed to Plivo
        # (or settled without it), which is what ends a broadcast.
        final = total - by_status.get("pending", 0)
    percent = reported.get("percent")
    if percent is None:
        percent = 100.0 * final / total if total else 100.0
    estimated = estimator.add(at, final)
    rate = (broadcast.get("rate") or {}).get("messages_per_second", estimated)
    if "eta_seconds" in broadcast:
        eta = broadcast["eta_seconds"]
    else:
        eta = (total - final) / rate if rate else None
    waiting_for = broadcast.get("waiting_for")
    if broadcast.get("status") in FINAL_STATUSES:
        eta, waiting_for = 0.0, None
    return Progress(
        status=broadcast.get("status", "?"),
        reason=broadcast.get("status_reason"),
        final=final,
        total=total,
        percent=float(percent),
        by_status=by_status,
        rate=rate,
        eta_seconds=eta,
        waiting_for=waiting_for,
        priority=broadcast.get("priority"),
    )


def clock(seconds: float | None) -> str:
    """h:mm:ss, or a dash while there is no estimate."""
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def render(progress: Progress, bar: bool) -> str:
    filled = min(BAR_WIDTH, int(BAR_WIDTH * progress.percent / 100))
    parts = [f"{progress.percent:5.1f}%", f"{progress.final:,}/{progress.total:,}"]
    if bar:
        parts.insert(0, "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]")
    counts = " ".join(f"{status} {count:,}" for status, count in ordered(progress.by_status))
    if counts:
        parts.append(counts)
    rate = "-" if progress.rate is None else f"{progress.rate:,.1f}"
    parts += [f"{rate} msg/s", f"ETA {clock(progress.eta_seconds)}"]
    status = progress.status
    if progress.priority == "high":
        status += " [high priority]"
    if progress.reason and progress.status not in FINAL_STATUSES:
        status += f" ({progress.reason})"
    if progress.waiting_for:
        status += f", waiting for {progress.waiting_for}"
    parts.append(status)
    return "  ".join(parts)


class LiveLine:
    """One line on a terminal, redrawn in place."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self._drawn = 0

    def show(self, text: str, at: float, changed: bool) -> None:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        text = text[:width]
        # Spaces over the tail of a longer previous line: no terminal escape codes needed.
        self.stream.write("\r" + text + " " * max(0, self._drawn - len(text)))
        self.stream.flush()
        self._drawn = len(text)

    def note(self, text: str) -> None:
        self.stream.write("\r" + " " * self._drawn + "\r" + text + "\n")
        self.stream.flush()
        self._drawn = 0

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


class PlainLines:
    """Whole lines every PLAIN_EVERY seconds and on every status change (logs, pipes)."""

    def __init__(self, stream: IO[str], every: float = PLAIN_EVERY):
        self.stream = stream
        self.every = every
        self._last: float | None = None

    def show(self, text: str, at: float, changed: bool) -> None:
        if changed or self._last is None or at - self._last >= self.every:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = at

    def note(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def watch(
    client: ApiClient,
    broadcast_id: str,
    interval: float,
    max_wait: float | None = None,
    stream: IO[str] | None = None,
    now: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Poll until the broadcast is final and return it; WaitTimedOut after `max_wait`."""
    stream = stream or sys.stderr
    live = stream.isatty()
    display: LiveLine | PlainLines = LiveLine(stream) if live else PlainLines(stream)
    estimator = RateEstimator()
    started = now()
    path = client.broadcast_path(broadcast_id)
    failures = 0
    last_status = None
    broadcast: dict = {}
    try:
        while True:
            try:
                broadcast = client.call("GET", path, broadcast_id=broadcast_id)
                failures = 0
            except CliError as error:
                failures += 1
                if not error.transient or failures > POLL_FAILURES_TOLERATED:
                    raise
                display.note(f"{error.format_message()}; retrying")
            else:
                at = now()
                progress = measure(broadcast, estimator, at)
                changed = progress.status != last_status
                last_status = progress.status
                display.show(render(progress, bar=live), at, changed)
                if progress.status in FINAL_STATUSES:
                    return broadcast
            if max_wait is not None and now() - started >= max_wait:
                raise WaitTimedOut(broadcast)
            sleep(interval)
    finally:
        display.close()
