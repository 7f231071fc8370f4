"""The global limiter: the Lua script on fakeredis for its rules, then many processes on a
real Redis for the guarantee that matters (never over the limit, in any window)."""

from __future__ import annotations

import multiprocessing

import fakeredis
import pytest
import redis

from shared.limits import read_limits, set_limit
from tests.conftest import make_settings
from workers.pacing import Pacer


def pacer(client, **values) -> Pacer:
    return Pacer(client, make_settings(**values))


@pytest.fixture()
def fake():
    return fakeredis.FakeRedis()


def test_a_batch_of_k_costs_k_over_mps_seconds(fake):
    p = pacer(fake, sms_mps=10)
    first = p.reserve("sms", "+14155550000", 5)
    second = p.reserve("sms", "+14155550000", 5)
    third = p.reserve("sms", "+14155550000", 20)
    fourth = p.reserve("sms", "+14155550000", 1)

    assert first.delay == 0
    assert second.slot - first.slot == pytest.approx(0.5, abs=1e-6)
    assert third.slot - second.slot == pytest.approx(0.5, abs=1e-6)
    assert fourth.slot - third.slot == pytest.approx(2.0, abs=1e-6)
    assert fourth.delay == pytest.approx(3.0, abs=0.05)


def test_each_sender_has_its_own_timeline(fake):
    p = pacer(fake, sms_mps=1)
    p.reserve("sms", "+14155550000", 100)

    assert p.reserve("sms", "+14155550001", 100).delay == 0
    assert p.reserve("mms", "+14155550000", 1).delay == 0


def test_unlimited_never_waits(fake):
    p = pacer(fake, sms_mps=0)
    assert [p.reserve("sms", "S", 1000).delay for _ in range(5)] == [0.0] * 5


def test_a_redis_override_changes_the_rate_for_the_next_reservation(fake):
    settings = make_settings(sms_mps=10)
    p = Pacer(fake, settings)
    p.reserve("sms", "A", 10)
    fake.hset("bulksms:limits", "sms", "100")  # what set_limit writes
    changed = p.reserve("sms", "A", 10)
    after = p.reserve("sms", "A", 10)

    assert changed.mps == 100
    assert after.slot - changed.slot == pytest.approx(0.1, abs=1e-6)


def test_a_per_sender_override_beats_the_account_limit(fake):
    fake.hset("bulksms:limits", "sms:Brand", "2")
    p = pacer(fake, sms_mps=100)
    assert p.reserve("sms", "Brand", 1).mps == 2
    assert p.reserve("sms", "Other", 1).mps == 100


def test_configured_sender_limits_apply_without_overrides(fake):
    p = pacer(fake, sms_mps=100, sender_mps={"+14155550000": 1})
    assert p.reserve("sms", "+14155550000", 1).mps == 1


def test_the_request_limit_allows_a_burst_then_one_per_interval(fake):
    p = pacer(fake, request_limit=5, request_window=1)
    waits = [p.acquire_request() for _ in range(7)]

    assert waits[:5] == [0.0] * 5
    assert waits[5] == pytest.approx(0.2, abs=0.02)
    assert waits[6] == pytest.approx(0.4, abs=0.02)


def test_limits_are_read_with_their_source(redis_url):
    settings = make_settings(redis_url=redis_url, sms_mps=5, sender_mps={"Brand": 1})
    redis.Redis.from_url(redis_url).delete("bulksms:limits")
    set_limit(settings, "sms", 42)
    set_limit(settings, "mms", 0.5, sender="+14155550000")

    limits = read_limits(settings)
    assert limits["sms_mps"] == {"value": 42.0, "source": "override"}
    assert limits["mms_mps"] == {"value": 0.25, "source": "config"}
    assert limits["senders"]["Brand"]["sms_mps"] == {"value": 1.0, "source": "config"}
    assert limits["senders"]["+14155550000"]["mms_mps"] == {"value": 0.5, "source": "override"}
    set_limit(settings, "sms", None)
    assert read_limits(settings)["sms_mps"]["source"] == "config"
    redis.Redis.from_url(redis_url).delete("bulksms:limits")


MPS = 500.0
BATCH = 10
RESERVATIONS_PER_PROCESS = 150


def _reserve_many(redis_url: str, sender: str, queue) -> None:
    p = Pacer(redis.Redis.from_url(redis_url), make_settings(redis_url=redis_url, sms_mps=MPS))
    queue.put([p.reserve("sms", sender, BATCH).slot for _ in range(RESERVATIONS_PER_PROCESS)])


def test_many_processes_never_exceed_the_limit_in_any_window(redis_url):
    sender = "+14155559999"
    redis.Redis.from_url(redis_url).delete(f"bulksms:pace:sms:{sender}")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_reserve_many, args=(redis_url, sender, queue)) for _ in range(6)
    ]
    for process in processes:
        process.start()
    slots = sorted(slot for _ in processes for slot in queue.get(timeout=60))
    for process in processes:
        process.join(timeout=30)

    assert len(slots) == 6 * RESERVATIONS_PER_PROCESS
    # Every batch owns [slot, slot + BATCH/MPS): no two overlap, so over any window W the
    # admitted messages are at most MPS * W plus the one batch straddling its start.
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert min(gaps) >= BATCH / MPS - 1e-5
    for window in (0.1, 0.5, 1.0):
        for i, start in enumerate(slots):
            inside = sum(1 for s in slots[i:] if s < start + window)
            assert inside * BATCH <= MPS * window + BATCH
