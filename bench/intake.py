"""Intake benchmark: POST /v1/broadcasts through the real Flask app, timed from request to 202.

    .venv/bin/python bench/intake.py [--runs 5] [--sizes 10000,100000] [--only postgresql]

For SQLite (a temp file) and PostgreSQL (a throwaway server from tests/services.py), each
migrated with Alembic, it posts broadcasts of N distinct E.164 numbers with real Redis as the
broker: JSON parse, validation, opt-out lookup, the bulk transaction and the enqueueing are
all inside the timing. Each case gets one unmeasured warm-up, then --runs measured POSTs.
On PostgreSQL it then times a broadcast to one contact list of --list-size contacts
(`list_ids`, plain text, no pool, no quiet hours; default 1,000,000, median of up to 3 runs
after a warm-up). The list is created through the API and its contacts COPYed straight into
the table (bench/lists.py times the import itself); --list-size 0 skips it, --list-only
skips the inline cases. Past 100,000 contacts intake keeps whole batches' numbers as text
(shared/audience.py); the background writer that turns them into recipients rows after the
202 is timed too, for up to WRITER_SECONDS.

BENCH_REDIS_URL / BENCH_DATABASE_URL use servers of your own instead; give scratch ones: the
benchmark migrates the database, writes broadcasts into it and deletes the `sms` queue.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from itertools import islice
from pathlib import Path
from unittest import mock

# `python bench/intake.py` puts bench/ on sys.path, not the project root.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402

import api.broadcasts  # noqa: E402
import api.intake  # noqa: E402
from api import create_app  # noqa: E402
from shared import audience  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db import get_engine, session_scope  # noqa: E402
from shared.phone import normalise  # noqa: E402
from shared.taskqueue import SMS_QUEUE  # noqa: E402
from tests import services  # noqa: E402

API_KEY = "bench-key"
TARGET = ("postgresql", 100_000, 2.0)  # database, recipients, median seconds
# How long the background writer of kept batches is timed for after the list runs.
WRITER_SECONDS = 10.0
# Functions timed inside every POST, in call order; "commit" comes from the session wrapper.
STAGES = [
    ("api.broadcasts", "_read_json", "read body + json.loads"),
    ("api.broadcasts", "parse_request", "pydantic validation"),
    ("api.intake", "normalise_all", "normalise + dedupe"),
    ("api.intake", "opted_out_among", "opt-out lookup"),
    ("api.broadcasts", "write_broadcast", "write broadcast/batches/recipients"),
    ("api.intake", "_insert_recipients", "  of which recipients COPY/executemany"),
    (None, None, "commit"),
    ("api.broadcasts", "enqueue_batches", "enqueue batch tasks to Redis"),
]
# The list broadcast's own steps (api/list_audience.py resolves the lists in SQL).
LIST_STAGES = [
    ("api.broadcasts", "_read_json", "read body + json.loads"),
    ("api.list_audience", "summarise", "lists counted + priced (SQL)"),
    ("api.broadcasts", "write_broadcast", "write broadcast/batches/recipients"),
    ("api.list_audience", "write_recipients", "  of which contacts -> recipients (SQL)"),
    ("api.broadcasts", "full", "202 body read back (counts by status)"),
    (None, None, "commit"),
    ("api.broadcasts", "enqueue_batches", "enqueue batch tasks to Redis"),
]


def migrate(database_url: str) -> None:
    """Alembic upgrade to head, as tests/conftest.py and deployments do it."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def phone_numbers(exclude: str) -> Iterator[str]:
    """Distinct canonical numbers, +14150000000 upwards, never the sender's own."""
    for n in range(10**7):
        number = f"+1415{n:07d}"
        if number != exclude:
            yield number


@contextmanager
def timed_stages(times: dict[str, float], stages=STAGES) -> Iterator[None]:
    """Patch the intake's steps so each POST adds its time per step to `times`."""

    def timed(label, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[label] += time.perf_counter() - start

        return wrapper

    original_scope = api.broadcasts.session_scope

    @contextmanager
    def session_scope(url):
        with original_scope(url) as session:
            yield session
            start = time.perf_counter()
        times["commit"] += time.perf_counter() - start  # the original commits on exit

    with ExitStack() as stack:
        for module, name, label in stages:
            if module:
                target = sys.modules[module]
                wrapped = timed(label, getattr(target, name))
                stack.enter_context(mock.patch.object(target, name, wrapped))
        stack.enter_context(mock.patch.object(api.broadcasts, "session_scope", session_scope))
        yield


def post(client, body: bytes, size: int, broker: redis.Redis) -> float:
    """One POST; returns its wall time after checking the 202, the counts and the queue."""
    start = time.perf_counter()
    response = client.post("/v1/broadcasts", data=body, content_type="application/json")
    elapsed = time.perf_counter() - start
    assert response.status_code == 202, (response.status_code, response.get_data(as_text=True))
    result = response.get_json()
    expected = {"accepted": size, "invalid": 0, "duplicates": 0, "skipped": 0, "rejected": 0}
    assert result["counts"] == expected, result["counts"]
    batches = math.ceil(size / 1000)
    assert result["batches"]["total"] == batches, result["batches"]
    assert result["recipients"]["by_status"] == {"pending": size}, result["recipients"]
    # Intake publishes the first tasks; the reconciler the rest (none runs here).
    enqueued = min(batches, api.intake.ENQUEUED_AT_INTAKE)
    assert broker.llen(SMS_QUEUE) == enqueued, broker.llen(SMS_QUEUE)
    broker.delete(SMS_QUEUE)  # so the queue does not grow between runs
    return elapsed


def bench_database(name, database_url, redis_url, sizes, runs):
    """Times per size, and the median time per stage for the largest size."""
    migrate(database_url)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=redis_url,
        api_keys=[API_KEY],
        log_level="WARNING",  # no broadcast.accepted line per POST
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_X_API_KEY"] = API_KEY
    broker = redis.Redis.from_url(redis_url)
    broker.delete(SMS_QUEUE)
    numbers = phone_numbers(exclude=settings.default_sender)
    results, stage_runs = {}, []
    for size in sizes:
        times = []
        for run in range(runs + 1):  # run 0 is the warm-up
            recipients = list(islice(numbers, size))
            body = json.dumps({"recipients": recipients, "text": "Hello"}).encode()
            stages = defaultdict(float)
            with timed_stages(stages):
                elapsed = post(client, body, size, broker)
            if run:
                times.append(elapsed)
                if size == max(sizes):
                    stage_runs.append({**stages, "total": elapsed})
            print(f"  {name} {size:>7,} {'warm-up' if not run else f'run {run}'}: {elapsed:.3f}s")
        results[size] = times
    get_engine(database_url).dispose()
    return results, stage_runs


def cpu_reference(size: int, runs: int) -> dict[str, float]:
    """Median seconds for the CPU-only steps on their own, with no app around them."""
    recipients = [f"+1415{n:07d}" for n in range(size)]
    body = json.dumps({"recipients": recipients, "text": "Hello"}).encode()
    steps = {
        f"json.loads of the {len(body) / 1e6:.1f} MB body": lambda: json.loads(body),
        f"shared.phone.normalise x {size:,}": lambda: [normalise(r) for r in recipients],
    }
    medians = {}
    for label, step in steps.items():
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            step()
            samples.append(time.perf_counter() - start)
        medians[label] = statistics.median(samples)
    return medians


def print_report(all_results, all_stages, reference, sizes, runs) -> None:
    print(f"\nPOST /v1/broadcasts, request to 202 ({runs} measured runs each, after 1 warm-up)\n")
    header = f"{'database':<11} {'recipients':>10} {'median s':>9} {'min s':>7} {'max s':>7}"
    print(f"{header} {'recipients/s':>13}")
    for name, results in all_results.items():
        for size, times in results.items():
            median = statistics.median(times)
            print(
                f"{name:<11} {size:>10,} {median:>9.3f} {min(times):>7.3f} {max(times):>7.3f} "
                f"{size / median:>13,.0f}"
            )
    for name, stage_runs in all_stages.items():
        # One whole run (the median one), so that the steps add up to its total.
        run = sorted(stage_runs, key=lambda run: run["total"])[(len(stage_runs) - 1) // 2]
        total = run["total"]
        print(f"\nwhere the time goes, {name}, {max(sizes):,} recipients (the median run):")
        rows = [(label, run.get(label, 0.0)) for *_, label in STAGES]
        other = total - sum(seconds for label, seconds in rows if not label.startswith(" "))
        rows += [("other (auth, sha256, Flask, response)", other), ("total", total)]
        for label, seconds in rows:
            print(f"  {label:<40} {seconds * 1000:>7.1f} ms {seconds / total:>5.0%}")
    print(f"\nCPU-only reference, outside the app (median of {runs}):")
    for label, seconds in reference.items():
        print(f"  {label:<40} {seconds * 1000:>7.1f} ms")
    database, size, limit = TARGET
    times = all_results.get(database, {}).get(size)
    print(f"\ntarget: {size:,} recipients accepted in under {limit:g} s on {database} (median)")
    if times is None:
        print("  not measured (run with the default --sizes and without --only sqlite)")
    else:
        median = statistics.median(times)
        print(f"  {'PASS' if median < limit else 'FAIL'}: median {median:.3f}s")


LIST_TARGET = ("postgresql", 1_000_000, 10.0)  # database, contacts, median seconds to 202


def seed_list(client, database_url: str, size: int, exclude: str) -> str:
    """A list created through the API (so it is the bench key's) whose `size` contacts are
    COPYed straight into the table: the import has its own benchmark (bench/lists.py)."""
    created = client.post("/v1/lists", json={"name": "bench"})
    assert created.status_code == 201, created.get_data(as_text=True)
    list_id = created.get_json()["id"]
    buffer = io.StringIO()
    for number in islice(phone_numbers(exclude=exclude), size):
        buffer.write(f"{list_id}\t{number}\t2026-01-01 00:00:00+00\t2026-01-01 00:00:00+00\n")
    buffer.seek(0)
    connection = get_engine(database_url).raw_connection()
    try:
        with connection.cursor() as cursor:
            cursor.copy_expert(
                "COPY contacts (list_id, phone, created_at, updated_at) FROM STDIN", buffer
            )
            cursor.execute("ANALYZE contacts")
        connection.commit()
    finally:
        connection.close()
    return list_id


def bench_list_broadcast(name, database_url, redis_url, size, runs):
    """POST /v1/broadcasts with `list_ids`: one list of `size` contacts, resolved at intake;
    times to the 202, and the stages of each run."""
    migrate(database_url)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=redis_url,
        api_keys=[API_KEY],
        log_level="WARNING",
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_X_API_KEY"] = API_KEY
    broker = redis.Redis.from_url(redis_url)
    broker.delete(SMS_QUEUE)
    start = time.perf_counter()
    list_id = seed_list(client, database_url, size, settings.default_sender)
    print(f"  {name} list of {size:,} contacts seeded in {time.perf_counter() - start:.1f}s")
    body = json.dumps({"list_ids": [list_id], "text": "Hello"}).encode()
    times, stage_runs = [], []
    for run in range(runs + 1):  # run 0 is the warm-up
        stages = defaultdict(float)
        with timed_stages(stages, LIST_STAGES):
            elapsed = post(client, body, size, broker)
        if run:
            times.append(elapsed)
            stage_runs.append({**stages, "total": elapsed})
        label = "warm-up" if not run else f"run {run}"
        print(f"  {name} list broadcast {size:>9,} {label}: {elapsed:.3f}s")
    start = time.perf_counter()
    rows = audience.write_for(lambda: session_scope(database_url), WRITER_SECONDS)
    if rows:
        elapsed = time.perf_counter() - start
        print(
            f"  background writer: {rows:,} recipients rows in {elapsed:.1f}s "
            f"({rows / elapsed:,.0f}/s: a {size:,}-contact broadcast in "
            f"{size / (rows / elapsed):.0f}s)"
        )
    get_engine(database_url).dispose()
    return times, stage_runs


def print_list_report(list_results: dict[str, tuple[list, list]], size: int) -> None:
    if not list_results:
        return
    print(f"\nPOST /v1/broadcasts {{list_ids: [one list of {size:,} contacts]}}, request to 202")
    for name, (times, _stages) in list_results.items():
        median = statistics.median(times)
        print(f"  {name:<11} median {median:.3f}s  min {min(times):.3f}s  max {max(times):.3f}s")
    for name, (_times, stage_runs) in list_results.items():
        run = sorted(stage_runs, key=lambda run: run["total"])[(len(stage_runs) - 1) // 2]
        total = run["total"]
        print(f"where the time goes, {name}, the median run:")
        rows = [(label, run.get(label, 0.0)) for *_, label in LIST_STAGES]
        other = total - sum(seconds for label, seconds in rows if not label.startswith(" "))
        rows += [("other (auth, validation, Flask, response)", other), ("total", total)]
        for label, seconds in rows:
            print(f"  {label:<40} {seconds * 1000:>7.1f} ms {seconds / total:>5.0%}")
    database, wanted, limit = LIST_TARGET
    times = list_results.get(database, (None,))[0]
    print(f"target: {wanted:,}-contact list broadcast to 202 in under {limit:g} s on {database}")
    if times is None or size != wanted:
        print("  not measured (run with the default --list-size and PostgreSQL)")
    else:
        median = statistics.median(times)
        print(f"  {'PASS' if median < limit else 'FAIL'}: median {median:.3f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per case (default 5)")
    parser.add_argument("--sizes", default="10000,100000", help="recipient counts, comma-separated")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], help="one database only")
    parser.add_argument(
        "--list-size",
        type=int,
        default=1_000_000,
        help="contacts of the list-broadcast case, on PostgreSQL (0: skip it; default 1000000)",
    )
    parser.add_argument(
        "--list-only", action="store_true", help="only the list-broadcast case (PostgreSQL)"
    )
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    databases = [args.only] if args.only else ["sqlite", "postgresql"]
    if args.list_only:
        databases = ["postgresql"]

    all_results, all_stages = {}, {}
    list_results: dict[str, tuple[list, list]] = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-intake-")))
        redis_url = os.environ.get("BENCH_REDIS_URL") or stack.enter_context(
            services.redis_server(tmp)
        )
        for name in databases:
            if name == "sqlite":
                server = nullcontext(f"sqlite:///{tmp / 'bench.db'}")
            elif url := os.environ.get("BENCH_DATABASE_URL"):
                server = nullcontext(url)
            else:
                server = services.postgres_server(tmp)
            with server as database_url:
                print(f"{name}: {database_url}")
                if not args.list_only:
                    all_results[name], all_stages[name] = bench_database(
                        name, database_url, redis_url, sizes, args.runs
                    )
                # A million rows in SQLite would take this run minutes for no figure we use.
                if args.list_size and name == "postgresql":
                    list_results[name] = bench_list_broadcast(
                        name, database_url, redis_url, args.list_size, min(args.runs, 3)
                    )
    if not args.list_only:
        reference = cpu_reference(max(sizes), args.runs)
        print_report(all_results, all_stages, reference, sizes, args.runs)
    print_list_report(list_results, args.list_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
