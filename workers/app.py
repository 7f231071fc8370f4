"""`celery -A workers.app worker|beat|flower`: the one Celery app with every task registered."""

import logging

from celery.signals import task_postrun, worker_process_shutdown, worker_ready

from shared import metrics
from shared.config import get_settings
from shared.logs import log_event
from shared.taskqueue import celery_app
from workers import (  # noqa: F401  (importing registers the tasks)
    delivery_reports,
    keyword_replies,
    notifications,
    reconciler,
    sending,
)

app = celery_app
log = logging.getLogger("workers")

# Each send task's outcome counted in Prometheus; a pool process's files let go as it exits.
task_postrun.connect(metrics.count_batch_task)
worker_process_shutdown.connect(metrics.forget_process)


@worker_ready.connect
def _announce_mode(**_kwargs) -> None:
    settings = get_settings()
    if settings.sandbox_mode:
        log.warning(
            "SANDBOX MODE: no Plivo credentials configured; messages go to %s, nobody is texted",
            settings.sandbox_url,
        )
    log_event(
        log,
        "worker.ready",
        sms_mps=settings.effective_sms_mps,
        batch_size=settings.batch_size,
        sandbox=settings.sandbox_mode,
    )
