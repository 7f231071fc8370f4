"""The Celery app object, queue names and task names: the API enqueues by name from here,
the workers register the tasks (so api/ and workers/ never import each other)."""

from __future__ import annotations

import uuid

from celery import Celery
from kombu.exceptions import KombuError, OperationalError

SMS_QUEUE = "sms"
MMS_QUEUE = "mms"
WEBHOOKS_QUEUE = "webhooks"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (SMS_QUEUE, MMS_QUEUE, WEBHOOKS_QUEUE, MAINTENANCE_QUEUE)

SEND_SMS_BATCH = "send_sms_batch"
RECONCILE = "reconcile"
APPLY_STATUS_EVENTS = "apply_status_events"

celery_app = Celery("bulksms")
celery_app.config_from_object("celeryconfig")


class EnqueueError(RuntimeError):
    """The broker would not take the task; the batch stays `pending` in the database."""


def enqueue_sms_batches(
    broker_url: str,
    broadcast_id: uuid.UUID,
    batch_ids: list[int],
    countdown: float | None = None,
) -> None:
    """One task per batch, ids only, over one broker connection. Call only after commit:
    a task must never reach a worker before its rows exist."""
    try:
        with (
            celery_app.connection_for_write(broker_url) as connection,
            connection.Producer() as producer,
        ):
            for batch_id in batch_ids:
                celery_app.send_task(
                    SEND_SMS_BATCH,
                    kwargs={"batch_id": batch_id, "broadcast_id": str(broadcast_id)},
                    queue=SMS_QUEUE,
                    producer=producer,
                    countdown=countdown,
                    # Fail fast when Redis is down: the reconciler re-enqueues pending
                    # batches, so waiting here would only delay the client's 202.
                    retry=False,
                )
    except (OperationalError, KombuError, OSError) as error:
        raise EnqueueError(str(error)) from error


def enqueue_sms_batch(
    broker_url: str, broadcast_id: uuid.UUID, batch_id: int, countdown: float | None = None
) -> None:
    enqueue_sms_batches(broker_url, broadcast_id, [batch_id], countdown)
