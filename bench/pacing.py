"""Pacing benchmark: does a fleet of workers send at the account's MPS, and not faster?

    .venv/bin/python bench/pacing.py [--mps 200] [--recipients 20000] [--workers 4]
                                     [--db postgresql|sqlite] [--expiry 30] [--only ...]

Starts Redis, PostgreSQL (or SQLite), the sandbox as its own process, N `celery worker -c 1
-Q sms,maintenance` processes and beat, then POSTs one broadcast of --recipients numbers
through the real API (BATCH_SIZE 1000). It does this twice on the same servers: with global
pacing (the Redis GCRA limiter), then with GLOBAL_PACING=false, where only Celery's
per-worker rate_limit (MPS x 60 / batch size per minute, per process) holds the workers back.
A third run ("two senders", global pacing) POSTs the same numbers as two broadcasts at once,
half each, from two different senders: SMS_MPS is the account's limit, so together they must
send at it, not at twice it (their combined rate is measured over both senders' requests).

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


SECOND_SENDER = "+14155550001"
RUNS = ("global", "naive", "two-senders")


def steady_rate(
    request_log: list[dict], senders: tuple[str, ...] = (SENDER_DIGITS,)
) -> tuple[float | None, float, int]:
    """(messages per second, first-to-last seconds, requests) over these senders' requests."""
    times = sorted((r["t"], r["count"]) for r in request_log if r["src"] in senders)
    if len(times) < 2:
        return None, 0.0, len(times)
    span = times[-1][0] - times[0][0]
    return sum(count for _, count in times[:-1]) / span, span, len(times)


def post_broadcast(api: Api, numbers: list[str], sender: str | None) -> str:
    body = {"recipients": numbers, "text": "Pacing benchmark"}
    if sender:
        body["sender"] = sender
    response = api.client.post("/v1/broadcasts", json=body)
    if response.status_code != 202:
        raise RuntimeError(f"POST /v1/broadcasts: {response.status_code} {response.text}")
    return response.get_json()["id"]


def one_run(
    run, redis, database_url, sandbox, numbers, args, global_pacing: bool, senders: int = 1
) -> dict:
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
    label = ("global" if global_pacing else "naive") + (str(senders) if senders > 1 else "")
    workers = [run.worker(settings, f"{label}{i}") for i in range(args.workers)]
    beat = run.beat(settings)
    wait_ready(workers)
    api = Api(settings)
    # Two senders: the same numbers split in two broadcasts, POSTed back to back.
    shares = [numbers] if senders == 1 else [numbers[::2], numbers[1::2]]
    sources = [None, SECOND_SENDER][: len(shares)]
    broadcast_ids = [
        post_broadcast(api, part, src) for part, src in zip(shares, sources, strict=True)
    ]
    budget = 2 * len(numbers) / args.mps + 60
    finished = None
    started = time.monotonic()
    for broadcast_id in broadcast_ids:
        left = budget - (time.monotonic() - started)
        done = wait_finished(database_url, broadcast_id, max(left, 0))
        finished = None if done is None else time.monotonic() - started
    time.sleep(1)  # let the last request's log line land
    stats = sandbox.stats()
    digits = (SENDER_DIGITS, SECOND_SENDER.removeprefix("+"))[:senders]
    rate, span, requests = steady_rate(sandbox.request_log(), digits)
    for child in [*workers, beat]:
        child.stop()
        run.forget(child)
    ends = [account(database_url, broadcast_id, stats) for broadcast_id in broadcast_ids]
    end = {key: sum(e[key] for e in ends) for key in ("lost", "recipients")}
    # These are counted over the whole sandbox already, not per broadcast.
    end.update({key: ends[0][key] for key in ("too_many_requests", "expired", "texted_twice")})
    end["max_queue_depth"] = max(stats["max_queue_depth"].get(d, 0) for d in digits)
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
    columns = [
        (name, title)
        for name, title in (
            ("global", "global pacing"),
            ("naive", "rate_limit only"),
            ("two-senders", "two senders"),
        )
        if name in results
    ]
    print(f"{'':<34}" + "".join(f" {title:>16}" for _, title in columns))
    for label, key, spec in rows:
        cells = "".join(f" {fmt(results[name].get(key), spec):>16}" for name, _ in columns)
        print(f"{label:<34}{cells}")
    print(
        f"\n(rate = messages of all requests but the last / first-to-last request time; the "
        f"sandbox's queue\n cannot hold more than MPS x expiry = {args.mps * args.expiry:,.0f}: "
        "messages that would wait longer expire on arrival)"
    )
    ok = True
    for name, title in (("global", "global pacing"), ("two-senders", "two senders, combined")):
        if name in results:
            ok &= targets(title, results[name], depth_limit)
    return 0 if ok else 1


def targets(title: str, g: dict, depth_limit: float) -> bool:
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
    print(f"\ntargets ({title} run):")
    for label, ok, value in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}: {value}")
    return all(ok for _, ok, _ in checks)


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
    parser.add_argument(
        "--only", default=",".join(RUNS), help=f"runs, comma-separated (default {','.join(RUNS)})"
    )
    args = parser.parse_args()
    chosen = [name for name in args.only.split(",") if name]
    if set(chosen) - set(RUNS) or "global" not in chosen:
        parser.error(f"--only takes {', '.join(RUNS)}, and always includes global")

    numbers = phone_numbers(args.recipients)
    results = {}
    with bench_run("pacing", args.timeout) as run:
        redis = run.redis()
        database_url = run.database(args.db)
        sandbox = run.sandbox(sms_mps=args.mps, message_expiry=args.expiry)
        plan = {"global": (True, 1), "naive": (False, 1), "two-senders": (True, 2)}
        for key in [name for name in RUNS if name in chosen]:
            global_pacing, senders = plan[key]
            started = time.monotonic()
            print(f"run: {key} ...", flush=True)
            results[key] = one_run(
                run, redis, database_url, sandbox, numbers, args, global_pacing, senders
            )
            print(f"  done in {time.monotonic() - started:.0f}s", flush=True)
    return report(args, results)


if __name__ == "__main__":
    raise SystemExit(main())
