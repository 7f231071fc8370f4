"""Failure drills: break things in the middle of a paced broadcast and count the damage.

    .venv/bin/python bench/drills.py [--only kill,redis,errors,timeouts] [--recipients 20000]
                                     [--mps 1000] [--db postgresql|sqlite] [--seed 1]

Each drill starts 2 `celery worker -c 1 -Q sms,maintenance` processes and beat against a
fresh Redis state and a reset sandbox (draining at the same MPS), POSTs one broadcast
(BATCH_SIZE 500, so 2 batches a second at 1000 MPS) and, while it is sending:
  kill      SIGKILLs a worker every 2-4 s (alternately the whole worker and only its pool
            process) and starts a new worker in place of a whole one that died;
  redis     stops Redis (no persistence: the queued tasks and pacing timelines are gone)
            and starts it again on the same port 3 s later;
  errors    makes the sandbox answer every request 5xx or 429 for 5 s, then heals it;
  timeouts  makes 30% of requests answer after 5 s, beyond PLIVO_TIMEOUT (3 s), for 8 s.
Short leases and a fast reconciler so recovery fits in the run: LEASE_SECONDS=10,
PLIVO_TIMEOUT=3, REQUEUE_AFTER=5, RECONCILE_INTERVAL=1. Each drill waits for the broadcast
to reach a final status (bounded by --drill-timeout), then prints, from the database and the
sandbox's /stats: recipients lost (neither final nor `unknown`), numbers texted twice,
`unknown` recipients (and how many of them the sandbox did text), recipients `queued` that
never reached the sandbox, and how long the broadcast took against its ideal N / MPS.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time
from collections import Counter

from harness import (
    Api,
    account,
    batch_counts,
    bench_run,
    bench_settings,
    broadcast_status,
    phone_numbers,
    wait_finished,
    wait_ready,
)

from shared.models import BroadcastStatus

BATCH_SIZE = 500
DRILLS = ("kill", "redis", "errors", "timeouts")


class Drill:
    """One broadcast under one kind of trouble, on the run's shared servers."""

    def __init__(self, run, redis, database_url, sandbox, args):
        self.run, self.redis, self.sandbox, self.args = run, redis, sandbox, args
        self.database_url = database_url
        self.rng = random.Random(args.seed)
        self.settings = bench_settings(
            database_url=database_url,
            redis_url=redis.url,
            sandbox_url=sandbox.url,
            sms_mps=args.mps,
            batch_size=BATCH_SIZE,
            lease_seconds=10,
            plivo_timeout=3,
            requeue_after=5,
            reconcile_interval=1,
        )
        self.workers: list = []
        self.serial = 0
        self.broadcast_id = ""
        self.mid_call = 0  # events that can leave one batch `unknown`
        self.notes: list[str] = []

    def add_worker(self):
        self.serial += 1
        worker = self.run.worker(self.settings, f"drill{self.serial}")
        self.workers.append(worker)
        return worker

    def sending(self) -> bool:
        return broadcast_status(self.database_url, self.broadcast_id) not in BroadcastStatus.FINAL

    def pause(self, seconds: float) -> None:
        """Sleep, but no longer than the broadcast keeps sending."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.sending():
            time.sleep(0.1)

    # --- the disruptions -------------------------------------------------------------------

    def kill(self) -> None:
        kills = Counter()
        while kills.total() < self.args.kills:
            self.pause(self.rng.uniform(2, 4))
            if not self.sending():
                break
            victim = self.rng.choice([w for w in self.workers if w.alive()])
            pool = victim.pool_children()
            if kills.total() % 2 and pool:
                # The pool process only: the worker sees WorkerLostError, rejects the task
                # back to the queue (reject_on_worker_lost) and forks a new pool process.
                os.kill(pool[0], signal.SIGKILL)
                kills["pool processes"] += 1
            else:
                victim.kill()  # the whole worker, with its task and the ETA tasks it holds
                self.run.forget(victim)
                self.workers.remove(victim)
                self.add_worker()
                kills["whole workers"] += 1
        self.mid_call = kills.total()
        detail = ", ".join(f"{count} {what}" for what, count in kills.items())
        self.notes.append(f"{kills.total()} SIGKILLs ({detail})")

    def redis_restart(self) -> None:
        self.pause(5)
        self.redis.stop()
        time.sleep(3)
        self.redis.start()
        self.notes.append("Redis down for 3 s after 5 s of sending; restarted empty")

    def errors(self) -> None:
        self.pause(4)
        self.sandbox.configure(fail_5xx=0.5, fail_429=0.5)
        time.sleep(5)
        self.sandbox.configure(fail_5xx=0, fail_429=0)
        self.notes.append("every request 5xx (half) or 429 (half) for 5 s")

    def timeouts(self) -> None:
        self.pause(4)
        self.sandbox.configure(slow=0.3, slow_seconds=5)
        time.sleep(8)
        self.sandbox.configure(slow=0)
        self.notes.append("30% of requests answered after 5 s (> PLIVO_TIMEOUT 3 s) for 8 s")

    # --- one drill ---------------------------------------------------------------------------

    def __call__(self, name: str) -> dict:
        self.redis.flush()
        self.sandbox.reset(fail_5xx=0, fail_429=0, slow=0, fault_seed=self.args.seed)
        for _ in range(2):
            self.add_worker()
        beat = self.run.beat(self.settings)
        wait_ready(self.workers)
        numbers = phone_numbers(self.args.recipients)
        start = time.monotonic()
        self.broadcast_id = Api(self.settings).broadcast(numbers, f"Drill: {name}")
        disrupt = {
            "kill": self.kill,
            "redis": self.redis_restart,
            "errors": self.errors,
            "timeouts": self.timeouts,
        }[name]
        disrupt()
        remaining = self.args.drill_timeout - (time.monotonic() - start)
        finished = wait_finished(self.database_url, self.broadcast_id, max(remaining, 0))
        took = None if finished is None else time.monotonic() - start
        time.sleep(1)  # anything still in flight lands before counting
        stats = self.sandbox.stats()
        for child in [*self.workers, beat]:
            child.stop()
            self.run.forget(child)
        end = account(self.database_url, self.broadcast_id, stats)
        batches = batch_counts(self.database_url, self.broadcast_id)
        if name == "timeouts":
            self.mid_call = stats["faults"]["slow"]
        return {
            **end,
            "name": name,
            "took": took,
            "ideal": len(numbers) / self.args.mps,
            "batches": dict(batches),
            "faults": {k: v for k, v in stats["faults"].items() if v},
            "mid_call": self.mid_call,
            "notes": self.notes,
        }


def verdict(result: dict) -> list[tuple[str, bool]]:
    unknown_batches = result["batches"].get("unknown", 0)
    return [
        ("finished in time", result["took"] is not None),
        ("0 lost", result["lost"] == 0),
        ("0 texted twice", result["texted_twice"] == 0),
        ("0 queued but never texted", result["queued_not_texted"] == 0),
        (
            f"unknown only from calls cut short ({unknown_batches} batches <= "
            f"{result['mid_call']} such events)",
            unknown_batches <= result["mid_call"],
        ),
    ]


def report(args, results: list[dict]) -> int:
    print(
        f"\n{args.recipients:,} recipients per drill, SMS_MPS {args.mps:g}, "
        f"BATCH_SIZE {BATCH_SIZE}, 2 workers (-c 1) + beat, {args.db}; ideal duration "
        f"{args.recipients / args.mps:.0f}s\n"
    )
    print(
        f"{'drill':<10} {'lost':>5} {'twice':>6} {'unknown':>8} {'(texted)':>9} "
        f"{'failed':>7} {'took':>7} {'max queue':>10}"
    )
    for r in results:
        took = f"{r['took']:.1f}s" if r["took"] is not None else "TIMEOUT"
        print(
            f"{r['name']:<10} {r['lost']:>5} {r['texted_twice']:>6} {r['unknown']:>8} "
            f"{r['unknown_texted']:>9} {r['by_status'].get('failed', 0):>7} {took:>7} "
            f"{r['max_queue_depth']:>10,}"
        )
    ok = True
    for r in results:
        print(f"\n{r['name']}: {'; '.join(r['notes'])}")
        print(f"  recipients by status: {r['by_status']}")
        print(f"  batches by status:    {r['batches']}")
        if r["faults"]:
            print(f"  sandbox faults served: {r['faults']}")
        for label, passed in verdict(r):
            ok &= passed
            print(f"  {'PASS' if passed else 'FAIL'}  {label}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(DRILLS), help="drills to run, comma-separated")
    parser.add_argument("--recipients", type=int, default=20_000, help="per drill (default 20000)")
    parser.add_argument("--mps", type=float, default=1000, help="SMS_MPS (default 1000)")
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs in the kill drill")
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--seed", type=int, default=1, help="kill timing and sandbox faults")
    parser.add_argument("--drill-timeout", type=float, default=240, help="per drill, s")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name]
    unknown = set(names) - set(DRILLS)
    if unknown:
        parser.error(f"unknown drills: {', '.join(sorted(unknown))}")

    results = []
    with bench_run("drills", args.drill_timeout * len(names) + 300) as run:
        redis = run.redis()
        database_url = run.database(args.db)
        sandbox = run.sandbox(sms_mps=args.mps, message_expiry=60)
        for name in names:
            print(f"drill: {name} ...", flush=True)
            result = Drill(run, redis, database_url, sandbox, args)(name)
            took = "did not finish" if result["took"] is None else f"{result['took']:.0f}s"
            print(f"  {took}", flush=True)
            results.append(result)
    return report(args, results)


if __name__ == "__main__":
    raise SystemExit(main())
