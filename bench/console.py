"""How fast the console's two heaviest pages render, server side, on PostgreSQL.

Seeds 10,000 broadcasts (10 recipients and one batch each) and one 100,000-recipient
broadcast taken in through the real intake and then spread over every status, with delivery
reports over time and error codes, then times, in this process through Flask's test client
(server time, no network): the broadcasts list (its first page, and filtered by status)
and the 100,000-recipient broadcast's page. Prints the median of RUNS runs of each.

    .venv/bin/python bench/console.py [--runs 15] [--database postgresql|sqlite]

Targets: the list under 200 ms, the broadcast under 300 ms."""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select, text, update  # noqa: E402

from bench.harness import API_KEY, Api, bench_run, bench_settings, phone_numbers  # noqa: E402
from shared.db import get_engine, session_scope  # noqa: E402
from shared.models import Batch, Broadcast, Recipient, utcnow  # noqa: E402

LIST_TARGET_MS, DETAIL_TARGET_MS = 200, 300
BROADCASTS = 10_000
PER_BROADCAST = 10
BIG = 100_000
STATUSES = ("completed", "completed_with_failures", "sending", "paused", "cancelled", "queued")


def seed_many(database_url: str, api_key_id: str) -> None:
    """BROADCASTS small broadcasts over the last 30 days, in bulk inserts."""
    now = utcnow()
    with session_scope(database_url) as session:
        for start in range(0, BROADCASTS, 1000):
            broadcasts, batches, recipients = [], [], []
            for n in range(start, start + 1000):
                bid = uuid.uuid4()
                created = now - timedelta(days=30) + timedelta(seconds=n * 259)
                broadcasts.append({
                    "id": bid, "kind": "sms", "sender": "+14155550000", "text": f"Hello {n}",
                    "encoding": "GSM", "segments": 1, "status": STATUSES[n % len(STATUSES)],
                    "counts": {"accepted": PER_BROADCAST}, "api_key_id": api_key_id,
                    "created_at": created, "updated_at": created, "name": f"Campaign {n}",
                })  # fmt: skip
                batches.append({"broadcast_id": bid, "seq": 1, "size": PER_BROADCAST,
                                "status": "submitted", "submitted_at": created})  # fmt: skip
                for i in range(PER_BROADCAST):
                    recipients.append({"broadcast_id": bid, "phone": f"+1415{n:05d}{i:02d}",
                                       "status": "delivered" if i else "failed",
                                       "error_code": None if i else "20"})  # fmt: skip
            session.execute(insert(Broadcast), broadcasts)
            session.execute(insert(Batch), batches)
            session.execute(insert(Recipient), recipients)


def spread_big(database_url: str, broadcast_id: str) -> None:
    """The big broadcast as after an hour of sending: batches submitted over the hour,
    recipients delivered, failed with codes, undelivered, unknown, still pending."""
    bid = uuid.UUID(broadcast_id)
    start = utcnow() - timedelta(hours=1)
    with session_scope(database_url) as session:
        session.execute(
            update(Broadcast).where(Broadcast.id == bid)
            .values(status="sending", created_at=start, name="Big one")
        )  # fmt: skip
        batch_ids = list(session.scalars(select(Batch.id).where(Batch.broadcast_id == bid)))
        for index, batch_id in enumerate(batch_ids[:90]):
            at = start + timedelta(seconds=index * 36)
            session.execute(
                update(Batch).where(Batch.id == batch_id)
                .values(status="submitted", submitted_at=at)
            )  # fmt: skip
            codes = ("20", "50", "80", "420")
            session.execute(
                update(Recipient).where(Recipient.batch_id == batch_id).values(
                    status="delivered", finished_at=at + timedelta(seconds=20)
                )
            )  # fmt: skip
            session.execute(
                update(Recipient)
                .where(Recipient.batch_id == batch_id, Recipient.phone.like("%7"))
                .values(status="failed" if index % 2 else "undelivered",
                        error_code=codes[index % 4], finished_at=at + timedelta(seconds=25))
            )  # fmt: skip
        session.execute(
            update(Recipient)
            .where(Recipient.broadcast_id == bid, Recipient.phone.like("%13"))
            .values(status="unknown")
        )


def median_ms(browser, path: str, runs: int, expect: str) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = browser.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200 or expect not in response.get_data(as_text=True):
            raise RuntimeError(f"{path}: {response.status_code}")
    return statistics.median(times)


def signed_in(client):
    form = client.get("/console/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    answer = client.post("/console/sign-in", data={"api_key": API_KEY, "csrf_token": token})
    assert answer.status_code == 303, answer.status_code
    return client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    with bench_run("console", timeout=1200) as run:
        redis_server = run.redis()
        database_url = run.database(args.database)
        settings = bench_settings(
            database_url=database_url,
            redis_url=redis_server.url,
            api_rate_limit="1000000/second",
            log_level="WARNING",
        )
        api = Api(settings)
        print(f"seeding {BROADCASTS:,} broadcasts and one of {BIG:,} recipients ...", flush=True)
        started = time.perf_counter()
        big = api.broadcast(phone_numbers(BIG), "The big one")
        with session_scope(database_url) as session:
            key_id = session.scalar(select(Broadcast.api_key_id))
        spread_big(database_url, big)
        seed_many(database_url, key_id)
        if args.database == "postgresql":
            # What autovacuum does on a live database after a bulk load: statistics, and
            # the visibility map that lets the counts by status read the index alone.
            with get_engine(database_url).connect().execution_options(
                isolation_level="AUTOCOMMIT"
            ) as connection:
                connection.execute(text("VACUUM ANALYZE"))
        print(f"seeded in {time.perf_counter() - started:.0f} s", flush=True)
        browser = signed_in(api.client.application.test_client())
        # Warm up: the first request compiles templates and fills connection pools.
        browser.get("/console/broadcasts")
        browser.get(f"/console/broadcasts/{big}")
        results = [
            ("broadcast list, first page", "/console/broadcasts", LIST_TARGET_MS, "Campaign"),
            ("broadcast list, status=paused", "/console/broadcasts?status=paused",
             LIST_TARGET_MS, "Campaign"),
            ("list fragment (live update)", "/console/broadcasts/live", LIST_TARGET_MS,
             "Campaign"),
            (f"broadcast of {BIG:,} recipients", f"/console/broadcasts/{big}", DETAIL_TARGET_MS,
             "Big one"),
            ("its live fragment", f"/console/broadcasts/{big}/live", DETAIL_TARGET_MS, "Errors"),
        ]  # fmt: skip
        api_ms = median_ms(api.client, f"/v1/broadcasts/{big}", args.runs, "by_status")
        print(f"\n{args.database}, median of {args.runs} runs (server time, in-process):")
        print(f"  (GET /v1/broadcasts/{{id}} alone, the API's JSON: {api_ms:.1f} ms)")
        failed = False
        for label, path, target, expect in results:
            ms = median_ms(browser, path, args.runs, expect)
            verdict = "ok" if ms < target else "OVER TARGET"
            failed |= ms >= target
            print(f"  {label:<34} {ms:7.1f} ms  (target < {target} ms: {verdict})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
