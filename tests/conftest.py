"""Fixtures: real Redis, real PostgreSQL and SQLite (migrated with Alembic), the sandbox over
HTTP, and real Celery worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import requests
from alembic import command
from alembic.config import Config
from pydantic import SecretStr
from sqlalchemy import delete

from sandbox.server import serve_in_thread
from shared.config import Settings
from shared.db import session_scope
from shared.models import (
    ApiKey,
    AuditEvent,
    Batch,
    Broadcast,
    ConsoleSession,
    Contact,
    ContactList,
    ContactSender,
    InboundMessage,
    OptOut,
    Recipient,
    Template,
)
from tests import services

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key"


def migrate(database_url: str, revision: str = "head") -> None:
    """Alembic upgrade, exactly as `make run` and deployments do it."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, revision)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    with services.redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> Iterator[str]:
    with services.postgres_server(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory) -> str:
    """Each test that uses the database runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'bulksms.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    migrate(url)
    return url


@pytest.fixture()
def db(database_url) -> str:
    """A migrated, empty database for this test."""
    with session_scope(database_url) as session:
        for model in (
            Recipient, Batch, Broadcast, OptOut, ApiKey, AuditEvent, InboundMessage,
            Contact, ContactList, Template, ContactSender, ConsoleSession,
        ):  # fmt: skip
            session.execute(delete(model))
    return database_url


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[str]:
    base_url, shutdown = serve_in_thread()
    yield base_url
    shutdown()


@pytest.fixture()
def sandbox(sandbox_server) -> str:
    """The sandbox's base URL, with its counters and run-time config reset: the server is
    shared by the whole session, and one test's faults must not reach the next."""
    requests.post(f"{sandbox_server}/stats/reset", timeout=5).raise_for_status()
    requests.delete(f"{sandbox_server}/sandbox/config", timeout=5).raise_for_status()
    return sandbox_server


def sandbox_stats(base_url: str) -> dict:
    return requests.get(f"{base_url}/stats", timeout=5).json()


# One test key hammers the API far faster than any client should: tests that are not about
# request limits must never meet them (tests/test_rate_limits.py tests the real defaults).
UNTHROTTLED = {"api_rate_limit": "1000000/second", "auth_failure_limit": "1000000/minute"}


def make_settings(**values) -> Settings:
    """Settings from explicit values only (no `.env`, so a developer's file cannot leak in)."""
    return Settings(_env_file=None, **{**UNTHROTTLED, **values})


@pytest.fixture()
def settings(db, redis_url, sandbox) -> Settings:
    # Tasks left in the broker by an earlier test must not reach this test's worker.
    redis.Redis.from_url(redis_url).flushdb()
    return make_settings(
        database_url=db,
        redis_url=redis_url,
        sandbox_url=sandbox,
        api_keys=[API_KEY],
        sms_mps=100_000,
    )


@pytest.fixture()
def app(settings):
    from api import create_app

    return create_app(settings)


@pytest.fixture()
def client(app):
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = API_KEY
    return client


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process see exactly `settings`."""
    names = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key not in names}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, dict) and any(isinstance(v, list) for v in value.values()):
            value = json.dumps(value)  # SENDER_POOLS: {"name": [senders]}
        elif isinstance(value, dict):
            value = ",".join(f"{key}={mps}" for key, mps in value.items())
        env[name.upper()] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    return env


class CeleryProcess:
    """A real `celery` process (worker or beat) in its own process group, logging to a file."""

    def __init__(self, settings: Settings, log_path: Path, argv: list[str]):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", *argv],
            cwd=ROOT,
            # Multiprocess metrics as `make run` has them: a directory new with the test's
            # tmp_path (a test may share one among its processes, as the API and workers do).
            env={"PROMETHEUS_MULTIPROC_DIR": str(log_path.parent / "prometheus")}
            | settings_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own process group, so a test can SIGKILL it and all its children at once.
            start_new_session=True,
        )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or the OOM killer would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


class Worker(CeleryProcess):
    """A `celery worker`, as `make run` starts it."""

    def __init__(self, settings, log_path, concurrency=2, queues="sms", name="test"):
        super().__init__(
            settings,
            log_path,
            [
                "worker",
                "-Q",
                queues,
                "-c",
                str(concurrency),
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"{name}-{os.getpid()}@%h",
            ],
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "worker.ready" in self.log_path.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"worker did not start:\n{self.log_tail()}")


class Beat(CeleryProcess):
    """`celery beat`, which runs the reconciler on its schedule."""

    def __init__(self, settings, tmp_path: Path):
        schedule = str(tmp_path / "beat-schedule")
        super().__init__(
            settings, tmp_path / "beat.log", ["beat", "--loglevel", "INFO", "-s", schedule]
        )


@pytest.fixture()
def worker(settings, tmp_path) -> Iterator[Worker]:
    started = Worker(settings, tmp_path / "worker.log")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, message: str = ""):
    """Poll until `predicate()` is truthy; return its value or fail with `message`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(message or f"condition not met within {timeout}s")


@pytest.fixture()
def live_api(settings) -> Iterator[str]:
    """The API served over real HTTP on a free port (threaded werkzeug), for clients that
    must reach it from outside the process: the sandbox's callbacks, the CLI."""
    from werkzeug.serving import make_server

    from api import create_app

    port = services.free_port()
    server = make_server("127.0.0.1", port, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@contextmanager
def granian_serving(
    settings: Settings, log_path: Path, argv: list[str], port: int, env: dict | None = None
) -> Iterator[str]:
    """The API under granian (`argv`), as deployed; yields its base URL once /healthz
    answers, and stops the whole process group afterwards."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**settings_env(settings), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return requests.get(f"{base}/healthz", timeout=1).ok
            except requests.RequestException:
                return False

        try:
            wait_for(healthy, timeout=60, message=f"granian did not start: {log_path}")
            yield base
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
