"""The sandbox's realism: queues and expiry, the request limit, faults, signed status callbacks,
MMS and inbound messages, driven over real HTTP by the real plivo SDK."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from urllib.parse import parse_qsl, urlsplit

import plivo
import plivo.rest.client
import pytest
import requests
from plivo.exceptions import PlivoRestError, PlivoServerError, ValidationError
from plivo.utils import validate_signature, validate_v3_signature

from sandbox import SandboxConfig, create_app, serve_in_thread
from sandbox.__main__ import build_config, parse_args
from sandbox.delivery import FAILED_CODES, UNDELIVERED_CODES
from sandbox.queues import Queues
from sandbox.signature import v3_signature

AUTH_ID = "MASANDBOX00000000000"
AUTH_TOKEN = "sandbox-auth-token"
SRC = "+14155550000"
# Fast settings for every test; each test changes what it needs on top of these.
BASELINE = {
    "sms_mps": 0,
    "mms_mps": 0,
    "sender_mps": {},
    "message_expiry": 10800,
    "request_limit": 300,
    "request_window": 5,
    "list_request_limit": 20,
    "list_request_window": 60,
    "fail_5xx": 0,
    "fail_429": 0,
    "slow": 0,
    "slow_seconds": 1,
    "drop_before": 0,
    "drop_after": 0,
    "fail_after_accept": 0,
    "fault_seed": None,
    "share_undelivered": 0,
    "share_failed": 0,
    "share_stays_sent": 0,
    "outcomes": {},
    "oversize_media": [],
    "delivery_delay": 0.05,
    "share_duplicate_callbacks": 0,
    "share_out_of_order": 0,
    "share_no_final_report": 0,
    "share_no_callbacks": 0,
    "callback_retries": 3,
    "callback_retry_delay": 0.05,
    "callback_timeout": 2,
    "message_time_offset": 0,
    "inbound_url": None,
}


@pytest.fixture(scope="module")
def base_url():
    url, shutdown = serve_in_thread(SandboxConfig())
    yield url
    shutdown()


@pytest.fixture(autouse=True)
def fresh_sandbox(base_url):
    configure(base_url, **BASELINE)
    requests.post(f"{base_url}/stats/reset", timeout=5).raise_for_status()


@pytest.fixture
def client(base_url, monkeypatch):
    # The SDK re-reads this module constant on every call; monkeypatch restores it afterwards.
    monkeypatch.setattr(plivo.rest.client, "PLIVO_API_BASE_URI", f"{base_url}/v1/Account")
    with plivo.RestClient(AUTH_ID, AUTH_TOKEN) as rest_client:
        yield rest_client


class Receiver:
    """A customer's web server: records what the sandbox posts, answers `statuses` first."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.statuses: list[int] = []  # answers to give before falling back to 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would
            timeout = 5

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                self._record(dict(parse_qsl(self.rfile.read(length).decode(), True)))

            def do_GET(self):
                self._record(dict(parse_qsl(urlsplit(self.path).query, True)))

            def _record(self, params: dict) -> None:
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.received.append(
                        {
                            "method": self.command,
                            "url": f"{receiver.origin}{self.path}",
                            "headers": dict(self.headers),
                            "params": params,
                            "status": status,
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_port}"
        self.url = f"{self.origin}/status/"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 10) -> list[dict]:
        wait_until(lambda: len(self.received) >= count, timeout)
        return self.received

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def configure(base_url, **changes) -> dict:
    response = requests.post(f"{base_url}/sandbox/config", json=changes, timeout=5)
    response.raise_for_status()
    return response.json()


def stats(base_url) -> dict:
    return requests.get(f"{base_url}/stats", timeout=5).json()


def message(base_url, message_uuid) -> dict:
    return requests.get(f"{base_url}/messages/{message_uuid}", timeout=5).json()


def numbers(count: int, start: int = 14155550001) -> list[str]:
    return [str(start + i) for i in range(count)]


def by_message(received: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for callback in received:
        grouped[callback["params"]["MessageUUID"]].append(callback["params"])
    return grouped


def statuses(callbacks: list[dict]) -> list[tuple[str, str]]:
    return [(callback["Status"], callback["Sequence"]) for callback in callbacks]


def raw_send(base_url, **body) -> requests.Response:
    return requests.post(
        f"{base_url}/v1/Account/{AUTH_ID}/Message/",
        json={"src": SRC, "dst": "14155550001", "text": "hi", **body},
        auth=(AUTH_ID, AUTH_TOKEN),
        timeout=5,
    )


# Signatures


def test_the_signature_matches_plivos_worked_example():
    params = {"MessageUUID": "abc", "Status": "delivered"}
    signature = v3_signature(
        "my_auth_token", "POST", "https://example.com/status/", params, "12345"
    )

    assert signature == "mNOygT08ka6drSNUVcJK+TV6P2xRcl1ELXtshxpDmH0="


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize(
    "url", ["https://example.com/status/", "http://127.0.0.1:8080/cb?b=2&a=x%20y", "https://h/p?q="]
)
@pytest.mark.parametrize("params", [{"Status": "sent", "From": "", "To": "1415"}, {}])
def test_the_sdk_validates_every_signature_the_sandbox_makes(method, url, params):
    signature = v3_signature("token", method, url, params, "987")

    assert validate_v3_signature(method, url, "987", "token", signature, dict(params))
    assert not validate_v3_signature(method, url, "987", "other-token", signature, dict(params))


# Status callbacks


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_callbacks_arrive_signed_in_order_queued_sent_delivered(client, base_url, receiver, method):
    response = client.messages.create(
        src=SRC, dst="14155550001<14155550002", text="hi", url=receiver.url, method=method
    )

    received = receiver.wait_for(6)
    wait_until(lambda: stats(base_url)["callbacks"]["pending"] == 0)
    for callback in received:
        headers = callback["headers"]
        assert callback["method"] == method
        if method == "POST":
            uri, params = receiver.url, callback["params"]
        else:  # what a receiver naturally has: the URL it was called at
            uri, params = callback["url"], None
        assert validate_v3_signature(
            method,
            uri,
            headers["X-Plivo-Signature-V3-Nonce"],
            AUTH_TOKEN,
            headers["X-Plivo-Signature-V3"],
            params,
        )
        assert validate_signature(
            receiver.url,
            headers["X-Plivo-Signature-V2-Nonce"],
            headers["X-Plivo-Signature-V2"],
            AUTH_TOKEN,
        )
    grouped = by_message(received)
    assert set(grouped) == set(response.message_uuid)
    for message_uuid, callbacks in grouped.items():
        assert statuses(callbacks) == [("queued", "1"), ("sent", "2"), ("delivered", "3")]
        final = callbacks[-1]
        assert final["From"] == "14155550000"
        assert final["Type"] == "sms"
        assert (final["Units"], final["TotalRate"], final["TotalAmount"]) == (
            "1",
            "0.00500",
            "0.00500",
        )
        assert "ErrorCode" not in final
        assert final["SentTime"] and final["DeliveryReportTime"]
        assert set(final) >= {"MCC", "MNC", "MessageTime", "QueuedTime", "PowerpackUUID"}
        assert message(base_url, message_uuid)["status"] == "delivered"
    assert {callbacks[0]["To"] for callbacks in grouped.values()} == {"14155550001", "14155550002"}
    assert stats(base_url)["callbacks"] == {"sent": 6, "failed": 0, "pending": 0, "withheld": 0}


def test_configured_outcomes_decide_each_numbers_fate(client, base_url, receiver):
    configure(
        base_url,
        outcomes={
            "+14155550001": "undelivered:30",
            "14155550002": "failed:450",
            "14155550003": "delivered",
        },
        share_failed=1,  # numbers with a configured outcome ignore the shares
    )

    response = client.messages.create(
        src=SRC, dst="14155550001<14155550002<14155550003", text="hi", url=receiver.url
    )

    grouped = by_message(receiver.wait_for(8))
    undelivered, failed, delivered = (grouped[uuid] for uuid in response.message_uuid)
    assert statuses(undelivered) == [("queued", "1"), ("sent", "2"), ("undelivered", "3")]
    assert undelivered[-1]["ErrorCode"] == "30"
    assert statuses(failed) == [("queued", "1"), ("failed", "2")]
    assert failed[-1]["ErrorCode"] == "450"
    assert failed[-1]["SentTime"] == ""
    assert statuses(delivered)[-1] == ("delivered", "3")
    assert stats(base_url)["outcomes"] == {"delivered": 1, "undelivered": 1, "failed": 1, "sent": 0}
    records = [message(base_url, uuid) for uuid in response.message_uuid]
    assert [(r["status"], r["error_code"]) for r in records] == [
        ("undelivered", 30),
        ("failed", 450),
        ("delivered", None),
    ]


def test_random_outcomes_follow_the_shares_with_realistic_codes(client, base_url):
    configure(base_url, share_failed=0.3, share_undelivered=0.2, fault_seed=7, delivery_delay=0)

    response = client.messages.create(src=SRC, dst="<".join(numbers(1000)), text="hi")

    outcomes = stats(base_url)["outcomes"]
    assert sum(outcomes.values()) == 1000
    assert 230 < outcomes["failed"] < 370
    assert 130 < outcomes["undelivered"] < 270
    codes = defaultdict(set)
    for message_uuid in response.message_uuid[:100]:
        record = message(base_url, message_uuid)
        codes[record["status"]].add(record["error_code"])
    assert codes["failed"] <= set(FAILED_CODES)
    assert codes["undelivered"] <= set(UNDELIVERED_CODES)
    assert codes["delivered"] == {None}


def test_callbacks_are_retried_while_the_receiver_fails(client, base_url, receiver):
    receiver.statuses = [503, 500]

    client.messages.create(src=SRC, dst="14155550001", text="hi", url=receiver.url)

    received = receiver.wait_for(5)
    wait_until(lambda: stats(base_url)["callbacks"]["pending"] == 0)
    assert [(c["params"]["Status"], c["status"]) for c in received] == [
        ("queued", 503),
        ("queued", 500),
        ("queued", 200),
        ("sent", 200),
        ("delivered", 200),
    ]
    assert stats(base_url)["callbacks"] == {"sent": 3, "failed": 0, "pending": 0, "withheld": 0}


def test_callbacks_to_a_dead_receiver_fail_after_bounded_retries(client, base_url):
    configure(base_url, callback_retries=1, callback_retry_delay=0.01)

    # Nothing listens on the discard port.
    client.messages.create(src=SRC, dst="14155550001", text="hi", url="http://127.0.0.1:9/x")

    wait_until(lambda: stats(base_url)["callbacks"]["pending"] == 0)
    assert stats(base_url)["callbacks"] == {"sent": 0, "failed": 3, "pending": 0, "withheld": 0}


def test_it_can_duplicate_callbacks_and_report_before_sent(client, base_url, receiver):
    configure(base_url, share_duplicate_callbacks=1)
    client.messages.create(src=SRC, dst="14155550001", text="hi", url=receiver.url)
    duplicated = receiver.wait_for(6)
    assert statuses([c["params"] for c in duplicated]) == [
        ("queued", "1"), ("queued", "1"), ("sent", "2"), ("sent", "2"),
        ("delivered", "3"), ("delivered", "3"),
    ]  # fmt: skip

    configure(base_url, share_duplicate_callbacks=0, share_out_of_order=1)
    client.messages.create(src=SRC, dst="14155550002", text="hi", url=receiver.url)
    reordered = receiver.wait_for(9)[6:]
    # The final report overtakes `sent`; Sequence still tells the true order.
    assert statuses([c["params"] for c in reordered]) == [
        ("queued", "1"),
        ("delivered", "3"),
        ("sent", "2"),
    ]


def test_a_large_broadcast_gets_its_callbacks_from_a_small_pool(client, base_url, receiver):
    threads_before = threading.active_count()

    for chunk in range(2):
        destinations = numbers(250, start=14155550001 + 250 * chunk)
        client.messages.create(src=SRC, dst="<".join(destinations), text="hi", url=receiver.url)

    receiver.wait_for(1500, timeout=60)
    wait_until(lambda: stats(base_url)["callbacks"]["pending"] == 0)
    assert stats(base_url)["callbacks"] == {"sent": 1500, "failed": 0, "pending": 0, "withheld": 0}
    grouped = by_message(receiver.received)
    assert len(grouped) == 500
    assert all(statuses(callbacks)[-1] == ("delivered", "3") for callbacks in grouped.values())
    # Callback threads (at most callback_workers) plus receiver connections, not one per message.
    assert threading.active_count() - threads_before <= 2 * SandboxConfig().callback_workers


# Queues, MPS and expiry


def test_messages_beyond_their_expiry_in_the_queue_fail_with_420(client, base_url, receiver):
    # 10 per second: send times 0, 0.1, 0.2, 0.3, 0.4 s; only those within 0.25 s go out.
    configure(base_url, sms_mps=10, message_expiry=0.25)

    response = client.messages.create(
        src=SRC, dst="<".join(numbers(5)), text="hi", url=receiver.url
    )

    counters = stats(base_url)
    assert counters["expired"] == 2
    assert counters["messages"] == 5
    assert len(counters["sends"]) == 5  # expired messages were still accepted
    assert counters["outcomes"] == {"delivered": 3, "undelivered": 0, "failed": 2, "sent": 0}
    grouped = by_message(receiver.wait_for(3 * 3 + 2 * 2))
    for message_uuid in response.message_uuid[3:]:
        assert statuses(grouped[message_uuid]) == [("queued", "1"), ("failed", "2")]
        assert grouped[message_uuid][-1]["ErrorCode"] == "420"
        assert message(base_url, message_uuid)["status"] == "failed"
        assert message(base_url, message_uuid)["error_code"] == 420
    send_times = [message(base_url, u)["send_time"] for u in response.message_uuid[:3]]
    assert [round(b - a, 3) for a, b in pairwise(send_times)] == [0.1, 0.1]


def test_a_messages_own_expiry_overrides_the_default(client, base_url):
    # One every 10 s with a 5 s expiry: only the first of three can go out.
    configure(base_url, sms_mps=0.1)

    response = client.messages.create(
        src=SRC, dst="<".join(numbers(3)), text="hi", message_expiry=5
    )

    assert stats(base_url)["expired"] == 2
    # Expired, but Plivo only says so once the expiry has passed.
    assert message(base_url, response.message_uuid[2])["status"] == "queued"
    assert message(base_url, response.message_uuid[2])["send_time"] is None


def test_it_tracks_queue_depth_per_sender_and_its_maximum(client, base_url):
    configure(base_url, sms_mps=1, sender_mps={"+14155559999": 0.5})

    client.messages.create(src=SRC, dst="<".join(numbers(10)), text="a")
    client.messages.create(src=SRC, dst="<".join(numbers(5, start=14155560001)), text="b")
    client.messages.create(src="14155559999", dst="<".join(numbers(3)), text="c")

    counters = stats(base_url)
    # The first message goes out at once, the next 14 wait for account slots; the slow
    # sender's three wait behind them in the account queue, then at its own 0.5 MPS.
    assert counters["max_queue_depth"] == {"14155550000": 14, "14155559999": 3}
    assert counters["queue_depth"] == {"14155550000": 14, "14155559999": 3}
    log = requests.get(f"{base_url}/stats/requests", timeout=5).json()
    assert [(entry["src"], entry["type"], entry["count"]) for entry in log] == [
        ("14155550000", "sms", 10),
        ("14155550000", "sms", 5),
        ("14155559999", "sms", 3),
    ]
    assert all(abs(entry["t"] - time.time()) < 60 for entry in log)


def test_mms_drain_at_the_mms_rate_and_sms_are_not_held_up(client, base_url):
    configure(base_url, mms_mps=1)

    mms = client.messages.create(
        src=SRC, dst="<".join(numbers(3)), type_="mms", media_urls=["https://example.com/a.png"]
    )
    sms = client.messages.create(src=SRC, dst="<".join(numbers(3)), text="hi")

    mms_times = [message(base_url, u)["send_time"] for u in mms.message_uuid]
    sms_times = [message(base_url, u)["send_time"] for u in sms.message_uuid]
    assert [round(b - a, 3) for a, b in pairwise(mms_times)] == [1.0, 1.0]
    assert max(sms_times) - min(sms_times) == 0
    assert stats(base_url)["by_type"] == {"sms": 3, "mms": 3}
    assert stats(base_url)["max_queue_depth"] == {"14155550000": 2}


def test_the_account_queue_feeds_per_sender_queues():
    queues = Queues()
    # Account: 10/s. Sender A: 1/s. Sender B: unlimited.
    a = queues.enqueue("A", "sms", 5, now=100, expiry=60, account_mps=10, sender_mps=1)
    b = queues.enqueue("B", "sms", 3, now=100, expiry=60, account_mps=10, sender_mps=0)
    late = queues.enqueue("A", "sms", 2, now=100, expiry=4.5, account_mps=10, sender_mps=1)

    assert [a.send_time(i) for i in range(5)] == [100, 101, 102, 103, 104]
    # B waits only for A's messages to leave the account queue, not for A's sender queue.
    assert [round(b.send_time(i), 3) for i in range(3)] == [100.5, 100.6, 100.7]
    assert late.kept == 0  # A's next slot is 105, past the 4.5 s expiry
    assert queues.depths(now=102.5) == {"A": 2, "B": 0}
    assert queues.max_depth == {"A": 4, "B": 3}


# The request limit and faults


def test_requests_beyond_the_limit_get_429_and_send_nothing(client, base_url):
    configure(base_url, request_limit=3, request_window=60)

    for _ in range(3):
        client.messages.create(src=SRC, dst="14155550001", text="hi")
    with pytest.raises(PlivoRestError, match="429"):
        client.messages.create(src=SRC, dst="14155550002", text="hi")
    refused = raw_send(base_url)

    assert refused.status_code == 429
    assert set(refused.json()) == {"api_id", "error"}
    assert refused.json()["error"] == "too many requests"
    counters = stats(base_url)
    assert (counters["too_many_requests"], counters["messages"]) == (2, 3)
    assert counters["requests"] == 5
    assert "14155550002" not in counters["sends"]


def test_the_request_window_slides(base_url):
    configure(base_url, request_limit=2, request_window=0.3)

    assert [raw_send(base_url).status_code for _ in range(3)] == [202, 202, 429]
    time.sleep(0.35)
    assert raw_send(base_url).status_code == 202


@pytest.mark.parametrize(
    ("setting", "error", "recorded"),
    [
        ("fail_5xx", (PlivoServerError, PlivoRestError), 0),
        ("fail_429", PlivoRestError, 0),
        ("drop_before", requests.ConnectionError, 0),
        ("drop_after", requests.ConnectionError, 1),
        ("slow", requests.ReadTimeout, 1),
        ("fail_after_accept", (PlivoServerError, PlivoRestError), 1),
    ],
)
def test_each_fault_reaches_the_sdk_as_the_right_error(
    base_url, monkeypatch, setting, error, recorded
):
    monkeypatch.setattr(plivo.rest.client, "PLIVO_API_BASE_URI", f"{base_url}/v1/Account")
    configure(base_url, **{setting: 1, "slow_seconds": 0.5})
    kind = {"fail_5xx": "5xx", "fail_429": "429"}.get(setting, setting)

    with plivo.RestClient(AUTH_ID, AUTH_TOKEN, timeout=0.2) as client:
        with pytest.raises(error):
            client.messages.create(src=SRC, dst="14155550001", text="hi")

    counters = stats(base_url)
    assert counters["faults"][kind] == 1
    assert sum(counters["faults"].values()) == 1
    assert counters["requests"] == 1
    # slow, drop_after and fail_after_accept: Plivo processed the request whose answer the
    # client never read.
    assert counters["messages"] == recorded
    assert counters["sends"] == ({"14155550001": 1} if recorded else {})


def test_server_errors_vary_and_a_seed_makes_faults_reproducible(base_url):
    configure(base_url, fail_5xx=0.5, fault_seed=42)
    first = [raw_send(base_url).status_code for _ in range(30)]
    requests.post(f"{base_url}/stats/reset", timeout=5).raise_for_status()
    second = [raw_send(base_url).status_code for _ in range(30)]

    assert first == second
    assert {500, 502, 503, 202} <= set(first)
    assert stats(base_url)["faults"]["5xx"] == sum(status >= 500 for status in second)


# MMS


@pytest.mark.parametrize(
    ("media", "accepted"),
    [
        ({}, False),
        ({"media_urls": [f"https://example.com/{i}.png" for i in range(11)]}, False),
        ({"media_urls": ["https://example.com/1.png"] * 6, "media_ids": ["m"] * 5}, False),
        ({"media_urls": ["https://example.com/1.png"] * 6, "media_ids": ["m"] * 4}, True),
        ({"media_ids": ["m1"]}, True),
    ],
)
def test_mms_needs_one_to_ten_media_and_no_text(client, base_url, media, accepted):
    def send():
        return client.messages.create(src=SRC, dst="14155550001", type_="mms", **media)

    if accepted:
        record = message(base_url, send().message_uuid[0])
        assert (record["type"], record["text"]) == ("mms", "")
        assert len(record["media"]) == sum(len(items) for items in media.values())
    else:
        with pytest.raises(ValidationError, match="media"):
            send()
        assert (stats(base_url)["bad_requests"], stats(base_url)["messages"]) == (1, 0)


def test_oversize_media_fail_with_error_120(client, base_url, receiver):
    configure(base_url, oversize_media=["huge"])

    response = client.messages.create(
        src=SRC,
        dst="14155550001",
        type_="mms",
        text="look",
        media_urls=["https://example.com/huge-video.mp4"],
        url=receiver.url,
    )

    callbacks = by_message(receiver.wait_for(2))[response.message_uuid[0]]
    assert statuses(callbacks) == [("queued", "1"), ("failed", "2")]
    assert callbacks[-1]["ErrorCode"] == "120"
    assert callbacks[-1]["Type"] == "mms"
    assert message(base_url, response.message_uuid[0])["error_code"] == 120


# Inbound messages


@pytest.mark.parametrize(
    ("text", "intent", "expected"),
    [
        ("stop ", None, "optout"),
        ("Stop all", None, "optout"),
        ("START", None, "optin"),
        ("help", None, "help"),
        ("please stop", None, ""),
        ("whatever", "optout", "optout"),
    ],
)
def test_inbound_messages_reach_the_receiver_signed(base_url, receiver, text, intent, expected):
    body = {"from": "+14155550123", "to": SRC, "text": text, "url": receiver.url}
    if intent:
        body["intent"] = intent

    answer = requests.post(f"{base_url}/sandbox/inbound", json=body, timeout=5)

    assert answer.status_code == 200
    assert answer.json()["status"] == 200
    (inbound,) = receiver.received
    form, headers = inbound["params"], inbound["headers"]
    assert form["MessageUUID"] == answer.json()["message_uuid"]
    assert (form["From"], form["To"], form["Text"], form["Type"]) == (
        "14155550123",
        "14155550000",
        text,
        "sms",
    )
    assert form["MessageIntent"] == expected
    assert {"Units", "TotalRate", "TotalAmount"} <= set(form)
    assert validate_v3_signature(
        "POST",
        receiver.url,
        headers["X-Plivo-Signature-V3-Nonce"],
        AUTH_TOKEN,
        headers["X-Plivo-Signature-V3"],
        form,
    )


def test_inbound_uses_the_configured_url_and_reports_the_receivers_answer(base_url, receiver):
    configure(base_url, inbound_url=receiver.url)
    receiver.statuses = [403]

    answer = requests.post(
        f"{base_url}/sandbox/inbound",
        json={"from": "14155550123", "to": SRC, "text": "hi"},
        timeout=5,
    )
    unreachable = requests.post(
        f"{base_url}/sandbox/inbound",
        json={"from": "14155550123", "to": SRC, "text": "hi", "url": "http://127.0.0.1:9/"},
        timeout=5,
    )
    invalid = requests.post(f"{base_url}/sandbox/inbound", json={"from": "x"}, timeout=5)

    assert answer.json()["status"] == 403
    assert len(receiver.received) == 1
    assert unreachable.status_code == 502
    assert invalid.status_code == 400


# Config and reset


def test_reset_clears_queues_pending_callbacks_and_the_request_log(client, base_url, receiver):
    configure(base_url, sms_mps=1)
    client.messages.create(src=SRC, dst="<".join(numbers(5)), text="hi", url=receiver.url)
    # Five `queued`, then the first message's `sent` and `delivered`; the rest wait for slots
    # a second apart.
    receiver.wait_for(7)
    wait_until(lambda: stats(base_url)["callbacks"]["pending"] == 8)

    requests.post(f"{base_url}/stats/reset", timeout=5).raise_for_status()

    counters = stats(base_url)
    assert counters["callbacks"] == {"sent": 0, "failed": 0, "pending": 0, "withheld": 0}
    assert (counters["queue_depth"], counters["max_queue_depth"]) == ({}, {})
    assert requests.get(f"{base_url}/stats/requests", timeout=5).json() == []
    # The queue is empty again: the next message goes out at once.
    response = client.messages.create(src=SRC, dst="14155550001", text="hi")
    assert message(base_url, response.message_uuid[0])["status"] in ("sent", "delivered")
    time.sleep(1.2)  # past the next send slot the forgotten messages had
    assert len(receiver.received) == 7


def test_the_config_changes_partially_at_run_time_and_rejects_bad_values(base_url):
    before = requests.get(f"{base_url}/sandbox/config", timeout=5).json()

    after = configure(base_url, sms_mps=5, sender_mps={"+14155550000": 2})
    refused = requests.post(f"{base_url}/sandbox/config", json={"fail_5xx": 1.5}, timeout=5)
    unknown = requests.post(f"{base_url}/sandbox/config", json={"mps": 1}, timeout=5)

    assert set(before) == set(BASELINE) | {"auth_id", "invalid_prefixes", "callback_workers"}
    assert after == {**before, "sms_mps": 5, "sender_mps": {"14155550000": 2}}
    assert (refused.status_code, unknown.status_code) == (400, 400)
    assert "fail_5xx" in refused.json()["error"]
    assert requests.get(f"{base_url}/sandbox/config", timeout=5).json() == after


def test_every_setting_comes_from_cli_flags_over_environment(monkeypatch):
    monkeypatch.setenv("SANDBOX_SMS_MPS", "5")
    monkeypatch.setenv("SANDBOX_SENDER_MPS", "+14155550000=1,MyBrand=0.5")
    monkeypatch.setenv("SANDBOX_OUTCOMES", '{"14155550001": "failed:900"}')
    monkeypatch.setenv("SANDBOX_FAULT_SEED", "3")

    config = build_config(parse_args(["--sms-mps", "7", "--oversize-media", "big,huge"]))

    assert config.sms_mps == 7
    assert config.sender_mps == {"14155550000": 1, "MyBrand": 0.5}
    assert config.outcomes == {"14155550001": "failed:900"}
    assert config.fault_seed == 3
    assert config.oversize_media == ["big", "huge"]
    monkeypatch.setenv("SANDBOX_SHARE_FAILED", "2")
    with pytest.raises(ValueError, match="share_failed"):
        build_config(parse_args([]))


def test_a_1000_number_request_stays_fast_with_every_feature_on(base_url):
    app = create_app(
        SandboxConfig(sms_mps=5, sender_mps={"14155550000": 1}, share_failed=0.1, request_limit=0)
    )
    client = app.test_client()
    dst = "<".join(numbers(1000))
    durations = []
    for attempt in range(20):
        started = time.perf_counter()
        response = client.post(
            f"/v1/Account/{AUTH_ID}/Message/",
            json={"src": SRC, "dst": dst, "text": f"hi {attempt}"},
            auth=(AUTH_ID, AUTH_TOKEN),
        )
        durations.append(time.perf_counter() - started)
        assert response.status_code == 202
    app.extensions["sandbox"].close()

    # A few ms on a typical machine; the bound leaves room for a slow CI runner.
    assert sorted(durations)[len(durations) // 2] < 0.05
