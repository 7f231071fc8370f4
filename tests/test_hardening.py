"""Issue 10's reproductions, each now refused or fixed: webhook replays and V2 forgery, bodies
no route should parse, numbers that are not digits, outbound requests that could be steered
inside, spreadsheet formulas in CSV exports, and the headers every answer carries."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import func, select, update

from shared.config import SANDBOX_AUTH_TOKEN
from shared.db import session_scope
from shared.models import Batch, Broadcast, InboundMessage, OptOut, Recipient
from shared.safe_http import Unreachable, UnsafeUrl, request
from tests.conftest import API_KEY, make_settings, settings_env
from tests.services import free_port
from workers.delivery_reports import drain
from workers.notifications import deliver_notice

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = "https://hooks.example.com"
INBOUND_URL = f"{PUBLIC}/webhooks/plivo/inbound"
STATUS_URL = f"{PUBLIC}/webhooks/plivo/status"
LIVE = {
    "plivo_auth_id": "MA" + "B" * 18,
    "plivo_auth_token": SecretStr("t"),
    "callback_secret": SecretStr("s3cret"),
    "plivo_sender": "+14155550000",
    "media_check": False,
}
NUMBERS = ["+14155550101", "+14155550102"]


def count(settings, model, *where) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def client_for(settings, **changes):
    from api import create_app

    client = create_app(settings.model_copy(update=changes)).test_client()
    client.environ_base["HTTP_X_API_KEY"] = API_KEY
    return client


# Plivo's signatures, written from PLIVO.md (independent of the service and the SDK).


def v3_headers(url: str, params: dict[str, str], nonce: str) -> dict[str, str]:
    signed = url + "?" + "".join(f"{k}{params[k]}" for k in sorted(params)) + "." + nonce
    digest = hmac.new(SANDBOX_AUTH_TOKEN.encode(), signed.encode(), hashlib.sha256).digest()
    return {
        "X-Plivo-Signature-V3": base64.b64encode(digest).decode(),
        "X-Plivo-Signature-V3-Nonce": nonce,
    }


def v2_headers(url: str, nonce: str) -> dict[str, str]:
    """V2 signs the URL and the nonce only: nothing of the form."""
    digest = hmac.new(SANDBOX_AUTH_TOKEN.encode(), (url + nonce).encode(), hashlib.sha256)
    return {
        "X-Plivo-Signature-V2": base64.b64encode(digest.digest()).decode(),
        "X-Plivo-Signature-V2-Nonce": nonce,
    }


def inbound(text: str, sender: str = "14155550199", **extra) -> dict[str, str]:
    return {
        "From": sender,
        "To": "14155550000",
        "Text": text,
        "Type": "sms",
        "MessageUUID": uuid.uuid4().hex,
        **extra,
    }


def opted_out(settings, phone: str = "+14155550199") -> bool:
    with session_scope(settings.database_url) as session:
        return session.get(OptOut, phone) is not None


@pytest.fixture()
def hooks(settings):
    return client_for(settings, public_base_url=PUBLIC)


def post_inbound(hooks, params, headers):
    return hooks.post("/webhooks/plivo/inbound", data=params, headers=headers)


def test_a_replayed_inbound_stop_is_403_and_the_opt_out_list_is_unchanged(hooks, settings):
    stop, start = inbound("STOP"), inbound("START")
    stop_headers = v3_headers(INBOUND_URL, stop, "nonce-stop")
    assert post_inbound(hooks, stop, stop_headers).status_code == 200
    started = post_inbound(hooks, start, v3_headers(INBOUND_URL, start, "nonce-start"))
    assert started.status_code == 200
    assert not opted_out(settings)

    replay = post_inbound(hooks, stop, stop_headers)

    assert replay.status_code == 403
    assert "already received" in replay.get_json()["error"]["message"]
    assert not opted_out(settings)
    uuids = [stop["MessageUUID"], start["MessageUUID"]]
    assert count(settings, InboundMessage, InboundMessage.message_uuid.in_(uuids)) == 2


def test_plivo_redelivering_a_message_with_a_new_nonce_is_acknowledged_once(hooks, settings):
    stop, start = inbound("STOP"), inbound("START")
    post_inbound(hooks, stop, v3_headers(INBOUND_URL, stop, uuid.uuid4().hex))
    post_inbound(hooks, start, v3_headers(INBOUND_URL, start, uuid.uuid4().hex))

    again = post_inbound(hooks, stop, v3_headers(INBOUND_URL, stop, uuid.uuid4().hex))

    assert again.status_code == 200  # so that Plivo stops retrying
    assert not opted_out(settings)  # the old STOP did not undo the later START


@pytest.mark.parametrize("route_url", [INBOUND_URL, STATUS_URL])
def test_v2_signatures_are_refused_unless_enabled(hooks, settings, route_url):
    params = inbound("STOP") if route_url == INBOUND_URL else {"MessageUUID": "m", "Status": "sent"}
    path = route_url.removeprefix(PUBLIC)
    response = hooks.post(path, data=params, headers=v2_headers(route_url, uuid.uuid4().hex))
    assert response.status_code == 403
    assert not opted_out(settings)


def test_a_leaked_v2_header_pair_cannot_be_reused_for_other_numbers(settings):
    hooks = client_for(settings, public_base_url=PUBLIC, plivo_accept_v2_signatures=True)
    leaked = v2_headers(INBOUND_URL, "leaked-nonce")
    assert post_inbound(hooks, inbound("HELP"), leaked).status_code == 200  # the real one

    forged = post_inbound(hooks, inbound("STOP", sender="14155550142"), leaked)

    assert forged.status_code == 403
    assert not opted_out(settings, "+14155550142")


def test_a_message_that_failed_to_store_is_taken_when_plivo_retries_it(settings, tmp_path):
    stop = inbound("STOP")
    headers = v3_headers(INBOUND_URL, stop, "nonce-retried")
    broken = f"sqlite:///{tmp_path / 'never-migrated.db'}"  # no tables: the write fails
    failed = client_for(settings, public_base_url=PUBLIC, database_url=broken)

    assert post_inbound(failed, stop, headers).status_code == 500
    retried = post_inbound(client_for(settings, public_base_url=PUBLIC), stop, headers)
    assert retried.status_code == 200
    assert opted_out(settings)


def test_without_redis_to_check_replays_inbound_is_503_so_plivo_retries(settings):
    down = client_for(
        settings, public_base_url=PUBLIC, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    stop = inbound("STOP")
    response = post_inbound(down, stop, v3_headers(INBOUND_URL, stop, uuid.uuid4().hex))
    assert response.status_code == 503
    assert not opted_out(settings)


# Bodies no route should parse.

JSON_ROUTES = [
    ("post", "/v1/broadcasts"),
    ("post", "/v1/mms"),
    ("put", "/v1/limits"),
    ("post", "/v1/opt-outs"),
    ("post", f"/v1/broadcasts/{uuid.uuid4()}/retry"),
]


@pytest.mark.parametrize("method, path", JSON_ROUTES)
@pytest.mark.parametrize("depth", [100_000, 100])  # past Python's recursion limit, and not
def test_deeply_nested_json_is_400_on_every_json_route(client, settings, method, path, depth):
    body = '{"text": ' + "[" * depth + "]" * depth + "}"
    response = getattr(client, method)(path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == {
        "code": "invalid_json",
        "message": "body: JSON nested deeper than 32 levels",
    }
    assert count(settings, Broadcast) == 0


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/broadcasts", {"recipients": NUMBERS, "text": "Hi \ud800"}, "text"),
        ("/v1/broadcasts", {"recipients": [NUMBERS[0], "+1\udfff"], "text": "Hi"}, "recipients.1"),
        ("/v1/opt-outs", {"phones": NUMBERS, "reason": "\ud800 asked"}, "reason"),
        ("/v1/mms", {"recipient": NUMBERS[0], "text": "\udc00", "media_ids": ["m"]}, "text"),
    ],
)
def test_a_lone_surrogate_is_400_naming_the_field(client, settings, path, body, field):
    response = client.post(path, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert message.startswith(f"{field}: contains a lone surrogate"), message
    assert count(settings, Broadcast) == 0
    assert count(settings, OptOut) == 0


def test_a_lone_surrogate_in_a_key_is_400(client):
    body = '{"senders": {"\\ud800": {"sms_mps": 1}}}'
    response = client.put("/v1/limits", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "lone surrogate" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_400_naming_the_field(client, settings, constant):
    body = f'{{"recipients": ["+14155550101"], "text": "Hi", "skip_invalid": {constant}}}'
    response = client.post("/v1/broadcasts", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == (
        "skip_invalid: must be a finite number (NaN and Infinity are not JSON)"
    )


def test_surrogate_pairs_and_other_scripts_are_still_text(client, settings):
    body = {"recipients": NUMBERS, "text": "Hi \U0001f600 한국어 ünïcode"}
    response = client.post("/v1/broadcasts", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.get_json()


VANITY_AND_OTHER_DIGITS = [
    "+1415555ABCD",
    "+1 800 FLOWERS",
    "+１４１５５５５０１０１",  # full-width digits
    "+1 415 555 0101 ext. 2",
]


@pytest.mark.parametrize("number", VANITY_AND_OTHER_DIGITS)
def test_numbers_with_letters_or_non_ascii_digits_are_refused(client, settings, number):
    response = client.post("/v1/broadcasts", json={"recipients": [number], "text": "Hi"})
    assert response.status_code == 400
    invalid = response.get_json()["error"]["details"]["invalid"]
    assert invalid == [
        {
            "index": 0,
            "value": number,
            "reason": "may contain only digits, a leading +, spaces, dashes, dots and parentheses",
        }
    ]
    assert count(settings, Recipient) == 0


@pytest.fixture()
def small_live_api(settings):
    """The API over real HTTP (Werkzeug's server decodes chunked bodies), 4 KiB limit."""
    from werkzeug.serving import make_server

    from api import create_app

    port = free_port()
    app = create_app(settings.model_copy(update={"max_body_bytes": 4096}))
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=10)


def chunked(data: bytes, size: int = 1000):
    """A generator body: requests sends it with Transfer-Encoding: chunked, no length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_a_chunked_body_over_the_limit_is_413_not_cut_and_parsed(small_live_api, settings):
    # Cut at 4096 bytes this CSV would still be a valid list of the first numbers.
    rows = "".join(f"+1415555{i:04d}\n" for i in range(1000)).encode()
    response = requests.post(
        f"{small_live_api}/v1/opt-outs",
        data=chunked(rows),
        headers={"Content-Type": "text/csv", "X-API-Key": API_KEY},
        timeout=10,
    )
    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in response.json()["error"]["message"]
    assert count(settings, OptOut) == 0


def test_a_chunked_body_under_the_limit_is_read_whole(small_live_api, settings):
    body = json.dumps({"recipients": NUMBERS, "text": "Hi"}).encode()
    response = requests.post(
        f"{small_live_api}/v1/broadcasts",
        data=chunked(body, 10),
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
        timeout=10,
    )
    assert response.status_code == 202, response.text


def test_the_same_json_reserialised_is_a_replay_not_a_conflict(client, settings):
    sent = '{"recipients": ["+14155550101", "+14155550102"], "text": "Once"}'
    again = '{"text":"Once","recipients":["+14155550101","+14155550102"]}'
    changed = '{"text":"Twice","recipients":["+14155550101","+14155550102"]}'
    key = {"Idempotency-Key": "canonical"}

    def post(body):
        return client.post(
            "/v1/broadcasts", data=body, content_type="application/json", headers=key
        )

    first, replay, other = post(sent), post(again), post(changed)

    assert (first.status_code, replay.status_code, other.status_code) == (202, 202, 409)
    assert replay.get_json()["id"] == first.get_json()["id"]
    assert count(settings, Broadcast) == 1


# Outbound requests.

LOOPBACK_FORMS = [
    "2130706433",
    "0x7f000001",
    "017700000001",
    "127.1",
    "0",
    "localhost.",
    "[::1]",
    "[::ffff:127.0.0.1]",
]


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
def test_every_spelling_of_loopback_is_refused_as_a_callback_url(settings, host):
    live = client_for(settings, **LIVE)
    response = live.post(
        "/v1/broadcasts",
        json={"recipients": NUMBERS, "text": "Hi", "callback_url": f"https://{host}/hook"},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["message"].startswith("callback_url: ")
    assert count(settings, Broadcast) == 0


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
def test_every_spelling_of_loopback_is_refused_as_a_media_url(settings, host):
    live = client_for(settings, **LIVE)
    media = ["https://cdn.example.com/a.jpg", f"https://{host}/b.jpg"]
    response = live.post("/v1/mms", json={"recipient": NUMBERS[0], "media_urls": media})
    assert response.status_code == 400
    assert response.get_json()["error"]["message"].startswith("media_urls.1: ")
    assert count(settings, Broadcast) == 0


def test_a_public_address_in_a_resolver_only_spelling_is_refused(settings):
    live = client_for(settings, **LIVE)
    response = live.post(
        "/v1/broadcasts",  # 134744072 is 8.8.8.8, but not every parser reads it so
        json={"recipients": NUMBERS, "text": "Hi", "callback_url": "https://134744072/"},
    )
    assert response.status_code == 400
    assert "four decimal numbers" in response.get_json()["error"]["message"]


class _Recorder(BaseHTTPRequestHandler):
    """Records (method, path, Host) of each request. /moved answers 307 to /elsewhere, as a
    receiver that was checked at intake could; everything else 204."""

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.command, self.path, self.headers["Host"]))
        if self.path == "/moved":
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
        else:
            self.send_response(204)
        self.end_headers()

    do_GET = do_POST = do_HEAD = _answer  # noqa: N815 (http.server's naming)

    def log_message(self, *_args):
        pass


@pytest.fixture()
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_completion_notice_never_follows_a_redirect(client, settings, recorder):
    url = f"http://127.0.0.1:{recorder.server_port}/moved"
    created = client.post(
        "/v1/broadcasts", json={"recipients": NUMBERS, "text": "Hi", "callback_url": url}
    ).get_json()

    outcome = deliver_notice(settings, created["id"])

    assert outcome == "HTTP 307 (redirect not followed)"
    assert [(method, path) for method, path, _ in recorder.seen] == [("POST", "/moved")]


def test_the_address_checked_is_the_address_connected_to(monkeypatch, recorder):
    """A rebinding resolver: the first answer passes the check, later ones would not."""
    real = socket.getaddrinfo
    # Each name answers its list in turn, then repeats the last answer.
    answers = {"rebind.test": ["127.0.0.1", "203.0.113.9"], "inside.test": ["127.0.0.1"]}
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        queue = answers[host]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://rebind.test:{recorder.server_port}/page?x=1"

    answer = request("GET", url, allow_http=True, allow_internal=True, timeout=(2, 2))

    assert answer.status == 204
    assert lookups == ["rebind.test"]  # one lookup; the connection went to its answer
    assert recorder.seen == [("GET", "/page?x=1", f"rebind.test:{recorder.server_port}")]
    with pytest.raises(UnsafeUrl, match="resolves to a loopback"):
        inside = f"http://inside.test:{recorder.server_port}/"
        request("GET", inside, allow_http=True, allow_internal=False)
    assert len(recorder.seen) == 1


@pytest.fixture(scope="module")
def localhost_cert(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder


def test_https_connects_to_the_checked_address_with_the_names_sni_and_certificate(
    localhost_cert, recorder
):
    names = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(localhost_cert / "cert.pem", localhost_cert / "key.pem")
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    tls = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    tls.seen = []
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=tls.serve_forever, daemon=True).start()
    try:
        url = f"https://localhost:{tls.server_port}/media.jpg"
        trusted = str(localhost_cert / "cert.pem")
        answer = request("HEAD", url, allow_http=False, allow_internal=True, ca_certs=trusted)
        with pytest.raises(Unreachable):  # the certificate is checked: certifi's CAs refuse it
            request("HEAD", url, allow_http=False, allow_internal=True)
    finally:
        tls.shutdown()
        tls.server_close()
    assert answer.status == 204
    assert names[0] == "localhost"
    assert tls.seen[0] == ("HEAD", "/media.jpg", f"localhost:{tls.server_port}")


# CSV exports.


def csv_rows(response) -> list[list[str]]:
    assert response.status_code == 200
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


def test_a_formula_error_code_from_a_status_report_is_escaped_in_the_export(settings):
    hooks = client_for(settings, public_base_url=PUBLIC)
    created = hooks.post("/v1/broadcasts", json={"recipients": NUMBERS[:1], "text": "Hi"})
    broadcast_id = created.get_json()["id"]
    with session_scope(settings.database_url) as session:
        session.execute(update(Recipient).values(status="queued", message_uuid="u-formula"))
        session.execute(update(Broadcast).values(status="sending"))
        session.execute(update(Batch).values(status="submitted"))
    report = {
        "MessageUUID": "u-formula",
        "Status": "failed",
        "ErrorCode": "=2+3",
        "To": NUMBERS[0][1:],
    }
    headers = v3_headers(STATUS_URL, report, uuid.uuid4().hex)
    assert hooks.post("/webhooks/plivo/status", data=report, headers=headers).status_code == 200
    drain(settings)

    rows = csv_rows(hooks.get(f"/v1/broadcasts/{broadcast_id}/recipients?format=csv"))

    header, row = rows[0], rows[1]
    assert row[header.index("error_code")] == "'=2+3"
    assert row[header.index("phone")] == NUMBERS[0]  # E.164 stays a number


@pytest.mark.parametrize(
    "reason",
    ['=HYPERLINK("https://evil.example","x")', "+1+1", "-2", "@SUM(1)", "\tx", "\r=1"],
)
def test_an_opt_out_reason_that_starts_a_formula_is_escaped_in_the_export(client, reason):
    client.post("/v1/opt-outs", json={"phones": NUMBERS[:1], "reason": reason})

    rows = csv_rows(client.get("/v1/opt-outs", headers={"Accept": "text/csv"}))

    assert rows[1][0] == NUMBERS[0]
    assert rows[1][2] == "'" + reason


def test_an_inbound_stop_text_that_starts_a_formula_is_escaped_in_the_export(hooks, client):
    stop = inbound("@SUM(1+1)", MessageIntent="optout")
    post_inbound(hooks, stop, v3_headers(INBOUND_URL, stop, uuid.uuid4().hex))

    rows = csv_rows(client.get("/v1/opt-outs", headers={"Accept": "text/csv"}))

    assert rows[1][:3] == ["+14155550199", "inbound", "'@SUM(1+1)"]


# Headers.


def assert_hardened(response):
    headers = response.headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "Server" not in headers


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("get", "/healthz", 200),
        ("get", "/openapi.json", 200),
        ("get", "/docs", 200),
        ("get", "/v1/broadcasts", 200),
        ("get", "/v1/opt-outs", 200),
        ("get", "/nowhere", 404),
        ("delete", "/v1/broadcasts", 405),
        ("post", "/v1/broadcasts", 415),
    ],
)
def test_every_answer_carries_the_security_headers(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert_hardened(response)


def test_an_answer_without_an_api_key_carries_them_too(app):
    assert_hardened(app.test_client().get("/v1/broadcasts"))


def test_405_names_the_allowed_methods(client):
    response = client.delete("/v1/broadcasts")
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS", "POST"}
    assert response.get_json()["error"]["code"] == "method_not_allowed"


class _Loads(HTMLParser):
    """What a page makes the browser fetch or run."""

    def __init__(self):
        super().__init__()
        self.sources, self.inline_scripts, self.inline_styles = [], 0, 0
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe") and attrs.get("src"):
            self.sources.append(attrs["src"])
        elif tag == "link" and attrs.get("rel") in ("stylesheet", "icon", "preload"):
            self.sources.append(attrs["href"])
        self._in = tag if tag in ("script", "style") and not attrs.get("src") else None
        self.inline_styles += "style" in attrs

    def handle_data(self, data):
        if self._in == "script" and data.strip():
            self.inline_scripts += 1
        elif self._in == "style" and data.strip():
            self.inline_styles += 1


def test_docs_load_nothing_their_csp_would_block(client):
    response = client.get("/docs")
    policy = response.headers["Content-Security-Policy"]
    page = _Loads()
    page.feed(response.get_data(as_text=True))

    assert "default-src 'self'" in policy and "unsafe-inline" not in policy
    # Scripts, styles and images from this origin only (a CDN would need the CSP changed),
    # and nothing inline, which the policy blocks.
    assert all(not re.match(r"^(https?:)?//", src) for src in page.sources), page.sources
    assert (page.inline_scripts, page.inline_styles) == (0, 0)


def _load_run_script():
    """scripts/run.py (`make run`), which is a script, not a package module."""
    if "run_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("run_script", ROOT / "scripts" / "run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["run_script"] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["run_script"]


def test_compose_starts_flower_with_the_same_conf_file_as_make_run():
    compose = (ROOT / "docker-compose.yml").read_text()
    conf = next(arg for arg in _load_run_script().flower_args(5555) if arg.startswith("--conf="))
    assert (ROOT / conf.removeprefix("--conf=")).is_file()
    assert f"--conf=/app/{conf.removeprefix('--conf=')}" in compose


def test_flower_asks_for_its_login_on_metrics_and_healthcheck_too(redis_url, tmp_path):
    """Flower as `make run` starts it (its arguments from scripts/run.py)."""
    port = free_port()
    settings = make_settings(
        redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 'unused.db'}"
    )
    env = {**settings_env(settings), "FLOWER_BASIC_AUTH": "admin:flower-secret"}
    argv = [sys.executable, "-m", "celery", "-A", "workers.app"]
    argv += _load_run_script().flower_args(port)
    argv += ["--persistent=False", f"--db={tmp_path / 'flower.db'}"]  # not the repo's var/
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115 (closed below)
    flower = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{base}/healthcheck", timeout=2)
                break
            except requests.ConnectionError:
                assert flower.poll() is None, (tmp_path / "flower.log").read_text()
                assert time.monotonic() < deadline, "Flower did not start"
                time.sleep(0.3)
        login = ("admin", "flower-secret")
        for path in ("/metrics", "/healthcheck", "/api/workers"):
            assert requests.get(base + path, timeout=5).status_code == 401, path
            wrong = requests.get(base + path, auth=("admin", "guess"), timeout=5)
            assert wrong.status_code == 401, path
        assert requests.get(f"{base}/healthcheck", auth=login, timeout=5).text == "OK"
        metrics = requests.get(f"{base}/metrics", auth=login, timeout=5)
        assert metrics.status_code == 200 and "flower_" in metrics.text
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        try:
            flower.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(flower.pid, signal.SIGKILL)
            flower.wait()
        log.close()
