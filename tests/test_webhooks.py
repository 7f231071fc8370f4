"""Plivo's callbacks through the real HTTP path (Flask), signed by code written here from
PLIVO.md, independent of both the service and the SDK."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest
from sqlalchemy import delete, func, select, update

from shared.config import SANDBOX_AUTH_TOKEN
from shared.db import session_scope
from shared.models import Batch, Broadcast, DeliveryReport, InboundMessage, OptOut, Recipient
from tests.conftest import wait_for
from tests.services import free_port
from workers.delivery_reports import drain

PUBLIC = "https://hooks.example.com"
STATUS_URL = f"{PUBLIC}/webhooks/plivo/status"
INBOUND_URL = f"{PUBLIC}/webhooks/plivo/inbound"


def v3_signature(url: str, params: dict[str, str], nonce: str, token: str) -> str:
    """PLIVO.md: url + '?' + sorted key+value pairs + '.' + nonce, HMAC-SHA256, base64."""
    payload = url + "?" + "".join(f"{k}{params[k]}" for k in sorted(params)) + "." + nonce
    digest = hmac.new(token.encode(), payload.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def test_the_signer_matches_plivos_worked_example():
    assert (
        v3_signature(
            "https://example.com/status/",
            {"MessageUUID": "abc", "Status": "delivered"},
            "12345",
            "my_auth_token",
        )
        == "mNOygT08ka6drSNUVcJK+TV6P2xRcl1ELXtshxpDmH0="
    )


def signed_headers(url, params, token=SANDBOX_AUTH_TOKEN, nonce=None) -> dict[str, str]:
    nonce = nonce or uuid.uuid4().hex
    return {
        "X-Plivo-Signature-V3": v3_signature(url, params, nonce, token),
        "X-Plivo-Signature-V3-Nonce": nonce,
    }


@pytest.fixture()
def public_settings(settings):
    with session_scope(settings.database_url) as session:
        session.execute(delete(DeliveryReport))
    return settings.model_copy(update={"public_base_url": PUBLIC})


@pytest.fixture()
def hooks(public_settings):
    from api import create_app

    return create_app(public_settings).test_client()


def post_status(hooks, params, **signing):
    headers = signed_headers(STATUS_URL, params, **signing)
    return hooks.post("/webhooks/plivo/status", data=params, headers=headers)


def stored_reports(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(DeliveryReport))


REPORT = {"MessageUUID": "m-1", "Status": "delivered", "To": "14155550101", "Sequence": "3"}


def test_a_signed_report_is_committed_before_its_200(hooks, public_settings):
    assert post_status(hooks, REPORT, nonce="n-stored").status_code == 200
    with session_scope(public_settings.database_url) as session:
        row = session.scalar(select(DeliveryReport))
    assert (row.nonce, row.message_uuid, row.params) == ("n-stored", "m-1", REPORT)
    assert row.applied_at is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Plivo-Signature-V3-Nonce": "n1"},
        signed_headers(STATUS_URL, REPORT, token="someone-elses-token"),
        signed_headers(STATUS_URL, {**REPORT, "Status": "failed"}),  # body was changed
        signed_headers("http://localhost/webhooks/plivo/status", REPORT),  # not the public URL
    ],
)
def test_a_bad_or_missing_signature_is_403_and_nothing_is_recorded(hooks, public_settings, headers):
    response = hooks.post("/webhooks/plivo/status", data=REPORT, headers=headers)
    assert response.status_code == 403
    assert stored_reports(public_settings) == 0


def test_a_replayed_signature_is_refused(hooks, public_settings):
    assert post_status(hooks, REPORT, nonce="once").status_code == 200
    assert post_status(hooks, REPORT, nonce="once").status_code == 403
    assert stored_reports(public_settings) == 1


def test_a_replay_is_refused_after_the_report_was_applied(hooks, public_settings):
    assert post_status(hooks, REPORT, nonce="applied-once").status_code == 200
    drain(public_settings)
    assert post_status(hooks, REPORT, nonce="applied-once").status_code == 403
    assert stored_reports(public_settings) == 1


@pytest.mark.parametrize(
    "params",
    [
        {**REPORT, "MessageUUID": "u" * 65},  # longer than any Plivo uuid (and the column)
        {**REPORT, "Status": ""},
        {"Status": "sent"},
    ],
)
def test_a_malformed_report_is_400_and_nothing_is_recorded(hooks, public_settings, params):
    assert post_status(hooks, params).status_code == 400
    assert stored_reports(public_settings) == 0


def test_v2_signatures_are_accepted_only_when_enabled(hooks, public_settings):
    from api import create_app

    nonce = "v2nonce"
    digest = hmac.new(
        SANDBOX_AUTH_TOKEN.encode(), (STATUS_URL + nonce).encode(), hashlib.sha256
    ).digest()
    headers = {
        "X-Plivo-Signature-V2": base64.b64encode(digest).decode(),
        "X-Plivo-Signature-V2-Nonce": nonce,
    }
    # V2 signs no form fields (PLIVO_ACCEPT_V2_SIGNATURES; tests/test_hardening.py).
    assert hooks.post("/webhooks/plivo/status", data=REPORT, headers=headers).status_code == 403
    enabled = public_settings.model_copy(update={"plivo_accept_v2_signatures": True})
    response = create_app(enabled).test_client().post(
        "/webhooks/plivo/status", data=REPORT, headers=headers
    )
    assert response.status_code == 200


def test_without_a_public_base_url_the_request_url_is_used(client, settings):
    params = {"MessageUUID": "m-2", "Status": "sent"}
    headers = signed_headers("http://localhost/webhooks/plivo/status", params)
    assert client.post("/webhooks/plivo/status", data=params, headers=headers).status_code == 200


def test_the_database_being_down_is_a_503_so_plivo_retries(public_settings, tmp_path):
    from api import create_app

    if public_settings.database_url.startswith("sqlite"):
        down = f"sqlite:///{tmp_path / 'never-migrated.db'}"  # no table to write to
    else:
        down = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # nobody listens
    app = create_app(public_settings.model_copy(update={"database_url": down}))
    response = post_status(app.test_client(), REPORT)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"


def test_reports_need_no_redis(public_settings):
    from api import create_app

    down = public_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    assert post_status(create_app(down).test_client(), REPORT).status_code == 200
    assert stored_reports(public_settings) == 1


# Applying reports: a broadcast whose recipients Plivo has accepted.

NUMBERS = ["+14155550101", "+14155550102", "+14155550103"]


@pytest.fixture()
def accepted(client, public_settings):
    """Three recipients `queued` with uuids u-0..u-2, as after a submitted batch."""
    response = client.post("/v1/broadcasts", json={"recipients": NUMBERS, "text": "Reports"})
    with session_scope(public_settings.database_url) as session:
        for index, phone in enumerate(NUMBERS):
            session.execute(
                update(Recipient)
                .where(Recipient.phone == phone)
                .values(status="queued", message_uuid=f"u-{index}")
            )
        session.execute(update(Broadcast).values(status="sending"))
        session.execute(update(Batch).values(status="submitted"))
    return response.get_json()["id"]


def report(uuid_, status, sequence, **extra):
    to = NUMBERS[int(uuid_[-1])][1:]
    return {"MessageUUID": uuid_, "Status": status, "Sequence": str(sequence), "To": to, **extra}


def recipient(settings, uuid_) -> Recipient:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(Recipient).where(Recipient.message_uuid == uuid_))


def send_and_apply(hooks, settings, *reports) -> dict:
    for params in reports:
        assert post_status(hooks, params).status_code == 200
    return drain(settings)


def test_reports_move_a_recipient_forward(hooks, public_settings, accepted):
    send_and_apply(hooks, public_settings, report("u-0", "sent", 2))
    assert recipient(public_settings, "u-0").status == "sent"
    assert recipient(public_settings, "u-0").sent_at is not None

    send_and_apply(hooks, public_settings, report("u-0", "delivered", 3, Units="2"))
    done = recipient(public_settings, "u-0")
    assert (done.status, done.units) == ("delivered", 2)
    assert done.finished_at is not None


def test_a_late_sent_never_overwrites_delivered(hooks, public_settings, accepted):
    send_and_apply(hooks, public_settings, report("u-0", "delivered", 3))
    send_and_apply(hooks, public_settings, report("u-0", "sent", 2), report("u-0", "queued", 1))
    assert recipient(public_settings, "u-0").status == "delivered"


def test_out_of_order_reports_in_one_pass_keep_the_furthest(hooks, public_settings, accepted):
    counts = send_and_apply(
        hooks,
        public_settings,
        report("u-1", "delivered", 3),
        report("u-1", "sent", 2),
        report("u-1", "delivered", 3),
    )
    assert recipient(public_settings, "u-1").status == "delivered"
    assert (counts["reports"], counts["applied"], counts["waiting"]) == (3, 1, 0)


def test_a_final_status_is_never_replaced(hooks, public_settings, accepted):
    send_and_apply(hooks, public_settings, report("u-2", "undelivered", 3, ErrorCode="80"))
    send_and_apply(hooks, public_settings, report("u-2", "delivered", 4))
    done = recipient(public_settings, "u-2")
    assert (done.status, done.error_code) == ("undelivered", "80")
    assert done.error_reason == "destination temporarily unavailable"


def test_error_200_adds_the_number_to_the_opt_out_list(hooks, public_settings, accepted):
    send_and_apply(hooks, public_settings, report("u-0", "failed", 2, ErrorCode="200"))
    with session_scope(public_settings.database_url) as session:
        opt_out = session.get(OptOut, NUMBERS[0])
    assert opt_out is not None and opt_out.source == "error_200"
    assert recipient(public_settings, "u-0").status == "failed"


def unapplied(settings) -> list[DeliveryReport]:
    with session_scope(settings.database_url) as session:
        return list(
            session.scalars(select(DeliveryReport).where(DeliveryReport.applied_at.is_(None)))
        )


def test_a_report_before_its_uuid_waits_and_is_applied_once_the_uuid_is_recorded(
    hooks, public_settings, accepted
):
    with session_scope(public_settings.database_url) as session:
        session.execute(
            update(Recipient).where(Recipient.message_uuid == "u-2").values(message_uuid=None)
        )
    counts = send_and_apply(hooks, public_settings, report("u-2", "delivered", 3))
    assert (counts["applied"], counts["waiting"]) == (0, 1)
    assert [row.message_uuid for row in unapplied(public_settings)] == ["u-2"]

    # The worker's write of the uuid lands (it lost the race with Plivo's callback).
    with session_scope(public_settings.database_url) as session:
        session.execute(
            update(Recipient).where(Recipient.phone == NUMBERS[2]).values(message_uuid="u-2")
        )
    wait_for(lambda: drain(public_settings)["applied"], timeout=15, interval=0.5)
    assert recipient(public_settings, "u-2").status == "delivered"
    assert unapplied(public_settings) == []


def test_a_status_we_do_not_track_is_consumed_without_change(hooks, public_settings, accepted):
    counts = send_and_apply(hooks, public_settings, report("u-0", "read", 5))
    assert (counts["reports"], counts["applied"], counts["waiting"]) == (1, 0, 0)
    assert recipient(public_settings, "u-0").status == "queued"
    assert unapplied(public_settings) == []


def test_the_broadcast_completes_when_every_recipient_is_final(hooks, public_settings, accepted):
    send_and_apply(
        hooks,
        public_settings,
        report("u-0", "delivered", 3),
        report("u-1", "delivered", 3),
    )
    with session_scope(public_settings.database_url) as session:
        assert session.scalar(select(Broadcast.status)) == "sending"
    send_and_apply(hooks, public_settings, report("u-2", "failed", 2, ErrorCode="50"))
    with session_scope(public_settings.database_url) as session:
        assert session.scalar(select(Broadcast.status)) == "completed_with_failures"


# Inbound replies.


def post_inbound(hooks, text, sender="14155550199", message_uuid=None, **extra):
    params = {
        "From": sender,
        "To": "14155550000",
        "Text": text,
        "Type": "sms",
        "MessageUUID": message_uuid or uuid.uuid4().hex,
        **extra,
    }
    return hooks.post(
        "/webhooks/plivo/inbound", data=params, headers=signed_headers(INBOUND_URL, params)
    )


def opted_out(settings, phone="+14155550199") -> bool:
    with session_scope(settings.database_url) as session:
        return session.get(OptOut, phone) is not None


@pytest.mark.parametrize("text", ["STOP", "stop", "Stop  ", " unsubscribe", "STOP ALL", "quit"])
def test_stop_words_opt_the_number_out(hooks, public_settings, text):
    assert post_inbound(hooks, text).status_code == 200
    assert opted_out(public_settings)


@pytest.mark.parametrize("text", ["stop by at 5", "STOPPED", "please stop it"])
def test_other_messages_do_not_opt_out(hooks, public_settings, text):
    assert post_inbound(hooks, text).status_code == 200
    assert not opted_out(public_settings)


def test_plivos_optout_intent_opts_out_whatever_the_words(hooks, public_settings):
    post_inbound(hooks, "no more please", MessageIntent="optout")
    assert opted_out(public_settings)


def test_start_opts_back_in(hooks, public_settings):
    post_inbound(hooks, "STOP")
    post_inbound(hooks, "start")
    assert not opted_out(public_settings)


def stored_action(settings, message_uuid):
    with session_scope(settings.database_url) as session:
        return session.scalar(
            select(InboundMessage.action).where(InboundMessage.message_uuid == message_uuid)
        )


def test_yes_opts_back_in_only_a_number_that_is_opted_out(hooks, public_settings):
    # Plivo may tag YES as an opt-in; from a number never opted out it is still a reply.
    post_inbound(hooks, "YES", message_uuid="in-yes-1", MessageIntent="optin")
    assert stored_action(public_settings, "in-yes-1") is None

    post_inbound(hooks, "STOP")
    post_inbound(hooks, "resume", message_uuid="in-yes-2")
    assert stored_action(public_settings, "in-yes-2") == "opt_in"
    assert not opted_out(public_settings)


def test_help_is_recorded(hooks, public_settings):
    post_inbound(hooks, "HELP", message_uuid="in-help")
    with session_scope(public_settings.database_url) as session:
        stored = session.scalar(
            select(InboundMessage).where(InboundMessage.message_uuid == "in-help")
        )
    assert (stored.action, stored.phone, stored.text) == ("help", "+14155550199", "HELP")
    assert not opted_out(public_settings)


def test_a_redelivered_stop_does_not_undo_a_later_start(hooks, public_settings):
    post_inbound(hooks, "STOP", message_uuid="in-1")
    post_inbound(hooks, "START", message_uuid="in-2")
    post_inbound(hooks, "STOP", message_uuid="in-1")
    assert not opted_out(public_settings)


def test_an_unsigned_inbound_message_changes_nothing(hooks, public_settings):
    params = {"From": "14155550199", "To": "14155550000", "Text": "STOP", "MessageUUID": "x"}
    assert hooks.post("/webhooks/plivo/inbound", data=params).status_code == 403
    assert not opted_out(public_settings)
