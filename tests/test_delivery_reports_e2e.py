"""A 5,000-recipient broadcast with Plivo's delivery reports: the sandbox decides each
outcome and reports it (signed, some twice, some out of order) to the API over HTTP, which
commits each before its 200; a worker applies them. Every recipient must end as the sandbox
decided."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import delete, func, select

from shared.db import session_scope
from shared.models import DeliveryReport, Recipient
from tests.conftest import Beat, Worker, sandbox_stats, wait_for
from tests.services import free_port

NUMBERS = [f"+1415{i:07d}" for i in range(1, 5001)]


@pytest.fixture()
def reporting(settings) -> Iterator:
    """Settings whose PUBLIC_BASE_URL is an API served over HTTP on a free port."""
    from werkzeug.serving import make_server

    from api import create_app

    with session_scope(settings.database_url) as session:
        session.execute(delete(DeliveryReport))
    port = free_port()
    public = settings.model_copy(
        update={"public_base_url": f"http://127.0.0.1:{port}", "reconcile_interval": 1}
    )
    server = make_server("127.0.0.1", port, create_app(public), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield public
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_every_recipient_ends_as_the_sandbox_decided(reporting, sandbox, tmp_path):
    requests.post(
        f"{sandbox}/sandbox/config",
        json={
            "share_undelivered": 0.05,
            "share_failed": 0.03,
            "share_duplicate_callbacks": 0.1,
            "share_out_of_order": 0.1,
            "delivery_delay": 0.2,
            "fault_seed": 7,
            "callback_workers": 16,
        },
        timeout=5,
    ).raise_for_status()
    worker = Worker(reporting, tmp_path / "worker.log", queues="sms,webhooks,maintenance")
    beat = Beat(reporting, tmp_path)
    api = reporting.public_base_url
    headers = {"X-API-Key": "test-key"}
    try:
        worker.wait_ready()
        created = requests.post(
            f"{api}/v1/broadcasts",
            json={"recipients": NUMBERS, "text": "Reports"},
            headers=headers,
            timeout=30,
        )
        assert created.status_code == 202
        location = api + created.headers["Location"]

        def finished():
            body = requests.get(location, headers=headers, timeout=10).json()
            return body if body["status"].startswith("completed") else None

        body = wait_for(finished, timeout=240, interval=1, message=worker.log_tail())
        # Duplicates and late callbacks may still come after completion: the sandbox posts
        # them all, then the applier takes each one the API acknowledged.
        wait_for(lambda: sandbox_stats(sandbox)["callbacks"]["pending"] == 0, timeout=60)
        wait_for(lambda: _reports_applied(reporting), timeout=30, message=worker.log_tail())
    finally:
        worker.stop()
        beat.stop()

    stats = sandbox_stats(sandbox)
    with session_scope(reporting.database_url) as session:
        rows = session.execute(
            select(Recipient.message_uuid, Recipient.status, Recipient.error_code)
        ).all()
    assert body["status"] == "completed_with_failures"
    assert body["progress"]["percent"] == 100.0
    by_status = body["recipients"]["by_status"]
    assert by_status == {
        status: count for status, count in stats["outcomes"].items() if count
    }, (by_status, stats["outcomes"])
    assert sum(by_status.values()) == 5000
    # Each recipient individually matches the sandbox's own record of its message.
    sample = rows[::50]
    for message_uuid, status, error_code in sample:
        truth = requests.get(f"{sandbox}/messages/{message_uuid}", timeout=5).json()
        assert (status, error_code) == (truth["status"], _code(truth["error_code"]))
    assert stats["duplicates"] == 0
    assert stats["callbacks"]["failed"] == 0
    # Every callback the API acknowledged was kept and applied: none waits, none orphaned.
    kept, applied = _kept_and_applied(reporting)
    assert kept >= stats["callbacks"]["sent"] and kept == applied, (kept, stats["callbacks"])


def _kept_and_applied(settings) -> tuple[int, int]:
    with session_scope(settings.database_url) as session:
        return session.execute(
            select(func.count(), func.count(DeliveryReport.applied_at)).select_from(DeliveryReport)
        ).one()


def _reports_applied(settings) -> bool:
    kept, applied = _kept_and_applied(settings)
    return kept == applied


def _code(value) -> str | None:
    return None if value in (None, "") else str(value)
