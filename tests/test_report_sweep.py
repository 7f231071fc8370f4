"""The status sweep: recipients whose final report never came are looked up at Plivo
(Message Get, the real SDK over HTTP against the sandbox) and take Plivo's state; those
Plivo still shows as only `sent` count as final, so every broadcast completes."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from sqlalchemy import select, update

from sandbox import SandboxConfig
from shared.db import session_scope
from shared.models import Broadcast, Recipient
from shared.plivo_client import client_for
from shared.progress import progress, summarize
from shared.taskqueue import SWEEP_REPORTS
from tests.conftest import Beat, Worker, sandbox_stats, wait_for
from tests.test_operations import NUMBERS, batch_ids, create
from workers.plivo_lookups import exclusive_pass
from workers.report_sweep import lookups_per_pass, sweep
from workers.sending import deliver_batch

# Nobody listens here: the sandbox is told to send no callbacks, or they are never needed.
NOWHERE = "http://127.0.0.1:9"


@contextmanager
def configure_sandbox(base_url: str) -> Iterator:
    """Change the sandbox's config; every setting is put back afterwards (the server is
    shared by the whole session)."""

    def apply(**changes) -> None:
        requests.post(f"{base_url}/sandbox/config", json=changes, timeout=5).raise_for_status()

    try:
        yield apply
    finally:
        apply(**SandboxConfig().public())


@pytest.fixture()
def configure(sandbox):
    with configure_sandbox(sandbox) as apply:
        yield apply


@pytest.fixture()
def reporting(settings):
    """Delivery reports on (PUBLIC_BASE_URL set), so recipients wait for their final report;
    REPORT_TIMEOUT short enough for a test."""
    return settings.model_copy(update={"public_base_url": NOWHERE, "report_timeout": 0.5})


def send_all(client, settings, count: int) -> str:
    broadcast_id = create(client, count)
    for batch_id in batch_ids(settings):
        assert deliver_batch(settings, batch_id)["outcome"] == "submitted"
    return broadcast_id


def sweep_until_done(settings, passes: int = 50) -> Counter:
    """Passes back to back, as beat would run them (a pass that finds the request limiter
    busy yields, and the next one goes on)."""
    totals = Counter()
    for _ in range(passes):
        counts = sweep(settings)
        totals.update(counts)
        if not counts["due"]:
            return totals
        if not counts["looked_up"]:
            time.sleep(0.5)
    raise AssertionError(f"the sweep did not finish in {passes} passes: {totals}")


def recipients(database_url):
    with session_scope(database_url) as session:
        return session.execute(
            select(
                Recipient.phone,
                Recipient.status,
                Recipient.message_uuid,
                Recipient.error_code,
                Recipient.report_checked_at,
            ).order_by(Recipient.id)
        ).all()


def broadcast_body(settings, broadcast_id):
    with session_scope(settings.database_url) as session:
        body = summarize(session, session.get(Broadcast, uuid.UUID(broadcast_id)))
    body["progress"] = progress(body, settings.status_callback_url is not None)
    return body


def test_each_silent_recipient_takes_plivos_state_and_the_broadcast_completes(
    client, reporting, configure
):
    configure(
        share_no_callbacks=1.0,
        share_undelivered=0.1,
        share_failed=0.05,
        share_stays_sent=0.2,
        delivery_delay=0.05,
        fault_seed=3,
    )
    broadcast_id = send_all(client, reporting, 300)
    assert {row.status for row in recipients(reporting.database_url)} == {"queued"}
    time.sleep(1)  # past REPORT_TIMEOUT, and past the sandbox's delivery delay

    totals = sweep_until_done(reporting)

    rows = recipients(reporting.database_url)
    assert totals["looked_up"] == 300
    assert all(row.report_checked_at is not None for row in rows)
    plivo = client_for(reporting)
    for row in rows[::15]:
        truth = plivo.get_message(row.message_uuid)
        assert (row.status, row.error_code) == (truth.state, truth.error_code)
    by_status = Counter(row.status for row in rows)
    body = broadcast_body(reporting, broadcast_id)
    assert body["status"] == "completed_with_failures"
    assert body["sent_no_report"] == by_status["sent"] > 0
    assert body["progress"]["percent"] == 100.0
    assert by_status["delivered"] and by_status["undelivered"] and by_status["failed"]


def test_nobody_is_looked_up_before_report_timeout(client, reporting, configure):
    configure(share_no_callbacks=1.0)
    waiting = reporting.model_copy(update={"report_timeout": 3600})
    broadcast_id = send_all(client, waiting, 5)

    assert sweep(waiting)["looked_up"] == 0
    assert sandbox_stats(waiting.sandbox_url)["lookups"]["gets"] == 0
    assert broadcast_body(waiting, broadcast_id)["status"] == "sending"


def test_without_delivery_reports_nothing_waits_and_nothing_is_looked_up(client, settings):
    send_all(client, settings, 5)
    time.sleep(0.6)

    quick = settings.model_copy(update={"report_timeout": 0.5})
    assert sweep(quick)["looked_up"] == 0
    assert sandbox_stats(settings.sandbox_url)["lookups"]["gets"] == 0


def test_a_pass_takes_only_its_share_of_the_request_limit(client, reporting, configure):
    configure(share_no_callbacks=1.0)
    # 20 requests per 5 s: a quarter of one pass interval's worth, less the margin.
    tight = reporting.model_copy(update={"request_limit": 20, "request_window": 5})
    send_all(client, tight, 10)
    time.sleep(0.6)

    per_pass = lookups_per_pass(tight)
    assert per_pass == 4
    assert sweep(tight)["looked_up"] == per_pass
    assert sandbox_stats(tight.sandbox_url)["lookups"]["gets"] == per_pass


def test_a_message_plivo_does_not_know_counts_as_checked(client, reporting, configure):
    configure(share_no_callbacks=1.0)
    broadcast_id = send_all(client, reporting, 2)
    with session_scope(reporting.database_url) as session:
        session.execute(
            update(Recipient)
            .where(Recipient.phone == NUMBERS[0])
            .values(message_uuid=str(uuid.uuid4()))
        )
    time.sleep(1)

    totals = sweep_until_done(reporting)

    assert (totals["looked_up"], totals["not_found"]) == (2, 1)
    with session_scope(reporting.database_url) as session:
        reason = session.scalar(select(Recipient.error_reason).where(Recipient.phone == NUMBERS[0]))
    assert "no record at Plivo" in reason
    assert broadcast_body(reporting, broadcast_id)["status"] == "completed"


def test_only_one_pass_runs_at_a_time(client, reporting, configure):
    configure(share_no_callbacks=1.0)
    send_all(client, reporting, 3)
    time.sleep(0.6)

    with exclusive_pass(reporting.redis_url, SWEEP_REPORTS, 10) as first:
        assert first
        assert sweep(reporting)["looked_up"] == 0  # beat started another meanwhile
    assert sweep(reporting)["looked_up"] == 3


def test_plivo_unreachable_leaves_recipients_to_a_later_pass(client, reporting, configure):
    configure(share_no_callbacks=1.0)
    send_all(client, reporting, 3)
    time.sleep(0.6)
    unreachable = reporting.model_copy(update={"sandbox_url": NOWHERE})

    counts = sweep(unreachable)

    assert counts["looked_up"] == 0 and counts["errors"] >= 1
    assert all(row.report_checked_at is None for row in recipients(reporting.database_url))
    assert sweep_until_done(reporting)["looked_up"] == 3


def test_dropped_final_reports_are_swept_and_the_broadcast_completes(
    reporting_api, configure, tmp_path
):
    """Real workers and beat; the sandbox drops a third of the final callbacks and the
    carrier never reports on a tenth of the messages."""
    # A request limit a test need not wait for: each sweep pass may use a quarter of it.
    settings = reporting_api.model_copy(update={"request_limit": 1200})
    configure(
        request_limit=1200,
        share_no_final_report=0.3,
        share_stays_sent=0.1,
        share_undelivered=0.05,
        delivery_delay=0.1,
        fault_seed=11,
        callback_workers=16,
    )
    worker = Worker(settings, tmp_path / "worker.log", queues="sms,webhooks,maintenance")
    beat = Beat(settings, tmp_path)
    headers = {"X-API-Key": "test-key"}
    api = settings.public_base_url
    try:
        worker.wait_ready()
        created = requests.post(
            f"{api}/v1/broadcasts",
            json={"recipients": NUMBERS[:2000], "text": "Sweep"},
            headers=headers,
            timeout=30,
        )
        assert created.status_code == 202
        location = api + created.headers["Location"]

        def finished():
            body = requests.get(location, headers=headers, timeout=10).json()
            return body if body["status"].startswith("completed") else None

        body = wait_for(finished, timeout=180, interval=1, message=worker.log_tail())
    finally:
        worker.stop()
        beat.stop()

    stats = sandbox_stats(settings.sandbox_url)
    rows = recipients(settings.database_url)
    by_status = Counter(row.status for row in rows)
    assert stats["callbacks"]["withheld"] > 0
    assert stats["lookups"]["gets"] > 0
    assert body["progress"]["percent"] == 100.0
    assert sum(by_status.values()) == 2000
    assert by_status["queued"] == 0
    # Final per Plivo, or `sent` for good and marked as looked up.
    assert all(row.report_checked_at for row in rows if row.status == "sent")
    assert body["sent_no_report"] == by_status["sent"]
    plivo = client_for(settings)
    for row in rows[::40]:
        assert row.status == plivo.get_message(row.message_uuid).state
    assert stats["duplicates"] == 0


@pytest.fixture()
def reporting_api(settings):
    """Settings whose PUBLIC_BASE_URL is an API served over HTTP on a free port."""
    import threading

    from werkzeug.serving import make_server

    from api import create_app
    from tests.services import free_port

    port = free_port()
    public = settings.model_copy(
        update={
            "public_base_url": f"http://127.0.0.1:{port}",
            "reconcile_interval": 1,
            "report_timeout": 3,
        }
    )
    server = make_server("127.0.0.1", port, create_app(public), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield public
    finally:
        server.shutdown()
        thread.join(timeout=10)
