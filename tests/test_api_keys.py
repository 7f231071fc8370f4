"""API keys as data: scopes at every boundary, keys stored hashed, revocation, the bootstrap
keys of API_KEYS, and the audit trail of operator actions (API and `bulksms`)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from api.auth import SCOPES
from shared.db import session_scope
from shared.models import ApiKey, AuditEvent, Broadcast
from tests.conftest import API_KEY
from tests.test_cli import run

NUMBERS = [f"+1415555{i:04d}" for i in range(1, 6)]


def create_key(client, name: str, *scopes: str) -> str:
    response = client.post("/v1/keys", json={"name": name, "scopes": list(scopes)})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["key"]


def client_for(app, key: str):
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = key
    return client


def send_broadcast(client) -> str:
    response = client.post("/v1/broadcasts", json={"recipients": NUMBERS, "text": "Hi"})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


@pytest.fixture()
def sender(app, client):
    return client_for(app, create_key(client, "marketing", "send"))


@pytest.fixture()
def reader(app, client):
    return client_for(app, create_key(client, "dashboard", "read"))


# Keys as data.


def test_a_new_key_is_shown_once_and_only_its_hash_is_stored(client, settings):
    response = client.post("/v1/keys", json={"name": "alerts", "scopes": ["send", "read"]})
    body = response.get_json()
    secret = body["key"]

    assert response.status_code == 201
    assert secret.startswith("bsk_") and len(secret) > 40
    assert body["scopes"] == ["read", "send"]
    listed = client.get("/v1/keys").get_json()["items"]
    assert [key["name"] for key in listed] == ["alerts"]
    assert "key" not in listed[0] and secret not in str(listed)
    with session_scope(settings.database_url) as session:
        row = session.scalar(select(ApiKey))
        stored = [str(value) for value in row.__dict__.values()]
        audit = [str(event.details) for event in session.scalars(select(AuditEvent))]
    assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert row.key_id == body["key_id"] == row.key_hash[:16]
    assert not any(secret in value for value in stored + audit)


def test_a_database_key_works_and_its_use_is_recorded(app, client, settings):
    own = client_for(app, create_key(client, "alerts", "send"))

    broadcast_id = send_broadcast(own)

    with session_scope(settings.database_url) as session:
        key = session.scalar(select(ApiKey))
        broadcast = session.get(Broadcast, uuid.UUID(broadcast_id))
    assert key.last_used_at is not None
    assert broadcast.api_key_id == key.key_id


def test_a_revoked_key_is_refused_at_once(app, client):
    key = create_key(client, "old", "send", "read")
    own = client_for(app, key)
    assert own.get("/v1/broadcasts").status_code == 200

    revoked = client.delete("/v1/keys/old")
    again = client.delete("/v1/keys/old")

    assert revoked.status_code == again.status_code == 200
    assert revoked.get_json()["revoked_at"] is not None
    refused = own.get("/v1/broadcasts")
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "unauthorized"
    assert client.delete("/v1/keys/never-made").status_code == 404


def test_names_are_unique_even_after_revocation_and_checked(client):
    create_key(client, "ops", "admin")
    client.delete("/v1/keys/ops")

    taken = client.post("/v1/keys", json={"name": "ops", "scopes": ["read"]})
    bootstrap = client.post("/v1/keys", json={"name": "bootstrap", "scopes": ["read"]})
    bad_scope = client.post("/v1/keys", json={"name": "x", "scopes": ["root"]})
    no_scope = client.post("/v1/keys", json={"name": "x", "scopes": []})
    bad_name = client.post("/v1/keys", json={"name": "a/b", "scopes": ["read"]})

    # "bootstrap" is taken too: by the keys in API_KEYS.
    assert [r.status_code for r in (taken, bootstrap)] == [409] * 2
    assert [r.status_code for r in (bad_scope, no_scope, bad_name)] == [400] * 3
    assert "scopes" in bad_scope.get_json()["error"]["message"]
    assert "name" in bad_name.get_json()["error"]["message"]


# Scope boundaries.


def test_a_send_key_cannot_change_limits(sender):
    response = sender.put("/v1/limits", json={"sms_mps": 0})

    assert response.status_code == 403
    assert "admin" in response.get_json()["error"]["message"]


def test_a_send_key_cannot_delete_opt_outs(client, sender):
    client.post("/v1/opt-outs", json={"phones": ["+14155550101"]})

    assert sender.delete("/v1/opt-outs/+14155550101").status_code == 403
    assert client.get("/v1/opt-outs").get_json()["items"][0]["phone"] == "+14155550101"


def test_a_send_key_cannot_see_or_touch_another_keys_broadcast(app, client, sender):
    other = client_for(app, create_key(client, "other-team", "send", "read"))
    theirs = send_broadcast(other)
    mine = send_broadcast(sender)

    for path in (
        f"/v1/broadcasts/{theirs}",
        f"/v1/broadcasts/{theirs}/recipients",
    ):
        assert sender.get(path).status_code == 404
    for action in ("pause", "resume", "cancel", "retry"):
        response = sender.post(f"/v1/broadcasts/{theirs}/{action}")
        assert response.status_code == 404, action
        assert response.get_json()["error"]["message"] == f"no broadcast {theirs!r}"
    listed = [row["id"] for row in sender.get("/v1/broadcasts").get_json()["items"]]
    assert listed == [mine]
    assert sender.get(f"/v1/broadcasts/{mine}").status_code == 200
    assert sender.get(f"/v1/broadcasts/{mine}/recipients").status_code == 200
    assert sender.post(f"/v1/broadcasts/{mine}/pause").status_code == 200
    assert client.get(f"/v1/broadcasts/{theirs}").get_json()["status"] == "queued"


def test_a_read_key_cannot_create_broadcasts(reader, settings):
    sms = reader.post("/v1/broadcasts", json={"recipients": NUMBERS, "text": "Hi"})
    mms = reader.post(
        "/v1/mms", json={"recipient": NUMBERS[0], "media_urls": ["https://example.com/a.png"]}
    )

    assert sms.status_code == mms.status_code == 403
    assert "send" in sms.get_json()["error"]["message"]
    assert reader.get("/v1/limits").status_code == 200
    assert reader.get("/v1/opt-outs").status_code == 200
    with session_scope(settings.database_url) as session:
        assert session.scalar(text("SELECT count(*) FROM broadcasts")) == 0


def test_only_admin_keys_manage_keys_and_read_the_audit_trail(app, client, sender, reader):
    for key in (sender, reader):
        assert key.post("/v1/keys", json={"name": "mine", "scopes": ["admin"]}).status_code == 403
        assert key.get("/v1/keys").status_code == 403
        assert key.delete("/v1/keys/marketing").status_code == 403
        assert key.get("/v1/audit").status_code == 403
    admin = client_for(app, create_key(client, "ops", "admin"))
    assert admin.get("/v1/keys").status_code == 200
    assert admin.put("/v1/limits", json={"sms_mps": 5}).status_code == 200


def test_the_bootstrap_key_is_admin_and_sees_every_broadcast(client, sender):
    theirs = send_broadcast(sender)

    assert client.get(f"/v1/broadcasts/{theirs}").status_code == 200
    listed = client.get("/v1/broadcasts").get_json()["items"]
    assert [row["id"] for row in listed] == [theirs]
    assert client.put("/v1/limits", json={"sms_mps": 5}).status_code == 200
    assert client.post(f"/v1/broadcasts/{theirs}/cancel").status_code == 200


def test_every_v1_route_has_a_scope_decision(app):
    routes = {rule.endpoint for rule in app.url_map.iter_rules() if rule.rule.startswith("/v1/")}

    # A route missing from SCOPES is admin-only; this makes adding one a decision.
    assert routes - set(SCOPES) == set()


# The audit trail.


def audit_events(client, **params) -> list[dict]:
    response = client.get("/v1/audit", query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["items"]


def test_every_operator_action_is_audited_with_who_what_and_when(app, client, sender):
    started = datetime.now(UTC) - timedelta(minutes=1)
    broadcast_id = send_broadcast(sender)
    for action in ("pause", "resume", "retry", "cancel"):
        assert sender.post(f"/v1/broadcasts/{broadcast_id}/{action}").status_code < 300
    assert client.put("/v1/limits", json={"sms_mps": 7}).status_code == 200
    sender.post("/v1/opt-outs", json={"phones": ["+1 415 555 0199"], "reason": "asked"})
    client.post("/v1/opt-outs", data="phone\n+14155550198\n", content_type="text/csv")
    assert client.delete("/v1/opt-outs/+14155550199").status_code == 204
    create_key(client, "temp", "read")
    client.delete("/v1/keys/temp")

    events = audit_events(client)

    seen = [(e["action"], e["actor"]["name"], e["target"]) for e in reversed(events)]
    assert seen == [
        ("key.create", "bootstrap", "marketing"),  # the `sender` fixture's key
        ("broadcast.pause", "marketing", broadcast_id),
        ("broadcast.resume", "marketing", broadcast_id),
        ("broadcast.retry", "marketing", broadcast_id),
        ("broadcast.cancel", "marketing", broadcast_id),
        ("limits.update", "bootstrap", "limits"),
        ("opt_out.add", "marketing", "+14155550199"),
        ("opt_out.import", "bootstrap", None),
        ("opt_out.delete", "bootstrap", "+14155550199"),
        ("key.create", "bootstrap", "temp"),
        ("key.revoke", "bootstrap", "temp"),
    ]
    by_action = {e["action"]: e for e in reversed(events)}  # the newest of each
    assert by_action["limits.update"]["details"] == {"change": {"sms_mps": 7}}
    assert by_action["broadcast.cancel"]["details"]["status"] == "cancelled"
    assert by_action["broadcast.retry"]["details"]["statuses"] == ["failed"]
    assert by_action["opt_out.import"]["details"]["added"] == 1
    assert by_action["key.create"]["details"]["scopes"] == ["read"]
    marketing = by_action["broadcast.pause"]["actor"]["key_id"]
    assert len(marketing) == 16
    assert all(datetime.fromisoformat(e["at"]) >= started for e in events)


def test_refused_actions_leave_no_audit_event(client, sender):
    broadcast_id = send_broadcast(sender)
    client.post(f"/v1/broadcasts/{broadcast_id}/cancel")

    assert sender.post(f"/v1/broadcasts/{broadcast_id}/pause").status_code == 409
    assert sender.put("/v1/limits", json={"sms_mps": 1}).status_code == 403
    assert client.delete("/v1/opt-outs/+14155550111").status_code == 404

    actions = [e["action"] for e in audit_events(client)]
    assert actions == ["broadcast.cancel", "key.create"]


def test_the_audit_trail_filters_and_pages(client, sender):
    broadcast_id = send_broadcast(sender)
    sender.post(f"/v1/broadcasts/{broadcast_id}/pause")
    sender.post(f"/v1/broadcasts/{broadcast_id}/resume")
    client.post(f"/v1/broadcasts/{broadcast_id}/pause")
    client.put("/v1/limits", json={"mms_mps": 1})

    pauses = audit_events(client, action="broadcast.pause")
    by_marketing = audit_events(client, actor="marketing")
    marketing_id = by_marketing[0]["actor"]["key_id"]
    future = audit_events(client, since=(datetime.now(UTC) + timedelta(minutes=1)).isoformat())
    first = client.get("/v1/audit", query_string={"limit": 2}).get_json()
    second = client.get(
        "/v1/audit", query_string={"limit": 2, "cursor": first["next_cursor"]}
    ).get_json()

    assert [e["actor"]["name"] for e in pauses] == ["bootstrap", "marketing"]
    assert [e["action"] for e in by_marketing] == ["broadcast.resume", "broadcast.pause"]
    assert audit_events(client, actor=marketing_id) == by_marketing
    assert future == []
    assert [e["action"] for e in first["items"] + second["items"]] == [
        "limits.update",
        "broadcast.pause",
        "broadcast.resume",
        "broadcast.pause",
    ]
    assert client.get("/v1/audit", query_string={"since": "yesterday"}).status_code == 400


# The CLI.


def test_keys_are_managed_and_the_audit_read_with_bulksms(live_api):
    created = run(live_api, "keys", "create", "ci-bot", "--scope", "send", "--scope", "read")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("bsk_") and "cannot be shown again" in created.stderr

    listed = run(live_api, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert "ci-bot" in listed.stdout and "read,send" in listed.stdout
    assert secret not in listed.stdout

    refused = run(live_api, "limits", "set", "--sms-mps", "5", key=secret)
    assert refused.returncode == 2
    assert "admin" in refused.stderr
    assert run(live_api, "list", key=secret).returncode == 0

    revoked = run(live_api, "keys", "revoke", "ci-bot")
    assert revoked.returncode == 0, revoked.stderr
    assert run(live_api, "list", key=secret).returncode == 2

    audit = run(live_api, "audit", "--action", "key.create", "--action", "key.revoke")
    assert audit.returncode == 0, audit.stderr
    lines = audit.stdout.splitlines()
    assert "key.revoke" in lines[1] and "key.create" in lines[2]
    assert all("bootstrap" in line and "ci-bot" in line for line in lines[1:])
    assert API_KEY not in audit.stdout
