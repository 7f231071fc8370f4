"""Celery settings for every process that uses the one app in shared.taskqueue."""

from kombu import Queue

from shared.config import get_settings
from shared.keywords import SEND_KEYWORD_REPLY
from shared.taskqueue import (
    MAINTENANCE_QUEUE,
    RESOLVE_UNKNOWN,
    RESOLVE_UNKNOWN_EVERY,
    SWEEP_REPORTS,
    SWEEP_REPORTS_EVERY,
    WEBHOOKS_QUEUE,
    WRITE_AUDIENCES,
    WRITE_AUDIENCES_EVERY,
)

_settings = get_settings()

broker_url = _settings.redis_url
broker_connection_retry_on_startup = True
# Redis redelivers a task nobody acknowledged after this long; every countdown and
# backoff the workers use stays well below it.
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    "socket_connect_timeout": 3,
}

# The database holds every outcome; results in Redis would only duplicate it.
task_ignore_result = True
task_serializer = "json"
accept_content = ["json"]

# A task is acknowledged only after it ran, and one killed mid-run is redelivered: the
# conditional claim in the database turns a redelivered duplicate into a no-op.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

task_queues = [Queue(name) for name in ("sms", "mms", "webhooks", "maintenance")]
task_default_queue = "maintenance"
task_routes = {
    "send_sms_batch": {"queue": "sms"},
    "send_mms_batch": {"queue": "mms"},
    "reconcile": {"queue": "maintenance"},
    "apply_status_events": {"queue": "webhooks"},
    "notify_completion": {"queue": "webhooks"},
    # Answers to STOP/START/HELP (workers/keyword_replies.py).
    SEND_KEYWORD_REPLY: {"queue": WEBHOOKS_QUEUE},
    SWEEP_REPORTS: {"queue": MAINTENANCE_QUEUE},
    RESOLVE_UNKNOWN: {"queue": MAINTENANCE_QUEUE},
    WRITE_AUDIENCES: {"queue": MAINTENANCE_QUEUE},
}

beat_schedule = {
    "reconcile": {
        "task": "reconcile",
        "schedule": _settings.reconcile_interval,
        # A pass that could not start in time is pointless: the next one is coming.
        "options": {"queue": "maintenance", "expires": _settings.reconcile_interval * 2},
    },
    # Delivery reports wait in a Redis stream; each pass applies everything there.
    "apply-status-events": {
        "task": "apply_status_events",
        "schedule": 1.0,
        "options": {"queue": "webhooks", "expires": 2.0},
    },
    # Recipients with no final report REPORT_TIMEOUT after submission: Message Get.
    SWEEP_REPORTS: {
        "task": SWEEP_REPORTS,
        "schedule": SWEEP_REPORTS_EVERY,
        "options": {"queue": MAINTENANCE_QUEUE, "expires": SWEEP_REPORTS_EVERY},
    },
    # `unknown` batches, looked up in Plivo's message list (20 requests a minute).
    RESOLVE_UNKNOWN: {
        "task": RESOLVE_UNKNOWN,
        "schedule": RESOLVE_UNKNOWN_EVERY,
        "options": {"queue": MAINTENANCE_QUEUE, "expires": RESOLVE_UNKNOWN_EVERY * 2},
    },
    # Recipients rows of large list broadcasts, written in chunks after their 202.
    WRITE_AUDIENCES: {
        "task": WRITE_AUDIENCES,
        "schedule": WRITE_AUDIENCES_EVERY,
        "options": {"queue": MAINTENANCE_QUEUE, "expires": WRITE_AUDIENCES_EVERY},
    },
}

# Flower shows tasks from events.
worker_send_task_events = True
task_send_sent_event = True

# No worker_hijack_root_logger: shared/taskqueue.py answers Celery's setup_logging signal, so
# Celery leaves logging to shared/logs.py (JSON lines) and never installs its own format.

# Celery 6 will cancel running tasks on a broker connection loss; ours are acks_late and
# idempotent, so a redelivery is harmless, but a cancelled Plivo call would be `unknown`.
worker_cancel_long_running_tasks_on_connection_loss = False
