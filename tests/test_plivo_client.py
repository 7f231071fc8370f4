"""The Plivo wrapper: the real SDK over HTTP, to the sandbox and to a server that answers
whatever status a row of the classification table needs."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from shared.config import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN
from shared.plivo_client import STATUS_KINDS, ErrorKind, PlivoClient, PlivoError
from tests.conftest import sandbox_stats
from tests.services import free_port

SENDER = "+14155550000"


def sandbox_client(base_url: str, timeout: float = 5) -> PlivoClient:
    return PlivoClient(SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN, base_url, timeout)


def test_it_sends_one_call_with_dst_joined_and_maps_uuids_to_numbers(sandbox):
    numbers = ["+14155550101", "+14155550102", "+14155550103"]
    result = sandbox_client(sandbox).send(SENDER, numbers, "Hi")

    assert list(result.uuids) == numbers
    assert len(set(result.uuids.values())) == 3
    assert result.invalid == []
    stats = sandbox_stats(sandbox)
    assert stats["requests"] == 1
    assert stats["sends"] == {"14155550101": 1, "14155550102": 1, "14155550103": 1}


def test_it_maps_invalid_numbers_back_to_e164(sandbox):
    requests.post(f"{sandbox}/sandbox/config", json={"invalid_prefixes": ["1415555010"]}, timeout=5)
    result = sandbox_client(sandbox).send(SENDER, ["+14155550101", "+14155550201"], "Hi")

    assert result.invalid == ["+14155550101"]
    assert list(result.uuids) == ["+14155550201"]


class _Answer(BaseHTTPRequestHandler):
    """Answers every request with the status (and delay) the test put on the server."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.server.delay)
        body = json.dumps({"api_id": "x", "error": "scripted"}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


@pytest.fixture()
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.status, server.delay = 500, 0.0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def scripted_client(server, timeout: float = 5) -> PlivoClient:
    return sandbox_client(f"http://127.0.0.1:{server.server_port}", timeout)


@pytest.mark.parametrize("status, kind", sorted(STATUS_KINDS.items()))
def test_each_http_status_is_classified_as_the_table_says(scripted, status, kind):
    scripted.status = status
    with pytest.raises(PlivoError) as raised:
        scripted_client(scripted).send(SENDER, ["+14155550101"], "Hi")

    assert raised.value.kind is kind
    assert raised.value.status == status


def test_an_unlisted_status_is_permanent(scripted):
    scripted.status = 418
    with pytest.raises(PlivoError) as raised:
        sandbox_client(f"http://127.0.0.1:{scripted.server_port}").send(
            SENDER, ["+14155550101"], "x"
        )
    assert raised.value.kind is ErrorKind.PERMANENT


def test_connection_refused_is_transient():
    client = sandbox_client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PlivoError) as raised:
        client.send(SENDER, ["+14155550101"], "Hi")
    assert raised.value.kind is ErrorKind.TRANSIENT


def test_a_read_timeout_is_ambiguous_because_plivo_may_have_queued_it(scripted):
    scripted.status, scripted.delay = 202, 1.0
    client = scripted_client(scripted, timeout=0.3)
    with pytest.raises(PlivoError) as raised:
        client.send(SENDER, ["+14155550101"], "Hi")
    assert raised.value.kind is ErrorKind.AMBIGUOUS


def test_an_accepted_but_unreadable_answer_is_ambiguous(scripted):
    scripted.status = 202  # a 202 whose body has no message_uuid list
    with pytest.raises(PlivoError) as raised:
        sandbox_client(f"http://127.0.0.1:{scripted.server_port}").send(
            SENDER, ["+14155550101"], "x"
        )
    assert raised.value.kind is ErrorKind.AMBIGUOUS
