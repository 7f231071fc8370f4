"""The pacing state in Redis that the API and the workers both touch.

Two kinds of timeline per kind of message: the account's (`SMS_MPS`, `MMS_MPS`: Plivo drains
one queue per account first) and each sender's (`SENDER_MPS`, `DEFAULT_SENDER_MPS`, live
overrides). A timeline is a hash (`tat`: when it is next free, `mps`: the rate `tat` was
computed at) and the bookings it still remembers, a sorted set of `<batch>:<slot µs>:<size>`
scored by slot. Batches that may not book yet wait in a line per (kind, sender): one sorted
set per priority, ordered by a fair-queueing tag, with each entry's size and broadcast in a
hash and the time it must be back by in another sorted set.

Workers book and wait (workers/pacing.py); the API gives capacity back when a broadcast stops
(shared/lifecycle.py) and reads how far a sender is booked (shared/progress.py). Every change
is one Lua script on Redis's clock, so the two sides never see half a change.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.config import Settings
from shared.db import redis_client
from shared.limits import limits_in_force

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Bookings are remembered this long after they end, so that a changed rate re-paces the
# recent past (what Plivo's queue may still hold) and not only what is still ahead.
HISTORY_SECONDS = 60.0
# An idle timeline or line is dropped this long after its last use.
KEEP_SECONDS = 3600.0


def account_timeline(kind: str) -> str:
    return f"bulksms:timeline:{kind}"


def sender_timeline(kind: str, sender: str) -> str:
    # Senders are E.164 numbers or letters, digits and spaces: never a colon.
    return f"bulksms:timeline:{kind}:sender:{sender}"


def bookings(timeline: str) -> str:
    return f"{timeline}:bookings"


def line_keys(kind: str, sender: str) -> list[str]:
    """The waiting line of one sender: high, normal, entry details, due-back times."""
    base = f"bulksms:line:{kind}:{sender}"
    return [f"{base}:high", f"{base}:normal", f"{base}:meta", f"{base}:due"]


def timeline_keys(kind: str, sender: str) -> list[str]:
    account, own = account_timeline(kind), sender_timeline(kind, sender)
    return [account, bookings(account), own, bookings(own)]


def slot_micros(slot: datetime) -> int:
    """A slot as whole microseconds since the epoch, exactly (no float on the way)."""
    return (slot - EPOCH) // timedelta(microseconds=1)


def slot_datetime(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def booking_member(batch_id: int, slot: datetime) -> str:
    """A booking as `give_back` finds it: its batch and slot (its size does not matter)."""
    return f"{batch_id}:{slot_micros(slot)}"


# Functions every script below shares (prepended to each).
COMMON_LUA = """
local function now_seconds()
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
    return string.format('%.6f', x)
end

local function booking_size(member)
    return tonumber(string.match(member, ':(%d+)$'))
end

-- When the timeline would be free had every remembered booking been paced at `mps`. The
-- bookings keep their slots (they are promised); only their length follows the rate.
local function replay(key, mps)
    local free = 0
    local items = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    for i = 1, #items, 2 do
        local slot = tonumber(items[i + 1])
        if slot > free then free = slot end
        free = free + booking_size(items[i]) / mps
    end
    return free
end
"""

# Gives bookings back: each is forgotten, and the timeline's free time moves back by what
# forgetting it changes, which is nothing unless it was at the tail (the bookings after it
# keep their slots). So only capacity nobody else holds is handed out again.
# KEYS: account timeline, its bookings, sender timeline, its bookings.
# ARGV: bookings as `<batch>:<slot µs>` (anything after is ignored).
GIVE_BACK = (
    COMMON_LUA
    + """
local now = now_seconds()
local given = 0
for t = 1, 3, 2 do
    local timeline, booked = KEYS[t], KEYS[t + 1]
    local mps = tonumber(redis.call('HGET', timeline, 'mps') or '0')
    local before = now
    if mps > 0 then before = math.max(now, replay(booked, mps)) end
    local removed = 0
    for i = 1, #ARGV do
        local batch, micros = string.match(ARGV[i], '^([^:]+):(%d+)')
        local slot = tonumber(micros) / 1000000
        local prefix = batch .. ':' .. micros .. ':'
        for _, member in ipairs(redis.call('ZRANGEBYSCORE', booked, fmt(slot - 0.00001),
                fmt(slot + 0.00001))) do
            if string.sub(member, 1, #prefix) == prefix then
                removed = removed + redis.call('ZREM', booked, member)
            end
        end
    end
    if removed > 0 and mps > 0 then
        local back = before - math.max(now, replay(booked, mps))
        local tat = tonumber(redis.call('HGET', timeline, 'tat') or '0')
        if back > 0 then
            redis.call('HSET', timeline, 'tat', fmt(tat - back))
            given = math.max(given, back)
        end
    end
end
return fmt(given)
"""
)

# A stopped broadcast leaves its sender's line, so nobody behind it waits for batches that
# will not come back. KEYS: line high, normal, meta, due. ARGV: broadcast id.
LEAVE_LINE = """
local left = 0
for l = 1, 2 do
    for _, member in ipairs(redis.call('ZRANGE', KEYS[l], 0, -1)) do
        local entry = redis.call('HGET', KEYS[3], 'm:' .. member)
        if entry and string.match(entry, ' (.*)$') == ARGV[1] then
            redis.call('ZREM', KEYS[l], member)
            redis.call('ZREM', KEYS[4], member)
            redis.call('HDEL', KEYS[3], 'm:' .. member)
            left = left + 1
        end
    end
end
redis.call('HDEL', KEYS[3], 'F:' .. ARGV[1])
return left
"""

# How far the timelines are booked and where a broadcast stands in its sender's line.
# KEYS: account timeline, sender timeline, line high, normal, meta. ARGV: broadcast id.
DESCRIBE = (
    COMMON_LUA
    + """
local now = now_seconds()
local account = redis.call('HMGET', KEYS[1], 'tat', 'mps')
local sender = redis.call('HMGET', KEYS[2], 'tat', 'mps')
-- Messages of other broadcasts queued before this one's last waiting batch, and its own.
local ahead, own, waiting, pending_ahead = 0, 0, 0, 0
for l = 3, 4 do
    for _, member in ipairs(redis.call('ZRANGE', KEYS[l], 0, -1)) do
        local entry = redis.call('HGET', KEYS[5], 'm:' .. member) or '0 '
        local size = tonumber(string.match(entry, '^(%d+)')) or 0
        waiting = waiting + size
        if string.match(entry, ' (.*)$') == ARGV[1] then
            own = own + size
            ahead = ahead + pending_ahead
            pending_ahead = 0
        else
            pending_ahead = pending_ahead + size
        end
    end
end
return {fmt(now), account[1] or '0', account[2] or '0', sender[1] or '0', sender[2] or '0',
    tostring(ahead), tostring(own), tostring(waiting)}
"""
)


def give_back(settings: Settings, kind: str, sender: str, members: list[str]) -> float:
    """Forget these bookings (batches that will not send at their slot); returns the most
    seconds handed back on either timeline. Only once nothing can send at those slots."""
    if not members:
        return 0.0
    client = redis_client(settings.redis_url)
    script = client.register_script(GIVE_BACK)
    return float(script(keys=timeline_keys(kind, sender), args=members))


def leave_line(settings: Settings, kind: str, sender: str, broadcast_id: uuid.UUID) -> int:
    """Take a stopped broadcast's batches out of its sender's line; returns how many."""
    client = redis_client(settings.redis_url)
    script = client.register_script(LEAVE_LINE)
    return int(script(keys=line_keys(kind, sender), args=[str(broadcast_id)]))


@dataclass(frozen=True)
class Outlook:
    """A sender's pacing as a broadcast on it sees it right now."""

    now: float  # Redis's clock
    booked_until: float  # when the account and the sender are both free (>= now)
    sender_booked_until: float
    account_booked_until: float
    account_mps: float  # the limits in force (0 = none)
    sender_mps: float
    ahead: int  # messages of other broadcasts waiting before this one's last batch
    own_waiting: int  # this broadcast's messages waiting unbooked in the line
    waiting: int  # every message waiting in the sender's line

    @property
    def mps(self) -> float:
        """The rate this sender can send at (0 = unlimited)."""
        return effective(self.account_mps, self.sender_mps)


def effective(account_mps: float, sender_mps: float) -> float:
    """The tighter of two limits, where 0 means none."""
    limits = [mps for mps in (account_mps, sender_mps) if mps > 0]
    return min(limits) if limits else 0.0


def outlook(settings: Settings, kind: str, sender: str, broadcast_id: uuid.UUID) -> Outlook:
    client = redis_client(settings.redis_url)
    script = client.register_script(DESCRIBE)
    account, own = account_timeline(kind), sender_timeline(kind, sender)
    high, normal, meta, _ = line_keys(kind, sender)
    raw = script(keys=[account, own, high, normal, meta], args=[str(broadcast_id)])
    now, account_tat, _, sender_tat, _, ahead, mine, waiting = raw
    now = float(now)
    account_mps, sender_mps = limits_in_force(settings, kind, sender)
    account_until = max(now, float(account_tat)) if account_mps > 0 else now
    sender_until = max(now, float(sender_tat)) if sender_mps > 0 else now
    return Outlook(
        now=now,
        booked_until=max(account_until, sender_until),
        sender_booked_until=sender_until,
        account_booked_until=account_until,
        account_mps=account_mps,
        sender_mps=sender_mps,
        ahead=int(ahead),
        own_waiting=int(mine),
        waiting=int(waiting),
    )
