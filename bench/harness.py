"""What bench/pacing.py, bench/dispatch.py and bench/drills.py share: throwaway servers, real
`celery` processes, the sandbox as its own process, a time bound, and the final accounting.

Everything listens on 127.0.0.1 and lives in one temporary directory. Every process started
here runs in its own session (so Ctrl-C reaches only the benchmark, which then stops them)
with a parent-death signal, and `bench_run()` stops them all on the way out: normal end,
exception, Ctrl-C, SIGTERM or the run's own deadline. BENCH_KEEP_LOGS=DIR keeps a copy of
every process's log (workers, beat, sandbox, Redis) in DIR.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from uuid import UUID

# `python bench/x.py` puts bench/ on sys.path, not the project root.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from shared.config import SANDBOX_SENDER, Settings  # noqa: E402
from shared.db import get_engine, session_scope  # noqa: E402
from shared.models import Batch, Broadcast, BroadcastStatus, Recipient  # noqa: E402
from tests import services  # noqa: E402
from tests.conftest import migrate, settings_env, wait_for  # noqa: E402

HOST = services.HOST
API_KEY = "bench-key"
SENDER_DIGITS = SANDBOX_SENDER.removeprefix("+")
# Recipient states a broadcast may end in (no status callbacks in these runs: `queued`,
# i.e. accepted by Plivo, is as far as a recipient gets). Anything else at the end is lost.
FINAL_RECIPIENT = {"queued", "sent", "delivered", "failed", "undelivered", "rejected", "skipped"}


class RunTimeout(Exception):
    """The run hit its own deadline; everything it started is stopped."""


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: if this benchmark is SIGKILLed, its direct children go too.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class Child:
    """One process (and its own children: a Celery pool) in its own session, logging to a file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.argv, self.log_path = argv, log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def pool_children(self) -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or the OOM killer would."""
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (a pool child that outlived its parent) goes now.
        self._signal_group(signal.SIGKILL)
        if self.alive():
            self.process.wait()
        self._log.close()


class RedisServer:
    """A redis-server with no persistence on a fixed port, so it can be stopped and started
    again under the same URL (a restart loses everything, as it would without AOF/RDB)."""

    def __init__(self, run: Run):
        self._run = run
        self.port = services.free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.child: Child | None = None
        self.start()

    def start(self) -> None:
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no",
            "--dir", str(self._run.tmp),
        ]  # fmt: skip
        self.child = self._run.spawn(argv, "redis.log")
        wait_until(lambda: _redis_answers(self.port), 20, f"redis on {self.port}")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self._run.forget(self.child)
            self.child = None

    def flush(self) -> None:
        redis.Redis.from_url(self.url).flushall()


def _redis_answers(port: int) -> bool:
    try:
        return redis.Redis(host=HOST, port=port, socket_timeout=1).ping()
    except redis.RedisError:
        return False


class Sandbox:
    """`python -m sandbox` in its own process, driven over HTTP only."""

    def __init__(self, run: Run, **config: object):
        self.port = services.free_port()
        self.url = f"http://{HOST}:{self.port}"
        argv = [sys.executable, "-m", "sandbox", "--host", HOST, "--port", str(self.port)]
        for name, value in config.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        self.child = run.spawn(argv, "sandbox.log")
        wait_until(self._healthy, 30, "the sandbox")

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=1).ok
        except requests.RequestException:
            return False

    def reset(self, **config: object) -> None:
        """Forget every message and counter; apply `config` (e.g. faults back to 0)."""
        requests.post(f"{self.url}/stats/reset", timeout=30).raise_for_status()
        if config:
            self.configure(**config)

    def configure(self, **changes: object) -> None:
        requests.post(f"{self.url}/sandbox/config", json=changes, timeout=10).raise_for_status()

    def stats(self) -> dict:
        return requests.get(f"{self.url}/stats", timeout=60).json()

    def request_log(self) -> list[dict]:
        return requests.get(f"{self.url}/stats/requests", timeout=60).json()


class Run:
    """One benchmark run: its temp dir and every process it started."""

    def __init__(self, tmp: Path, stack: ExitStack):
        self.tmp, self._stack = tmp, stack
        self._children: list[Child] = []
        self._serial = 0

    def spawn(self, argv: list[str], log_name: str, env: dict | None = None) -> Child:
        self._serial += 1
        stem, dot, ext = log_name.partition(".")
        child = Child(argv, self.tmp / f"{stem}-{self._serial}{dot}{ext}", env)
        self._children.append(child)
        return child

    def forget(self, child: Child) -> None:
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(self._children):
            child.stop(timeout=5)
        self._children.clear()

    def redis(self) -> RedisServer:
        return RedisServer(self)

    def database(self, kind: str) -> str:
        """A migrated, empty database: a SQLite file, or a throwaway PostgreSQL server."""
        if kind == "sqlite":
            server = nullcontext(f"sqlite:///{self.tmp / 'bench.db'}")
        else:
            server = services.postgres_server(self.tmp)
        url = self._stack.enter_context(server)
        self._stack.callback(lambda: get_engine(url).dispose())
        migrate(url)
        return url

    def sandbox(self, **config: object) -> Sandbox:
        return Sandbox(self, **config)

    def worker(
        self, settings: Settings, name: str, concurrency: int = 1, queues: str = "sms,maintenance"
    ) -> Child:
        argv = [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker",
            "-Q", queues, "-c", str(concurrency), "--loglevel", "INFO",
            "--without-mingle", "--without-gossip", "-n", f"{name}@%h",
        ]  # fmt: skip
        return self.spawn(argv, f"worker-{name}.log", settings_env(settings))

    def beat(self, settings: Settings) -> Child:
        schedule = self.tmp / f"beat-schedule-{self._serial}"
        argv = [sys.executable, "-m", "celery", "-A", "workers.app", "beat",
                "--loglevel", "INFO", "-s", str(schedule)]  # fmt: skip
        return self.spawn(argv, "beat.log", settings_env(settings))


def wait_ready(workers: list[Child], timeout: float = 90) -> None:
    """Until every worker has logged `worker.ready` (their startup is slow on 2 busy cores)."""
    for worker in workers:

        def ready(worker=worker) -> bool:
            if not worker.alive():
                raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
            return "worker.ready" in worker.log_text()

        wait_until(ready, timeout, f"worker {worker.log_path.name}")


def wait_until(predicate: Callable[[], object], timeout: float, what: str, every=0.1):
    return wait_for(predicate, timeout, every, f"{what}: not ready within {timeout:g}s")


def _on_signal(signum, _frame):
    if signum == signal.SIGALRM:
        raise RunTimeout("the run hit its deadline")
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def bench_run(prefix: str, timeout: float) -> Iterator[Run]:
    """A temp dir and a hard deadline; every child is stopped however the run ends."""
    # SIGINT too: a shell starts background jobs with it ignored, and Ctrl-C must still work.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
    previous = {sig: signal.signal(sig, _on_signal) for sig in signals}
    signal.alarm(int(timeout))
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{prefix}-")))
        run = Run(tmp, stack)
        stack.callback(run.stop_all)  # runs before the databases and the temp dir go
        try:
            yield run
        finally:
            signal.alarm(0)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            run.stop_all()
            if keep := os.environ.get("BENCH_KEEP_LOGS"):
                Path(keep).mkdir(parents=True, exist_ok=True)
                for log in tmp.glob("*.log"):
                    shutil.copy(log, keep)


def bench_settings(**values: object) -> Settings:
    """Settings from explicit values only (no `.env`), in sandbox mode."""
    return Settings(_env_file=None, api_keys=[API_KEY], **values)


class Api:
    """The real Flask app in this process (as bench/intake.py uses it) for POSTs."""

    def __init__(self, settings: Settings):
        from api import create_app

        quiet = settings.model_copy(update={"log_level": "WARNING"})
        self.client = create_app(quiet).test_client()
        self.client.environ_base["HTTP_X_API_KEY"] = API_KEY

    def broadcast(self, numbers: list[str], text: str) -> str:
        response = self.client.post("/v1/broadcasts", json={"recipients": numbers, "text": text})
        if response.status_code != 202:
            raise RuntimeError(f"POST /v1/broadcasts: {response.status_code} {response.text}")
        return response.get_json()["id"]


def phone_numbers(count: int, start: int = 0) -> list[str]:
    """Distinct canonical numbers +1415..., never the sandbox sender's own."""
    numbers, n = [], start
    while len(numbers) < count:
        number = f"+1415{n:07d}"
        if number != SANDBOX_SENDER:
            numbers.append(number)
        n += 1
    return numbers


def broadcast_status(database_url: str, broadcast_id: str) -> str:
    with session_scope(database_url) as session:
        return session.scalar(select(Broadcast.status).where(Broadcast.id == UUID(broadcast_id)))


def wait_finished(database_url: str, broadcast_id: str, timeout: float) -> float | None:
    """Seconds until the broadcast reached a final status, or None if it did not in time."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if broadcast_status(database_url, broadcast_id) in BroadcastStatus.FINAL:
            return time.monotonic() - start
        time.sleep(0.25)
    return None


def batch_counts(database_url: str, broadcast_id: str) -> Counter:
    with session_scope(database_url) as session:
        rows = session.execute(
            select(Batch.status, func.count())
            .where(Batch.broadcast_id == UUID(broadcast_id))
            .group_by(Batch.status)
        ).all()
    return Counter(dict(rows))


def account(database_url: str, broadcast_id: str, stats: dict) -> dict:
    """The end state of one broadcast, checked against what the sandbox saw."""
    with session_scope(database_url) as session:
        rows = session.execute(
            select(Recipient.phone, Recipient.status).where(
                Recipient.broadcast_id == UUID(broadcast_id)
            )
        ).all()
    sends = stats["sends"]
    by_status = Counter(status for _, status in rows)
    unknown = [phone for phone, status in rows if status == "unknown"]
    return {
        "recipients": len(rows),
        "by_status": dict(by_status),
        "lost": sum(1 for _, status in rows if status not in FINAL_RECIPIENT | {"unknown"}),
        "texted_twice": max(stats["duplicates"], sum(1 for c in sends.values() if c > 1)),
        "unknown": len(unknown),
        "unknown_texted": sum(1 for phone in unknown if sends.get(phone[1:], 0) > 0),
        # The database says Plivo took it, but the sandbox never saw it: a phantom send.
        "queued_not_texted": sum(
            1 for phone, status in rows if status == "queued" and sends.get(phone[1:], 0) == 0
        ),
        "max_queue_depth": stats["max_queue_depth"].get(SENDER_DIGITS, 0),
        "too_many_requests": stats["too_many_requests"],
        "expired": stats["expired"],
    }
