"""Settings of the sandbox: the credentials it accepts and how much like a real account it acts.

Every field can be set at start (SandboxConfig(...), env SANDBOX_<NAME>, CLI --<name>) and
changed at run time with a partial JSON update (POST /sandbox/config). A config is never
changed in place: an update builds a new one, so a request sees the old or the new, never half.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

DEFAULT_AUTH_ID = "MASANDBOX00000000000"
DEFAULT_AUTH_TOKEN = "sandbox-auth-token"
OUTCOME_STATUSES = ("delivered", "undelivered", "failed")
# A message the carrier never reports on: Plivo's record says `sent` for good.
STAYS_SENT = "sent"
# UTC offsets that exist, in minutes: -12:00 to +14:00.
UTC_OFFSET_RANGE = (-720, 840)


def normalize_prefixes(prefixes: Iterable[str]) -> list[str]:
    """Digit prefixes without '+' or blanks; raises ValueError on anything else."""
    if isinstance(prefixes, str):
        raise ValueError("invalid_prefixes must be a list of digit strings")
    cleaned = []
    for prefix in prefixes:
        if not isinstance(prefix, str):
            raise ValueError(f"invalid prefix {prefix!r}: must be a string of digits")
        digits = prefix.strip().removeprefix("+")
        if not digits:
            continue
        if not digits.isdecimal() or not digits.isascii():
            raise ValueError(f"invalid prefix {prefix!r}: must be a string of digits")
        cleaned.append(digits)
    return cleaned


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _optional_url(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


def _number(value: object) -> float:
    # bool is an int in Python, and "true" is never meant as 1.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError("must be a finite number >= 0")
    return number


def _share(value: object) -> float:
    share = _number(value)
    if share > 1:
        raise ValueError("must be a share from 0 to 1")
    return share


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a whole number")
    count = int(value)
    if count < 0:
        raise ValueError("must be >= 0")
    return count


def _at_least_one(value: object) -> int:
    count = _count(value)
    if count < 1:
        raise ValueError("must be >= 1")
    return count


def _utc_offset(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a whole number of minutes")
    minutes = int(value)
    low, high = UTC_OFFSET_RANGE
    if not low <= minutes <= high:
        raise ValueError(f"must be from {low} to {high} minutes")
    return minutes


def _seed(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be an integer or null")
    return int(value)


def _mapping(value: object) -> dict:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ValueError("must be an object with string keys")
    return value


def _sender_mps(value: object) -> dict[str, float]:
    rates = {}
    for sender, mps in _mapping(value).items():
        rate = _number(mps)
        if rate <= 0:
            raise ValueError(f"{sender!r}: mps must be > 0")
        # Keyed like the queues: a '+' on a phone number is not part of the sender.
        rates[sender.strip().removeprefix("+")] = rate
    return rates


def parse_outcome(outcome: str) -> tuple[str, int | None]:
    """'delivered', 'sent', 'undelivered:30' or 'failed:450' -> (status, error code or None)."""
    status, _, code = outcome.partition(":")
    if status not in (*OUTCOME_STATUSES, STAYS_SENT) or (
        status in ("delivered", STAYS_SENT) and code
    ):
        raise ValueError(
            f"outcome {outcome!r}: use delivered, sent, undelivered:CODE or failed:CODE"
        )
    if code and not (code.isdecimal() and code.isascii()):
        raise ValueError(f"outcome {outcome!r}: the error code must be digits")
    return status, int(code) if code else None


def _outcomes(value: object) -> dict[str, str]:
    outcomes = {}
    for number, outcome in _mapping(value).items():
        digits = number.strip().removeprefix("+")
        if not (digits.isdecimal() and digits.isascii()):
            raise ValueError(f"{number!r} is not a phone number")
        if not isinstance(outcome, str):
            raise ValueError(f"{number!r}: outcome must be a string")
        parse_outcome(outcome)
        outcomes[digits] = outcome
    return outcomes


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("must be a list of strings")
    return [item.strip() for item in value if item.strip()]


def _list_from_text(text: str) -> list[str]:
    return json.loads(text) if text.lstrip().startswith("[") else text.split(",")


def _mapping_from_text(text: str) -> dict:
    """JSON, or the shorter `key=value,key=value` that is easier to type in a shell."""
    if text.lstrip().startswith("{"):
        return json.loads(text)
    pairs = [pair.partition("=") for pair in text.split(",") if pair.strip()]
    if any(not sep for _, sep, _ in pairs):
        raise ValueError("use key=value,key=value or a JSON object")
    return {key.strip(): value.strip() for key, _, value in pairs}


def _setting(default, parse: Callable, help: str, from_text: Callable = str):
    metadata = {"parse": parse, "from_text": from_text, "help": help}
    if default in (list, dict):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class SandboxConfig:
    # The SDK refuses auth ids that are not 20 characters starting with MA/SA, so the default
    # has that shape.
    auth_id: str = _setting(DEFAULT_AUTH_ID, _text, "account id accepted (Basic auth and path)")
    auth_token: str = _setting(
        DEFAULT_AUTH_TOKEN, _text, "auth token accepted; also signs callbacks"
    )
    invalid_prefixes: list[str] = _setting(
        list, normalize_prefixes, "digit prefixes reported as invalid_number", _list_from_text
    )
    # Queues: Plivo accepts everything and drains it at the account's MPS, then per sender.
    sms_mps: float = _setting(0.0, _number, "account SMS per second; 0 = unlimited")
    mms_mps: float = _setting(0.0, _number, "account MMS per second; 0 = unlimited")
    sender_mps: dict[str, float] = _setting(
        dict, _sender_mps, "per-sender MPS, {src: mps}", _mapping_from_text
    )
    message_expiry: float = _setting(
        10800.0, _number, "seconds a message may wait in the queue before failing with 420"
    )
    # The account's API request limit.
    request_limit: int = _setting(300, _count, "create requests per window; 0 = unlimited")
    request_window: float = _setting(5.0, _number, "seconds of the sliding request window")
    # Message list (GET .../Message/) has its own, much tighter limit on top of that one.
    list_request_limit: int = _setting(
        20, _count, "message list requests per list window; 0 = unlimited"
    )
    list_request_window: float = _setting(
        60.0, _number, "seconds of the sliding message list window"
    )
    # Faults, as shares of create requests.
    fail_5xx: float = _setting(0.0, _share, "share answered 500/502/503, nothing recorded")
    fail_429: float = _setting(0.0, _share, "share answered 429 on top of the request limit")
    slow: float = _setting(0.0, _share, "share accepted but answered after slow_seconds")
    slow_seconds: float = _setting(30.0, _number, "delay of a slow answer")
    drop_before: float = _setting(0.0, _share, "share dropped unanswered, nothing recorded")
    drop_after: float = _setting(0.0, _share, "share accepted, then dropped unanswered")
    fail_after_accept: float = _setting(
        0.0, _share, "share accepted and sent, then answered 500/504 (gateway timeout)"
    )
    fault_seed: int | None = _setting(None, _seed, "seed of the random faults and outcomes")
    # What happens to a message after it is queued.
    share_undelivered: float = _setting(0.0, _share, "share ending undelivered after sent")
    share_failed: float = _setting(0.0, _share, "share ending failed before sent")
    share_stays_sent: float = _setting(
        0.0, _share, "share the carrier never reports on: `sent` for good, no final callback"
    )
    outcomes: dict[str, str] = _setting(
        dict,
        _outcomes,
        "{digits: delivered|sent|undelivered:CODE|failed:CODE}",
        _mapping_from_text,
    )
    oversize_media: list[str] = _setting(
        list, _strings, "media URLs (or parts) treated as over 5 MB: error 120", _list_from_text
    )
    delivery_delay: float = _setting(0.5, _number, "seconds from sent to the final status")
    # Status callbacks.
    share_duplicate_callbacks: float = _setting(0.0, _share, "share of callbacks sent twice")
    share_out_of_order: float = _setting(0.0, _share, "share of final callbacks before sent")
    # The message still reaches its final state (Message Get/List report it); only the
    # report to `url` is lost, as when a carrier's DLR never makes it back.
    share_no_final_report: float = _setting(
        0.0, _share, "share of messages whose final callback is never sent"
    )
    share_no_callbacks: float = _setting(0.0, _share, "share of messages with no callback at all")
    callback_workers: int = _setting(8, _at_least_one, "threads posting callbacks")
    callback_retries: int = _setting(3, _count, "retries of a callback after 5xx/no answer")
    callback_retry_delay: float = _setting(1.0, _number, "first retry delay; doubles each time")
    callback_timeout: float = _setting(5.0, _number, "seconds to wait for a callback receiver")
    # Message Get/List report message_time in the account's time zone; UTC unless set, so a
    # client that drops the offset instead of converting can be caught.
    message_time_offset: int = _setting(
        0, _utc_offset, "UTC offset, in minutes, of message_time in Message Get/List"
    )
    inbound_url: str | None = _setting(
        None, _optional_url, "default receiver of POST /sandbox/inbound"
    )

    def __post_init__(self) -> None:
        for setting in dataclasses.fields(self):
            value = getattr(self, setting.name)
            try:
                setattr(self, setting.name, setting.metadata["parse"](value))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{setting.name}: {error}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxConfig:
        env = os.environ if environ is None else environ
        values = {}
        for name in field_names():
            text = env.get(env_var(name), "").strip()
            if text:
                values[name] = _from_text(name, text, env_var(name))
        return cls(**values)

    def updated(self, changes: Mapping[str, object]) -> SandboxConfig:
        """A new config with `changes` applied; ValueError names what is wrong."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def with_text(self, texts: Mapping[str, str]) -> SandboxConfig:
        """A new config with values written as in env vars and CLI flags."""
        return self.updated({name: _from_text(name, text, name) for name, text in texts.items()})

    def public(self) -> dict:
        """The config as shown over HTTP: the control endpoints have no auth, so no token."""
        shown = dataclasses.asdict(self)
        del shown["auth_token"]
        return shown


def field_names() -> list[str]:
    return list(_FIELDS)


def env_var(name: str) -> str:
    return f"SANDBOX_{name.upper()}"


def describe(name: str) -> tuple[str, object]:
    """(help text, default) of a field, for the CLI."""
    setting = _FIELDS[name]
    default = setting.default
    if setting.default_factory is not dataclasses.MISSING:
        default = setting.default_factory()
    return setting.metadata["help"], default


def _from_text(name: str, text: str, source: str) -> object:
    try:
        return _FIELDS[name].metadata["from_text"](text)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{source}: {error}") from None


_FIELDS = {setting.name: setting for setting in dataclasses.fields(SandboxConfig)}
