"""Delivery reports are durable: a status callback is answered 200 only once it is committed
to the database, so it survives Redis (which may run without persistence) being killed; a
report that beats its uuid waits, then becomes a visible orphan; replays are refused.

Real Redis (our own redis-server, SIGKILLed), real PostgreSQL, the API under granian as it
is deployed, real Celery worker and beat."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import requests
from sqlalchemy import create_engine, delete, func, select, text, update
from sqlalchemy.engine import make_url

from api.report_store import STORED, ReportStore
from shared.db import get_engine, session_scope
from shared.logs import json_formatter
from shared.models import Batch, Broadcast, DeliveryReport, OptOut, Recipient
from shared.opt_outs import remove_opt_out
from tests.conftest import API_KEY, Beat, Worker, granian_serving, migrate, wait_for
from tests.services import HOST, free_port
from tests.test_webhooks import signed_headers
from workers import delivery_reports
from workers.delivery_reports import drain, purge_applied

POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture()
def clean(settings):
    """`settings` with no delivery report left by an earlier test."""
    with session_scope(settings.database_url) as session:
        session.execute(delete(DeliveryReport))
    return settings


def seed(settings, count: int, with_uuid: bool = True) -> tuple[str, list[tuple[str, str]]]:
    """A broadcast whose `count` recipients Plivo accepted: `queued`, uuid set (unless not
    `with_uuid`: the worker's write of the uuids is late). Returns its id and (uuid, phone)."""
    from api import create_app

    numbers = [f"+1415{i:07d}" for i in range(1, count + 1)]
    client = create_app(settings).test_client()
    created = client.post(
        "/v1/broadcasts",
        json={"recipients": numbers, "text": "Durable"},
        headers={"X-API-Key": API_KEY},
    )
    assert created.status_code == 202, created.get_json()
    pairs = [(f"m-{uuid.uuid4()}", phone) for phone in numbers]
    with session_scope(settings.database_url) as session:
        if with_uuid:
            record_uuids(session, pairs)
        session.execute(update(Recipient).values(status="queued"))
        session.execute(update(Batch).values(status="submitted"))
        session.execute(update(Broadcast).values(status="sending"))
    return created.get_json()["id"], pairs


def record_uuids(session, pairs: list[tuple[str, str]]) -> None:
    for message_uuid, phone in pairs:
        session.execute(
            update(Recipient).where(Recipient.phone == phone).values(message_uuid=message_uuid)
        )


def report(message_uuid: str, phone: str, status: str, sequence: int) -> dict[str, str]:
    return {
        "MessageUUID": message_uuid,
        "Status": status,
        "To": phone[1:],
        "Sequence": str(sequence),
    }


def statuses(settings) -> dict[str, str]:
    with session_scope(settings.database_url) as session:
        return dict(session.execute(select(Recipient.message_uuid, Recipient.status)).all())


def unapplied(settings) -> list[DeliveryReport]:
    with session_scope(settings.database_url) as session:
        return list(
            session.scalars(select(DeliveryReport).where(DeliveryReport.applied_at.is_(None)))
        )


def broadcast_status(settings) -> str:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(Broadcast.status))


# --- servers this file starts itself -----------------------------------------------------


class KillableRedis:
    """A redis-server without persistence on a fixed port: SIGKILL loses all it held, and
    it comes back, empty, under the same URL."""

    def __init__(self, tmp_path: Path):
        self.dir, self.port = tmp_path, free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--bind", HOST, "--port", str(self.port), "--dir", str(self.dir),
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self._answers, timeout=20, interval=0.05, message="redis-server did not start")

    def _answers(self) -> bool:
        try:
            return redis.Redis(host=HOST, port=self.port, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture()
def killable_redis(tmp_path) -> Iterator[KillableRedis]:
    server = KillableRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def granian_api(settings, log_path: Path, port: int) -> Iterator[str]:
    """The API as deployed: granian, 2 worker processes (forked) with threads each."""
    granian = str(Path(sys.executable).parent / "granian")
    argv = [
        granian, "--interface", "wsgi", "--workers", "2", "--blocking-threads", "8",
        "--host", HOST, "--port", str(port), "--log-level", "warning", "api.wsgi:app",
    ]  # fmt: skip
    with granian_serving(settings, log_path, argv, port) as base:
        yield base


class Appliers:
    """A worker on the webhooks queue and beat, which runs the applier every second."""

    def __init__(self, settings, tmp_path: Path):
        self.settings, self.tmp_path = settings, tmp_path
        self.worker = Worker(settings, tmp_path / "worker.log", queues="webhooks")
        self.beat = Beat(settings, tmp_path)
        self.revived: list[str] = []

    def revive(self) -> None:
        """Start again whichever died, as a process manager would (compose restarts them).
        Celery 5.7 / kombu 5.7 can die on a broker connection lost with a task unacked
        (AttributeError in restore_unacked): the reports wait for it in the database."""
        if self.worker.process.poll() is not None:
            self.revived.append("worker")
            self.worker.stop()
            log = self.tmp_path / f"worker-{len(self.revived)}.log"
            self.worker = Worker(self.settings, log, queues="webhooks")
            self.worker.wait_ready()
        if self.beat.process.poll() is not None:
            self.revived.append("beat")
            self.beat.stop()
            self.beat = Beat(self.settings, self.tmp_path)

    def stop(self) -> None:
        self.worker.stop()
        self.beat.stop()


@contextmanager
def applying(settings, tmp_path: Path) -> Iterator[Appliers]:
    appliers = Appliers(settings, tmp_path)
    try:
        appliers.worker.wait_ready()
        yield appliers
    finally:
        appliers.stop()


def post(base: str, params: dict[str, str], nonce: str | None = None) -> int:
    url = f"{base}/webhooks/plivo/status"
    headers = signed_headers(url, params, nonce=nonce)
    try:
        return requests.post(url, data=params, headers=headers, timeout=15).status_code
    except requests.RequestException:
        return 0  # no answer at all: Plivo would retry it, as it does a 503


# --- Redis is not on the path any more ---------------------------------------------------


@POSTGRES_ONLY
def test_every_report_answered_200_is_applied_though_redis_is_sigkilled_mid_flow(
    clean, killable_redis, tmp_path
):
    port = free_port()
    settings = clean.model_copy(
        update={"redis_url": killable_redis.url, "public_base_url": f"http://{HOST}:{port}"}
    )
    _, pairs = seed(settings, 300)
    callbacks = [(u, p, "sent", 2) for u, p in pairs] + [(u, p, "delivered", 3) for u, p in pairs]
    answers: dict[tuple[str, str], int] = {}
    during_outage: list[int] = []
    outage = threading.Event()

    def send(item) -> None:
        message_uuid, phone, status, sequence = item
        time.sleep(0.05)  # ~ 8 threads x 20/s: the load lasts some 4 s
        answer = post(base, report(message_uuid, phone, status, sequence))
        answers[(message_uuid, status)] = answer
        if outage.is_set():
            during_outage.append(answer)

    with (
        granian_api(settings, tmp_path / "api.log", port) as base,
        applying(settings, tmp_path) as appliers,
        ThreadPoolExecutor(8) as pool,
    ):
        flowing = pool.map(send, callbacks)
        time.sleep(1.5)
        killable_redis.kill()  # SIGKILL: no persistence, everything Redis held is gone
        outage.set()
        time.sleep(2)
        outage.clear()
        killable_redis.start()
        list(flowing)

        assert set(answers.values()) <= {200, 503}, sorted(set(answers.values()))
        assert during_outage and set(during_outage) == {200}  # Redis is not on this path
        delivered = {u for (u, status), answer in answers.items() if status == "delivered"}
        acknowledged = {u for u in delivered if answers[(u, "delivered")] == 200}

        def all_applied():
            appliers.revive()
            now = statuses(settings)
            return all(now[u] == "delivered" for u in acknowledged) and not unapplied(settings)

        wait_for(all_applied, timeout=90, interval=0.5, message=appliers.worker.log_tail())
    assert len(acknowledged) == len(pairs)
    wait_for(lambda: broadcast_status(settings) == "completed", timeout=30)


# --- the database decides ----------------------------------------------------------------


@pytest.fixture()
def own_database(postgres_url) -> Iterator[tuple[str, object, str]]:
    """A database of its own on the test PostgreSQL server, which a test may close."""
    server = make_url(postgres_url).set(drivername="postgresql+psycopg2")
    name = f"durable_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    migrate(url)
    try:
        yield url, admin, name
    finally:
        get_engine(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            connection.execute(text(f'DROP DATABASE "{name}"'))
        admin.dispose()


def refuse_connections(admin, name: str, refused: bool) -> None:
    with admin.connect() as connection:
        connection.execute(
            text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if refused else "true"}')
        )
        if refused:  # and end the sessions already open, the API's among them
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )


@POSTGRES_ONLY
def test_while_the_database_is_down_callbacks_get_503_and_nothing_is_acknowledged(
    settings, own_database
):
    from api import create_app

    url, admin, name = own_database
    public = "https://hooks.example.com"
    hooks = create_app(
        settings.model_copy(update={"database_url": url, "public_base_url": public})
    ).test_client()
    answers: dict[str, int] = {}

    def post_some(count: int) -> list[int]:
        codes = []
        for _ in range(count):
            nonce = uuid.uuid4().hex
            params = report(f"m-{nonce}", "+14155550101", "delivered", 3)
            headers = signed_headers(f"{public}/webhooks/plivo/status", params, nonce=nonce)
            answer = hooks.post("/webhooks/plivo/status", data=params, headers=headers)
            answers[nonce] = answer.status_code
            codes.append(answer.status_code)
        return codes

    assert set(post_some(10)) == {200}
    refuse_connections(admin, name, True)
    assert set(post_some(10)) == {503}
    refuse_connections(admin, name, False)
    assert post_some(10)[-1] == 200  # back as soon as the database is

    with session_scope(url) as session:
        stored = set(session.scalars(select(DeliveryReport.nonce)))
    assert stored == {nonce for nonce, answer in answers.items() if answer == 200}
    assert all(answer in (200, 503) for answer in answers.values())


# --- waiting for the uuid, orphans -------------------------------------------------------


@POSTGRES_ONLY
def test_a_report_that_beats_its_uuid_is_applied_once_the_uuid_is_recorded(
    clean, tmp_path, live_api
):
    settings = clean.model_copy(update={"public_base_url": live_api})
    _, pairs = seed(settings, 3, with_uuid=False)
    with applying(settings, tmp_path) as appliers:
        worker = appliers.worker
        for message_uuid, phone in pairs:
            assert post(live_api, report(message_uuid, phone, "delivered", 3)) == 200
        # Passes of the applier come and go; the reports stay, unapplied, not dropped.
        wait_for(lambda: worker.log_path.read_text().count("apply_status_events") > 4)
        assert len(unapplied(settings)) == 3
        assert set(statuses(settings).values()) == {"queued"}

        with session_scope(settings.database_url) as session:
            record_uuids(session, pairs)  # the worker's write of the uuids lands
        wait_for(lambda: not unapplied(settings), timeout=30, message=worker.log_tail())
    assert set(statuses(settings).values()) == {"delivered"}


def test_an_old_report_without_its_uuid_becomes_a_listed_orphan_and_is_still_applied(
    clean, client, caplog, monkeypatch
):
    settings = clean.model_copy(update={"orphan_report_after": 1.0})
    monkeypatch.setattr(delivery_reports, "ORPHAN_RESCAN", 1.0)  # minutes, in production
    _, pairs = seed(settings, 1, with_uuid=False)
    message_uuid, phone = pairs[0]
    hooks = _hooks(settings)
    params = report(message_uuid, phone, "delivered", 3)
    assert (
        hooks.post("/webhooks/plivo/status", data=params, headers=_signed(params)).status_code
        == 200
    )

    assert drain(settings)["waiting"] == 1
    assert client.get("/v1/delivery-reports/orphans").get_json()["count"] == 0
    wait_for(lambda: drain(settings)["orphaned"], timeout=15, interval=0.5)
    lines = [json.loads(json_formatter().format(record)) for record in caplog.records]
    assert [line["count"] for line in lines if line["event"] == "reports.orphaned"] == [1]

    listed = client.get("/v1/delivery-reports/orphans").get_json()
    assert listed["count"] == 1
    (orphan,) = listed["items"]
    assert (orphan["message_uuid"], orphan["status"], orphan["params"]) == (
        message_uuid,
        "delivered",
        params,
    )
    assert orphan["orphaned_at"] is not None and listed["next_cursor"] is None

    with session_scope(settings.database_url) as session:
        record_uuids(session, pairs)  # an operator finds and records it
    wait_for(lambda: drain(settings)["applied"], timeout=15, interval=0.5)
    assert statuses(settings)[message_uuid] == "delivered"
    assert client.get("/v1/delivery-reports/orphans").get_json()["count"] == 0


def test_error_200_opts_the_number_out_at_first_sight_and_never_again(clean):
    settings = clean
    _, pairs = seed(settings, 1, with_uuid=False)
    message_uuid, phone = pairs[0]
    params = {**report(message_uuid, phone, "failed", 3), "ErrorCode": "200"}
    hooks = _hooks(settings)
    assert (
        hooks.post("/webhooks/plivo/status", data=params, headers=_signed(params)).status_code
        == 200
    )
    assert drain(settings)["waiting"] == 1
    with session_scope(settings.database_url) as session:
        assert session.get(OptOut, phone) is not None  # before its uuid is known
        remove_opt_out(session, phone)  # the person texts START

    # The waiting report is looked at again (and again); the START stands.
    wait_for(lambda: drain(settings)["waiting"], timeout=15, interval=0.5)
    with session_scope(settings.database_url) as session:
        assert session.get(OptOut, phone) is None


def test_the_orphan_list_needs_an_api_key(clean, app):
    assert app.test_client().get("/v1/delivery-reports/orphans").status_code == 401


# --- replays and the purge ---------------------------------------------------------------


@POSTGRES_ONLY
def test_a_replayed_nonce_is_403_over_http_and_stored_once(clean, live_api):
    params = report("m-replayed", "+14155550101", "delivered", 3)
    assert post(live_api, params, nonce="replayed-nonce") == 200
    assert post(live_api, params, nonce="replayed-nonce") == 403
    assert len(unapplied(clean)) == 1


def test_applied_reports_are_kept_for_the_retention_then_purged(clean):
    _, pairs = seed(clean, 2)
    hooks = _hooks(clean)
    for message_uuid, phone in pairs:
        params = report(message_uuid, phone, "sent", 2)
        assert (
            hooks.post("/webhooks/plivo/status", data=params, headers=_signed(params)).status_code
            == 200
        )
    waiting = report("m-not-yet", "+14155550999", "sent", 2)
    hooks.post("/webhooks/plivo/status", data=waiting, headers=_signed(waiting))
    drain(clean)

    assert purge_applied(clean.database_url) == 0  # applied just now: kept for 24 h
    assert purge_applied(clean.database_url, retention=timedelta(0)) == 2
    with session_scope(clean.database_url) as session:
        left = session.scalars(select(DeliveryReport.message_uuid)).all()
    assert left == ["m-not-yet"]  # an unapplied report is never purged


# --- the applier and the group commit under concurrency ----------------------------------


@POSTGRES_ONLY
def test_two_appliers_take_disjoint_reports_and_the_furthest_status_wins(clean):
    _, pairs = seed(clean, 1500)
    hooks = _hooks(clean)
    for status, sequence in (("delivered", 3), ("sent", 2)):  # the final one first
        for message_uuid, phone in pairs:
            params = report(message_uuid, phone, status, sequence)
            assert (
                hooks.post(
                    "/webhooks/plivo/status", data=params, headers=_signed(params)
                ).status_code
                == 200
            )

    with ThreadPoolExecutor(2) as pool:
        # CHUNK rows each: with SKIP LOCKED neither waits for nor repeats the other's rows.
        results = list(pool.map(lambda _: drain(clean), range(2)))
    assert sum(result["reports"] for result in results) == 3000
    assert not unapplied(clean)
    assert set(statuses(clean).values()) == {"delivered"}


def test_concurrent_reports_are_committed_in_shared_groups(clean):
    store = ReportStore(clean.database_url)
    start = threading.Barrier(50)

    def one(index: int) -> str:
        start.wait()
        return store.store(f"group-{index}", f"m-{index}", {"MessageUUID": f"m-{index}"})

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(one, range(50)))
    assert outcomes == [STORED] * 50
    # The first writes alone; those that queued meanwhile go together in the next write.
    assert store.groups < 25
    with session_scope(clean.database_url) as session:
        assert session.scalar(select(func.count()).select_from(DeliveryReport)) == 50


def test_a_writer_waits_for_a_callback_still_being_checked_and_commits_both_at_once(clean):
    store = ReportStore(clean.database_url, max_wait=10.0)
    outcomes: dict[str, str] = {}
    with store.arriving() as arrival:  # a callback whose signature is being checked
        writer = threading.Thread(
            target=lambda: outcomes.update(first=store.store("wait-1", "m-1", {"Status": "sent"}))
        )
        writer.start()
        time.sleep(0.3)  # the writer waits for this one rather than commit alone
        assert "first" not in outcomes
        outcomes["second"] = store.store("wait-2", "m-2", {"Status": "sent"}, arrival)
    writer.join(timeout=10)
    assert outcomes == {"first": STORED, "second": STORED}
    assert store.groups == 1


def test_a_writer_does_not_wait_for_a_callback_that_brings_no_report(clean):
    store = ReportStore(clean.database_url, max_wait=10.0)
    started = time.monotonic()
    with store.arriving():  # say, a bad signature: it ends without a report
        writer = threading.Thread(target=store.store, args=("alone", "m-1", {"Status": "sent"}))
        writer.start()
        time.sleep(0.3)
    writer.join(timeout=10)
    assert time.monotonic() - started < 5 and store.groups == 1


@POSTGRES_ONLY
def test_a_forked_process_stores_through_its_own_connection(clean):
    store = ReportStore(clean.database_url)
    assert store.store("before-fork", "m-1", {"MessageUUID": "m-1"}) == STORED
    pid = os.fork()
    if pid == 0:  # the child: as a granian worker forked from a master that used the store
        try:
            outcome = store.store("in-child", "m-2", {"MessageUUID": "m-2"})
            os._exit(0 if outcome == STORED else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # And the parent goes on storing: the child did not close the parent's connection.
    assert store.store("after-fork", "m-3", {"MessageUUID": "m-3"}) == STORED
    assert store.groups == 2
    with session_scope(clean.database_url) as session:
        nonces = set(session.scalars(select(DeliveryReport.nonce)))
    assert nonces == {"before-fork", "in-child", "after-fork"}


PUBLIC = "https://hooks.example.com"


def _hooks(settings):
    from api import create_app

    return create_app(settings.model_copy(update={"public_base_url": PUBLIC})).test_client()


def _signed(params: dict[str, str]) -> dict[str, str]:
    return signed_headers(f"{PUBLIC}/webhooks/plivo/status", params)
