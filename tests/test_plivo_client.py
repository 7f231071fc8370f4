"""The Plivo wrapper: the real SDK over HTTP, to the sandbox and to a server that answers
whatever status a row of the classification table needs."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from shared.config import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN
from shared.plivo_client import (
    STATUS_KINDS,
    ErrorKind,
    MessageNotFound,
    PlivoClient,
    PlivoError,
)
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
    """Answers every request with the status, body (and delay) the test put on the server,
    and keeps the paths it was asked for."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def do_GET(self):  # noqa: N802
        self._answer()

    def _answer(self):
        self.server.paths.append(self.path)
        time.sleep(self.server.delay)
        status = self.server.status
        body = self.server.body
        if body is None:
            body = {"api_id": "x", "error": f"scripted {status}"}
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_args):
        pass


@pytest.fixture()
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.status, server.delay, server.body, server.paths = 500, 0.0, None, []
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


def test_a_gateway_timeout_or_server_error_may_follow_an_accepted_send():
    assert STATUS_KINDS[500] is ErrorKind.AMBIGUOUS
    assert STATUS_KINDS[504] is ErrorKind.AMBIGUOUS


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 429, 500, 502, 503, 504])
def test_plivos_own_error_text_is_kept_for_every_status(scripted, status):
    # The SDK raises a bare PlivoRestError ("Received status code 402 ...") for some of these.
    scripted.status = status
    scripted.body = {"api_id": "x", "error": f"insufficient credit ({status})"}
    with pytest.raises(PlivoError) as raised:
        scripted_client(scripted).send(SENDER, ["+14155550101"], "Hi")

    assert str(raised.value) == f"HTTP {status}: insufficient credit ({status})"


def test_an_error_body_that_is_not_json_is_kept_as_text(scripted):
    scripted.status, scripted.body = 502, "Bad Gateway"
    with pytest.raises(PlivoError) as raised:
        scripted_client(scripted).send(SENDER, ["+14155550101"], "Hi")
    assert str(raised.value) == "HTTP 502: Bad Gateway"


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


# --- looking messages up ----------------------------------------------------------------

PLIVO_RECORD = {
    # Plivo's documented Message Get answer, as Plivo writes it.
    "api_id": "3c1a2a1e-0000-0000-0000-000000000000",
    "error_code": "000",
    "from_number": "14155550000",
    "message_direction": "outbound",
    "message_state": "delivered",
    "message_time": "2024-03-06 09:46:28.123456+05:30",
    "message_type": "sms",
    "message_uuid": "db3ce55a-7f1d-11e1-8ea7-1231380bc196",
    "resource_uri": "/v1/Account/MA/Message/db3ce55a-7f1d-11e1-8ea7-1231380bc196/",
    "to_number": "14155550101",
    "total_amount": "0.00500",
    "total_rate": "0.00500",
    "units": 1,
}


def test_get_message_reads_plivos_record(scripted):
    scripted.status, scripted.body = 200, PLIVO_RECORD
    record = scripted_client(scripted).get_message(PLIVO_RECORD["message_uuid"])

    assert scripted.paths == [
        f"/v1/Account/{SANDBOX_AUTH_ID}/Message/{PLIVO_RECORD['message_uuid']}/"
    ]
    assert record.uuid == PLIVO_RECORD["message_uuid"]
    assert record.to == "+14155550101"
    assert record.state == "delivered"
    assert record.error_code is None  # "000": no error
    assert record.units == 1
    assert record.message_time == datetime(2024, 3, 6, 4, 16, 28, 123456, tzinfo=UTC)


def test_get_message_of_an_unknown_uuid_is_not_found(scripted):
    scripted.status = 404
    with pytest.raises(MessageNotFound) as raised:
        scripted_client(scripted).get_message("nope")
    assert raised.value.status == 404


@pytest.mark.parametrize("status", [500, 504])
def test_a_failed_lookup_is_only_transient(scripted, status):
    # A GET changes nothing at Plivo: a 5xx or a timeout on it means "ask again later".
    scripted.status = status
    with pytest.raises(PlivoError) as raised:
        scripted_client(scripted).get_message("x")
    assert raised.value.kind is ErrorKind.TRANSIENT


def test_a_lookup_read_timeout_is_transient(scripted):
    scripted.status, scripted.body, scripted.delay = 200, PLIVO_RECORD, 1.0
    with pytest.raises(PlivoError) as raised:
        scripted_client(scripted, timeout=0.3).get_message("x")
    assert raised.value.kind is ErrorKind.TRANSIENT


def test_list_messages_asks_for_one_filtered_page_and_reads_plivos_meta(scripted):
    scripted.status = 200
    scripted.body = {
        "api_id": "x",
        "meta": {
            "limit": 20,
            "offset": 20,
            "next": f"/v1/Account/{SANDBOX_AUTH_ID}/Message/?limit=20&offset=40",
            "previous": f"/v1/Account/{SANDBOX_AUTH_ID}/Message/?limit=20&offset=0",
            "total_count": 45,
        },
        "objects": [PLIVO_RECORD, {**PLIVO_RECORD, "message_state": "sent", "error_code": None}],
    }
    start = datetime(2024, 3, 6, 4, 16, 20, tzinfo=UTC)
    end = datetime(2024, 3, 6, 4, 16, 35, 500000, tzinfo=UTC)

    page = scripted_client(scripted).list_messages(
        SENDER, start, end, to_number="+14155550101", offset=20
    )

    path = urlsplit(scripted.paths[0])
    assert path.path == f"/v1/Account/{SANDBOX_AUTH_ID}/Message/"
    assert parse_qs(path.query) == {
        "message_direction": ["outbound"],
        "from_number": ["14155550000"],
        "to_number": ["14155550101"],
        "message_time__gte": ["2024-03-06 04:16:20.000000"],
        "message_time__lte": ["2024-03-06 04:16:35.500000"],
        "limit": ["20"],
        "offset": ["20"],
    }
    assert [record.state for record in page.records] == ["delivered", "sent"]
    assert (page.has_next, page.next_offset, page.total_count) == (True, 40, 45)


def test_the_last_page_says_so(scripted):
    scripted.status = 200
    scripted.body = {
        "api_id": "x",
        "meta": {"limit": 20, "offset": 0, "next": None, "previous": None, "total_count": 0},
        "objects": [],
    }
    page = scripted_client(scripted).list_messages(SENDER, datetime.now(UTC), datetime.now(UTC))
    assert (page.records, page.has_next, page.next_offset) == ([], False, None)


def test_a_list_refused_for_its_rate_keeps_plivos_words(scripted):
    scripted.status = 429
    scripted.body = {"api_id": "x", "error": "too many requests"}
    with pytest.raises(PlivoError) as raised:
        scripted_client(scripted).list_messages(SENDER, datetime.now(UTC), datetime.now(UTC))
    assert (raised.value.kind, str(raised.value)) == (
        ErrorKind.TRANSIENT,
        "HTTP 429: too many requests",
    )
