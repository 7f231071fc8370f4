"""A broadcast's callback_url: checked at intake, notified once when the broadcast is final."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr
from sqlalchemy import update

from shared.db import session_scope
from shared.models import Batch, Broadcast, Recipient
from workers.notifications import deliver_notice
from workers.reconciler import reconcile


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture()
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_finished_broadcast_notifies_its_callback_url_once(client, settings, receiver):
    url = f"http://127.0.0.1:{receiver.server_port}/done"
    created = client.post(
        "/v1/broadcasts",
        json={"recipients": ["+14155550101"], "text": "Hi", "callback_url": url},
    ).get_json()
    with session_scope(settings.database_url) as session:
        session.execute(update(Batch).values(status="submitted"))
        session.execute(update(Recipient).values(status="delivered"))

    first = reconcile(settings)
    second = reconcile(settings)
    assert first["notices"] == 1 and second["notices"] == 0
    assert deliver_notice(settings, created["id"]) == "HTTP 204"

    headers, body = receiver.received[0]
    timestamp, mac = (part.split("=", 1)[1] for part in headers["X-Bulksms-Signature"].split(","))
    expected = hmac.new(
        b"sandbox-callback-secret", f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(mac, expected)
    notice = json.loads(body)
    assert notice["event"] == "broadcast.finished"
    assert notice["broadcast"]["id"] == created["id"]
    assert notice["broadcast"]["status"] == "completed"
    assert notice["broadcast"]["recipients"]["by_status"] == {"delivered": 1}


LIVE = {
    "plivo_auth_id": "MA" + "B" * 18,
    "plivo_auth_token": SecretStr("t"),
    "callback_secret": SecretStr("s3cret"),
    "plivo_sender": "+14155550000",
}


@pytest.mark.parametrize(
    "url, rule",
    [
        ("http://example.com/hook", "https"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://169.254.169.254/latest", "link-local"),
        ("https://localhost/hook", "internal"),
        ("not a url", "https"),
    ],
)
def test_outside_sandbox_mode_a_callback_url_must_be_public_https(settings, url, rule):
    from api import create_app

    live = create_app(settings.model_copy(update=LIVE)).test_client()
    response = live.post(
        "/v1/broadcasts",
        json={"recipients": ["+14155550101"], "text": "Hi", "callback_url": url},
        headers={"X-API-Key": "test-key"},
    )
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert message.startswith("callback_url:") and rule in message
    with session_scope(settings.database_url) as session:
        assert session.query(Broadcast).count() == 0


def test_a_callback_url_needs_a_signing_secret(settings):
    from api import create_app

    no_secret = {**LIVE, "callback_secret": SecretStr("")}
    live = create_app(settings.model_copy(update=no_secret)).test_client()
    response = live.post(
        "/v1/broadcasts",
        json={"recipients": ["+14155550101"], "text": "Hi", "callback_url": "https://example.com/"},
        headers={"X-API-Key": "test-key"},
    )
    assert response.status_code == 400
    assert "CALLBACK_SECRET" in response.get_json()["error"]["message"]
