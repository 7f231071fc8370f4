"""Sending limits that operators change while workers run: overrides held in one Redis hash,
read by the pacing script on every reservation, so a change applies to the next batch.

Two limits hold for every batch: the account's per kind (`SMS_MPS`, `MMS_MPS`, override
`sms`/`mms`) and its sender's (`SENDER_MPS` for that sender, else `DEFAULT_SENDER_MPS`;
override `sms:<sender>`/`mms:<sender>`)."""

from __future__ import annotations

from shared.config import Settings
from shared.db import redis_client

LIMITS_KEY = "bulksms:limits"
KINDS = ("sms", "mms")


def field(kind: str, sender: str | None = None) -> str:
    """Hash field for an account-wide (`sms`) or per-sender (`sms:+14155550000`) limit."""
    return f"{kind}:{sender}" if sender else kind


def account_mps_configured(settings: Settings, kind: str) -> float:
    """The account's limit from configuration alone (0 means unlimited)."""
    return settings.effective_sms_mps if kind == "sms" else settings.mms_mps


def sender_mps_configured(settings: Settings, kind: str, sender: str) -> float:
    """A sender's own limit from configuration alone (0: only the account's limit holds)."""
    return settings.sender_mps.get(sender, settings.default_sender_mps)


def limits_in_force(settings: Settings, kind: str, sender: str) -> tuple[float, float]:
    """(account, sender) limits a reservation would use right now: overrides over config."""
    client = redis_client(settings.redis_url)
    account, own = client.hmget(LIMITS_KEY, [field(kind), field(kind, sender)])
    return (
        float(account) if account is not None else account_mps_configured(settings, kind),
        float(own) if own is not None else sender_mps_configured(settings, kind, sender),
    )


def effective_mps(settings: Settings, kind: str, sender: str) -> float:
    """The rate `sender` can send at right now: the tighter of the account's and its own
    limit (0 = unlimited)."""
    limits = [mps for mps in limits_in_force(settings, kind, sender) if mps > 0]
    return min(limits) if limits else 0.0


def read_limits(settings: Settings) -> dict:
    """Effective limits: Redis overrides over configuration, each marked with its source."""
    overrides = {
        key.decode(): float(value)
        for key, value in redis_client(settings.redis_url).hgetall(LIMITS_KEY).items()
    }
    limits: dict = {}
    for kind in KINDS:
        key = field(kind)
        limits[f"{kind}_mps"] = {
            "value": overrides.get(key, account_mps_configured(settings, kind)),
            "source": "override" if key in overrides else "config",
        }
    senders: dict = {}
    for sender, mps in settings.sender_mps.items():
        for kind in KINDS:
            senders.setdefault(sender, {})[f"{kind}_mps"] = {"value": mps, "source": "config"}
    for key, value in overrides.items():
        if ":" in key:
            kind, sender = key.split(":", 1)
            senders.setdefault(sender, {})[f"{kind}_mps"] = {"value": value, "source": "override"}
    limits["senders"] = senders
    limits["default_sender_mps"] = {"value": settings.default_sender_mps, "source": "config"}
    return limits


def set_limit(settings: Settings, kind: str, mps: float | None, sender: str | None = None) -> None:
    """Override a limit (None removes the override, falling back to configuration)."""
    client = redis_client(settings.redis_url)
    if mps is None:
        client.hdel(LIMITS_KEY, field(kind, sender))
    else:
        client.hset(LIMITS_KEY, field(kind, sender), repr(float(mps)))
