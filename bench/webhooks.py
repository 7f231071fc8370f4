"""Delivery-report benchmark: signed status callbacks driven at the running API (granian)
as fast as it takes them, then the lag until a worker has applied every one.

    .venv/bin/python bench/webhooks.py [--messages 15000] [--clients 4] [--in-flight 8]
                                       [--api-workers 2] [--threads 16] [--db postgresql]

A broadcast of --messages recipients is created and marked as accepted by Plivo (a uuid
each), then every message gets two signed callbacks (`sent`, then `delivered`), spread over
--clients processes with --in-flight each at a time, one connection per callback as Plivo
sends them. Plivo posts the callbacks of many messages at once, not one after another; with
--in-flight 1 the 4 clients model a Plivo that waits for each answer before it sends the
next (the load this benchmark used before reports were durable). Each callback is answered
200 only once it is committed to the database, by a group commit per API process
(api/report_store.py) that needs callbacks in flight together to group them, and threads to
hold them (--threads per granian worker). Prints callbacks/s accepted (200s over the wall time
of the load), the commits they took, the lag from the last callback to the last recipient
`delivered`, and how many were lost. Target: >= 3,000 callbacks/s on 2 cores, all applied
within 5 s.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import multiprocessing
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    HOST,
    Api,
    bench_run,
    bench_settings,
    phone_numbers,
    wait_ready,
    wait_until,
)
from sqlalchemy import distinct, func, select, update  # noqa: E402

from shared.config import SANDBOX_AUTH_TOKEN  # noqa: E402
from shared.db import session_scope  # noqa: E402
from shared.models import Batch, Broadcast, DeliveryReport, Recipient  # noqa: E402
from tests import services  # noqa: E402
from tests.conftest import settings_env  # noqa: E402

PATH = "/webhooks/plivo/status"
TARGET_RATE = 3000
TARGET_LAG = 5.0
# The same run before reports were durable (a Redis stream, acknowledged before any commit),
# 2 x 2 granian threads, 4 clients, PostgreSQL, on these 2 cores: 3 runs.
REDIS_STREAM_RATES = (3325, 3348, 3365)


def signed(url: str, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one callback, signed as PLIVO.md describes (V3)."""
    nonce = uuid.uuid4().hex
    payload = url + "?" + "".join(f"{k}{params[k]}" for k in sorted(params)) + "." + nonce
    mac = hmac.new(SANDBOX_AUTH_TOKEN.encode(), payload.encode(), hashlib.sha256).digest()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Plivo-Signature-V3": base64.b64encode(mac).decode(),
        "X-Plivo-Signature-V3-Nonce": nonce,
    }
    return urlencode(params).encode(), headers


def callbacks(public: str, uuids: list[tuple[str, str]]) -> list[tuple[bytes, dict]]:
    """`sent` for every message, then `delivered` for every message (as Plivo would, over
    time), each signed with its own nonce."""
    requests_ = []
    for status, sequence in (("sent", "2"), ("delivered", "3")):
        for message_uuid, phone in uuids:
            params = {
                "MessageUUID": message_uuid,
                "Status": status,
                "To": phone[1:],
                "From": "14155550000",
                "Sequence": sequence,
                "Units": "1",
            }
            requests_.append(signed(public + PATH, params))
    return requests_


def drive(port: int, share: list[bytes], in_flight: int, results) -> None:
    """One client process: its share of ready-made requests, one connection each (as
    Plivo's callbacks arrive), `in_flight` at a time, each as soon as one is answered."""
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def post_each(requests_: list[bytes]) -> None:
        ok = failed = 0
        for raw in requests_:
            with socket.create_connection((HOST, port), timeout=30) as sock:
                sock.sendall(raw)
                answer = b""
                while b"\r\n" not in answer:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            if answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.0 200"):
                ok += 1
            else:
                failed += 1
        with lock:
            counts["ok"] += ok
            counts["failed"] += failed

    start = time.monotonic()
    threads = [
        threading.Thread(target=post_each, args=(share[i::in_flight],)) for i in range(in_flight)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((counts["ok"], counts["failed"], start, time.monotonic()))


def raw_request(port: int, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {PATH} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def delivered(database_url: str) -> int:
    with session_scope(database_url) as session:
        return session.scalar(
            select(func.count()).select_from(Recipient).where(Recipient.status == "delivered")
        )


def committed(database_url: str) -> tuple[int, int]:
    """Reports in the table, and the commits that wrote them: every report of one group
    commit carries the same `received_at`."""
    with session_scope(database_url) as session:
        return session.execute(
            select(func.count(), func.count(distinct(DeliveryReport.received_at)))
        ).one()


def seed(api: Api, database_url: str, count: int) -> list[tuple[str, str]]:
    """A broadcast whose recipients Plivo has accepted: uuid set, `queued`."""
    numbers = phone_numbers(count)
    broadcast_id = api.broadcast(numbers, "Reports")
    pairs = [(str(uuid.uuid4()), phone) for phone in numbers]
    with session_scope(database_url) as session:
        for chunk_start in range(0, count, 1000):
            for message_uuid, phone in pairs[chunk_start : chunk_start + 1000]:
                session.execute(
                    update(Recipient)
                    .where(Recipient.phone == phone)
                    .values(status="queued", message_uuid=message_uuid)
                )
        session.execute(update(Batch).values(status="submitted"))
        session.execute(
            update(Broadcast)
            .where(Broadcast.id == uuid.UUID(broadcast_id))
            .values(status="sending")
        )
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=15_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--in-flight", type=int, default=8, help="callbacks each client keeps in flight"
    )
    parser.add_argument("--api-workers", type=int, default=2, help="granian workers")
    parser.add_argument("--threads", type=int, default=16, help="granian blocking threads each")
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    args = parser.parse_args()

    with bench_run("webhooks", timeout=600) as run:
        broker = run.redis()
        database_url = run.database(args.db)
        port = services.free_port()
        public = f"http://{HOST}:{port}"
        settings = bench_settings(
            database_url=database_url,
            redis_url=broker.url,
            public_base_url=public,
            log_level="WARNING",
        )
        granian = str(Path(sys.executable).parent / "granian")
        run.spawn(
            [granian, "--interface", "wsgi", "--workers", str(args.api_workers),
             "--blocking-threads", str(args.threads), "--host", HOST, "--port", str(port),
             "--log-level", "warning", "api.wsgi:app"],
            "api.log",
            settings_env(settings),
        )  # fmt: skip
        wait_until(lambda: _answers(port), 60, "the API")
        worker = run.worker(settings, "reports", queues="webhooks")
        run.beat(settings)
        wait_ready([worker])

        pairs = seed(Api(settings), database_url, args.messages)
        load = [raw_request(port, body, headers) for body, headers in callbacks(public, pairs)]
        print(
            f"{args.messages:,} messages, {len(load):,} signed callbacks, {args.clients} "
            f"clients x {args.in_flight} in flight -> granian {args.api_workers}x{args.threads} "
            f"threads, {args.db}"
        )
        results = multiprocessing.get_context("fork").Queue()
        clients = [
            multiprocessing.get_context("fork").Process(
                target=drive, args=(port, load[i :: args.clients], args.in_flight, results)
            )
            for i in range(args.clients)
        ]
        for client in clients:
            client.start()
        outcomes = [results.get(timeout=300) for _ in clients]
        for client in clients:
            client.join()
        ok = sum(o[0] for o in outcomes)
        failed = sum(o[1] for o in outcomes)
        began, ended = min(o[2] for o in outcomes), max(o[3] for o in outcomes)
        rate = ok / (ended - began)
        applied_at = wait_until(
            lambda: delivered(database_url) == args.messages and time.monotonic(),
            120,
            "every report applied",
            every=0.05,
        )
        lag = applied_at - ended
        lost = args.messages - delivered(database_url)
        stored, commits = committed(database_url)

    print()
    print(f"{'callbacks sent':<28}{len(load):>12,}")
    print(f"{'answered 200':<28}{ok:>12,}")
    print(f"{'refused / failed':<28}{failed:>12,}")
    print(f"{'load duration (s)':<28}{ended - began:>12.2f}")
    print(f"{'callbacks/s accepted':<28}{rate:>12,.0f}")
    previous = " / ".join(f"{r:,}" for r in REDIS_STREAM_RATES)
    print(f"{'  before (Redis, not durable)':<28}{previous:>24}")
    print(f"{'reports committed':<28}{stored:>12,}")
    print(f"{'commits (reports each)':<28}{commits:>12,}  ({stored / max(commits, 1):.1f})")
    print(f"{'lag until all applied (s)':<28}{lag:>12.2f}")
    print(f"{'recipients not delivered':<28}{lost:>12,}")
    print()
    checks = [
        (f"accepted >= {TARGET_RATE:,}/s", rate >= TARGET_RATE),
        (f"all applied within {TARGET_LAG:g} s", lag <= TARGET_LAG),
        ("none lost", lost == 0 and failed == 0),
        ("every 200 committed", stored >= ok),
    ]
    for label, passed in checks:
        print(f"  {'PASS' if passed else 'FAIL'}: {label}")
    return 0 if all(passed for _, passed in checks) else 1


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection(HOST, port, timeout=1)
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
