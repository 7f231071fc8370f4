"""The Celery app object, queue names and task names: the API enqueues by name from here,
the workers register the tasks (so api/ and workers/ never import each other)."""

from __future__ import annotations

import uuid

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun
from kombu.exceptions import KombuError, OperationalError

from shared import logs

SMS_QUEUE = "sms"
MMS_QUEUE = "mms"
WEBHOOKS_QUEUE = "webhooks"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (SMS_QUEUE, MMS_QUEUE, WEBHOOKS_QUEUE, MAINTENANCE_QUEUE)

SEND_SMS_BATCH = "send_sms_batch"
SEND_MMS_BATCH = "send_mms_batch"
RECONCILE = "reconcile"
APPLY_STATUS_EVENTS = "apply_status_events"
NOTIFY_COMPLETION = "notify_completion"
# Maintenance passes that ask Plivo (workers/report_sweep.py, workers/resolution.py): beat
# starts one every so many seconds; each is short, and one still running makes the next a
# no-op.
SWEEP_REPORTS = "sweep_reports"
SWEEP_REPORTS_EVERY = 5.0
RESOLVE_UNKNOWN = "resolve_unknown"
RESOLVE_UNKNOWN_EVERY = 1.0
# Recipients rows of large list broadcasts, written after their 202 (shared/audience.py).
WRITE_AUDIENCES = "write_audiences"
WRITE_AUDIENCES_EVERY = 2.0

celery_app = Celery("bulksms")
celery_app.config_from_object("celeryconfig")

# Worker and beat log in the JSON format of shared/logs.py, not Celery's own, and every line
# a task logs carries its task id, broadcast_id and batch_id.
setup_logging.connect(logs.setup_celery_logging)
task_prerun.connect(logs.bind_task)
task_postrun.connect(logs.unbind_task)


class EnqueueError(RuntimeError):
    """The broker would not take the task; the batch stays `pending` in the database."""


def enqueue_tasks(
    broker_url: str,
    name: str,
    queue: str,
    kwargs_list: list[dict],
    countdown: float | None = None,
) -> None:
    """Publish one task per kwargs over one broker connection; ids only, never rows."""
    try:
        with (
            celery_app.connection_for_write(broker_url) as connection,
            connection.Producer() as producer,
        ):
            for kwargs in kwargs_list:
                celery_app.send_task(
                    name,
                    kwargs=kwargs,
                    queue=queue,
                    producer=producer,
                    countdown=countdown,
                    # Fail fast when Redis is down: the database still says what is due,
                    # so waiting here would only delay the caller.
                    retry=False,
                )
    except (OperationalError, KombuError, OSError) as error:
        raise EnqueueError(str(error)) from error


def enqueue_batches(
    broker_url: str,
    kind: str,
    broadcast_id: uuid.UUID,
    batch_ids: list[int],
    countdown: float | None = None,
) -> None:
    """One task per batch, on its kind's queue. Call only after commit: a task must never
    reach a worker before its rows exist; the reconciler re-enqueues what the broker did
    not take."""
    name, queue = (SEND_SMS_BATCH, SMS_QUEUE) if kind == "sms" else (SEND_MMS_BATCH, MMS_QUEUE)
    kwargs = [{"batch_id": b, "broadcast_id": str(broadcast_id)} for b in batch_ids]
    enqueue_tasks(broker_url, name, queue, kwargs, countdown)
