"""The durable buffer between Plivo's status callbacks and the database: a Redis stream.

The API appends each verified callback and answers 200 at once; a worker applies them in
bulk. An entry leaves the stream only after the transaction that applied it committed."""

from __future__ import annotations

import json

import redis

STREAM = "bulksms:status-events"
GROUP = "appliers"
NONCE_TTL_SECONDS = 900

# A signature's nonce is accepted once (replays are refused) and the event appended in the
# same atomic step, so a refused replay never leaves an entry behind.
# KEYS: nonce key, stream. ARGV: ttl, payload.
_APPEND = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then return 0 end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[2])
return 1
"""


class ReplayedNonce(Exception):
    """The same signed request was seen before."""


def nonce_key(nonce: str) -> str:
    return f"bulksms:nonce:{nonce}"


_scripts: dict[int, redis.commands.core.Script] = {}


def append(client: redis.Redis, nonce: str, fields: dict[str, str]) -> None:
    """Raises ReplayedNonce, or redis.RedisError when the buffer is unavailable."""
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_APPEND)
    payload = json.dumps(fields, separators=(",", ":"))
    appended = script(keys=[nonce_key(nonce), STREAM], args=[NONCE_TTL_SECONDS, payload])
    if not appended:
        raise ReplayedNonce(nonce)
