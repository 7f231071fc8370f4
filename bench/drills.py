"""Failure drills: break things in the middle of a paced broadcast and count the damage.

    .venv/bin/python bench/drills.py [--only kill,redis,errors,timeouts,dropped-reports]
                                     [--recipients 20000] [--mps 1000]
                                     [--db postgresql|sqlite] [--seed 1]

Each drill starts 2 `celery worker -c 1 -Q sms,maintenance` processes and beat against a
fresh Redis state and a reset sandbox (draining at the same MPS), POSTs one broadcast
(BATCH_SIZE 500, so 2 batches a second at 1000 MPS) and, while it is sending:
  kill      SIGKILLs a worker every 2-4 s (alternately the whole worker and only its pool
            process) and starts a new worker in place of a whole one that died;
  redis     stops Redis (no persistence: the queued tasks and pacing timelines are gone)
            and starts it again on the same port 3 s later;
  errors    makes the sandbox answer every request 5xx or 429 for 5 s, then heals it;
  timeouts  makes 30% of requests answer after 5 s, beyond PLIVO_TIMEOUT (3 s), for 8 s;
            the batches left `unknown` are resolved from Plivo's message list
            (UNKNOWN_RESOLVE_AFTER=2): found ones take their uuid, the rest are sent again;
  dropped-reports  serves the API (granian) as PUBLIC_BASE_URL and has the sandbox withhold
            30% of the final status callbacks and never finish 5% of the messages (`sent`
            for good); the status sweep (REPORT_TIMEOUT=10) looks them up with Message Get.
  redis-reports  serves the API as PUBLIC_BASE_URL too (completion waits on every report),
            SIGKILLs Redis (no persistence) after 5 s of sending and starts it again 3 s
            later; no status sweep (REPORT_TIMEOUT 2 h): every recipient must become final
            from the delivery reports the API acknowledged, however Redis fared.
  two-senders  POSTs a second broadcast of as many numbers from another sender at once: SMS_MPS
            is the account's limit, so together they must send at it (0.97-1.00), not at twice;
  cancel-frees  cancels the broadcast after 5 s and at once POSTs one message from the same
            sender: it must be sent within 3 s, not after the slots the cancelled one held;
  limit-change  sets SMS_MPS to 0.000001 (PUT /v1/limits) after 4 s, waits until nothing is
            sent any more, then clears it: the next batch must be sent within 3 s.
Every drill waits for `unknown` batches to be resolved (a 5xx or a kill mid-call leaves some
too). The Message list limit is raised to LIST_LIMIT a minute (Plivo allows 20): at 1000 MPS
an attempt's time window holds thousands of other messages, so each search costs one
`to_number` query per number; at real rates (5 MPS) a 500-number batch's window holds about
one batch, 25 pages.
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
import sys
import time
from collections import Counter
from pathlib import Path
from uuid import UUID

import requests
from harness import (
    HOST,
    Api,
    account,
    batch_counts,
    bench_run,
    bench_settings,
    broadcast_status,
    phone_numbers,
    services,
    settings_env,
    wait_finished,
    wait_ready,
    wait_until,
)
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Batch, BroadcastStatus, Recipient

BATCH_SIZE = 500
PACING_DRILLS = ("two-senders", "cancel-frees", "limit-change")
DRILLS = (
    "kill",
    "redis",
    "errors",
    "timeouts",
    "dropped-reports",
    "redis-reports",
    *PACING_DRILLS,
)
SECOND_SENDER = "+14155550001"
RATIO_RANGE = (0.97, 1.00)
FREED_WITHIN = 3.0  # seconds: cancel-frees and limit-change
LIST_LIMIT = 6000  # Message list requests a minute, sandbox and settings alike
# dropped-reports: the sweep may use a quarter of the request limit; this one lets it look
# up a 20,000-recipient broadcast's silent messages within the drill's time.
REPORTS_REQUEST_LIMIT = 3000


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
            unknown_resolve_after=2,
            list_request_limit=LIST_LIMIT,
            list_request_window=60,
        )
        self.queues = "sms,maintenance"
        self.workers: list = []
        self.children: list = []  # others started for this drill (the API)
        self.serial = 0
        self.broadcast_id = ""
        self.mid_call = 0  # events that can leave one batch `unknown`
        self.notes: list[str] = []
        self.pacing: list[tuple[str, bool]] = []  # the pacing drills' own checks

    def add_worker(self):
        self.serial += 1
        worker = self.run.worker(self.settings, f"drill{self.serial}", queues=self.queues)
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

    def dropped_reports(self) -> None:
        self.notes.append(
            "30% of final callbacks withheld, 5% of messages `sent` for good; REPORT_TIMEOUT 10 s"
        )

    def serve_reports(self) -> dict:
        """PUBLIC_BASE_URL: the API in its own process, receiving the sandbox's callbacks; the
        workers apply them and run the sweep. Returns the sandbox's faults for the drill."""
        port = services.free_port()
        self.settings = self.settings.model_copy(
            update={
                "public_base_url": f"http://{HOST}:{port}",
                "report_timeout": 10,
                "request_limit": REPORTS_REQUEST_LIMIT,
            }
        )
        granian = str(Path(sys.executable).parent / "granian")
        api = self.run.spawn(
            [granian, "--interface", "wsgi", "--workers", "1", "--blocking-threads", "4",
             "--host", HOST, "--port", str(port), "--log-level", "warning", "api.wsgi:app"],
            "api.log",
            settings_env(self.settings),
        )  # fmt: skip
        wait_until(lambda: _answers(port), 60, "the API")
        self.children.append(api)
        self.queues = "sms,webhooks,maintenance"
        return {
            "share_no_final_report": 0.3,
            "share_stays_sent": 0.05,
            "delivery_delay": 0.5,
            "request_limit": REPORTS_REQUEST_LIMIT,
        }

    def redis_reports(self) -> None:
        self.pause(5)
        killed = self.redis.child
        killed.kill()  # SIGKILL: whatever only Redis held is gone
        self.run.forget(killed)
        self.redis.child = None
        time.sleep(3)
        self.redis.start()
        # Celery/kombu 5.7 can die on a lost broker connection while a task is unacked; a
        # process manager (compose's restart policy) starts it again, and so does the drill.
        restarted = 0
        end = time.monotonic() + 5
        while time.monotonic() < end:
            for dead in [w for w in self.workers if not w.alive()]:
                self.run.forget(dead)
                self.workers.remove(dead)
                self.add_worker()
                restarted += 1
            time.sleep(0.5)
        self.notes.append(
            "Redis SIGKILLed after 5 s of sending, reports flowing; back, empty, 3 s later"
            + (f"; {restarted} workers died with it and were restarted" if restarted else "")
        )

    def serve_reports_without_sweep(self) -> dict:
        """serve_reports, minus its faults and its status sweep: every recipient must become
        final from the reports themselves."""
        faults = self.serve_reports()
        self.settings = self.settings.model_copy(update={"report_timeout": 7200})
        return {key: faults[key] for key in ("delivery_delay", "request_limit")}

    # --- pacing: the account's limit, a stopped broadcast, a corrected limit ----------------

    def api(self):
        """The API in this process (as Api posts), for the operator's calls."""
        return Api(self.settings).client

    def two_senders(self) -> None:
        count = self.args.recipients
        numbers = phone_numbers(count, start=count)  # not one shared with the first broadcast
        response = self.api().post(
            "/v1/broadcasts",
            json={"recipients": numbers, "text": "Drill: second sender", "sender": SECOND_SENDER},
        )
        second = response.get_json()["id"]
        done = wait_finished(self.database_url, second, self.args.drill_timeout)
        wait_finished(self.database_url, self.broadcast_id, self.args.drill_timeout)
        self.pacing.append(("the second sender's broadcast finished too", done is not None))
        time.sleep(1)  # the last request's log line
        log = sorted((r["t"], r["count"]) for r in self.sandbox.request_log())
        # As bench/pacing.py: every request's messages but the last's, over first to last.
        rate = sum(count for _, count in log[:-1]) / (log[-1][0] - log[0][0])
        ratio = rate / self.args.mps
        low, high = RATIO_RANGE
        self.pacing.append(
            (
                f"two senders together at {ratio:.4f} of SMS_MPS ({rate:,.1f} msg/s, "
                f"{len(log)} requests), within {low:.2f}-{high:.2f}",
                low <= round(ratio, 2) <= high,
            )
        )
        self.notes.append(f"a second broadcast of {count:,} from {SECOND_SENDER} at once")

    def cancel_frees(self) -> None:
        self.pause(5)
        api = self.api()
        api.post(f"/v1/broadcasts/{self.broadcast_id}/cancel")
        cancelled = time.time()
        number = phone_numbers(1, start=2 * self.args.recipients)
        follow = api.post(
            "/v1/broadcasts", json={"recipients": number, "text": "Drill: right after"}
        ).get_json()["id"]
        wait_finished(self.database_url, follow, 60)
        # The follow-up is the only one-message request.
        log = self.sandbox.request_log()
        sent = [r["t"] for r in log if r["count"] == 1 and r["t"] > cancelled]
        took = sent[0] - cancelled if sent else None
        shown = "never" if took is None else f"{took:.2f} s"
        self.pacing.append(
            (
                f"the next broadcast on the sender sent {shown} after the cancel "
                f"(<= {FREED_WITHIN:g} s)",
                took is not None and took <= FREED_WITHIN,
            )
        )
        self.notes.append("cancelled after 5 s; one message POSTed right after, same sender")

    def limit_change(self) -> None:
        self.pause(4)
        api = self.api()
        api.put("/v1/limits", json={"sms_mps": 0.000001})
        # What was booked within the horizon still goes; then nothing, for 2 s running.
        time.sleep(self.settings.pacing_horizon + 1)
        stalled = len(self.sandbox.request_log())
        time.sleep(2)
        still = len(self.sandbox.request_log()) == stalled
        cleared = time.time()
        api.put("/v1/limits", json={"sms_mps": None})
        sent = []
        end = time.monotonic() + 30
        while not sent and time.monotonic() < end:
            sent = [r["t"] for r in self.sandbox.request_log() if r["t"] > cleared]
            time.sleep(0.05)
        took = min(sent) - cleared if sent else None
        shown = "never" if took is None else f"{took:.2f} s"
        self.pacing.append(("nothing sent at 0.000001 msg/s once the horizon passed", still))
        self.pacing.append(
            (
                f"the next batch sent {shown} after the limit was cleared (<= {FREED_WITHIN:g} s)",
                took is not None and took <= FREED_WITHIN,
            )
        )
        self.notes.append("SMS_MPS 0.000001 after 4 s, cleared 8 s later")

    # --- one drill ---------------------------------------------------------------------------

    def __call__(self, name: str) -> dict:
        self.redis.flush()
        serve = {
            "dropped-reports": self.serve_reports,
            "redis-reports": self.serve_reports_without_sweep,
        }.get(name)
        faults = serve() if serve else {}
        baseline = {
            "fail_5xx": 0,
            "fail_429": 0,
            "slow": 0,
            "fault_seed": self.args.seed,
            "share_no_final_report": 0,
            "share_stays_sent": 0,
            "request_limit": 300,
            "list_request_limit": LIST_LIMIT,
        }
        self.sandbox.reset(**(baseline | faults))
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
            "dropped-reports": self.dropped_reports,
            "redis-reports": self.redis_reports,
            "two-senders": self.two_senders,
            "cancel-frees": self.cancel_frees,
            "limit-change": self.limit_change,
        }[name]
        disrupt()
        remaining = self.args.drill_timeout - (time.monotonic() - start)
        finished = wait_finished(self.database_url, self.broadcast_id, max(remaining, 0))
        took = None if finished is None else time.monotonic() - start
        time.sleep(1)  # anything still in flight lands before counting
        stats = self.sandbox.stats()
        for child in [*self.workers, beat, *self.children]:
            child.stop()
            self.run.forget(child)
        end = account(self.database_url, self.broadcast_id, stats)
        batches = batch_counts(self.database_url, self.broadcast_id)
        looked_up = looked_up_at_plivo(self.database_url, self.broadcast_id)
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
            "reports_on": name in ("dropped-reports", "redis-reports"),
            **looked_up,
            "lookups": stats.get("lookups", {}),
            "withheld": stats.get("callbacks", {}).get("withheld", 0),
            "pacing": self.pacing,
        }


def verdict(result: dict) -> list[tuple[str, bool]]:
    checks = [
        ("finished in time", result["took"] is not None),
        ("0 lost", result["lost"] == 0),
        ("0 texted twice", result["texted_twice"] == 0),
        ("0 queued but never texted", result["queued_not_texted"] == 0),
        (
            f"0 unknown left after resolution ({result['resolved']} batches resolved from "
            f"Plivo's list, {result['mid_call']} calls cut short)",
            result["unknown"] == 0,
        ),
    ]
    checks.extend(result.get("pacing", []))
    if result["reports_on"]:
        checks.append(
            (
                f"0 waiting for a report ({result['withheld']} callbacks withheld, "
                f"{result['checked']} looked up with Message Get, {result['sent_no_report']} "
                "`sent` for good)",
                result["waiting"] == 0,
            )
        )
    return checks


def looked_up_at_plivo(database_url: str, broadcast_id: str) -> dict:
    """What the status sweep and the resolution of `unknown` batches did."""
    broadcast = UUID(broadcast_id)
    waiting = (Recipient.status.in_(("queued", "sent")), Recipient.report_checked_at.is_(None))
    checked = Recipient.report_checked_at.is_not(None)
    with session_scope(database_url) as session:

        def count(model, *where) -> int:
            query = select(func.count()).select_from(model)
            return session.scalar(query.where(model.broadcast_id == broadcast, *where))

        return {
            "waiting": count(Recipient, *waiting),
            "checked": count(Recipient, checked),
            "sent_no_report": count(Recipient, checked, Recipient.status == "sent"),
            "resolved": count(Batch, Batch.resolved_at.is_not(None)),
        }


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://{HOST}:{port}/healthz", timeout=1).ok
    except requests.RequestException:
        return False


def report(args, results: list[dict]) -> int:
    print(
        f"\n{args.recipients:,} recipients per drill, SMS_MPS {args.mps:g}, "
        f"BATCH_SIZE {BATCH_SIZE}, 2 workers (-c 1) + beat, {args.db}; ideal duration "
        f"{args.recipients / args.mps:.0f}s\n"
    )
    print(
        f"{'drill':<16} {'lost':>5} {'twice':>6} {'unknown':>8} {'(texted)':>9} "
        f"{'failed':>7} {'took':>7} {'max queue':>10}"
    )
    for r in results:
        took = f"{r['took']:.1f}s" if r["took"] is not None else "TIMEOUT"
        print(
            f"{r['name']:<16} {r['lost']:>5} {r['texted_twice']:>6} {r['unknown']:>8} "
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
        sandbox = run.sandbox(sms_mps=args.mps, message_expiry=60, list_request_limit=LIST_LIMIT)
        for name in names:
            print(f"drill: {name} ...", flush=True)
            result = Drill(run, redis, database_url, sandbox, args)(name)
            took = "did not finish" if result["took"] is None else f"{result['took']:.0f}s"
            print(f"  {took}", flush=True)
            results.append(result)
    return report(args, results)


if __name__ == "__main__":
    raise SystemExit(main())
