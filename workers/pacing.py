"""Global pacing in Redis, shared by every worker on every machine.

A batch of k messages costs k / MPS seconds on two virtual-scheduling (GCRA) timelines at once,
the account's per kind and its sender's, and takes the later of the two slots; both advance.
It books only a short horizon ahead (PACING_HORIZON): a batch whose slot, after everything
waiting before it in its sender's line, would be further away books nothing, joins the line
and is told when to try again. So only the next few seconds of capacity are ever promised: a
stopped broadcast frees its sender at once, a changed limit reaches every batch not yet
booked, and the line decides who gets into the horizon next (`high` before `normal`;
broadcasts interleave by fair-queueing tags).

API requests have their own limit, a sliding-window log: never more than REQUEST_LIMIT (less
REQUEST_MARGIN) requests in any REQUEST_WINDOW, across all workers.

Hand-written Lua on purpose: each decision reads and advances several keys (two timelines,
the line, the limits in force) and must be atomic across workers and on one clock, Redis's;
no maintained Python library offers two-timeline GCRA with a waiting line.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import redis

from shared.config import Settings
from shared.db import redis_client
from shared.limits import LIMITS_KEY, account_mps_configured, field, sender_mps_configured
from shared.timelines import (
    COMMON_LUA,
    HISTORY_SECONDS,
    KEEP_SECONDS,
    line_keys,
    slot_datetime,
    timeline_keys,
)

# A waiting batch whose turn is near tries again no sooner than this.
SHORTEST_RETRY = 0.5
# Remembered bookings per timeline, at most (only the recent past matters).
MAX_BOOKINGS = 5000

# KEYS: account timeline, its bookings, sender timeline, its bookings, limits hash,
#       line high, line normal, line meta, line due.
# ARGV: size, batch, broadcast, priority, horizon, account field, sender field,
#       account configured MPS, sender configured MPS, longest retry, grace, shortest retry,
#       readmit ('1': the batch had booked a slot and missed it).
RESERVE = (
    COMMON_LUA
    + f"""
local HISTORY, KEEP, MAX_BOOKINGS = {HISTORY_SECONDS}, {KEEP_SECONDS}, {MAX_BOOKINGS}
local now = now_seconds()
local size = tonumber(ARGV[1])
local batch, broadcast, priority = ARGV[2], ARGV[3], ARGV[4]
local horizon = tonumber(ARGV[5])
local account_mps = tonumber(redis.call('HGET', KEYS[5], ARGV[6]) or ARGV[8])
local sender_mps = tonumber(redis.call('HGET', KEYS[5], ARGV[7]) or ARGV[9])
local longest, grace, shortest = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local readmit = ARGV[13] == '1'

local mps = 0
for _, limit in ipairs({{account_mps, sender_mps}}) do
    if limit > 0 and (mps == 0 or limit < mps) then mps = limit end
end
local function answer(booked, delay, slot, member, ahead)
    return {{booked, fmt(delay), fmt(slot), member, fmt(now), string.format('%.17g', mps),
        string.format('%.17g', account_mps), string.format('%.17g', sender_mps),
        tostring(ahead)}}
end
if mps <= 0 then
    return answer('1', 0, now, '', 0)
end

-- When one timeline is next free, at the rate in force now. A changed rate re-paces the
-- remembered bookings at the new rate: a limit lowered by mistake and corrected leaves no
-- backlog days long, and a lowered one counts what was just sent faster.
local function free_at(timeline, booked, rate)
    if rate <= 0 then return now end
    local old = redis.call('ZRANGEBYSCORE', booked, '-inf', '(' .. fmt(now - HISTORY),
        'WITHSCORES')
    for i = 1, #old, 2 do
        if tonumber(old[i + 1]) + booking_size(old[i]) / rate < now - HISTORY then
            redis.call('ZREM', booked, old[i])
        end
    end
    redis.call('ZREMRANGEBYRANK', booked, 0, -MAX_BOOKINGS - 1)
    local state = redis.call('HMGET', timeline, 'tat', 'mps')
    local tat = tonumber(state[1] or '0')
    if tonumber(state[2] or '-1') ~= rate then
        tat = replay(booked, rate)
        redis.call('HSET', timeline, 'tat', fmt(tat), 'mps', string.format('%.17g', rate))
        redis.call('PEXPIRE', timeline, math.ceil((math.max(tat - now, 0) + HISTORY + KEEP) * 1000))
    end
    if tat < now then return now end
    return tat
end

local function book(timeline, booked, rate, slot, member)
    if rate <= 0 then return end
    local tat = slot + size / rate
    redis.call('HSET', timeline, 'tat', fmt(tat), 'mps', string.format('%.17g', rate))
    redis.call('ZADD', booked, fmt(slot), member)
    local ttl = math.ceil((tat - now + HISTORY + KEEP) * 1000)
    redis.call('PEXPIRE', timeline, ttl)
    redis.call('PEXPIRE', booked, ttl)
end

local slot = math.max(free_at(KEYS[1], KEYS[2], account_mps),
    free_at(KEYS[3], KEYS[4], sender_mps))

-- The line. Entries whose batch did not come back when due (its task was lost, or its
-- broadcast stopped without leaving) are dropped, so nobody waits behind them for long.
local high, normal, meta, due = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local virtual = tonumber(redis.call('HGET', meta, 'V') or '0')
for _, member in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', fmt(now))) do
    local entry = redis.call('HGET', meta, 'm:' .. member)
    redis.call('ZREM', high, member)
    redis.call('ZREM', normal, member)
    redis.call('ZREM', due, member)
    redis.call('HDEL', meta, 'm:' .. member)
    -- A broadcast's last tag at or below the virtual time tags nothing (max() picks the
    -- virtual time): forgetting it keeps the hash from growing with broadcasts long gone.
    local gone = entry and string.match(entry, ' (.*)$')
    if gone and tonumber(redis.call('HGET', meta, 'F:' .. gone) or '0') <= virtual then
        redis.call('HDEL', meta, 'F:' .. gone)
    end
end
local line = normal
if priority == 'high' then line = high end
-- Fair queueing: a broadcast's next batch is tagged after its previous one and after the
-- batch booked last, so two broadcasts on one sender take turns instead of queueing whole.
local tag = tonumber(redis.call('ZSCORE', line, batch))
if not tag and readmit then
    -- It had its turn and missed its slot (its task came late): first in line again, not
    -- behind the rest of its broadcast.
    tag = virtual
    redis.call('ZADD', line, tag, batch)
    redis.call('HSET', meta, 'm:' .. batch, size .. ' ' .. broadcast)
elseif not tag then
    local last = tonumber(redis.call('HGET', meta, 'F:' .. broadcast) or '0')
    tag = math.max(virtual, last) + size
    redis.call('ZADD', line, tag, batch)
    redis.call('HSET', meta, 'm:' .. batch, size .. ' ' .. broadcast, 'F:' .. broadcast, tag)
end
-- What waits before this batch: every `high` entry (for a `normal` one), then the entries of
-- its own line with lower tags.
local ahead = 0
local lines = {{normal}}
if line == high then lines = {{high}} else lines = {{high, normal}} end
for _, l in ipairs(lines) do
    for _, member in ipairs(redis.call('ZRANGE', l, 0, -1)) do
        if member == batch then break end
        local entry = redis.call('HGET', meta, 'm:' .. member) or '0'
        ahead = ahead + (tonumber(string.match(entry, '^(%d+)')) or 0)
    end
end

-- It books if, even after everything waiting before it had booked, its slot would be within
-- the horizon. Not only the head: within the horizon the order does not matter, and a line
-- whose members waited for the one head to come back would stall on a busy worker.
if slot + ahead / mps <= now + horizon then
    local micros = math.floor(slot * 1000000 + 0.5)
    slot = micros / 1000000
    local member = batch .. ':' .. string.format('%.0f', micros) .. ':' .. size
    book(KEYS[1], KEYS[2], account_mps, slot, member)
    book(KEYS[3], KEYS[4], sender_mps, slot, member)
    redis.call('ZREM', line, batch)
    redis.call('ZREM', due, batch)
    redis.call('HDEL', meta, 'm:' .. batch)
    virtual = math.max(tag, virtual)
    redis.call('HSET', meta, 'V', virtual)
    if tonumber(redis.call('HGET', meta, 'F:' .. broadcast) or '0') <= virtual then
        redis.call('HDEL', meta, 'F:' .. broadcast)
    end
    return answer('1', slot - now, slot, member, ahead)
end

-- Not yet: come back when it can book, given what waits before it at the rate in force.
local expected = slot + ahead / mps
local wait = expected - horizon - now
-- Close: come back when it can book. Far: halfway there, so a shorter line (a broadcast
-- cancelled, a limit raised) is noticed; never later than the longest retry.
local retry
if wait <= horizon then
    retry = math.max(wait, shortest)
else
    retry = math.min(longest, math.max(horizon, wait / 2))
end
redis.call('ZADD', due, fmt(now + retry + grace), batch)
local ttl = math.ceil((retry + grace + KEEP) * 1000)
for _, key in ipairs({{high, normal, meta, due}}) do
    if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return answer('0', retry, expected, '', ahead)
"""
)

# A sliding-window log: the grant times of the last `limit` requests, in order. A new request
# is granted no earlier than the `limit`-th last one plus the window, so no window of that
# length ever holds more than `limit` (a burst up to the limit, then the window's pace).
# KEYS: log. ARGV: limit, window.
ACQUIRE_REQUEST = (
    COMMON_LUA
    + """
local now = now_seconds()
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local grant = now
local count = redis.call('LLEN', KEYS[1])
if count > 0 then
    local last = tonumber(redis.call('LINDEX', KEYS[1], -1))
    if last > grant then grant = last end
end
if count >= limit then
    -- Strictly more than a window after it (2 µs: grants are stored to the microsecond).
    local opens = tonumber(redis.call('LINDEX', KEYS[1], count - limit)) + window + 0.000002
    if opens > grant then grant = opens end
end
redis.call('RPUSH', KEYS[1], fmt(grant))
redis.call('LTRIM', KEYS[1], -limit, -1)
redis.call('PEXPIRE', KEYS[1], math.ceil((grant - now + window) * 1000) + 1000)
return {fmt(grant - now), fmt(grant)}
"""
)

REQUESTS_KEY = "bulksms:requests:create"
LIST_REQUESTS_KEY = "bulksms:requests:list"


@dataclass(frozen=True)
class Reservation:
    """One attempt to book a batch. Booked: send at `slot` (`delay` from now). Not booked:
    nothing is promised; try again in `delay` seconds; `slot` is when it should send."""

    booked: bool
    delay: float
    slot: float  # unix seconds on the Redis server's clock
    booking: str  # the booking's name on the timelines ('' when none), for giving it back
    now: float
    mps: float  # the rate this sender can send at (0 = unlimited)
    account_mps: float
    sender_mps: float
    ahead: int  # messages waiting before this batch in its sender's line

    @property
    def slot_at(self) -> datetime | None:
        """The booked slot exactly as the booking names it (None when not booked)."""
        if not self.booking:
            return None
        return slot_datetime(int(self.booking.split(":")[1]))


@dataclass(frozen=True)
class RequestGrant:
    wait: float  # seconds from now
    at: float  # the grant time on the Redis server's clock


class Pacer:
    """Books send slots for batches and API requests; one per worker process."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self._client = client
        self._reserve = client.register_script(RESERVE)
        self._requests = client.register_script(ACQUIRE_REQUEST)
        self._settings = settings

    @classmethod
    def for_settings(cls, settings: Settings) -> Pacer:
        return cls(redis_client(settings.redis_url), settings)

    def reserve(
        self,
        kind: str,
        sender: str,
        count: int,
        *,
        batch_id: int | str | None = None,
        broadcast_id: uuid.UUID | str | None = None,
        priority: str = "normal",
        readmit: bool = False,
    ) -> Reservation:
        """Book `count` messages on the account's and the sender's timelines if the slot is
        within the horizon and this batch is next in its sender's line; else join the line
        (at its front with `readmit`: a batch that had booked and missed its slot)."""
        settings = self._settings
        batch = str(batch_id) if batch_id is not None else uuid.uuid4().hex
        raw = self._reserve(
            keys=[*timeline_keys(kind, sender), LIMITS_KEY, *line_keys(kind, sender)],
            args=[
                count,
                batch,
                str(broadcast_id or batch),
                priority,
                settings.pacing_horizon,
                field(kind),
                field(kind, sender),
                account_mps_configured(settings, kind),
                sender_mps_configured(settings, kind, sender),
                settings.countdown_max,
                line_grace(settings),
                SHORTEST_RETRY,
                "1" if readmit else "0",
            ],
        )
        booked, delay, slot, booking, now, mps, account, own, ahead = (
            value.decode() if isinstance(value, bytes) else value for value in raw
        )
        return Reservation(
            booked=booked == "1",
            delay=float(delay),
            slot=float(slot),
            booking=booking,
            now=float(now),
            mps=float(mps),
            account_mps=float(account),
            sender_mps=float(own),
            ahead=int(ahead),
        )

    def acquire_request(self) -> float:
        """Book one API request; returns how long to wait before making it."""
        return self.request_grant().wait

    def acquire_list_request(self) -> float:
        """Book one Message list request (Plivo's own, tighter limit); returns the wait."""
        return self.request_grant(listing=True).wait

    def request_grant(self, listing: bool = False) -> RequestGrant:
        """Book one request on the account's (or the list's) sliding window."""
        settings = self._settings
        if listing:
            key, limit, window = (
                LIST_REQUESTS_KEY,
                settings.list_request_limit,
                settings.list_request_window,
            )
        else:
            key, limit, window = REQUESTS_KEY, settings.request_limit, settings.request_window
        # The margin is kept in count and in time: Plivo counts arrivals, which network
        # jitter can bunch closer together than the grants were.
        allowed = max(1, int(limit * (1 - settings.request_margin)))
        padded = window * (1 + settings.request_margin)
        wait, at = self._requests(keys=[key], args=[allowed, padded])
        return RequestGrant(float(wait), float(at))

    def server_time(self) -> float:
        """Now on the Redis server's clock, the one every reservation is made on."""
        seconds, micros = self._client.time()
        return seconds + micros / 1_000_000


def line_grace(settings: Settings) -> float:
    """How late past its retry time a waiting batch may come back before the line forgets
    it: a countdown task queued behind busy workers, or a reconciler pass or two."""
    return max(10.0, 3 * settings.reconcile_interval + settings.pacing_max_sleep)
