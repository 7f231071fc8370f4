"""The operator console at the Flask level: sign-in, cookies, CSRF, scopes, every page, and
actions that go through the API's own routes (so its audit trail records them)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import delete, func, select, update
from werkzeug.datastructures import MultiDict
from werkzeug.test import encode_multipart

from shared.db import session_scope
from shared.models import (
    AuditEvent,
    Batch,
    Broadcast,
    ConsoleSession,
    OptOut,
    Recipient,
)
from tests.conftest import API_KEY

NUMBERS = [f"+1415555{i:04d}" for i in range(1, 11)]
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture()
def console_db(settings):
    with session_scope(settings.database_url) as session:
        session.execute(delete(ConsoleSession))
    return settings


def _sign_in(app, key: str = API_KEY, next_page: str = ""):
    """A browser-like test client signed in with `key`; returns (client, response)."""
    browser = app.test_client()
    form = browser.get("/console/sign-in")
    token = TOKEN.search(form.get_data(as_text=True)).group(1)
    answer = browser.post(
        "/console/sign-in", data={"api_key": key, "csrf_token": token, "next": next_page}
    )
    return browser, answer


def _csrf(browser, path="/console/broadcasts") -> str:
    return TOKEN.search(browser.get(path).get_data(as_text=True)).group(1)


def _broadcast(client, numbers=NUMBERS, text="Console hello") -> str:
    response = client.post("/v1/broadcasts", json={"recipients": numbers, "text": text})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _key(client, name: str, scopes: list[str]) -> str:
    response = client.post("/v1/keys", json={"name": name, "scopes": scopes})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["key"]


def test_pages_send_a_browser_without_a_session_to_sign_in(app, console_db):
    response = app.test_client().get("/console/broadcasts?status=paused")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/console/sign-in?next=")
    assert app.test_client().get("/console/broadcasts/live").status_code == 401


def test_a_valid_key_gets_a_strict_http_only_cookie_and_only_its_hash_is_stored(
    app, console_db
):
    browser, answer = _sign_in(app, next_page="/console/limits")
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/console/limits"
    cookie = next(
        value for name, value in answer.headers.items()
        if name == "Set-Cookie" and value.startswith("bulksms_console=")
    )  # fmt: skip
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http, no https PUBLIC_BASE_URL
    token = cookie.split(";")[0].split("=", 1)[1]
    with session_scope(console_db.database_url) as session:
        ids = list(session.scalars(select(ConsoleSession.id)))
    assert len(ids) == 1 and token not in ids[0] and len(ids[0]) == 64
    assert browser.get("/console/broadcasts").status_code == 200


def test_the_cookie_is_secure_when_the_service_is_public_over_https(console_db):
    from api import create_app

    app = create_app(console_db.model_copy(update={"public_base_url": "https://sms.example"}))
    _browser, answer = _sign_in(app)
    cookies = [v for k, v in answer.headers.items() if k == "Set-Cookie"]
    assert any(c.startswith("bulksms_console=") and "Secure" in c for c in cookies)


def test_a_wrong_key_is_refused_and_opens_no_session(app, console_db):
    browser, answer = _sign_in(app, key="not-a-key")
    assert answer.status_code == 401
    assert "not a valid API key" in answer.get_data(as_text=True)
    assert browser.get("/console/broadcasts").status_code == 302


def test_sign_in_without_the_forms_token_is_refused(app, console_db):
    answer = app.test_client().post("/console/sign-in", data={"api_key": API_KEY})
    assert answer.status_code == 400


def test_an_open_redirect_after_sign_in_is_not_followed(app, console_db):
    _browser, answer = _sign_in(app, next_page="//evil.example/console/")
    assert answer.headers["Location"] == "/console/broadcasts"


def test_a_form_posted_without_its_csrf_token_changes_nothing(app, client, console_db):
    broadcast_id = _broadcast(client)
    browser, _ = _sign_in(app)
    for token in ("", "forged"):
        path = f"/console/broadcasts/{broadcast_id}/pause"
        answer = browser.post(path, data={"csrf_token": token})
        assert answer.status_code == 400
    assert client.get(f"/v1/broadcasts/{broadcast_id}").get_json()["status"] == "queued"


def test_an_action_goes_through_the_api_and_lands_in_its_audit_trail(app, client, console_db):
    broadcast_id = _broadcast(client)
    browser, _ = _sign_in(app)
    page = browser.get(f"/console/broadcasts/{broadcast_id}/confirm/pause")
    assert "10 recipients in 1 pending batches wait until you resume" in page.get_data(as_text=True)
    answer = browser.post(
        f"/console/broadcasts/{broadcast_id}/pause", data={"csrf_token": _csrf(browser)}
    )
    assert answer.status_code == 303
    assert client.get(f"/v1/broadcasts/{broadcast_id}").get_json()["status"] == "paused"
    with session_scope(console_db.database_url) as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.target == broadcast_id))
        assert (event.action, event.actor_name) == ("broadcast.pause", "bootstrap")
    detail = browser.get(answer.headers["Location"]).get_data(as_text=True)
    assert "Paused: no new batch starts" in detail and "broadcast.pause" in detail


def test_a_refused_action_shows_the_apis_reason(app, client, console_db):
    broadcast_id = _broadcast(client)
    client.post(f"/v1/broadcasts/{broadcast_id}/cancel")
    browser, _ = _sign_in(app)
    answer = browser.post(
        f"/console/broadcasts/{broadcast_id}/pause", data={"csrf_token": _csrf(browser)}
    )
    assert answer.status_code == 409
    assert "the broadcast is already cancelled" in answer.get_data(as_text=True)


def _finish_with_failures(database_url: str, broadcast_id: str, failed: int, unknown: int):
    """As if Plivo had answered: the batch over, some recipients failed or unknown."""
    with session_scope(database_url) as session:
        session.execute(
            update(Batch).where(Batch.broadcast_id == broadcast_id).values(status="submitted")
        )
        session.execute(
            update(Broadcast)
            .where(Broadcast.id == broadcast_id)
            .values(status="completed_with_failures")
        )
        ids = list(
            session.scalars(
                select(Recipient.id)
                .where(Recipient.broadcast_id == broadcast_id)
                .order_by(Recipient.id)
            )
        )
        session.execute(
            update(Recipient).where(Recipient.id.in_(ids)).values(status="delivered")
        )
        session.execute(
            update(Recipient)
            .where(Recipient.id.in_(ids[:failed]))
            .values(status="failed", error_code="20")
        )
        session.execute(
            update(Recipient)
            .where(Recipient.id.in_(ids[failed : failed + unknown]))
            .values(status="unknown")
        )


def test_the_retry_confirmation_says_who_is_retried_and_who_is_left_out(
    app, client, console_db
):
    from uuid import UUID

    broadcast_id = _broadcast(client)
    _finish_with_failures(console_db.database_url, UUID(broadcast_id), failed=4, unknown=2)
    browser, _ = _sign_in(app)
    detail = browser.get(f"/console/broadcasts/{broadcast_id}").get_data(as_text=True)
    assert "network error (temporary)" in detail  # code 20's meaning, and its advice:
    assert re.search(r"<td>20</td><td class=\"num\">4</td>.*?<td>yes</td>", detail, re.S)
    page = browser.get(f"/console/broadcasts/{broadcast_id}/confirm/retry").get_data(as_text=True)
    assert "Retry 4 failed recipients, in new batches." in page
    assert "Left out: 2 unknown" in page
    both = browser.get(
        f"/console/broadcasts/{broadcast_id}/confirm/retry?statuses=failed&statuses=unknown"
    ).get_data(as_text=True)
    assert "Retry 4 failed, 2 unknown recipients" in both
    answer = browser.post(
        f"/console/broadcasts/{broadcast_id}/retry",
        data={"csrf_token": _csrf(browser), "statuses": ["failed"]},
    )
    assert answer.status_code == 303
    assert "retried=4" in answer.headers["Location"]
    by_status = client.get(f"/v1/broadcasts/{broadcast_id}").get_json()["recipients"]["by_status"]
    assert by_status == {"pending": 4, "unknown": 2, "delivered": 4}


def test_every_page_renders_under_the_page_csp(app, client, console_db):
    broadcast_id = _broadcast(client)
    browser, _ = _sign_in(app)
    pages = [
        "/console/broadcasts",
        "/console/broadcasts?status=queued&from=2020-01-01&to=2100-01-01",
        "/console/broadcasts/live",
        f"/console/broadcasts/{broadcast_id}",
        f"/console/broadcasts/{broadcast_id}?rstatus=pending",
        f"/console/broadcasts/{broadcast_id}/live",
        *(f"/console/broadcasts/{broadcast_id}/confirm/{a}" for a in ("pause", "cancel")),
        "/console/broadcasts/new",
        "/console/opt-outs",
        "/console/limits",
        "/console/system",
    ]
    for path in pages:
        response = browser.get(path)
        assert response.status_code == 200, path
        assert response.headers["Cache-Control"] == "no-store"
        csp = response.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "default-src 'self'" in csp, path
        html = response.get_data(as_text=True)
        # Nothing inline for the CSP to block, nothing from another host.
        assert "<script>" not in html and "style=" not in html, path
        assert not re.search(r'(src|href)="(https?:)?//', html), path
    listing = browser.get("/console/broadcasts").get_data(as_text=True)
    assert broadcast_id in listing and "10 pending" in listing
    csv_export = browser.get(f"/console/broadcasts/{broadcast_id}/recipients.csv")
    assert csv_export.mimetype == "text/csv"
    lines = csv_export.get_data(as_text=True).splitlines()
    assert lines[0].startswith("phone,status") and len(lines) == 11


def test_the_list_filters_by_status_and_date(app, client, console_db):
    paused = _broadcast(client)
    client.post(f"/v1/broadcasts/{paused}/pause")
    queued = _broadcast(client)
    browser, _ = _sign_in(app)
    only_paused = browser.get("/console/broadcasts?status=paused").get_data(as_text=True)
    assert paused in only_paused and queued not in only_paused
    future = browser.get("/console/broadcasts?from=2100-01-01").get_data(as_text=True)
    assert paused not in future and "No broadcasts match" in future


def test_what_a_session_sees_and_does_follows_its_keys_scopes(app, client, console_db):
    others = _broadcast(client)
    reader = _key(client, "reader", ["read"])
    browser, _ = _sign_in(app, key=reader)
    # A non-admin key sees only its own broadcasts, as in the API.
    assert others not in browser.get("/console/broadcasts").get_data(as_text=True)
    assert browser.get(f"/console/broadcasts/{others}").status_code == 404
    assert browser.get("/console/broadcasts/new").status_code == 403
    limits = browser.get("/console/limits").get_data(as_text=True)
    assert "needs a key with the admin scope" in limits and 'name="sms_mps"' not in limits
    refused = browser.post(
        "/console/limits", data={"csrf_token": _csrf(browser), "sms_mps": "1"}
    )
    assert refused.status_code == 403 and "admin scope" in refused.get_data(as_text=True)

    sender = _key(client, "sender", ["send"])
    browser, _ = _sign_in(app, key=sender)
    assert browser.get("/console/broadcasts/new").status_code == 200
    assert browser.get("/console/system").status_code == 403


def test_revoking_the_key_ends_its_sessions(app, client, console_db):
    key = _key(client, "operator", ["read", "send"])
    browser, _ = _sign_in(app, key=key)
    assert browser.get("/console/broadcasts").status_code == 200
    assert client.delete("/v1/keys/operator").status_code == 200
    assert browser.get("/console/broadcasts").status_code == 302
    with session_scope(console_db.database_url) as session:
        assert session.scalar(select(func.count()).select_from(ConsoleSession)) == 0


def test_signing_out_deletes_the_session(app, console_db):
    browser, _ = _sign_in(app)
    answer = browser.post("/console/sign-out", data={"csrf_token": _csrf(browser)})
    assert answer.status_code == 303
    with session_scope(console_db.database_url) as session:
        assert session.scalar(select(func.count()).select_from(ConsoleSession)) == 0
    assert browser.get("/console/broadcasts").status_code == 302


def test_a_new_broadcast_is_quoted_then_sent_with_the_quoted_body(app, client, console_db):
    browser, _ = _sign_in(app)
    token = _csrf(browser, "/console/broadcasts/new")
    quoted = browser.post(
        "/console/broadcasts/new",
        data={
            "csrf_token": token,
            "step": "quote",
            "recipients": "\n".join(NUMBERS[:3]),
            "text": "Hello\r\nthere",
            "priority": "high",
            "quiet": "default",
        },
    )
    assert quoted.status_code == 200
    html = quoted.get_data(as_text=True)
    with session_scope(console_db.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Broadcast)) == 0
    assert 'id="quote"' in html or 'id="no-quote"' in html
    payload = re.search(r'name="payload" value="([^"]+)"', html).group(1)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', html).group(1)
    import html as html_lib

    form = {"csrf_token": token, "step": "send", "payload": html_lib.unescape(payload),
            "idempotency_key": key}  # fmt: skip
    sent = browser.post("/console/broadcasts/new", data=form)
    assert sent.status_code == 303
    again = browser.post("/console/broadcasts/new", data=form)  # a double click
    assert again.headers["Location"] == sent.headers["Location"]
    with session_scope(console_db.database_url) as session:
        row = session.scalar(select(Broadcast))
        assert (row.text, row.priority) == ("Hello\nthere", "high")
        assert session.scalar(select(func.count()).select_from(Broadcast)) == 1


def test_a_bad_new_broadcast_shows_the_apis_own_words(app, console_db):
    browser, _ = _sign_in(app)
    answer = browser.post(
        "/console/broadcasts/new",
        data={"csrf_token": _csrf(browser), "step": "quote", "recipients": "+1415555000",
              "text": "Hi", "quiet": "default"},
    )  # fmt: skip
    assert answer.status_code == 400
    assert "invalid phone number" in answer.get_data(as_text=True)


def test_a_csv_upload_becomes_the_recipients(app, console_db):
    import io

    browser, _ = _sign_in(app)
    upload = (io.BytesIO(b"phone\n+14155550001\n+14155550002\n"), "numbers.csv")
    answer = browser.post(
        "/console/broadcasts/new",
        data={"csrf_token": _csrf(browser), "step": "quote", "text": "Hi", "file": upload,
              "quiet": "default"},
        content_type="multipart/form-data",
    )  # fmt: skip
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200, html
    assert "+14155550001" in html and "+14155550002" in html and "phone" not in html.split(
        'name="payload"'
    )[1].split(">")[0]


def test_opt_outs_are_added_searched_imported_exported_and_removed(app, console_db):
    import io

    with session_scope(console_db.database_url) as session:
        session.execute(delete(OptOut))
    browser, _ = _sign_in(app)
    token = _csrf(browser)
    added = browser.post(
        "/console/opt-outs",
        data={"csrf_token": token, "action": "add", "phones": "+14155550001\n+14155550002"},
    )
    assert added.status_code == 303
    assert "2 number(s) added" in browser.get(added.headers["Location"]).get_data(as_text=True)
    imported = browser.post(
        "/console/opt-outs",
        data={"csrf_token": token, "action": "import", "reason": "paper form",
              "file": (io.BytesIO(b"phone\n+447700900123\n"), "stop.csv")},
        content_type="multipart/form-data",
    )  # fmt: skip
    assert imported.status_code == 303
    found = browser.get("/console/opt-outs?q=4477").get_data(as_text=True)
    assert "+447700900123" in found and "+14155550001" not in found
    export = browser.get("/console/opt-outs.csv").get_data(as_text=True).splitlines()
    assert len(export) == 4 and "paper form" in export[1] + export[2] + export[3]
    removed = browser.post(
        "/console/opt-outs", data={"csrf_token": token, "action": "remove", "phone": "+14155550001"}
    )
    assert removed.status_code == 303
    with session_scope(console_db.database_url) as session:
        assert sorted(session.scalars(select(OptOut.phone))) == ["+14155550002", "+447700900123"]


def test_an_admin_changes_limits_from_the_console(app, client, console_db):
    browser, _ = _sign_in(app)
    answer = browser.post(
        "/console/limits",
        data={"csrf_token": _csrf(browser), "sms_mps": "7", "sender": "+14155550000",
              "sender_mps": "2"},
    )  # fmt: skip
    assert answer.status_code == 303
    limits = client.get("/v1/limits").get_json()
    assert limits["sms_mps"] == {"value": 7.0, "source": "override"}
    assert limits["senders"]["+14155550000"]["sms_mps"]["value"] == 2.0
    bad = browser.post("/console/limits", data={"csrf_token": _csrf(browser), "sms_mps": "-1"})
    assert bad.status_code == 400 and "sms_mps" in bad.get_data(as_text=True)


def test_the_system_page_reports_health_queues_and_no_worker(app, console_db):
    browser, _ = _sign_in(app)
    html = browser.get("/console/system").get_data(as_text=True)
    assert "Sandbox: messages go to" in html
    assert re.search(r"<dt>Database</dt><dd class=\"ok\">ok</dd>", html)
    assert "No worker answered" in html, html[html.index("h-workers") :][:600]
    assert "<td>sms</td>" in html


def _quote_form(browser, token: str, **fields) -> dict:
    """The quote step's hidden Send form, as the browser would post it."""
    import html as html_lib

    page = browser.post(
        "/console/broadcasts/new",
        data={"csrf_token": token, "step": "quote", "quiet": "default", **fields},
    )
    assert page.status_code == 200, page.get_data(as_text=True)[:2000]
    html = page.get_data(as_text=True)
    payload = re.search(r'name="payload" value="([^"]+)"', html).group(1)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', html).group(1)
    return {"csrf_token": token, "step": "send", "payload": html_lib.unescape(payload),
            "idempotency_key": key}  # fmt: skip


def test_send_after_an_api_error_keeps_the_same_idempotency_key(app, console_db):
    browser, _ = _sign_in(app)
    token = _csrf(browser, "/console/broadcasts/new")
    form = _quote_form(browser, token, recipients=NUMBERS[0], text="Hi")
    # The API refuses this Send (as a commit followed by a 5xx would also end): the page
    # offers Send again, which must carry the key the API may already have stored.
    refused = browser.post(
        "/console/broadcasts/new", data={**form, "payload": '{"recipients": ["+1"], "text": ""}'}
    )

    assert refused.status_code == 400
    again = re.search(r'name="idempotency_key" value="([^"]+)"', refused.get_data(as_text=True))
    assert again.group(1) == form["idempotency_key"]


def test_a_csv_upload_finds_the_phone_column_by_name_and_keeps_the_fields(app, console_db):
    import io
    import json

    browser, _ = _sign_in(app)
    upload = (io.BytesIO(b"first_name,Phone\nAna,+14155550001\nBob,+14155550002\n"), "c.csv")
    answer = browser.post(
        "/console/broadcasts/new",
        data={"csrf_token": _csrf(browser), "step": "quote", "text": "Hi {first_name}",
              "file": upload, "quiet": "default"},
        content_type="multipart/form-data",
    )  # fmt: skip

    html = answer.get_data(as_text=True)
    assert answer.status_code == 200, html
    import html as html_lib

    payload = json.loads(html_lib.unescape(re.search(r'name="payload" value="([^"]+)"', html)[1]))
    assert payload["recipients"] == [
        {"to": "+14155550001", "fields": {"first_name": "Ana"}},
        {"to": "+14155550002", "fields": {"first_name": "Bob"}},
    ]


def test_a_csv_upload_without_a_phone_column_or_with_a_bloated_cell_says_why(app, console_db):
    import io

    browser, _ = _sign_in(app)
    answers = [
        browser.post(
            "/console/broadcasts/new",
            data={"csrf_token": _csrf(browser), "step": "quote", "text": "Hi",
                  "file": (io.BytesIO(body), "c.csv"), "quiet": "default"},
            content_type="multipart/form-data",
        )  # fmt: skip
        for body in (b"name\nAna\n", b"phone,note\n+14155550001," + b"x" * 1001 + b"\n")
    ]

    assert [answer.status_code for answer in answers] == [400, 400]
    assert "header: no phone column" in answers[0].get_data(as_text=True)
    assert "line 2: field &#39;note&#39; over 1000 characters" in answers[1].get_data(
        as_text=True
    )


def test_forty_thousand_pasted_numbers_are_quoted_not_refused_as_too_large(app, console_db):
    browser, _ = _sign_in(app)
    numbers = "\n".join(f"+1415{2_000_000 + i:07d}" for i in range(40_000))
    assert len(numbers) > 500_000  # Flask's default cap on one multipart text field

    # Encoded here, as a browser would: the test client spools a body this size to a
    # temporary file that it never closes.
    boundary, body = encode_multipart(
        MultiDict({"csrf_token": _csrf(browser), "step": "quote", "recipients": numbers,
                   "text": "Hi", "quiet": "default"})
    )  # fmt: skip

    answer = browser.post(
        "/console/broadcasts/new",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )

    assert answer.status_code == 200, answer.get_data(as_text=True)[:2000]
    assert "<strong>40,000</strong> recipients will be texted" in answer.get_data(as_text=True)


def test_removing_an_opt_out_keeps_the_form_value_inside_the_path(app, client, console_db):
    with session_scope(console_db.database_url) as session:
        session.execute(delete(OptOut))
    client.post("/v1/opt-outs", json={"phones": ["+14155550001"]})
    browser, _ = _sign_in(app)

    answer = browser.post(
        "/console/opt-outs",
        data={"csrf_token": _csrf(browser), "action": "remove", "phone": "+14155550001?x=1"},
    )

    assert answer.status_code == 400  # the whole value is the number, and it is not one
    with session_scope(console_db.database_url) as session:
        assert list(session.scalars(select(OptOut.phone))) == ["+14155550001"]


def test_the_resume_confirmation_leaves_out_what_quiet_hours_still_hold(app, client, console_db):
    from datetime import UTC, datetime, timedelta
    from uuid import UUID

    response = client.post(
        "/v1/broadcasts",
        json={"recipients": [*NUMBERS[:3], "+447700900001", "+447700900002"], "text": "Hi",
              "quiet_hours": {"start": "03:00", "end": "03:01"}},
    )  # fmt: skip
    assert response.status_code == 202, response.get_json()
    broadcast_id = response.get_json()["id"]
    assert client.post(f"/v1/broadcasts/{broadcast_id}/pause").status_code == 200
    stored_id = UUID(broadcast_id)
    later = datetime.now(UTC) + timedelta(hours=2)
    with session_scope(console_db.database_url) as session:
        uk_batches = select(Recipient.batch_id).where(
            Recipient.broadcast_id == stored_id, Recipient.phone.like("+44%")
        )
        session.execute(
            update(Batch).where(Batch.broadcast_id == stored_id).values(hold_until=None)
        )
        session.execute(update(Batch).where(Batch.id.in_(uk_batches)).values(hold_until=later))
    browser, _ = _sign_in(app)

    page = browser.get(f"/console/broadcasts/{broadcast_id}/confirm/resume")

    text = page.get_data(as_text=True)
    assert "3 pending recipients are handed to the workers again" in text, text
    assert "2 recipients held by quiet hours stay held" in text
