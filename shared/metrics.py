"""Prometheus metrics: every definition in this one module, the small functions the code
calls to move them, and the state read at scrape time (queue depth, report backlog).

granian runs the API in several processes and Celery prefork runs tasks in several pool
processes. With PROMETHEUS_MULTIPROC_DIR set (scripts/run.py, docker-compose.yml), each
process writes its values to files there and the API's /metrics adds up the files of all of
them, workers included; the directory must be emptied before the service starts. Without it
(one process: tests, tools) values stay in this process's memory."""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter as Tally
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache

import redis
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from shared.db import session_scope
from shared.logs import log_event
from shared.models import DeliveryReport, as_utc, utcnow

log = logging.getLogger(__name__)

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
# What generate_latest writes (prometheus_client's own WSGI app labels it the same way).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A scrape must answer quickly even when Redis does not.
REDIS_TIMEOUT = 0.5
# Kombu's Redis transport keeps a queue's prioritised tasks in sibling lists (steps 3, 6, 9).
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED_KEY = "unacked"
_HOST = socket.gethostname().replace("_", "-")


def process_identifier() -> str:
    """Names this process's files. The host is part of it because containers sharing the
    directory (docker-compose.yml) each have their own pid 1, 7, 8..."""
    return f"{_HOST}-{os.getpid()}"


# `_created` series double every counter's lines and the multiprocess mode never has them:
# one shape whichever mode serves /metrics.
disable_created_metrics()

if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)
    # Must be set before the first metric below creates its values.
    _values.ValueClass = _values.MultiProcessValue(process_identifier)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Pacing waits run from nothing (a free slot) to minutes (a slow sender's queue).
WAIT_BUCKETS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
# Report lag: seconds on a healthy applier (beat runs it every second), hours when a
# report waited for its uuid or the workers were down.
LAG_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)

HTTP_REQUESTS = Counter(
    "bulksms_http_requests",
    "API requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "bulksms_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
MESSAGES = Counter(
    "bulksms_messages",
    "Messages by outcome: queued or rejected when their batch is sent; sent, delivered, "
    "undelivered or failed as Plivo reports them (with Plivo's error code).",
    ["outcome", "error_code"],
)
BATCHES = Counter(
    "bulksms_batches",
    "Attempts of the send task at a batch, by kind (sms, mms) and outcome (submitted, "
    "deferred, not_claimed, paused, cancelled, failed, unknown, retry, error, ...).",
    ["kind", "outcome"],
)
PACING_WAIT = Histogram(
    "bulksms_pacing_wait_seconds",
    "Seconds a batch waited for its send slot: slept in the worker, or handed back until "
    "its slot (handed_back).",
    ["kind", "how"],
    buckets=WAIT_BUCKETS,
)
REPORT_LAG = Histogram(
    "bulksms_delivery_report_lag_seconds",
    "Seconds from a delivery report's arrival at the API to its being applied.",
    buckets=LAG_BUCKETS,
)
RECONCILED = Counter(
    "bulksms_reconciled_batches",
    "Batches the reconciler acted on: released (lease expired, back to pending), unknown (a "
    "submitting batch whose worker vanished), enqueued (due, or its task was lost).",
    ["action"],
)
STATUS_LOOKUPS = Counter(
    "bulksms_status_lookups",
    "Message Get lookups by the report sweep, by what Plivo said (final, still_sent, "
    "not_found) or error.",
    ["result"],
)
UNKNOWN_RESOLVED = Counter(
    "bulksms_unknown_batches_resolved",
    "Unknown batches resolved from Plivo's message list: all found, partly found, none found.",
    ["result"],
)
LIST_REQUESTS = Counter(
    "bulksms_message_list_requests",
    "Message list requests made to resolve unknown batches (Plivo allows 20 a minute).",
)

_REPORTED = frozenset({"sent", "delivered", "undelivered", "failed"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SWEEP_RESULTS = {"final": "final", "still_sent": "still_sent", "not_found": "not_found",
                  "errors": "error"}  # fmt: skip


def _error_code(code: str | None) -> str:
    # Plivo's codes are a few dozen numbers; anything else must not mint a label per value.
    if not code:
        return "none"
    return code if code.isdigit() and len(code) <= 6 else "other"


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """One API answer; `route` is the URL rule (/v1/broadcasts/<uuid:broadcast_id>)."""
    method = method if method in _METHODS else "OTHER"
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)


def messages_sent(accepted: int, rejected: int) -> None:
    """Plivo's answer to one batch: how many it queued and how many it refused."""
    if accepted:
        MESSAGES.labels("queued", "none").inc(accepted)
    if rejected:
        MESSAGES.labels("rejected", "none").inc(rejected)


def messages_reported(changes: Iterable[tuple[str, str | None]]) -> None:
    """(status, error code) of each recipient a delivery report or a lookup moved on."""
    tally = Tally((status, _error_code(code)) for status, code in changes if status in _REPORTED)
    for (status, code), count in tally.items():
        MESSAGES.labels(status, code).inc(count)


def reports_applied(now: datetime, rows: Iterable, applied_ids: Iterable[int]) -> None:
    """Of the delivery-report `rows` (with .id and .received_at), those in `applied_ids`
    were applied at `now`."""
    applied = set(applied_ids)
    for row in rows:
        if row.id in applied:
            REPORT_LAG.observe(max((now - as_utc(row.received_at)).total_seconds(), 0.0))


def batch_outcome(kind: str, outcome: str) -> None:
    BATCHES.labels(kind, str(outcome)[:32]).inc()


def pacing_wait(kind: str, seconds: float, how: str = "slept") -> None:
    PACING_WAIT.labels(kind, how).observe(max(seconds, 0.0))


def reconcile_pass(counts: dict[str, int]) -> None:
    """The counts of one reconciler pass (workers/reconciler.py)."""
    for action in ("released", "unknown", "enqueued"):
        if counts.get(action):
            RECONCILED.labels(action).inc(counts[action])


def sweep_pass(counts: dict[str, int]) -> None:
    """The counts of one report-sweep pass (workers/report_sweep.py)."""
    for key, result in _SWEEP_RESULTS.items():
        if counts.get(key):
            STATUS_LOOKUPS.labels(result).inc(counts[key])


def unknown_batch_resolved(found: int, not_sent: int) -> None:
    result = "not_found" if not found else ("partly_found" if not_sent else "found")
    UNKNOWN_RESOLVED.labels(result).inc()


def resolution_pass(counts: dict[str, int]) -> None:
    """The counts of one resolution pass (workers/resolution.py)."""
    if counts.get("requests"):
        LIST_REQUESTS.inc(counts["requests"])


# --- Celery: connected in workers/app.py ---

_SEND_TASKS = {"send_sms_batch": "sms", "send_mms_batch": "mms"}


def count_batch_task(task=None, retval=None, state=None, **_signal) -> None:
    """`task_postrun`: each send task's outcome is the `outcome` its result reports."""
    kind = _SEND_TASKS.get(getattr(task, "name", ""))
    if kind is None:
        return
    if state == "SUCCESS" and isinstance(retval, dict):
        batch_outcome(kind, retval.get("outcome", "unknown"))
        if retval.get("outcome") == "deferred" and "wait" in retval:
            pacing_wait(kind, float(retval["wait"]), how="handed_back")
    else:
        batch_outcome(kind, "retry" if state == "RETRY" else "error")


def forget_process(pid=None, **_signal) -> None:
    """`worker_process_shutdown`: a pool process's live gauges die with it (its counters
    stay: a counter never goes back)."""
    if MULTIPROC_DIR:
        mark_process_dead(process_identifier(), MULTIPROC_DIR)


# --- Scrape ---


def exposition(redis_url: str, database_url: str) -> bytes:
    """The text /metrics answers: every process's metrics, then the live state."""
    registry = CollectorRegistry()
    if MULTIPROC_DIR:
        MultiProcessCollector(registry, MULTIPROC_DIR)
    else:
        registry.register(_ThisProcess())
    registry.register(LiveState(redis_url, database_url))
    return generate_latest(registry)


class _ThisProcess:
    def collect(self):
        yield from REGISTRY.collect()


@lru_cache(maxsize=8)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
    )


class LiveState:
    """Read when Prometheus scrapes, not counted: what waits in the queues and the report
    backlog. A source that does not answer is reported as down, not as zero."""

    def __init__(self, redis_url: str, database_url: str):
        self.redis_url = redis_url
        self.database_url = database_url

    def collect(self):
        up = GaugeMetricFamily(
            "bulksms_metrics_source_up",
            "1 when the scrape could read the source (redis, database), else 0.",
            labels=["source"],
        )
        queues = self._queues()
        up.add_metric(["redis"], 1.0 if queues else 0.0)
        if queues:
            yield from queues
        backlog = self._backlog()
        up.add_metric(["database"], 1.0 if backlog else 0.0)
        if backlog:
            yield from backlog
        yield up

    def _queues(self) -> list | None:
        from shared.taskqueue import QUEUES  # late: taskqueue's Celery app is heavy

        try:
            pipe = _redis(self.redis_url).pipeline(transaction=False)
            for queue in QUEUES:
                for key in (queue, *(f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS)):
                    pipe.llen(key)
            pipe.hlen(_UNACKED_KEY)
            lengths = pipe.execute()
        except redis.RedisError as error:
            log_event(log, "metrics.redis_unavailable", logging.WARNING, error=type(error).__name__)
            return None
        depth = GaugeMetricFamily(
            "bulksms_queue_depth", "Tasks waiting in each Celery queue.", labels=["queue"]
        )
        per_queue = 1 + len(_PRIORITY_STEPS)
        for index, queue in enumerate(QUEUES):
            waiting = lengths[index * per_queue : (index + 1) * per_queue]
            depth.add_metric([queue], float(sum(waiting)))
        unacked = GaugeMetricFamily(
            "bulksms_celery_unacked_tasks",
            "Tasks workers hold and have not acknowledged: running, or waiting for a countdown.",
            value=float(lengths[-1]),
        )
        return [depth, unacked]

    def _backlog(self) -> list | None:
        pending = DeliveryReport.applied_at.is_(None)
        try:
            with session_scope(self.database_url) as session:
                waiting, oldest = session.execute(
                    select(
                        func.count(DeliveryReport.id), func.min(DeliveryReport.received_at)
                    ).where(pending, DeliveryReport.orphaned_at.is_(None))
                ).one()
                orphaned = session.scalar(
                    select(func.count(DeliveryReport.id)).where(
                        pending, DeliveryReport.orphaned_at.is_not(None)
                    )
                )
        except SQLAlchemyError as error:
            error = type(error).__name__
            log_event(log, "metrics.database_unavailable", logging.WARNING, error=error)
            return None
        age = (utcnow() - as_utc(oldest)).total_seconds() if oldest else 0.0
        return [
            GaugeMetricFamily(
                "bulksms_delivery_reports_unapplied",
                "Delivery reports stored and not applied yet (orphans excluded).",
                value=float(waiting),
            ),
            GaugeMetricFamily(
                "bulksms_delivery_report_oldest_unapplied_age_seconds",
                "Age of the oldest delivery report not applied yet (orphans excluded); 0 if none.",
                value=max(age, 0.0),
            ),
            GaugeMetricFamily(
                "bulksms_delivery_reports_orphaned",
                "Reports whose message uuid was never recorded (GET /v1/delivery-reports/orphans).",
                value=float(orphaned),
            ),
        ]
