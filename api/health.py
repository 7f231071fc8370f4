"""/healthz (the process answers) and /readyz (the database and Redis answer too)."""

from __future__ import annotations

from typing import Literal

import redis
from flask import Blueprint, current_app, jsonify
from pydantic import BaseModel, Field

from api.openapi import describe
from shared.db import ping

bp = Blueprint("health", __name__)

SANDBOX_NOTICE = "SANDBOX MODE: no Plivo credentials configured; messages go to the local sandbox"


class Alive(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description='"ok", or "unavailable: <reason>"')
    sandbox_mode: bool
    notice: str | None = Field(default=None, description="In sandbox mode: where messages go")


@bp.get("/healthz")
@describe("health", {200: Alive})
def healthz():
    """The process answers"""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@describe("health", {200: Readiness, 503: Readiness})
def readyz():
    """The database and Redis answer too (503 when one does not)"""
    settings = current_app.config["SETTINGS"]
    checks = {}
    try:
        ping(settings.database_url)
        checks["database"] = "ok"
    except Exception as error:  # any failure means "not ready"; the reason is shown
        checks["database"] = f"unavailable: {type(error).__name__}"
    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=1, socket_timeout=1
        )
        client.ping()
        client.close()
        checks["redis"] = "ok"
    except redis.RedisError as error:
        checks["redis"] = f"unavailable: {type(error).__name__}"
    ready = all(value == "ok" for value in checks.values())
    body = {
        "status": "ready" if ready else "unavailable",
        "checks": checks,
        "sandbox_mode": settings.sandbox_mode,
    }
    if settings.sandbox_mode:
        body["notice"] = SANDBOX_NOTICE
    return jsonify(body), 200 if ready else 503
