"""Dispatch benchmark: how fast do 2 worker processes push a 200,000-recipient broadcast
into an unlimited Plivo account?

    .venv/bin/python bench/dispatch.py [--recipients 200000] [--runs 3] [--layouts 2x1,1x2]
                                       [--db postgresql|sqlite] [--profile]

SMS_MPS=0 (unlimited: the pacer books no time), the sandbox unlimited too (no MPS, no request
limit), BATCH_SIZE 1000, MAX_RECIPIENTS raised to fit ONE broadcast of --recipients numbers.
Layouts: `2x1` is two `celery worker -c 1` processes, `1x2` one `celery worker -c 2` (two pool
processes either way), both with beat running as deployed. The clock starts just before the
POST /v1/broadcasts (the real Flask app in this process, as bench/intake.py does it) and
stops when the database shows every batch `submitted` (polled every 50 ms; a batch and its
recipients' `queued` are written in one transaction, and the count of `queued` recipients is
checked afterwards). Layouts are interleaved run by run, so machine noise hits both alike.

--profile runs py-spy (pip install py-spy) on every pool process for one extra run and
prints where the time goes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from harness import Api, account, batch_counts, bench_run, bench_settings, phone_numbers, wait_ready

TARGET = 15_000  # messages per second


def start_workers(run, settings, layout: str) -> list:
    processes, concurrency = (int(part) for part in layout.split("x"))
    workers = [
        run.worker(settings, f"w{layout}-{i}", concurrency=concurrency) for i in range(processes)
    ]
    wait_ready(workers)
    return workers


def one_run(run, redis, database_url, sandbox, numbers, layout, profile: Path | None) -> dict:
    redis.flush()
    sandbox.reset()
    settings = bench_settings(
        database_url=database_url,
        redis_url=redis.url,
        sandbox_url=sandbox.url,
        sms_mps=0,
        batch_size=1000,
        max_recipients=len(numbers),
        log_level="WARNING",
    )
    workers = start_workers(run, settings, layout)
    beat = run.beat(settings)
    api = Api(settings)
    spies = []
    if profile is not None:
        pids = [pid for worker in workers for pid in worker.pool_children()]
        spies = [
            subprocess.Popen(
                [profile_tool(), "record", "--pid", str(pid), "--format", "raw", "--function"]
                + ["--rate", "200", "--nonblocking"]
                + ["--output", str(profile.with_suffix(f".{pid}.txt"))],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            for pid in pids
        ]
        time.sleep(2)  # py-spy attaches
    expected = -(-len(numbers) // 1000)
    wall_start = time.time()
    start = time.perf_counter()
    broadcast_id = api.broadcast(numbers, "Dispatch benchmark")
    accepted = time.perf_counter() - start
    deadline = start + 300
    while batch_counts(database_url, broadcast_id)["submitted"] < expected:
        if time.perf_counter() > deadline:
            counts = batch_counts(database_url, broadcast_id)
            raise RuntimeError(f"not all batches submitted: {counts}")
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    for spy in spies:
        spy.send_signal(2)  # SIGINT: py-spy writes its profile and exits
    for spy in spies:
        spy.wait(timeout=60)
    stats = sandbox.stats()
    times = sorted(r["t"] for r in sandbox.request_log())
    for child in [*workers, beat]:
        child.stop()
        run.forget(child)
    end = account(database_url, broadcast_id, stats)
    return {
        "layout": layout,
        "elapsed": elapsed,
        "accepted": accepted,
        "first_send": times[0] - wall_start,
        "send_phase": times[-1] - times[0],
        "rate": len(numbers) / elapsed,
        "queued": end["by_status"].get("queued", 0),
        "texted_twice": end["texted_twice"],
        "sandbox_messages": stats["messages"],
    }


def profile_tool() -> str:
    tool = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(tool).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return tool


def summarize_profile(files: list[Path], top: int = 25) -> None:
    """Collapsed stacks from every pool process (py-spy counts only threads that are not
    idle): time inside the project's own functions (inclusive), and self time per function."""
    own, inclusive, total = Counter(), Counter(), 0
    for path in files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            samples = int(count)
            total += samples
            own[frames[-1]] += samples
            for frame in set(frames):
                if "/work/main/" in frame or any(
                    part in frame for part in ("(workers/", "(shared/")
                ):
                    inclusive[frame] += samples
    if not total:
        print("no samples")
        return
    print(f"\npy-spy, {len(files)} pool processes, {total} non-idle samples at 200 Hz")
    print("\ninclusive time in the project's functions:")
    for frame, samples in inclusive.most_common(top):
        print(f"  {samples / total:6.1%}  {frame}")
    print("\nself time (where the CPU actually is):")
    for frame, samples in own.most_common(top):
        print(f"  {samples / total:6.1%}  {frame}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=200_000, help="default 200000")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per layout (default 3)")
    parser.add_argument(
        "--layouts", default="2x1,1x2", help="PROCESSESxCONCURRENCY, comma-separated"
    )
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--profile", action="store_true", help="one extra run under py-spy")
    parser.add_argument("--timeout", type=float, default=1500, help="hard limit, s (default 1500)")
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    if args.profile:
        profile_tool()

    numbers = phone_numbers(args.recipients)
    results: list[dict] = []
    with bench_run("dispatch", args.timeout) as run:
        redis = run.redis()
        database_url = run.database(args.db)
        sandbox = run.sandbox(sms_mps=0, request_limit=0)
        for index in range(args.runs):
            for layout in layouts:
                result = one_run(run, redis, database_url, sandbox, numbers, layout, None)
                results.append(result)
                print(
                    f"  run {index + 1} {layout}: {result['elapsed']:.2f}s "
                    f"({result['rate']:,.0f} msg/s; 202 after {result['accepted']:.2f}s)",
                    flush=True,
                )
        if args.profile:
            prefix = run.tmp / "profile"
            one_run(run, redis, database_url, sandbox, numbers, layouts[0], prefix)
            summarize_profile(sorted(run.tmp.glob("profile.*.txt")))

    print(
        f"\n{args.recipients:,} recipients in one broadcast, SMS_MPS=0, BATCH_SIZE 1000, "
        f"{args.db}, {args.runs} runs per layout (medians)\n"
    )
    header = f"{'layout':<22} {'POST to all queued':>19} {'msg/s':>8} {'202 after':>10}"
    print(f"{header} {'1st send':>9} {'sends span':>11} {'checks':>8}")
    best = 0.0
    for layout in layouts:
        mine = [r for r in results if r["layout"] == layout]
        processes, concurrency = layout.split("x")
        name = f"{processes} x celery -c {concurrency}"

        def median(key, mine=mine):
            return statistics.median(r[key] for r in mine)

        ok = all(
            r["queued"] == args.recipients == r["sandbox_messages"] and not r["texted_twice"]
            for r in mine
        )
        rate = args.recipients / median("elapsed")
        best = max(best, rate)
        print(
            f"{name:<22} {median('elapsed'):>18.2f}s {rate:>8,.0f} {median('accepted'):>9.2f}s "
            f"{median('first_send'):>8.2f}s {median('send_phase'):>10.2f}s "
            f"{'ok' if ok else 'BAD':>8}"
        )
    print("\n(checks: every recipient `queued`, the sandbox got each number once)")
    verdict = "PASS" if best >= TARGET else "FAIL"
    if (args.recipients, args.db) != (200_000, "postgresql"):
        verdict += " (but the target is for 200,000 recipients on postgresql)"
    print(f"\ntarget: at least {TARGET:,} messages/s from POST to all queued")
    print(f"  {verdict}: best layout {best:,.0f} msg/s (median)")
    return 0 if best >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
