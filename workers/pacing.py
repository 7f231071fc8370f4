"""Global pacing in Redis, shared by every worker on every machine.

Two virtual-scheduling (GCRA) timelines, advanced atomically by one Lua script on the Redis
server's clock: one per (kind, sender), where a batch of k messages costs k / MPS seconds,
and one per account for API requests (REQUEST_LIMIT per REQUEST_WINDOW, bursts allowed up to
the limit). A reservation always succeeds and returns the time its batch may be sent; the
caller waits for it, or hands the batch back until then. Nothing is reserved twice for one
batch: the slot is stored on the batch (`not_before`).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from shared.config import Settings
from shared.db import redis_client
from shared.limits import LIMITS_KEY, configured_mps, field

# KEYS: sender timeline, limits hash. ARGV: k, per-sender field, account field, configured MPS.
RESERVE_MESSAGES = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local k = tonumber(ARGV[1])
local mps = tonumber(redis.call('HGET', KEYS[2], ARGV[2])
    or redis.call('HGET', KEYS[2], ARGV[3]) or ARGV[4])
local start = now
if mps > 0 then
    local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
    if tat > now then start = tat end
    local next_tat = start + k / mps
    redis.call('SET', KEYS[1], string.format('%.6f', next_tat),
        'PX', math.ceil((next_tat - now) * 1000) + 60000)
end
return {string.format('%.6f', start - now), string.format('%.6f', start), tostring(mps)}
"""

# GCRA with burst tolerance: up to `burst` requests back to back, then one per interval.
# Taken at send time (not at reservation), so a batch booked far ahead never blocks others.
# KEYS: request timeline. ARGV: interval, burst.
ACQUIRE_REQUEST = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', next_tat),
    'PX', math.ceil((next_tat - now) * 1000) + 60000)
return string.format('%.6f', wait)
"""


@dataclass(frozen=True)
class Reservation:
    delay: float  # seconds from now until the batch may be sent
    slot: float  # the same moment on the Redis server's clock (unix seconds)
    mps: float  # the limit in force when it was reserved (0 = unlimited)


def timeline_key(kind: str, sender: str) -> str:
    return f"bulksms:pace:{kind}:{sender}"


REQUESTS_KEY = "bulksms:pace:requests"


class Pacer:
    """Reserves send slots for batches and API requests; one per worker process."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self._client = client
        self._messages = client.register_script(RESERVE_MESSAGES)
        self._requests = client.register_script(ACQUIRE_REQUEST)
        self._settings = settings

    @classmethod
    def for_settings(cls, settings: Settings) -> Pacer:
        return cls(redis_client(settings.redis_url), settings)

    def reserve(self, kind: str, sender: str, count: int) -> Reservation:
        """Book `count` messages on the sender's timeline."""
        delay, slot, mps = self._messages(
            keys=[timeline_key(kind, sender), LIMITS_KEY],
            args=[
                count,
                field(kind, sender),
                field(kind),
                configured_mps(self._settings, kind, sender),
            ],
        )
        return Reservation(float(delay), float(slot), float(mps))

    def acquire_request(self) -> float:
        """Book one API request now; returns how long to wait before making it."""
        settings = self._settings
        interval = settings.request_window / settings.request_limit
        return float(self._requests(keys=[REQUESTS_KEY], args=[interval, settings.request_limit]))

    def server_time(self) -> float:
        """Now on the Redis server's clock, the one every reservation is made on."""
        seconds, micros = self._client.time()
        return seconds + micros / 1_000_000
