"""MMS: every validation rule, media checks against a local server of real files, the
upload, and sending through the sandbox with a real worker at the MMS rate."""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Broadcast, Recipient
from tests.conftest import API_KEY, Worker, sandbox_stats, wait_for

US = [f"+1415555{i:04d}" for i in range(100, 200)]
CANADA = "+16135550123"
JAMAICA = "+18765550123"
UK = "+447700900123"
MB = 1024 * 1024

TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "html": "text/html"}


class _Media(BaseHTTPRequestHandler):
    """/<size>.<ext> serves `size` bytes of that type; /nohead/... refuses HEAD (405) so the
    check must fall back to a ranged GET; /nolength/... sends no Content-Length; anything
    else is 404."""

    def _parse(self):
        path = self.path.strip("/")
        mode, _, name = path.rpartition("/")
        size, _, ext = name.partition(".")
        if not size.isdigit() or ext not in TYPES:
            return mode, None, None
        return mode, int(size), TYPES[ext]

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        mode, size, content_type = self._parse()
        if mode == "nohead":
            self.send_response(405)
            self.end_headers()
            return
        self._headers(mode, size, content_type, 200)

    def do_GET(self):  # noqa: N802
        mode, size, content_type = self._parse()
        if size is not None and self.headers.get("Range") == "bytes=0-0":
            self.send_response(206)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Range", f"bytes 0-0/{size}")
            self.send_header("Content-Length", "1")
            self.end_headers()
            self.wfile.write(b"\0")
            return
        self._headers(mode, size, content_type, 200)
        if size:
            self.wfile.write(b"\0" * size)

    def _headers(self, mode, size, content_type, status):
        if size is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if mode != "nolength":
            self.send_header("Content-Length", str(size))
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture(scope="module")
def media_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Media)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def checked(settings, media_server):
    """A sandbox-mode API with the media check on and plain http media allowed (the local
    media server has no TLS)."""
    from api import create_app

    app = create_app(settings.model_copy(update={"media_check": True, "mms_allow_http": True}))
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = API_KEY
    return client


def post_mms(client, **body):
    body.setdefault("recipients", US[:2])
    return client.post("/v1/mms", json=body)


def broadcasts(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(Broadcast))


def assert_refused(response, settings, *words):
    assert response.status_code == 400, response.get_json()
    message = response.get_json()["error"]["message"]
    for word in words:
        assert word in message, message
    assert broadcasts(settings) == 0


def test_an_mms_to_a_list_is_accepted_as_kind_mms(checked, settings, media_server):
    response = post_mms(checked, text="Look", media_urls=[f"{media_server}/1000.jpg"])
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["kind"] == "mms"
    assert body["counts"]["accepted"] == 2
    assert body["batches"]["total"] == 2  # one destination per call by default


def test_an_mms_to_one_recipient_is_accepted(client):
    response = client.post("/v1/mms", json={"recipient": US[0], "media_ids": ["m-1"]})
    assert response.status_code == 202
    assert response.get_json()["counts"]["accepted"] == 1


@pytest.mark.parametrize(
    "body, words",
    [
        ({}, ["media_urls, media_ids", "1 to 10"]),
        ({"media_ids": [f"m{i}" for i in range(11)]}, ["11 given"]),
        (
            {"media_ids": [f"m{i}" for i in range(6)], "media_urls": ["https://e.com/a.jpg"] * 5},
            ["11 given"],
        ),
        ({"media_ids": ["m"], "recipient": US[0]}, ["recipient"]),  # both audiences
        ({"media_ids": ["m"], "recipients": None}, ["recipients"]),  # neither
        ({"media_urls": ["ftp://example.com/a.jpg"]}, ["media_urls.0", "https"]),
        ({"media_urls": ["/relative.jpg"]}, ["media_urls.0"]),
        ({"media_ids": ["m"], "colour": "red"}, ["colour"]),
    ],
)
def test_media_fields_are_checked(client, settings, body, words):
    assert_refused(post_mms(client, **body), settings, *words)


def test_http_media_is_refused_unless_configured(client, settings, media_server):
    url = f"{media_server}/100.jpg"
    assert_refused(post_mms(client, media_urls=[url]), settings, "https")


LIVE = {
    "plivo_auth_id": "MA" + "C" * 18,
    "plivo_auth_token": SecretStr("t"),
    "plivo_sender": "+14155550000",
    "media_check": False,
}


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/a.jpg",
        "https://10.0.0.8/a.jpg",
        "https://192.168.1.1/a.jpg",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/a.jpg",
        "https://localhost/a.jpg",
    ],
)
def test_internal_media_addresses_are_refused_outside_sandbox_mode(settings, url):
    from api import create_app

    live = create_app(settings.model_copy(update=LIVE)).test_client()
    response = live.post(
        "/v1/mms",
        json={"recipients": US[:1], "media_urls": [url]},
        headers={"X-API-Key": API_KEY},
    )
    assert_refused(response, settings, "media_urls.0", "internal" if "localhost" in url else "")


def test_recipients_outside_the_us_and_canada_are_refused_by_name(client, settings):
    response = post_mms(client, recipients=[US[0], CANADA, UK, JAMAICA], media_ids=["m"])
    # The rule they break, not "send E.164 numbers": they are E.164 numbers.
    assert_refused(response, settings, "recipients", "MMS can only be sent to US and Canadian")
    assert "E.164" not in response.get_json()["error"]["message"]
    invalid = response.get_json()["error"]["details"]["invalid"]
    assert [(item["value"], item["reason"]) for item in invalid] == [
        (UK, "MMS can only be sent to US and Canadian numbers"),
        (JAMAICA, "MMS can only be sent to US and Canadian numbers"),
    ]


def test_an_alphanumeric_sender_is_refused_naming_the_rule(client, settings):
    # Every MMS goes to the US or Canada, where carriers drop alphanumeric senders.
    response = post_mms(client, sender="MyShop", media_ids=["m"])

    assert_refused(response, settings, "sender: MyShop is alphanumeric", "NUMERIC_FALLBACK_SENDER")


def test_an_alphanumeric_sender_gives_way_to_the_numeric_fallback(app, client, settings):
    fallback = "+14155550999"
    app.config["SETTINGS"] = settings.model_copy(update={"numeric_fallback_sender": fallback})

    response = post_mms(client, sender="MyShop", media_ids=["m"])

    assert response.status_code == 202, response.get_json()
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(Broadcast.sender)) == fallback


def test_an_area_code_phonenumbers_cannot_place_is_taken_as_us(client, settings):
    # The same rule as the alphanumeric check's (shared/compliance.py): refusing a
    # number that may be American is a 400 nobody can act on.
    unplaceable = "+12005550123"  # area code 200: not assigned
    response = post_mms(client, recipients=[unplaceable], media_ids=["m"])
    assert response.status_code == 202, response.get_json()


def test_recipients_outside_the_us_and_canada_are_recorded_rejected_when_skipping(client, settings):
    response = post_mms(client, recipients=[US[0], CANADA, UK], media_ids=["m"], skip_invalid=True)
    assert response.status_code == 202
    assert response.get_json()["counts"]["rejected"] == 1
    with session_scope(settings.database_url) as session:
        rows = dict(session.execute(select(Recipient.phone, Recipient.status)).all())
    assert rows == {US[0]: "pending", CANADA: "pending", UK: "rejected"}


@pytest.mark.parametrize(
    "path, words",
    [
        ("/3000000.jpg", ["over the 2 MB limit"]),
        ("/100.html", ["text/html"]),
        ("/missing", ["HTTP 404"]),
        ("/nolength/100.png", ["Content-Length"]),
    ],
)
def test_the_media_check_names_the_url_and_the_rule(checked, settings, media_server, path, words):
    url = media_server + path
    assert_refused(post_mms(checked, media_urls=[url]), settings, url, *words)


def test_the_media_check_adds_up_the_total(checked, settings, media_server):
    urls = [f"{media_server}/{int(1.9 * MB)}.png" for _ in range(3)]
    assert_refused(post_mms(checked, media_urls=urls), settings, "under 5 MB")


def test_the_media_check_falls_back_to_a_ranged_get(checked, media_server):
    response = post_mms(checked, media_urls=[f"{media_server}/nohead/2048.gif"])
    assert response.status_code == 202, response.get_json()


def test_an_unreachable_media_url_is_refused(checked, settings):
    from tests.services import free_port

    url = f"http://127.0.0.1:{free_port()}/a.jpg"
    assert_refused(post_mms(checked, media_urls=[url]), settings, url, "not reachable")


def test_media_uploads_go_to_plivo_and_return_a_media_id(client, sandbox):
    response = client.post(
        "/v1/media",
        data={"file": (io.BytesIO(b"\x89PNG" + b"\0" * 100), "pic.png", "image/png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["media_id"]
    assert response.get_json()["size"] == 104


@pytest.mark.parametrize(
    "upload, words",
    [
        (("page.html", b"<html>", "text/html"), "text/html"),
        (("big.png", b"\0" * (2 * MB + 1), "image/png"), "2 MB"),
        (("empty.png", b"", "image/png"), "empty"),
    ],
)
def test_uploads_are_checked_before_they_leave(live_api, sandbox, upload, words):
    # Over real HTTP: werkzeug's test client spools a large body to a file it never closes.
    response = requests.post(
        f"{live_api}/v1/media", files={"file": upload}, headers={"X-API-Key": API_KEY}, timeout=10
    )
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]["message"]
    assert sandbox_stats(sandbox)["requests"] == 0


def mms_worker(settings, tmp_path, **update) -> Worker:
    return Worker(settings.model_copy(update=update), tmp_path / "mms.log", queues="mms")


def test_20_mms_go_through_the_sandbox_with_a_real_worker(client, settings, sandbox, tmp_path):
    worker = mms_worker(settings, tmp_path, mms_mps=0)
    try:
        worker.wait_ready()
        response = client.post(
            "/v1/mms",
            json={"recipients": US[:20], "text": "Pic", "media_urls": ["https://e.com/a.jpg"]},
        )
        location = response.headers["Location"]

        def all_queued():
            body = client.get(location).get_json()
            return body["recipients"]["by_status"].get("queued") == 20

        wait_for(all_queued, timeout=60, message=worker.log_tail())
    finally:
        worker.stop()
    stats = sandbox_stats(sandbox)
    assert stats["by_type"] == {"sms": 0, "mms": 20}
    assert stats["duplicates"] == 0
    assert sorted(stats["sends"]) == sorted(number[1:] for number in US[:20])


def test_mms_are_paced_at_the_mms_rate(client, settings, sandbox, tmp_path):
    # 20 MMS at 2 per second: the first at once, the last 9.5 s later, never sooner.
    worker = mms_worker(settings, tmp_path, mms_mps=2)
    try:
        worker.wait_ready()
        client.post("/v1/mms", json={"recipients": US[20:40], "media_ids": ["m-1"]})
        wait_for(lambda: sandbox_stats(sandbox)["messages"] == 20, timeout=60)
    finally:
        worker.stop()
    times = sorted(entry["t"] for entry in requests.get(f"{sandbox}/stats/requests").json())
    assert len(times) == 20
    assert times[-1] - times[0] >= 9.4
    assert times[-1] - times[0] < 13
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) > 0.4
