"""What becomes of accepted messages: their outcome, their status over time, their callbacks."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from sandbox.config import OUTCOME_STATUSES, STAYS_SENT, SandboxConfig, parse_outcome
from sandbox.encoding import message_units
from sandbox.messages import MessageRequest
from sandbox.queues import Schedule

# Error codes of messages the carrier took and did not deliver, and of ones Plivo never sent.
UNDELIVERED_CODES = (20, 30, 50, 70, 80, 90, 100, 200)
FAILED_CODES = (10, 40, 50, 450, 900)
EXPIRED = 420
MMS_TOO_LARGE = 120
RATES = {"sms": "0.00500", "mms": "0.02000"}  # per unit, as Plivo's TotalRate
# One carrier for every number: the fields are there, their values do not matter here.
MCC, MNC = "310", "410"

# An outcome is None (delivered) or (status, error code); ("sent", None) stays sent for good.
Outcome = tuple[str, int | None] | None


class Step(NamedTuple):
    """One status callback of one message."""

    due: float
    status: str
    sequence: int
    error_code: int | None


class Plan(NamedTuple):
    """A message's callbacks as posted, and how many of its true ones were withheld."""

    steps: list[Step]
    withheld: int


@dataclass(slots=True)
class Run:
    """One accepted create request: its messages share a sender, a type and a schedule."""

    request: MessageRequest
    uuids: list[str]
    accepted: float  # epoch seconds
    schedule: Schedule  # messages at index >= schedule.kept expire
    expiry: float
    delivery_delay: float
    outcomes: list[Outcome] | None  # per message; None when all are delivered
    _units: int | None = field(default=None, repr=False)

    def outcome(self, index: int) -> Outcome:
        if index >= self.schedule.kept:
            return ("failed", EXPIRED)
        return self.outcomes[index] if self.outcomes else None

    def status(self, index: int, now: float) -> tuple[str, int | None]:
        """The status Plivo would report at `now`, whether or not callbacks got through."""
        outcome = self.outcome(index)
        if index >= self.schedule.kept:
            return outcome if now >= self.accepted + self.expiry else ("queued", None)
        send_time = self.schedule.send_time(index)
        if now < send_time:
            return "queued", None
        if outcome and outcome[0] == "failed":
            return outcome
        if now < send_time + self.delivery_delay:
            return "sent", None
        return outcome or ("delivered", None)

    def units(self) -> int:
        """Parts billed per message: one for an MMS, else as the text splits."""
        if self._units is None:
            request = self.request
            self._units = 1 if request.type == "mms" else message_units(request.text)
        return self._units

    def callback_count(self) -> int:
        """Callbacks before any duplicates or withholding: queued, sent, final; a failure
        skips `sent`, a message that stays sent has no final one."""
        kept = self.schedule.kept
        short = len(self.uuids) - kept
        if self.outcomes:
            short += sum(
                1
                for outcome in self.outcomes[:kept]
                if outcome and outcome[0] in ("failed", STAYS_SENT)
            )
        return 3 * len(self.uuids) - short

    def callback_plan(self, index: int, config: SandboxConfig, rng: random.Random) -> Plan:
        """This message's callbacks in the order they are posted; Sequence is the true order."""
        steps = self._true_steps(index)
        planned = len(steps)
        # Drawn only when switched on, so a seed gives the same run as before these existed.
        if config.share_no_callbacks and rng.random() < config.share_no_callbacks:
            return Plan([], planned)
        if config.share_no_final_report and rng.random() < config.share_no_final_report:
            steps = [step for step in steps if step.status not in OUTCOME_STATUSES]
        withheld = planned - len(steps)
        if len(steps) == 3 and rng.random() < config.share_out_of_order:
            # The carrier's report overtakes Plivo's own `sent`.
            sent, final = steps[1], steps[2]
            steps[1:] = [final._replace(due=sent.due), sent]
        duplicate = config.share_duplicate_callbacks
        if duplicate:
            steps = [copy for step in steps for copy in [step] * (1 + (rng.random() < duplicate))]
        return Plan(steps, withheld)

    def _true_steps(self, index: int) -> list[Step]:
        """Every status the message goes through, in order, as Plivo would report them."""
        outcome = self.outcome(index)
        events = [(self.accepted, "queued", None)]
        if index >= self.schedule.kept:
            events.append((self.accepted + self.expiry, *outcome))
        elif outcome and outcome[0] == "failed":
            events.append((self.schedule.send_time(index), *outcome))
        else:
            send_time = self.schedule.send_time(index)
            events.append((send_time, "sent", None))
            if not (outcome and outcome[0] == STAYS_SENT):
                final = outcome or ("delivered", None)
                events.append((send_time + self.delivery_delay, *final))
        return [Step(due, status, seq, code) for seq, (due, status, code) in enumerate(events, 1)]

    def callback_params(self, index: int, step: Step) -> dict[str, str]:
        request = self.request
        units = self.units()
        rate = RATES[request.type]
        sent = step.status in ("sent", "delivered", "undelivered")
        final = step.status in ("delivered", "undelivered", "failed")
        params = {
            "MessageUUID": self.uuids[index],
            "To": request.destinations[index],
            "From": (request.src or "").removeprefix("+"),
            "Type": request.type,
            "Status": step.status,
            "Units": str(units),
            "TotalRate": rate,
            "TotalAmount": f"{float(rate) * units:.5f}",
            "MCC": MCC,
            "MNC": MNC,
            "Sequence": str(step.sequence),
            "MessageTime": plivo_time(self.accepted),
            "QueuedTime": plivo_time(self.accepted),
            "SentTime": plivo_time(self.schedule.send_time(index)) if sent else "",
            "DeliveryReportTime": plivo_time(step.due) if final else "",
            "PowerpackUUID": request.powerpack_uuid or "",
        }
        if step.error_code is not None:
            params["ErrorCode"] = str(step.error_code)
        return params


def choose_outcomes(
    request: MessageRequest, config: SandboxConfig, rng: random.Random
) -> list[Outcome] | None:
    """Each message's fate, decided at acceptance; None means every message is delivered."""
    if request.type == "mms" and _oversize(request, config.oversize_media):
        return [("failed", MMS_TOO_LARGE)] * len(request.destinations)
    fixed = {digits: parse_outcome(outcome) for digits, outcome in config.outcomes.items()}
    failed, undelivered = config.share_failed, config.share_undelivered
    stays_sent = config.share_stays_sent
    if not (fixed or failed or undelivered or stays_sent):
        return None
    outcomes: list[Outcome] = []
    for digits in request.destinations:
        if digits in fixed:
            status, code = fixed[digits]
            if status == "delivered":
                outcomes.append(None)
            elif status == STAYS_SENT:
                outcomes.append((STAYS_SENT, None))
            else:
                codes = FAILED_CODES if status == "failed" else UNDELIVERED_CODES
                outcomes.append((status, code if code is not None else rng.choice(codes)))
            continue
        draw = rng.random() if failed or undelivered or stays_sent else 1.0
        if draw < failed:
            outcomes.append(("failed", rng.choice(FAILED_CODES)))
        elif draw < failed + undelivered:
            outcomes.append(("undelivered", rng.choice(UNDELIVERED_CODES)))
        elif draw < failed + undelivered + stays_sent:
            outcomes.append((STAYS_SENT, None))
        else:
            outcomes.append(None)
    return outcomes


def _oversize(request: MessageRequest, oversize_media: list[str]) -> bool:
    media = request.media_urls + request.media_ids
    return any(marker in item for item in media for marker in oversize_media)


def plivo_time(epoch: float) -> str:
    """Plivo's timestamp format, in UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S+00:00", time.gmtime(epoch))
