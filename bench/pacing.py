"""Pacing benchmark: does a fleet of workers send at the account's MPS, and not faster?

    .venv/bin/python bench/pacing.py [--mps 200] [--recipients 20000] [--workers 4]
                                     [--db postgresql|sqlite] [--expiry 30]

Starts Redis, PostgreSQL (or SQLite), the sandbox as its own process, N `celery worker -c 1
-Q sms,maintenance` processes and beat, then POSTs one broadcast of --recipients numbers
through the real API (BATCH_SIZE 1000). It does this twice on the same servers: with global
pacing (the Redis GCRA limiter), then with GLOBAL_PACING=false, where only Celery's
per-worker rate_limit (MPS x 60 / batch size per minute, per process) holds the workers back.

Measured at the sandbox, not in the workers:
  steady-state rate = messages in every request but the last / (time of last request - time of
                      first request), from GET /stats/requests. The last request's messages
                      are left out because the interval ends when it is sent: the interval
                      holds exactly the first n-1 batches' share of the account's time.
  ratio             = steady-state rate / configured MPS.
and from GET /stats: the sender's maximum queue depth, 429s, duplicates and expired (420).

What makes the comparison honest: the sandbox drains at exactly the configured MPS (so any
over-feeding shows up as queue depth and, past --expiry, as expired messages, and any
under-feeding as a ratio below 1), keeps the real account request limit (300 per 5 s), and
both runs send the same numbers in the same batches with the same workers against a reset
sandbox and an empty Redis. The expiry (30 s) is scaled down with the run (~100 s) the way
Plivo's 3 h default relates to a 10 h broadcast, and stays well above the 5 s it takes to
drain one batch, so a correctly paced run cannot expire anything just for being batched.
"""

from __future__ import annotations

import argparse
import time

from harness import (
    SENDER_DIGITS,
    Api,
    account,
    bench_run,
    bench_settings,
    phone_numbers,
    wait_finished,
    wait_ready,
)

RATIO_RANGE = (0.97, 1.00)


def steady_rate(request_log: list[dict]) -> tuple[float | None, float, int]:
    """(messages per second, first-to-last seconds, requests) over the sender's requests."""
    times = sorted((r["t"], r["count"]) for r in request_log if r["src"] == SENDER_DIGITS)
    if len(times) < 2:
        return None, 0.0, len(times)
    span = times[-1][0] - times[0][0]
    return sum(count for _, count in times[:-1]) / span, span, len(times)


def one_run(run, redis, database_url, sandbox, numbers, args, global_pacing: bool) -> dict:
    redis.flush()  # no pacing timeline or queued task from the run before
    sandbox.reset()
    settings = bench_settings(
        database_url=database_url,
        redis_url=redis.url,
        sandbox_url=sandbox.url,
        sms_mps=args.mps,
        batch_size=1000,
        global_pacing=global_pacing,
        max_recipients=max(100_000, len(numbers)),
    )
    label = "global" if global_pacing else "naive"
    workers = [run.worker(settings, f"{label}{i}") for i in range(args.workers)]
    beat = run.beat(settings)
    wait_ready(workers)
    broadcast_id = Api(settings).broadcast(numbers, "Pacing benchmark")
    budget = 2 * len(numbers) / args.mps + 60
    finished = wait_finished(database_url, broadcast_id, budget)
    time.sleep(1)  # let the last request's log line land
    stats = sandbox.stats()
    rate, span, requests = steady_rate(sandbox.request_log())
    for child in [*workers, beat]:
        child.stop()
        run.forget(child)
    end = account(database_url, broadcast_id, stats)
    return {
        **end,
        "messages": stats["messages"],
        "requests": requests,
        "span": span,
        "rate": rate,
        "ratio": rate / args.mps if rate else None,
        "finished": finished,
        "lead": settings.pacing_lead,
    }


def fmt(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def report(args, results: dict[str, dict]) -> int:
    lead_msgs = results["global"]["lead"] * args.mps
    depth_limit = 1000 + lead_msgs
    rows = [
        ("messages accepted by the sandbox", "messages", ",.0f"),
        ("requests (batches)", "requests", ",.0f"),
        ("first to last request, s", "span", ",.2f"),
        ("steady-state rate, msg/s", "rate", ",.1f"),
        ("rate / configured MPS", "ratio", ".4f"),
        ("max queue depth at the sandbox", "max_queue_depth", ",.0f"),
        ("429 responses", "too_many_requests", ",.0f"),
        ("numbers texted twice", "texted_twice", ",.0f"),
        ("expired in the queue (420)", "expired", ",.0f"),
        ("recipients lost (not final)", "lost", ",.0f"),
        ("broadcast final after, s", "finished", ",.1f"),
    ]
    print(
        f"\n{args.recipients:,} recipients, BATCH_SIZE 1000, {args.workers} workers (-c 1), "
        f"SMS_MPS {args.mps:g}, sandbox draining at {args.mps:g} MPS with expiry "
        f"{args.expiry:g}s, {args.db}\n"
    )
    print(f"{'':<34} {'global pacing':>15} {'rate_limit only':>16}")
    for label, key, spec in rows:
        global_, naive = results["global"].get(key), results["naive"].get(key)
        print(f"{label:<34} {fmt(global_, spec):>15} {fmt(naive, spec):>16}")
    print(
        f"\n(rate = messages of all requests but the last / first-to-last request time; the "
        f"sandbox's queue\n cannot hold more than MPS x expiry = {args.mps * args.expiry:,.0f}: "
        "messages that would wait longer expire on arrival)"
    )
    g = results["global"]
    low, high = RATIO_RANGE
    ratio = g["ratio"]
    checks = [
        (
            f"ratio between {low:.2f} and {high:.2f} (rounded to 2 places)",
            ratio is not None and low <= round(ratio, 2) <= high,
            fmt(ratio, ".4f"),
        ),
        ("zero 429s", g["too_many_requests"] == 0, g["too_many_requests"]),
        ("zero duplicates", g["texted_twice"] == 0, g["texted_twice"]),
        ("zero expired", g["expired"] == 0, g["expired"]),
        (
            f"queue depth <= one batch + lead ({depth_limit:,.0f})",
            g["max_queue_depth"] <= depth_limit,
            f"{g['max_queue_depth']:,}",
        ),
        ("every recipient final (none lost)", g["lost"] == 0, g["lost"]),
    ]
    print("\ntargets (global pacing run):")
    for label, ok, value in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}: {value}")
    return 0 if all(ok for _, ok, _ in checks) else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mps", type=float, default=200, help="SMS_MPS (default 200)")
    parser.add_argument("--recipients", type=int, default=20_000, help="default 20000")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument(
        "--expiry", type=float, default=30, help="sandbox message expiry, s (default 30)"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="hard limit, s (default 1200)")
    args = parser.parse_args()

    numbers = phone_numbers(args.recipients)
    results = {}
    with bench_run("pacing", args.timeout) as run:
        redis = run.redis()
        database_url = run.database(args.db)
        sandbox = run.sandbox(sms_mps=args.mps, message_expiry=args.expiry)
        for key, global_pacing in (("global", True), ("naive", False)):
            started = time.monotonic()
            print(f"run: {'global pacing' if global_pacing else 'rate_limit only'} ...", flush=True)
            results[key] = one_run(run, redis, database_url, sandbox, numbers, args, global_pacing)
            print(f"  done in {time.monotonic() - started:.0f}s", flush=True)
    return report(args, results)


if __name__ == "__main__":
    raise SystemExit(main())
