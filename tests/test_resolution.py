"""Automatic resolution of `unknown` batches: the attempt is looked up in Plivo's message
list (the real SDK over HTTP against the sandbox), found recipients take their uuid and
state, the unsent go back to `pending` and are texted exactly once."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from shared.db import session_scope
from shared.models import Batch, Recipient, utcnow
from shared.plivo_client import client_for
from tests.conftest import API_KEY, Beat, Worker, sandbox_stats, wait_for
from tests.test_operations import NUMBERS, batch_ids, create
from tests.test_report_sweep import NOWHERE, broadcast_body, configure_sandbox
from workers import batches
from workers.reconciler import reconcile
from workers.resolution import MAX_RESOLVE_ATTEMPTS, resolve
from workers.sending import deliver_batch

LEASE = timedelta(minutes=5)
SENDER = "+14155550000"
OTHERS = [f"+1628{i:07d}" for i in range(1, 301)]  # the same sender's other traffic


@pytest.fixture()
def configure(sandbox):
    with configure_sandbox(sandbox) as apply:
        yield apply


@pytest.fixture()
def quick(settings):
    """Attempts old enough to look up after a second; a list budget a test can wait for."""
    return settings.model_copy(
        update={"unknown_resolve_after": 1, "list_request_limit": 300, "list_request_window": 60}
    )


@pytest.fixture()
def lists_allowed(configure):
    configure(list_request_limit=300, list_request_window=60)


def ambiguous_attempt(settings, batch_id: int, reached_plivo: list[str] = ()) -> None:
    """An attempt that ended `unknown` (a worker lost mid-call), of which Plivo accepted
    exactly `reached_plivo`."""
    with session_scope(settings.database_url) as session:
        token = batches.claim_batch(session, batch_id, LEASE)
    with session_scope(settings.database_url) as session:
        job = batches.load_job(session, batch_id)
        assert batches.mark_submitting(session, batch_id, token, LEASE)
    if reached_plivo:
        client_for(settings).send(job.sender, list(reached_plivo), job.text)
    with session_scope(settings.database_url) as session:
        batches.record_failure(
            session, batch_id, token, "unknown", "unknown", "ReadTimeout: lost mid-call"
        )


def resolve_until_done(settings, passes: int = 60) -> Counter:
    totals = Counter()
    for _ in range(passes):
        counts = resolve(settings)
        totals.update(counts)
        if not _open_unknown(settings):
            return totals
        time.sleep(0.2)
    raise AssertionError(f"not resolved after {passes} passes: {totals}")


def _open_unknown(settings) -> int:
    with session_scope(settings.database_url) as session:
        return len(
            session.scalars(
                select(Batch.id).where(Batch.status == "unknown", Batch.resolved_at.is_(None))
            ).all()
        )


def batch_row(settings, batch_id):
    with session_scope(settings.database_url) as session:
        return session.get(Batch, batch_id)


def recipient_rows(settings):
    with session_scope(settings.database_url) as session:
        return session.execute(
            select(
                Recipient.phone, Recipient.status, Recipient.message_uuid, Recipient.error_reason
            ).order_by(Recipient.id)
        ).all()


def texted(settings) -> Counter:
    return Counter(sandbox_stats(settings.sandbox_url)["sends"])


def lists(settings) -> int:
    return sandbox_stats(settings.sandbox_url)["lookups"]["lists"]


def test_a_batch_plivo_accepted_before_answering_500_or_504_is_found(
    client, quick, configure, lists_allowed
):
    configure(fail_after_accept=1.0, fault_seed=5)
    broadcast_id = create(client, 50)
    (batch_id,) = batch_ids(quick)

    assert deliver_batch(quick, batch_id)["outcome"] == "unknown"
    row = batch_row(quick, batch_id)
    assert row.resolve_after is not None and row.submitting_at is not None
    assert broadcast_body(quick, broadcast_id)["status"] == "sending"  # not while unresolved
    configure(fail_after_accept=0)
    time.sleep(1.1)

    resolve_until_done(quick)

    row = batch_row(quick, batch_id)
    assert (row.status, row.resolution) == ("submitted", "found 50 of 50 at Plivo")
    assert row.resolved_at is not None
    plivo = client_for(quick)
    for phone, status, message_uuid, _ in recipient_rows(quick):
        record = plivo.get_message(message_uuid)
        assert (record.to, status) == (phone, record.state)
    assert set(texted(quick).values()) == {1} and len(texted(quick)) == 50
    body = broadcast_body(quick, broadcast_id)
    assert body["status"] == "completed"
    assert body["resolutions"]["awaiting"] == {"batches": 0, "recipients": 0}
    assert body["resolutions"]["batches"][0]["resolution"] == "found 50 of 50 at Plivo"
    assert lists(quick) == 3  # 50 records, 20 a page


def test_a_call_that_never_reached_plivo_is_sent_once_after_resolution(
    client, quick, lists_allowed
):
    broadcast_id = create(client, 8)
    (batch_id,) = batch_ids(quick)
    ambiguous_attempt(quick, batch_id, reached_plivo=NUMBERS[:3])
    time.sleep(1.1)

    resolve_until_done(quick)

    row = batch_row(quick, batch_id)
    assert row.status == "pending"
    assert row.resolution == "found 3 of 8 at Plivo; 5 not sent, back to pending"
    assert (row.claim_token, row.enqueued_at, row.not_before, row.attempts) == (
        None,
        None,
        None,
        1,
    )
    # Found: Plivo's state (the sandbox delivers at once); not found: pending again.
    statuses = {phone: status for phone, status, _, _ in recipient_rows(quick)}
    assert [statuses[p] for p in NUMBERS[:8]] == ["delivered"] * 3 + ["pending"] * 5
    assert reconcile(quick)["enqueued"] == 1  # the reconciler hands it to a worker

    assert deliver_batch(quick, batch_id)["outcome"] == "submitted"

    sends = texted(quick)
    assert {p: sends[p[1:]] for p in NUMBERS[:8]} == {p: 1 for p in NUMBERS[:8]}
    assert Counter(status for _, status, _, _ in recipient_rows(quick)) == {
        "delivered": 3,
        "queued": 5,
    }
    assert broadcast_body(quick, broadcast_id)["status"] == "completed"


def test_with_resend_off_the_unsent_stay_unknown_and_say_why(client, quick, lists_allowed):
    no_resend = quick.model_copy(update={"resend_unsent": False})
    broadcast_id = create(client, 4)
    (batch_id,) = batch_ids(no_resend)
    ambiguous_attempt(no_resend, batch_id)
    time.sleep(1.1)

    resolve_until_done(no_resend)

    row = batch_row(no_resend, batch_id)
    assert (row.status, row.resolved_at is not None) == ("unknown", True)
    assert row.resolution == "found 0 of 4 at Plivo; 4 not sent (not re-sent: RESEND_UNSENT is off)"
    reasons = {reason for _, status, _, reason in recipient_rows(no_resend)}
    assert reasons == {"not sent: Plivo has no record of it (not re-sent: RESEND_UNSENT is off)"}
    assert texted(no_resend) == Counter()
    assert broadcast_body(no_resend, broadcast_id)["status"] == "completed_with_failures"


def test_nothing_is_looked_up_before_the_attempt_is_old_enough(client, quick, lists_allowed):
    waiting = quick.model_copy(update={"unknown_resolve_after": 3600})
    create(client, 4)
    (batch_id,) = batch_ids(waiting)
    ambiguous_attempt(waiting, batch_id)

    assert resolve(waiting)["requests"] == 0
    assert lists(waiting) == 0
    assert batch_row(waiting, batch_id).resolved_at is None


def test_a_few_destinations_are_looked_up_one_by_one(client, quick, lists_allowed):
    create(client, 2)
    (batch_id,) = batch_ids(quick)
    ambiguous_attempt(quick, batch_id, reached_plivo=NUMBERS[1:2])
    time.sleep(1.1)

    resolve_until_done(quick)

    assert lists(quick) == 2  # one `to_number` query per destination
    assert batch_row(quick, batch_id).resolution == (
        "found 1 of 2 at Plivo; 1 not sent, back to pending"
    )


def test_a_busy_sender_makes_per_destination_queries_the_cheaper_way(client, quick, lists_allowed):
    create(client, 5)
    (batch_id,) = batch_ids(quick)
    with session_scope(quick.database_url) as session:
        token = batches.claim_batch(session, batch_id, LEASE)
        assert batches.mark_submitting(session, batch_id, token, LEASE)
    plivo = client_for(quick)
    plivo.send(SENDER, NUMBERS[:2], "Ops")  # what reached Plivo of this attempt
    plivo.send(SENDER, OTHERS[:200], "Another broadcast")  # same sender, same seconds
    with session_scope(quick.database_url) as session:
        batches.record_failure(session, batch_id, token, "unknown", "unknown", "lost")
    time.sleep(1.1)

    resolve_until_done(quick)

    # Page 1 (newest first) holds only the other broadcast, and 9 more pages of it would
    # remain: 5 destination queries are cheaper.
    assert lists(quick) == 1 + 5
    assert batch_row(quick, batch_id).resolution == (
        "found 2 of 5 at Plivo; 3 not sent, back to pending"
    )


def test_a_uuid_we_already_hold_is_never_matched_to_another_recipient(client, quick, lists_allowed):
    # The same number in another broadcast, sent in the same seconds and recorded there.
    other = create(client, 1)
    for batch_id in batch_ids(quick):
        deliver_batch(quick, batch_id)
    create(client, 1)
    with session_scope(quick.database_url) as session:
        batch_id = session.scalar(select(func.max(Batch.id)))
    ambiguous_attempt(quick, batch_id)
    time.sleep(1.1)

    resolve_until_done(quick)

    assert batch_row(quick, batch_id).resolution == (
        "found 0 of 1 at Plivo; 1 not sent, back to pending"
    )
    assert broadcast_body(quick, other)["status"] == "completed"


def test_a_large_batch_is_resolved_over_several_passes_within_the_list_limit(
    client, quick, configure
):
    # Plivo's 20 list requests per minute, at a pace a test can wait for: 20 per 5 s.
    configure(fail_after_accept=1.0, list_request_limit=20, list_request_window=5)
    budget = quick.model_copy(update={"list_request_limit": 20, "list_request_window": 5})
    create(client, 1000)
    (batch_id,) = batch_ids(budget)
    assert deliver_batch(budget, batch_id)["outcome"] == "unknown"
    configure(fail_after_accept=0)
    time.sleep(1.1)

    first = resolve(budget)

    assert first["in_progress"] == 1
    assert batch_row(budget, batch_id).resolution.startswith("searching Plivo: ")
    totals = resolve_until_done(budget)
    stats = sandbox_stats(budget.sandbox_url)
    assert stats["lookups"]["lists"] == 50 == first["requests"] + totals["requests"]
    assert stats["lookups"]["list_too_many_requests"] == 0
    assert batch_row(budget, batch_id).resolution == "found 1000 of 1000 at Plivo"
    assert set(texted(budget).values()) == {1}


def test_plivo_unreachable_backs_off_and_says_why(client, quick, lists_allowed):
    broadcast_id = create(client, 3)
    (batch_id,) = batch_ids(quick)
    ambiguous_attempt(quick, batch_id)
    time.sleep(1.1)
    unreachable = quick.model_copy(update={"sandbox_url": NOWHERE})

    assert resolve(unreachable)["unreachable"] == 1

    row = batch_row(quick, batch_id)
    assert (row.status, row.resolved_at, row.resolve_attempts) == ("unknown", None, 1)
    assert row.resolve_after > utcnow()
    assert row.resolution.startswith("Plivo could not be asked (ConnectionError")
    assert resolve(quick)["requests"] == 0  # backing off
    assert broadcast_body(quick, broadcast_id)["status"] == "sending"

    with session_scope(quick.database_url) as session:
        session.execute(
            update(Batch).values(resolve_attempts=MAX_RESOLVE_ATTEMPTS - 1, resolve_after=utcnow())
        )
    resolve(unreachable)

    row = batch_row(quick, batch_id)
    assert (row.status, row.resolved_at is not None) == ("unknown", True)
    assert "still unknown" in row.resolution
    assert broadcast_body(quick, broadcast_id)["status"] == "completed_with_failures"


def test_read_timeouts_and_5xx_end_with_nobody_unknown_and_nobody_texted_twice(
    settings, configure, tmp_path
):
    """The read-timeout drill on real workers and beat: some answers come after
    PLIVO_TIMEOUT, some after acceptance as 500/504, some 500 without acceptance."""
    drill = settings.model_copy(
        update={
            "batch_size": 100,
            "sms_mps": 1000,
            "plivo_timeout": 1,
            "lease_seconds": 5,
            "requeue_after": 4,
            "reconcile_interval": 1,
            "retry_backoff": 0.5,
            "retry_backoff_max": 2,
            "unknown_resolve_after": 1,
            # Far above Plivo's 20 a minute: at 1000 MPS the window of an attempt holds
            # thousands of other messages, so each search costs one query per number.
            "list_request_limit": 1200,
            "list_request_window": 60,
        }
    )
    configure(
        slow=0.15,
        slow_seconds=2,
        fail_after_accept=0.15,
        fail_5xx=0.1,
        fault_seed=7,
        list_request_limit=1200,
        list_request_window=60,
    )
    from api import create_app

    client = create_app(drill).test_client()
    client.environ_base["HTTP_X_API_KEY"] = API_KEY
    worker = Worker(drill, tmp_path / "worker.log", queues="sms,maintenance")
    beat = Beat(drill, tmp_path)
    try:
        worker.wait_ready()
        response = client.post(
            "/v1/broadcasts", json={"recipients": NUMBERS[:2000], "text": "Drill"}
        )
        assert response.status_code == 202
        broadcast_id = response.get_json()["id"]

        def finished():
            body = broadcast_body(drill, broadcast_id)
            return body if body["status"].startswith("completed") else None

        body = wait_for(finished, timeout=240, interval=1, message=worker.log_tail())
    finally:
        worker.stop()
        beat.stop()

    stats = sandbox_stats(drill.sandbox_url)
    rows = recipient_rows(drill)
    by_status = Counter(status for _, status, _, _ in rows)
    resolutions = [b["resolution"] for b in body["resolutions"]["batches"]]
    assert stats["faults"]["slow"] and stats["faults"]["fail_after_accept"]
    assert resolutions and all(r.startswith("found ") for r in resolutions)
    assert by_status["unknown"] == 0
    assert stats["duplicates"] == 0
    assert {p[1:] for p in NUMBERS[:2000]} == set(stats["sends"])
    assert set(stats["sends"].values()) == {1}
    assert sum(by_status.values()) == 2000
    assert body["status"] == "completed"
    assert all(message_uuid for _, _, message_uuid, _ in rows)
    assert len({message_uuid for _, _, message_uuid, _ in rows}) == 2000
