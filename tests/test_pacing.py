"""The global limiter: the Lua scripts on fakeredis for their rules, many processes on a real
Redis for the guarantees that matter (never over a limit, in any window), then real workers
for what an operator sees (two senders share the account, a cancelled broadcast frees its
sender, a corrected limit strands nothing, `high` goes first, broadcasts take turns)."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from datetime import timedelta

import fakeredis
import pytest
import redis
import requests
from sqlalchemy import select

from shared import timelines
from shared.db import session_scope
from shared.limits import read_limits, set_limit
from shared.models import Batch, Broadcast, utcnow
from tests.conftest import API_KEY, Beat, Worker, make_settings, sandbox_stats, wait_for
from workers.pacing import Pacer

A, B = "+14155550000", "+14155550001"


def pacer(client, **values) -> Pacer:
    return Pacer(client, make_settings(**values))


@pytest.fixture()
def fake():
    return fakeredis.FakeRedis()


# --- one timeline ---------------------------------------------------------------------------


def test_a_batch_of_k_costs_k_over_mps_seconds(fake):
    p = pacer(fake, sms_mps=10)
    first = p.reserve("sms", A, 5)
    second = p.reserve("sms", A, 5)
    third = p.reserve("sms", A, 20)
    fourth = p.reserve("sms", A, 1)

    assert first.booked and first.delay == 0
    assert second.slot - first.slot == pytest.approx(0.5, abs=1e-6)
    assert third.slot - second.slot == pytest.approx(0.5, abs=1e-6)
    assert fourth.slot - third.slot == pytest.approx(2.0, abs=1e-6)
    assert fourth.delay == pytest.approx(3.0, abs=0.05)


def test_unlimited_never_waits(fake):
    p = pacer(fake, sms_mps=0)
    assert [p.reserve("sms", "S", 1000).delay for _ in range(5)] == [0.0] * 5


def test_a_redis_override_changes_the_rate_for_the_next_reservation(fake):
    p = pacer(fake, sms_mps=10)
    p.reserve("sms", A, 10)
    fake.hset("bulksms:limits", "sms", "100")  # what set_limit writes
    changed = p.reserve("sms", A, 10)
    after = p.reserve("sms", A, 10)

    assert changed.mps == 100
    assert after.slot - changed.slot == pytest.approx(0.1, abs=1e-6)


# --- the account's and the sender's timelines ----------------------------------------------


def test_two_senders_share_the_accounts_rate(fake):
    p = pacer(fake, sms_mps=10)
    first = p.reserve("sms", A, 10)
    other = p.reserve("sms", B, 10)
    mms = p.reserve("mms", A, 1)

    assert other.slot - first.slot == pytest.approx(1.0, abs=1e-6)
    assert mms.delay == 0  # MMS has its own account queue


def test_a_senders_own_limit_holds_under_a_faster_account(fake):
    p = pacer(fake, sms_mps=100, sender_mps={A: 1})
    first = p.reserve("sms", A, 2)
    again = p.reserve("sms", A, 1)
    other = p.reserve("sms", B, 50)

    assert (again.mps, again.account_mps, again.sender_mps) == (1, 100, 1)
    assert again.slot - first.slot == pytest.approx(2.0, abs=1e-6)
    # Both timelines advanced: the account holds A's message from its slot on, then B's.
    assert other.slot - again.slot == pytest.approx(0.01, abs=1e-6)


def test_a_per_sender_override_and_the_default_sender_limit(fake):
    fake.hset("bulksms:limits", "sms:Brand", "2")
    p = pacer(fake, sms_mps=100, default_sender_mps=20)
    assert p.reserve("sms", "Brand", 1).mps == 2
    assert p.reserve("sms", "Other", 1).mps == 20


def test_a_batch_takes_the_later_of_its_two_slots_and_advances_both(fake):
    p = pacer(fake, sms_mps=10, sender_mps={A: 5})
    a = p.reserve("sms", A, 10)  # account busy 1 s, A busy 2 s
    b = p.reserve("sms", B, 10)  # account: after A's 1 s
    a2 = p.reserve("sms", A, 5)  # A's own timeline (2 s) is the later one

    assert b.slot - a.slot == pytest.approx(1.0, abs=1e-6)
    assert a2.slot - a.slot == pytest.approx(2.0, abs=1e-6)
    # ...and it advanced the account too: B's next batch comes after it.
    assert p.reserve("sms", B, 1).slot - a.slot == pytest.approx(2.5, abs=1e-6)


# --- the horizon and the line ----------------------------------------------------------------


def test_a_batch_beyond_the_horizon_books_nothing(fake):
    p = pacer(fake, sms_mps=10, pacing_horizon=5)
    p.reserve("sms", A, 45, batch_id=1)  # the timeline is busy 4.5 s
    far = p.reserve("sms", A, 10, batch_id=2)  # would start at 4.5 s: within the horizon
    farther = p.reserve("sms", A, 10, batch_id=3)  # would start at 5.5 s: not booked

    assert far.booked and not farther.booked
    assert farther.booking == ""
    assert farther.slot - far.slot == pytest.approx(1.0, abs=0.01)  # its estimate
    # Nothing was promised: the timeline still ends with batch 2.
    assert float(fake.hget(timelines.account_timeline("sms"), "tat")) == pytest.approx(
        far.slot + 1.0, abs=1e-6
    )


def test_a_waiting_batch_is_told_when_to_try_again(fake):
    p = pacer(fake, sms_mps=1, pacing_horizon=5, countdown_max=300)

    def reserve(batch: int, size: int):
        return p.reserve("sms", A, size, batch_id=batch, broadcast_id="bulk")

    reserve(1, 5)
    near = reserve(2, 2)  # starts at 5 s: booked
    soon = reserve(3, 2)  # starts at 7 s: can book in 2 s
    later = reserve(4, 600)  # after batch 3: can book in 4 s
    last = reserve(5, 1)  # after batch 4: could book in 604 s; asked back at 300

    assert near.booked and not soon.booked
    assert soon.delay == pytest.approx(2.0, abs=0.05)
    assert later.delay == pytest.approx(4.0, abs=0.05) and later.ahead == 2
    assert last.delay == 300 and last.ahead == 602


def test_a_batch_books_only_when_what_waits_before_it_fits_in_the_horizon_too(fake):
    p = pacer(fake, sms_mps=10, pacing_horizon=1)
    p.reserve("sms", A, 10, batch_id=1)
    p.reserve("sms", A, 10, batch_id=2)  # starts at 1 s: booked
    assert not p.reserve("sms", A, 10, batch_id=3, broadcast_id="x").booked
    assert not p.reserve("sms", A, 10, batch_id=4, broadcast_id="x").booked
    time.sleep(1.05)  # the timeline (2 s) now ends within the horizon: room for one

    assert not p.reserve("sms", A, 10, batch_id=4, broadcast_id="x").booked  # 3 goes first
    assert p.reserve("sms", A, 10, batch_id=3, broadcast_id="x").booked


def test_within_the_horizon_a_batch_need_not_wait_for_those_before_it_to_come_back(fake):
    p = pacer(fake, sms_mps=10, pacing_horizon=2.5)
    p.reserve("sms", A, 30, batch_id=1)  # busy 3 s: nothing more fits
    assert not p.reserve("sms", A, 10, batch_id=2, broadcast_id="x").booked
    assert not p.reserve("sms", A, 10, batch_id=3, broadcast_id="x").booked
    time.sleep(1.55)  # room for two batches in the horizon now

    # Batch 2's task is slow to come back; batch 3 takes its own place meanwhile, and batch
    # 2 still finds room when it comes.
    assert p.reserve("sms", A, 10, batch_id=3, broadcast_id="x").booked
    assert p.reserve("sms", A, 10, batch_id=2, broadcast_id="x").booked


def test_high_priority_books_before_normal_batches_waiting(fake):
    p = pacer(fake, sms_mps=10, pacing_horizon=1)
    p.reserve("sms", A, 20, batch_id=1)
    assert not p.reserve("sms", A, 10, batch_id=2, broadcast_id="bulk").booked
    alert = p.reserve("sms", A, 10, batch_id=3, broadcast_id="otp", priority="high")
    assert not alert.booked and alert.ahead == 0  # nobody before it, normal ones included
    time.sleep(1.05)  # the timeline (2 s) now ends within the horizon (1 s)

    assert not p.reserve("sms", A, 10, batch_id=2, broadcast_id="bulk").booked
    assert p.reserve("sms", A, 10, batch_id=3, broadcast_id="otp", priority="high").booked
    time.sleep(1.0)
    assert p.reserve("sms", A, 10, batch_id=2, broadcast_id="bulk").booked


def test_the_line_interleaves_two_broadcasts_by_their_tags(fake):
    p = pacer(fake, sms_mps=0.001, pacing_horizon=5)
    p.reserve("sms", A, 1, batch_id=0)  # the sender is busy for 1000 s
    for batch in range(1, 6):
        p.reserve("sms", A, 10, batch_id=batch, broadcast_id="first")
    for batch in range(6, 9):
        p.reserve("sms", A, 10, batch_id=batch, broadcast_id="second")

    high, normal, _, _ = timelines.line_keys("sms", A)
    order = [int(member) for member in fake.zrange(normal, 0, -1)]
    assert order == [1, 6, 2, 7, 3, 8, 4, 5]


def test_a_batch_that_missed_its_slot_is_readmitted_first(fake):
    p = pacer(fake, sms_mps=10, pacing_horizon=1)
    p.reserve("sms", A, 20, batch_id=1)  # busy 2 s
    for batch in (2, 3):
        assert not p.reserve("sms", A, 10, batch_id=batch, broadcast_id="x").booked
    late = p.reserve("sms", A, 10, batch_id=9, broadcast_id="x", readmit=True)
    assert not late.booked and late.ahead == 0


def test_a_stopped_broadcast_leaves_the_line(fake):
    settings = make_settings(sms_mps=10, pacing_horizon=1)
    p = Pacer(fake, settings)
    p.reserve("sms", A, 20, batch_id=1)
    p.reserve("sms", A, 10, batch_id=2, broadcast_id="stopped")
    p.reserve("sms", A, 10, batch_id=3, broadcast_id="stopped")
    waiting = p.reserve("sms", A, 10, batch_id=4, broadcast_id="next")
    assert waiting.ahead == 10  # the two broadcasts take turns: 2, 4, 3

    high, normal, meta, due = timelines.line_keys("sms", A)
    script = fake.register_script(timelines.LEAVE_LINE)
    assert script(keys=[high, normal, meta, due], args=["stopped"]) == 2
    assert [int(m) for m in fake.zrange(normal, 0, -1)] == [4]


def test_a_batch_that_does_not_come_back_in_time_is_dropped_from_the_line(fake):
    p = pacer(fake, sms_mps=10, pacing_horizon=1)
    p.reserve("sms", A, 20, batch_id=1)
    p.reserve("sms", A, 10, batch_id=2, broadcast_id="lost")
    p.reserve("sms", A, 10, batch_id=3, broadcast_id="live")
    _, _, _, due = timelines.line_keys("sms", A)
    fake.zadd(due, {"2": 0})  # batch 2's task was lost: it is long overdue
    time.sleep(1.05)

    assert p.reserve("sms", A, 10, batch_id=3, broadcast_id="live").booked


# --- giving capacity back --------------------------------------------------------------------


def give_back(fake, members: list[str]) -> float:
    script = fake.register_script(timelines.GIVE_BACK)
    return float(script(keys=timelines.timeline_keys("sms", A), args=members))


def test_a_booking_given_back_at_the_tail_frees_its_time(fake):
    p = pacer(fake, sms_mps=10, sender_mps={A: 10})
    first = p.reserve("sms", A, 10, batch_id=1)
    second = p.reserve("sms", A, 10, batch_id=2)

    assert give_back(fake, [second.booking]) == pytest.approx(1.0, abs=1e-6)
    assert give_back(fake, [second.booking]) == 0  # twice changes nothing
    assert p.reserve("sms", A, 10, batch_id=3).slot == pytest.approx(first.slot + 1, abs=1e-6)


def test_a_booking_given_back_in_the_middle_frees_nothing_until_the_tail_goes(fake):
    p = pacer(fake, sms_mps=10)
    first = p.reserve("sms", A, 10, batch_id=1)
    middle = p.reserve("sms", A, 10, batch_id=2)
    tail = p.reserve("sms", B, 10, batch_id=3)

    # Batch 3 keeps its slot: the middle's time cannot be handed to anyone else.
    assert give_back(fake, [middle.booking]) == 0
    # Once the tail goes too, both are free (by batch and slot, as the API names them).
    name = timelines.booking_member(3, tail.slot_at)
    script = fake.register_script(timelines.GIVE_BACK)
    freed = float(script(keys=timelines.timeline_keys("sms", B), args=[name]))
    assert freed == pytest.approx(2.0, abs=1e-6)
    assert p.reserve("sms", A, 1).slot == pytest.approx(first.slot + 1, abs=1e-6)


# --- a changed rate re-paces what is booked ---------------------------------------------------


def test_a_limit_lowered_by_mistake_and_corrected_strands_nothing(fake):
    p = pacer(fake, sms_mps=10)
    first = p.reserve("sms", A, 10, batch_id=1)  # 1 s at 10/s
    fake.hset("bulksms:limits", "sms", "0.000001")
    stuck = p.reserve("sms", A, 10, batch_id=2)
    fake.hdel("bulksms:limits", "sms")
    after = p.reserve("sms", A, 10, batch_id=2)

    # At a millionth of a message a second the 10 messages just booked take 115 days...
    assert not stuck.booked and stuck.slot - stuck.now > 0.99e7
    # ...and corrected, they take the 1 s they always took: nothing was stranded.
    assert after.booked and after.slot == pytest.approx(first.slot + 1.0, abs=1e-3)


def test_a_lowered_limit_counts_what_was_just_sent_faster(fake):
    p = pacer(fake, sms_mps=100)
    first = p.reserve("sms", A, 100, batch_id=1)  # 1 s at 100/s
    fake.hset("bulksms:limits", "sms", "50")
    after = p.reserve("sms", A, 10, batch_id=2)
    assert after.slot == pytest.approx(first.slot + 2.0, abs=1e-3)


# --- the request limiter -------------------------------------------------------------------


def test_the_request_limit_allows_a_burst_that_leaves_room_for_the_window(fake):
    p = pacer(fake, request_limit=20, request_window=1, request_margin=0.05)
    grants = [p.request_grant() for _ in range(40)]

    # 19 (20 less 5 %) at once; the 20th only once the first has left a 1.05 s window, and
    # so on: a burst, then the window's pace, never both in one window.
    assert [g.wait for g in grants[:19]] == [0.0] * 19
    assert grants[19].wait > 0.5
    for i in range(19, 40):
        assert 1.05 < grants[i].at - grants[i - 19].at < 1.05 + 1e-5
    assert p.acquire_request() > 1.0  # the plain interface: seconds to wait


def test_the_message_list_has_its_own_tighter_limit(fake):
    p = pacer(fake, list_request_limit=3, list_request_window=60, request_margin=0)
    assert [p.acquire_list_request() for _ in range(3)] == [0.0] * 3
    assert p.acquire_list_request() == pytest.approx(60, abs=0.1)
    assert p.acquire_request() == 0.0


# --- limits as the operator sees them --------------------------------------------------------


def test_limits_are_read_with_their_source(redis_url):
    settings = make_settings(redis_url=redis_url, sms_mps=5, sender_mps={"Brand": 1})
    redis.Redis.from_url(redis_url).delete("bulksms:limits")
    set_limit(settings, "sms", 42)
    set_limit(settings, "mms", 0.5, sender=A)

    limits = read_limits(settings)
    assert limits["sms_mps"] == {"value": 42.0, "source": "override"}
    assert limits["mms_mps"] == {"value": 0.25, "source": "config"}
    assert limits["senders"]["Brand"]["sms_mps"] == {"value": 1.0, "source": "config"}
    assert limits["senders"][A]["mms_mps"] == {"value": 0.5, "source": "override"}
    assert limits["default_sender_mps"] == {"value": 0.0, "source": "config"}
    set_limit(settings, "sms", None)
    assert read_limits(settings)["sms_mps"]["source"] == "config"
    redis.Redis.from_url(redis_url).delete("bulksms:limits")


# --- many processes on a real Redis ------------------------------------------------------------

MPS = 1000.0
BATCH = 10
BATCHES_PER_PROCESS = 60
PROCESSES = 6


def _book_many(redis_url: str, worker: int, queue) -> None:
    """Book every batch, waiting in line as a worker would (retrying when told)."""
    settings = make_settings(
        redis_url=redis_url, sms_mps=MPS, sender_mps={B: MPS / 2}, pacing_horizon=0.2
    )
    p = Pacer(redis.Redis.from_url(redis_url), settings)
    booked = []
    for n in range(BATCHES_PER_PROCESS):
        sender = (A, B)[n % 2]
        while True:
            r = p.reserve("sms", sender, BATCH, batch_id=f"{worker}-{n}", broadcast_id=worker)
            if r.booked:
                booked.append((r.slot, sender))
                break
            time.sleep(min(r.delay, 0.05))
    queue.put(booked)


def _under_limit(slots: list[float], mps: float) -> None:
    # Every batch owns [slot, slot + BATCH/mps): no two overlap, so over any window W the
    # admitted messages are at most mps * W plus the one batch straddling its start.
    slots = sorted(slots)
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert min(gaps) >= BATCH / mps - 2e-6
    for window in (0.05, 0.2, 1.0):
        for i, start in enumerate(slots):
            inside = sum(1 for s in slots[i:] if s < start + window)
            assert inside * BATCH <= mps * window + BATCH


def test_many_processes_never_exceed_the_account_or_a_sender_limit(redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_book_many, args=(redis_url, n, queue)) for n in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    booked = [item for _ in processes for item in queue.get(timeout=120)]
    for process in processes:
        process.join(timeout=30)

    assert len(booked) == PROCESSES * BATCHES_PER_PROCESS
    _under_limit([slot for slot, _ in booked], MPS)
    _under_limit([slot for slot, sender in booked if sender == B], MPS / 2)


REQUEST_LIMIT, REQUEST_WINDOW, GRANTS_PER_PROCESS = 60, 0.5, 80


def _request_many(redis_url: str, queue) -> None:
    settings = make_settings(
        redis_url=redis_url, request_limit=REQUEST_LIMIT, request_window=REQUEST_WINDOW
    )
    p = Pacer(redis.Redis.from_url(redis_url), settings)
    grants = []
    for _ in range(GRANTS_PER_PROCESS):
        grant = p.request_grant()
        grants.append(grant.at)
        time.sleep(grant.wait)
    queue.put(grants)


def test_many_processes_never_exceed_the_request_limit_in_any_window(redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_request_many, args=(redis_url, queue)) for _ in range(6)]
    for process in processes:
        process.start()
    grants = sorted(at for _ in processes for at in queue.get(timeout=120))
    for process in processes:
        process.join(timeout=30)

    assert len(grants) == 6 * GRANTS_PER_PROCESS
    # Every window, starting at every grant: at most the limit less its margin (57), the
    # margin also kept in time (a 0.525 s window), so jitter cannot push one over at Plivo.
    allowed = int(REQUEST_LIMIT * 0.95)
    busiest = 0
    for i, start in enumerate(grants):
        inside = sum(1 for at in grants[i:] if at < start + REQUEST_WINDOW * 1.05)
        busiest = max(busiest, inside)
    assert busiest == allowed
    # ...and the pace follows from it: 480 grants at 57 per 0.525 s take at least 4.2 s.
    assert grants[-1] - grants[0] >= (len(grants) // allowed) * REQUEST_WINDOW * 1.05


# --- real workers, the sandbox, the API ------------------------------------------------------


def post(client, count: int, sender: str = A, start: int = 0, **extra) -> str:
    numbers = [f"+1416{n:07d}" for n in range(start, start + count)]
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": numbers, "text": "Pacing", "sender": sender, **extra},
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def request_log(sandbox: str) -> list[dict]:
    return requests.get(f"{sandbox}/stats/requests", timeout=10).json()


def sent_times(settings, broadcast_id: str) -> list[float]:
    """When each of the broadcast's batches was recorded as sent, in order."""
    with session_scope(settings.database_url) as session:
        moments = session.scalars(
            select(Batch.submitted_at)
            .where(Batch.broadcast_id == uuid.UUID(broadcast_id), Batch.submitted_at.is_not(None))
            .order_by(Batch.submitted_at)
        ).all()
    return [moment.timestamp() for moment in moments]


def steady_rate(log: list[tuple]) -> float:
    """Messages per second: the least-squares slope of the messages sent before each request
    against its time. One request sent a little late bends one point of a slope, where it
    would skew a first-to-last ratio over a short run."""
    times, before, total = [], [], 0
    for t, count, *_ in log:
        times.append(t)
        before.append(total)
        total += count
    n = len(times)
    mean_t, mean_m = sum(times) / n, sum(before) / n
    covariance = sum((t - mean_t) * (m - mean_m) for t, m in zip(times, before, strict=True))
    return covariance / sum((t - mean_t) ** 2 for t in times)


def status_of(settings, broadcast_id: str) -> str:
    with session_scope(settings.database_url) as session:
        return session.get(Broadcast, uuid.UUID(broadcast_id)).status


@pytest.fixture()
def paced(request, settings, tmp_path):
    """Workers, beat and the API at 200 messages a second in batches of 100 (0.5 s each), or
    of the size the test gives (indirect parameter)."""
    from api import create_app

    batch_size = getattr(request, "param", 100)
    changed = settings.model_copy(
        update={"sms_mps": 200, "batch_size": batch_size, "reconcile_interval": 1}
    )
    redis.Redis.from_url(settings.redis_url).delete("bulksms:limits")
    api = create_app(changed).test_client()
    api.environ_base["HTTP_X_API_KEY"] = API_KEY
    worker = Worker(changed, tmp_path / "worker.log", concurrency=4, queues="sms,maintenance")
    beat = Beat(changed, tmp_path)
    try:
        worker.wait_ready()
        yield changed, worker, api
    finally:
        worker.stop()
        beat.stop()
        redis.Redis.from_url(settings.redis_url).delete("bulksms:limits")


def wave_over(settings) -> float:
    """Wait until every batch's first task has run; returns when. The intake enqueues them
    all at once, and on a busy machine that wave can hold up a booked batch's own task."""

    def attempted() -> bool:
        with session_scope(settings.database_url) as session:
            return not session.scalar(select(Batch.id).where(Batch.attempts == 0).limit(1))

    wait_for(attempted, timeout=60, interval=0.1)
    return time.time()


@pytest.mark.parametrize("paced", [200], indirect=True)  # 1 s a batch
def test_two_senders_together_send_at_the_accounts_rate(paced, sandbox):
    settings, worker, client = paced
    first, second = post(client, 4000, A), post(client, 4000, B, start=5000)  # 40 s
    steady_from = wave_over(settings)
    wait_for(
        lambda: status_of(settings, first) == status_of(settings, second) == "completed",
        timeout=180,
        message=worker.log_tail(),
    )
    log = sorted((entry["t"], entry["count"], entry["src"]) for entry in request_log(sandbox))
    steady = [entry for entry in log if entry[0] > steady_from]
    ratio = steady_rate(steady) / settings.sms_mps
    gaps = [b[0] - a[0] for a, b in zip(steady, steady[1:], strict=False)]
    print(
        f"two senders: {len(steady)} of {len(log)} requests in "
        f"{steady[-1][0] - steady[0][0]:.2f} s, ratio {ratio:.4f}, "
        f"gaps {min(gaps):.3f}-{max(gaps):.3f} s"
    )

    assert {src for _, _, src in steady} == {A[1:], B[1:]}
    assert len(steady) >= 10
    assert 0.97 <= round(ratio, 2) <= 1.00
    assert sandbox_stats(sandbox)["duplicates"] == 0


def test_a_cancelled_broadcast_frees_its_sender_within_seconds(paced, sandbox):
    settings, worker, client = paced
    long = post(client, 3000)  # 15 s at 200/s
    wait_for(lambda: len(request_log(sandbox)) >= 3, timeout=30, message=worker.log_tail())
    assert client.post(f"/v1/broadcasts/{long}/cancel").status_code == 200
    started = time.time()
    follow = post(client, 1, start=9000)
    wait_for(lambda: status_of(settings, follow) == "completed", timeout=30)
    took = sent_times(settings, follow)[0] - started
    print(f"cancel-frees: the next broadcast was sent {took:.2f} s after the cancel")

    assert took < 3
    assert status_of(settings, long) == "cancelled"


def test_a_limit_set_to_almost_zero_and_cleared_strands_no_batch(paced, sandbox):
    settings, worker, client = paced
    broadcast = post(client, 2000)  # 10 s at 200/s
    wait_for(lambda: len(request_log(sandbox)) >= 2, timeout=30, message=worker.log_tail())
    assert client.put("/v1/limits", json={"sms_mps": 0.000001}).status_code == 200
    # Whatever was booked within the horizon goes out; after that, nothing.
    time.sleep(settings.pacing_horizon + 2)
    stalled = len(request_log(sandbox))
    time.sleep(2)
    assert len(request_log(sandbox)) == stalled

    cleared = time.time()
    assert client.put("/v1/limits", json={"sms_mps": None}).status_code == 200
    wait_for(lambda: len(request_log(sandbox)) > stalled, timeout=30, message=worker.log_tail())
    took = request_log(sandbox)[stalled]["t"] - cleared
    print(f"limit-change: the next batch was sent {took:.2f} s after the limit was cleared")

    assert took < 3
    wait_for(lambda: status_of(settings, broadcast) == "completed", timeout=60)


def test_a_high_priority_broadcast_overtakes_normal_ones_waiting(paced, sandbox):
    settings, worker, client = paced
    bulk = post(client, 6000)  # 60 batches, 30 s
    wave_over(settings)
    posted = time.time()
    alert = post(client, 300, start=90000, priority="high")  # 3 batches
    wait_for(lambda: status_of(settings, alert) == "completed", timeout=60)
    alert_sent, bulk_sent = sent_times(settings, alert), sent_times(settings, bulk)
    print(f"priority: the alert was done {alert_sent[-1] - posted:.2f} s after it was posted")

    wait_for(lambda: status_of(settings, bulk) == "completed", timeout=60)
    bulk_after = [t for t in sent_times(settings, bulk) if t > alert_sent[-1]]

    # It overtook the bulk's batches waiting their turn (all but the horizon's worth booked
    # when it came), and none of them went between its own.
    assert not [t for t in bulk_sent if alert_sent[0] < t < alert_sent[-1]]
    assert len(bulk_after) >= 10, len(bulk_after)
    assert client.get(f"/v1/broadcasts/{alert}").get_json()["priority"] == "high"


def test_two_broadcasts_on_one_sender_take_turns(paced, sandbox):
    settings, worker, client = paced
    first = post(client, 5000)  # 50 batches, 25 s
    wave_over(settings)
    second = post(client, 1000, start=90000)  # 10 batches
    wait_for(lambda: status_of(settings, second) == "completed", timeout=60)
    second_sent = sent_times(settings, second)

    wait_for(lambda: status_of(settings, first) == "completed", timeout=60)
    first_sent = sent_times(settings, first)

    # Not queued behind the first whole: once its turn came, the two alternated, one batch
    # each (9 of the first's between the second's 10), and the second finished first.
    turns = len([t for t in first_sent if second_sent[0] < t < second_sent[-1]])
    assert 7 <= turns <= 11, turns
    assert second_sent[-1] < first_sent[-1] - 2


def test_a_waiting_broadcast_says_what_it_waits_for(settings):
    from api import create_app

    slow = settings.model_copy(update={"sms_mps": 0.01, "batch_size": 10})
    api = create_app(slow).test_client()
    api.environ_base["HTTP_X_API_KEY"] = API_KEY
    broadcast = post(api, 20)
    with session_scope(slow.database_url) as session:
        for batch in session.scalars(select(Batch)):
            batch.not_before = utcnow() + timedelta(seconds=600)
    Pacer.for_settings(slow).reserve("sms", A, 10)  # the sender is booked 1000 s ahead

    body = api.get(f"/v1/broadcasts/{broadcast}").get_json()
    assert body["eta_seconds"] == pytest.approx(1000 + 20 / 0.01, rel=0.01)
    assert body["waiting_for"].startswith(f"sender {A} (booked until ")
    assert body["pacing"]["mps"] == 0.01


# --- operator actions, priority, what the API and CLI show -----------------------------------


def app_for(settings):
    from api import create_app

    client = create_app(settings).test_client()
    client.environ_base["HTTP_X_API_KEY"] = API_KEY
    return client


def batches_of(settings, broadcast_id: str) -> list[Batch]:
    with session_scope(settings.database_url) as session:
        return list(
            session.scalars(
                select(Batch)
                .where(Batch.broadcast_id == uuid.UUID(broadcast_id))
                .order_by(Batch.seq)
            )
        )


def test_pause_gives_the_slots_back_and_resume_books_afresh(settings):
    slow = settings.model_copy(update={"sms_mps": 10, "batch_size": 10, "pacing_horizon": 1.5})
    api = app_for(slow)
    broadcast = post(api, 30)  # 3 batches of 1 s each
    first, second, third = (batch.id for batch in batches_of(slow, broadcast))
    pacer = Pacer.for_settings(slow)
    # As workers do: two batches book (now, +1 s) and keep their slots; the third would start
    # at +2 s, past the horizon, and waits in the line; another broadcast waits behind it.
    booked = [
        pacer.reserve("sms", A, 10, batch_id=b, broadcast_id=broadcast) for b in (first, second)
    ]
    assert all(r.booked for r in booked)
    assert not pacer.reserve("sms", A, 10, batch_id=third, broadcast_id=broadcast).booked
    assert pacer.reserve("sms", A, 10, batch_id=999, broadcast_id="other").ahead == 10
    with session_scope(slow.database_url) as session:
        for batch_id, reservation in zip((first, second), booked, strict=True):
            batch = session.get(Batch, batch_id)
            batch.slot_at = batch.not_before = reservation.slot_at

    assert api.post(f"/v1/broadcasts/{broadcast}/pause").get_json()["status"] == "paused"

    assert [b.slot_at for b in batches_of(slow, broadcast)] == [None, None, None]
    # The sender is free at once, and nobody waits behind the paused broadcast.
    after = pacer.reserve("sms", A, 10, batch_id=999, broadcast_id="other")
    assert after.booked and after.delay < 0.1

    resumed = api.post(f"/v1/broadcasts/{broadcast}/resume").get_json()
    assert resumed["batches_enqueued"] == 3
    # Its batches book afresh, behind what was booked meanwhile, not after abandoned slots.
    again = pacer.reserve("sms", A, 10, batch_id=first, broadcast_id=broadcast)
    assert again.booked and again.slot == pytest.approx(after.slot + 1, abs=1e-3)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/broadcasts", {"text": "Hi"}),
        ("/v1/mms", {"media_urls": ["https://example.com/a.png"]}),
    ],
)
def test_priority_is_normal_or_high(client, path, body):
    numbers = ["+14155550101"]
    refused = client.post(path, json={"recipients": numbers, "priority": "urgent", **body})
    assert refused.status_code == 400
    assert refused.get_json()["error"]["message"].startswith("priority:")

    high = client.post(path, json={"recipients": numbers, "priority": "high", **body})
    plain = client.post(path, json={"recipients": ["+14155550102"], **body})
    assert (high.status_code, plain.status_code) == (202, 202)
    assert (high.get_json()["priority"], plain.get_json()["priority"]) == ("high", "normal")
    shown = client.get(f"/v1/broadcasts/{high.get_json()['id']}").get_json()
    assert shown["priority"] == "high"


def test_the_eta_waits_for_delivery_reports_instead_of_saying_zero(settings, sandbox):
    from workers.sending import deliver_batch

    reported = settings.model_copy(update={"public_base_url": "http://127.0.0.1:9"})
    api = app_for(reported)
    broadcast = post(api, 5)
    deliver_batch(reported, batches_of(reported, broadcast)[0].id)

    body = api.get(f"/v1/broadcasts/{broadcast}").get_json()
    assert body["recipients"]["by_status"] == {"queued": 5}
    assert body["eta_seconds"] is None
    assert body["waiting_for"].startswith("delivery reports of 5 recipients")
    assert body["reports_due_by"] is not None


def test_the_cli_shows_priority_and_what_a_broadcast_waits_for():
    from cli.progress import RateEstimator, measure, render

    broadcast = {
        "status": "sending",
        "priority": "high",
        "recipients": {"total": 10, "by_status": {"pending": 10}},
        "progress": {"final": 0, "total": 10, "percent": 0.0},
        "rate": {"messages_per_second": 0.0},
        "eta_seconds": 125,
        "waiting_for": f"sender {A} (booked until 12:00:05 UTC); next batch about 12:00:03 UTC",
    }
    line = render(measure(broadcast, RateEstimator(), 0.0), bar=False)
    assert "ETA 0:02:05" in line
    assert f"sending [high priority], waiting for sender {A} (booked until" in line
    finished = render(measure({**broadcast, "status": "completed"}, RateEstimator(), 0.0), False)
    assert "waiting for" not in finished


def test_a_slot_booked_as_its_broadcast_is_cancelled_goes_back_at_once(settings, monkeypatch):
    from workers.sending import deliver_batch

    paced = settings.model_copy(update={"sms_mps": 100, "batch_size": 100})
    api = app_for(paced)
    broadcast = post(api, 100)
    pacer = Pacer.for_settings(paced)
    ahead = pacer.reserve("sms", A, 300, batch_id="ahead", broadcast_id="other")  # 3 s
    reserve = Pacer.reserve

    def cancelled_meanwhile(self, *args, **kwargs):
        # The operator cancels between the worker's booking and its handing the batch back:
        # the cancel cannot see the slot yet (the batch is claimed), the worker must.
        reservation = reserve(self, *args, **kwargs)
        assert api.post(f"/v1/broadcasts/{broadcast}/cancel").status_code == 200
        return reservation

    monkeypatch.setattr(Pacer, "reserve", cancelled_meanwhile)
    outcome = deliver_batch(paced, batches_of(paced, broadcast)[0].id)
    monkeypatch.undo()

    assert outcome["outcome"] == "deferred"  # booked 3 s ahead, then handed back...
    assert batches_of(paced, broadcast)[0].slot_at is None  # ...keeping nothing
    after = pacer.reserve("sms", A, 1, batch_id="next", broadcast_id="next")
    assert after.slot == pytest.approx(ahead.slot + 3, abs=1e-3)  # its second went back
