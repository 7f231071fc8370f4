"""Request limits on /v1 with Flask-Limiter, counted in the service's Redis: API_RATE_LIMIT
per API key (admin keys included) and AUTH_FAILURE_LIMIT failed authentications per client
address. Plivo's webhooks, health checks and the docs are never limited this way."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache

import redis
from flask import Flask, g, request
from flask.wrappers import Response
from flask_limiter import ApplicationLimit, HeaderNames, Limiter, RateLimitExceeded

from api.errors import error_response

KEY_SCOPE = "api-key"
AUTH_FAILURE_SCOPE = "auth-failure"
# A Redis that does not answer must cost a request milliseconds, not the 10 s the other
# Redis clients wait: the limiter then falls back to counting in memory.
STORAGE_TIMEOUT = 0.5
# The IETF draft's names (draft-ietf-httpapi-ratelimit-headers); Flask-Limiter writes the
# reset as a Unix time, `_reset_in_seconds` turns it into the draft's delta-seconds.
HEADERS = {
    HeaderNames.LIMIT: "RateLimit-Limit",
    HeaderNames.REMAINING: "RateLimit-Remaining",
    HeaderNames.RESET: "RateLimit-Reset",
    HeaderNames.RETRY_AFTER: "Retry-After",
}


def _api_key_id() -> str:
    return g.get("api_key_id", "")


def _unidentified() -> bool:
    return "api_key_id" not in g


def _client_address() -> str:
    # The peer address: X-Forwarded-For is the client's to write, so trusting it would let a
    # guesser pick a fresh address for every try. Behind a proxy, configure ProxyFix.
    return request.remote_addr or "unknown"


def _refused(response: Response) -> bool:
    return response.status_code == 401


@lru_cache(maxsize=8)
def _pool(redis_url: str) -> redis.ConnectionPool:
    """One pool per Redis URL per process, shared by every app built in it (tests build
    hundreds; a pool each would leave their sockets open)."""
    return redis.ConnectionPool.from_url(
        redis_url, socket_connect_timeout=STORAGE_TIMEOUT, socket_timeout=STORAGE_TIMEOUT
    )


def _storage_uri(redis_url: str) -> str:
    # The `limits` library spells a Unix-socket Redis `redis+unix://`.
    if redis_url.startswith("unix://"):
        return "redis+" + redis_url
    return redis_url


def _too_many(error: RateLimitExceeded):
    limit = error.limit.limit
    if error.limit.scope == AUTH_FAILURE_SCOPE:
        message = (
            f"too many failed authentications from this address (AUTH_FAILURE_LIMIT {limit}); "
            "retry after the seconds in Retry-After"
        )
    else:
        message = (
            f"this API key sent more requests than API_RATE_LIMIT allows ({limit}); "
            "retry after the seconds in Retry-After"
        )
    return error_response(429, "rate_limited", message, {"limit": str(limit)})


def _reset_in_seconds(response: Response) -> Response:
    reset = response.headers.get("RateLimit-Reset")
    if reset is None:
        return response
    if reset.isdigit():
        # Rounded as Flask-Limiter rounds Retry-After, so the two agree on a 429.
        response.headers["RateLimit-Reset"] = str(max(0, int(int(reset) - time.time())))
    # Flask-Limiter adds Retry-After to every response it counts; it only means something
    # on the 429.
    if response.status_code != 429:
        response.headers.pop("Retry-After", None)
    return response


def init_app(app: Flask, applies: Callable[[], bool]) -> Limiter:
    """Limit the requests for which `applies()` is true. Registered after the hook that
    identifies the key and before the one that refuses a bad key (see api/auth.py)."""
    settings = app.config["SETTINGS"]
    limiter = Limiter(
        key_func=_api_key_id,
        application_limits=[
            ApplicationLimit(
                limit_provider=settings.api_rate_limit,
                key_function=_api_key_id,
                scope=KEY_SCOPE,
                exempt_when=_unidentified,
            ),
            # Tested on every /v1 request, counted only when one is answered 401: an address
            # over the limit is refused even with a valid key, or the 429-or-200 answer would
            # still tell a guesser which guess was right.
            ApplicationLimit(
                limit_provider=settings.auth_failure_limit,
                key_function=_client_address,
                scope=AUTH_FAILURE_SCOPE,
                deduct_when=_refused,
            ),
        ],
        storage_uri=_storage_uri(settings.redis_url),
        storage_options={"connection_pool": _pool(settings.redis_url)},
        headers_enabled=True,
        header_name_mapping=HEADERS,
        retry_after="delta-seconds",
        # Redis down: count in this process's memory (each process then allows the limit on
        # its own) rather than refuse everything or limit nothing; any other limiter error
        # is logged and the request served.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        key_prefix="bulksms-api",
    )
    limiter.request_filter(lambda: not applies())
    # After-request hooks run in reverse order: registered first, this one runs after the
    # limiter has written its headers.
    app.after_request(_reset_in_seconds)
    limiter.init_app(app)
    app.register_error_handler(RateLimitExceeded, _too_many)
    return limiter
