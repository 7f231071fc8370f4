"""Sending limits that operators change while workers run: overrides held in one Redis hash,
read by the pacing script on every reservation, so a change applies to the next batch."""

from __future__ import annotations

from shared.config import Settings
from shared.db import redis_client

LIMITS_KEY = "bulksms:limits"
KINDS = ("sms", "mms")


def field(kind: str, sender: str | None = None) -> str:
    """Hash field for an account-wide (`sms`) or per-sender (`sms:+14155550000`) limit."""
    return f"{kind}:{sender}" if sender else kind


def configured_mps(settings: Settings, kind: str, sender: str | None = None) -> float:
    """The limit from configuration alone (0 means unlimited)."""
    if sender and sender in settings.sender_mps:
        return settings.sender_mps[sender]
    return settings.effective_sms_mps if kind == "sms" else settings.mms_mps


def effective_mps(settings: Settings, kind: str, sender: str) -> float:
    """The limit a reservation for `sender` would use right now (0 = unlimited)."""
    client = redis_client(settings.redis_url)
    for key in (field(kind, sender), field(kind)):
        value = client.hget(LIMITS_KEY, key)
        if value is not None:
            return float(value)
    return configured_mps(settings, kind, sender)


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
            "value": overrides.get(key, configured_mps(settings, kind)),
            "source": "override" if key in overrides else "config",
        }
    senders: dict = {}
    for sender, mps in settings.sender_mps.items():
        senders.setdefault(sender, {})["sms_mps"] = {"value": mps, "source": "config"}
    for key, value in overrides.items():
        if ":" in key:
            kind, sender = key.split(":", 1)
            senders.setdefault(sender, {})[f"{kind}_mps"] = {"value": value, "source": "override"}
    limits["senders"] = senders
    return limits


def set_limit(settings: Settings, kind: str, mps: float | None, sender: str | None = None) -> None:
    """Override a limit (None removes the override, falling back to configuration)."""
    client = redis_client(settings.redis_url)
    if mps is None:
        client.hdel(LIMITS_KEY, field(kind, sender))
    else:
        client.hset(LIMITS_KEY, field(kind, sender), repr(float(mps)))
