"""POST/GET /v1/broadcasts through the Flask app, on SQLite and PostgreSQL, with real Redis."""

from __future__ import annotations

import json

import pytest
import redis
from sqlalchemy import func, select, update

from shared.db import session_scope
from shared.models import Batch, Broadcast, OptOut, Recipient
from shared.taskqueue import SMS_QUEUE
from tests.conftest import make_settings

NUMBERS = [f"+1415555{i:04d}" for i in range(1, 2501)]


def row_counts(database_url: str) -> dict[str, int]:
    with session_scope(database_url) as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in (Broadcast, Batch, Recipient)
        }


def queued_tasks(redis_url: str) -> list[dict]:
    raw = redis.Redis.from_url(redis_url).lrange(SMS_QUEUE, 0, -1)
    return [json.loads(item) for item in raw]


def test_it_accepts_a_broadcast_and_enqueues_one_task_per_batch(client, settings):
    response = client.post("/v1/broadcasts", json={"recipients": NUMBERS, "text": "Hello"})

    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["counts"] == {
        "accepted": 2500,
        "invalid": 0,
        "duplicates": 0,
        "skipped": 0,
        "rejected": 0,
    }
    assert body["batches"] == {"total": 3, "by_status": {"pending": 3}}
    assert body["encoding"] == "GSM"
    assert body["segments"] == {"per_message": 1, "total": 2500, "longest": 1}
    assert response.headers["Location"] == f"/v1/broadcasts/{body['id']}"
    assert row_counts(settings.database_url) == {
        "broadcasts": 1,
        "batches": 3,
        "recipients": 2500,
    }
    tasks = queued_tasks(settings.redis_url)
    assert len(tasks) == 3
    assert {task["headers"]["task"] for task in tasks} == {"send_sms_batch"}


def test_it_reports_progress_by_recipient_and_batch_status(client):
    created = client.post("/v1/broadcasts", json={"recipients": NUMBERS[:1500], "text": "Hi"})
    response = client.get(created.headers["Location"])

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["recipients"] == {"total": 1500, "by_status": {"pending": 1500}}
    assert body["batches"] == {"total": 2, "by_status": {"pending": 2}}


def test_it_removes_and_counts_duplicates_in_any_format(client, settings):
    recipients = ["+14155550101", "+1 (415) 555-0101", "+14155550102", "+14155550102"]
    response = client.post("/v1/broadcasts", json={"recipients": recipients, "text": "Hi"})

    assert response.status_code == 202
    assert response.get_json()["counts"]["duplicates"] == 2
    assert row_counts(settings.database_url)["recipients"] == 2


def test_it_records_opted_out_recipients_as_skipped(client, settings):
    with session_scope(settings.database_url) as session:
        session.add(OptOut(phone="+14155550102", source="test"))
    response = client.post(
        "/v1/broadcasts", json={"recipients": ["+14155550101", "+14155550102"], "text": "Hi"}
    )

    assert response.get_json()["counts"] == {
        "accepted": 1,
        "invalid": 0,
        "duplicates": 0,
        "skipped": 1,
        "rejected": 0,
    }
    with session_scope(settings.database_url) as session:
        statuses = dict(session.execute(select(Recipient.phone, Recipient.status)).all())
    assert statuses == {"+14155550101": "pending", "+14155550102": "skipped"}


def test_it_reports_ucs2_and_multipart_texts(client):
    response = client.post(
        "/v1/broadcasts", json={"recipients": NUMBERS[:3], "text": "Привет " * 20}
    )
    body = response.get_json()
    assert body["encoding"] == "UCS-2"
    assert body["segments"] == {"per_message": 3, "total": 9, "longest": 3}


@pytest.mark.parametrize(
    "payload, status, field",
    [
        ({"recipients": ["+14155550101", "nope"], "text": "Hi"}, 400, "recipients"),
        ({"recipients": [], "text": "Hi"}, 400, "recipients"),
        ({"recipients": "+14155550101", "text": "Hi"}, 400, "recipients"),
        ({"recipients": ["+14155550101"]}, 400, "text"),
        ({"recipients": ["+14155550101"], "text": "   "}, 400, "text"),
        ({"recipients": ["+14155550101"], "text": "a" * 1601}, 400, "text"),
        ({"recipients": ["+14155550101"], "text": "ж" * 738}, 400, "text"),
        ({"recipients": ["+14155550101"], "text": "Hi", "sender": "TWELVECHARSX"}, 400, "sender"),
        ({"recipients": ["+14155550101"], "text": "Hi", "sender": "+1"}, 400, "sender"),
        ({"recipients": ["+14155550101"], "text": "Hi", "colour": "red"}, 400, "colour"),
        (["+14155550101"], 400, "body"),
    ],
)
def test_it_refuses_bad_input_naming_the_field_and_writes_nothing(
    client, settings, payload, status, field
):
    response = client.post("/v1/broadcasts", json=payload)

    assert response.status_code == status
    error = response.get_json()["error"]
    assert field in error["message"]
    assert row_counts(settings.database_url) == {"broadcasts": 0, "batches": 0, "recipients": 0}
    assert queued_tasks(settings.redis_url) == []


def test_it_lists_invalid_numbers_with_index_value_and_reason(client):
    recipients = ["+14155550101"] + [f"bad-{i}" for i in range(25)] + ["+1415"]
    response = client.post("/v1/broadcasts", json={"recipients": recipients, "text": "Hi"})

    details = response.get_json()["error"]["details"]
    assert details["invalid_total"] == 26
    assert len(details["invalid"]) == 20
    assert details["invalid"][0] == {
        "index": 1,
        "value": "bad-0",
        "reason": "needs a + and country code (no DEFAULT_REGION is configured)",
    }


def test_it_skips_invalid_numbers_when_asked(client, settings):
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": ["+14155550101", "nope"], "text": "Hi", "skip_invalid": True},
    )

    assert response.status_code == 202
    body = response.get_json()
    assert body["counts"]["invalid"] == 1
    assert body["invalid"] == [
        {"index": 1, "value": "nope", "reason": body["invalid"][0]["reason"]}
    ]
    assert row_counts(settings.database_url)["recipients"] == 1


def test_it_refuses_the_senders_own_number_as_a_recipient(client):
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": ["+14155550101", "+1 415 555 0000"], "text": "Hi"},
    )
    error = response.get_json()["error"]
    assert response.status_code == 400
    assert error["details"]["invalid"] == [
        {"index": 1, "value": "+1 415 555 0000", "reason": "is the sender's number"}
    ]


def test_it_refuses_non_json_bodies(client, settings):
    as_text = client.post("/v1/broadcasts", data="hello", content_type="text/plain")
    broken = client.post("/v1/broadcasts", data="{not json", content_type="application/json")

    assert as_text.status_code == 415
    assert broken.status_code == 400
    assert broken.get_json()["error"]["code"] == "invalid_json"
    assert row_counts(settings.database_url)["broadcasts"] == 0


def test_it_refuses_more_recipients_than_configured_naming_the_limit(settings):
    from api import create_app

    small = settings.model_copy(update={"max_recipients": 100})
    client = create_app(small).test_client()
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": NUMBERS[:101], "text": "Hi"},
        headers={"X-API-Key": "test-key"},
    )

    assert response.status_code == 413
    assert "maximum of 100" in response.get_json()["error"]["message"]
    assert row_counts(settings.database_url)["broadcasts"] == 0


def test_it_refuses_a_body_over_the_size_limit(settings):
    from api import create_app

    small = settings.model_copy(update={"max_body_bytes": 2048})
    client = create_app(small).test_client()
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": NUMBERS[:500], "text": "Hi"},
        headers={"X-API-Key": "test-key"},
    )

    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in response.get_json()["error"]["message"]
    assert row_counts(settings.database_url)["broadcasts"] == 0


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_it_requires_a_valid_api_key(app, settings, headers):
    response = app.test_client().post(
        "/v1/broadcasts", json={"recipients": NUMBERS[:1], "text": "Hi"}, headers=headers
    )
    assert response.status_code == 401
    assert row_counts(settings.database_url)["broadcasts"] == 0


def test_a_retried_post_with_the_same_idempotency_key_returns_the_first_broadcast(client, settings):
    payload = {"recipients": NUMBERS[:1200], "text": "Once only"}
    first = client.post("/v1/broadcasts", json=payload, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/broadcasts", json=payload, headers={"Idempotency-Key": "k-1"})

    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert row_counts(settings.database_url) == {
        "broadcasts": 1,
        "batches": 2,
        "recipients": 1200,
    }
    assert len(queued_tasks(settings.redis_url)) == 2


def test_a_replay_of_a_202_stored_in_the_old_shape_answers_in_todays(client, settings):
    payload = {"recipients": NUMBERS[:2], "text": "Once only"}
    first = client.post("/v1/broadcasts", json=payload, headers={"Idempotency-Key": "old"})
    # As versions before the one representation stored it.
    old = {"id": first.get_json()["id"], "batches": 1, "send_at": None, "segments": {}}
    with session_scope(settings.database_url) as session:
        session.execute(update(Broadcast).values(intake_response=old))

    again = client.post("/v1/broadcasts", json=payload, headers={"Idempotency-Key": "old"})

    assert again.status_code == 202
    body = again.get_json()
    assert set(body) == set(first.get_json())
    assert body["batches"] == {"total": 1, "by_status": {"pending": 1}}
    assert row_counts(settings.database_url)["broadcasts"] == 1


def test_the_same_idempotency_key_with_another_body_is_a_conflict(client, settings):
    client.post(
        "/v1/broadcasts",
        json={"recipients": NUMBERS[:2], "text": "One"},
        headers={"Idempotency-Key": "k-2"},
    )
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": NUMBERS[:2], "text": "Two"},
        headers={"Idempotency-Key": "k-2"},
    )

    assert response.status_code == 409
    assert "Idempotency-Key" in response.get_json()["error"]["message"]
    assert row_counts(settings.database_url)["broadcasts"] == 1


def test_idempotency_keys_are_scoped_to_the_api_key(settings):
    from api import create_app

    two_keys = settings.model_copy(update={"api_keys": ["key-a", "key-b"]})
    client = create_app(two_keys).test_client()
    payload = {"recipients": NUMBERS[:2], "text": "Hi"}
    a = client.post(
        "/v1/broadcasts", json=payload, headers={"X-API-Key": "key-a", "Idempotency-Key": "same"}
    )
    b = client.post(
        "/v1/broadcasts", json=payload, headers={"X-API-Key": "key-b", "Idempotency-Key": "same"}
    )

    assert a.status_code == b.status_code == 202
    assert a.get_json()["id"] != b.get_json()["id"]


def test_it_keeps_the_broadcast_pending_with_a_warning_when_the_broker_is_down(
    settings,
):
    from api import create_app
    from tests.services import free_port

    no_broker = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    client = create_app(no_broker).test_client()
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": NUMBERS[:10], "text": "Hi"},
        headers={"X-API-Key": "test-key", "Idempotency-Key": "broker-down"},
    )

    assert response.status_code == 202
    body = response.get_json()
    assert "broker is unavailable" in body["warnings"][0]
    with session_scope(settings.database_url) as session:
        statuses = session.scalars(select(Batch.status)).all()
    assert statuses == ["pending"]
    replay = client.post(
        "/v1/broadcasts",
        json={"recipients": NUMBERS[:10], "text": "Hi"},
        headers={"X-API-Key": "test-key", "Idempotency-Key": "broker-down"},
    )
    assert replay.get_json() == body


def test_an_unknown_broadcast_is_404(client):
    assert client.get("/v1/broadcasts/not-a-uuid").status_code == 404
    missing = client.get("/v1/broadcasts/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "not_found"


def test_health_and_readiness(client, settings):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "redis": "ok"}
    assert ready.get_json()["sandbox_mode"] is True
    assert "SANDBOX MODE" in ready.get_json()["notice"]


def test_readiness_fails_when_redis_is_unreachable(settings):
    from api import create_app
    from tests.services import free_port

    broken = make_settings(
        database_url=settings.database_url, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    response = create_app(broken).test_client().get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"].startswith("unavailable")


def test_the_api_describes_itself(app):
    client = app.test_client()
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert "text" in spec["components"]["schemas"]["BroadcastRequest"]["properties"]
    assert {"/v1/broadcasts", "/v1/mms", "/v1/limits"} <= set(spec["paths"])
    assert "/v1/broadcasts/{broadcast_id}/retry" in spec["paths"]
    page = client.get("/docs").get_data(as_text=True)
    assert 'src="/docs/ui/swagger-ui-bundle.js"' in page


# One representation.


def _shape(value):
    """A JSON value's type, recursively for objects (lists and free-form maps by kind)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    return type(value).__name__


LIVE = {"updated_at", "rate", "eta_seconds", "waiting_for", "pacing", "reports_due_by"}


def test_a_broadcast_reads_the_same_in_the_202_the_get_and_the_list(client):
    created = client.post(
        "/v1/broadcasts",
        json={"recipients": NUMBERS[:3] + ["nope"], "text": "Hi", "skip_invalid": True},
    )
    got = client.get(created.headers["Location"]).get_json()
    (item,) = client.get("/v1/broadcasts").get_json()["items"]
    posted = created.get_json()

    assert list(posted) == list(got)  # the same fields, in the same order
    assert {key: posted[key] for key in posted if key not in LIVE} == {
        key: got[key] for key in got if key not in LIVE
    }
    assert posted["segments"] == got["segments"] == {"per_message": 1, "total": 3, "longest": 1}
    assert posted["batches"] == got["batches"] == {"total": 1, "by_status": {"pending": 1}}
    assert posted["invalid"] == got["invalid"] == [
        {"index": 3, "value": "nope", "reason": posted["invalid"][0]["reason"]}
    ]
    # A list item is the broadcast less what costs a query: same names, same values.
    assert set(item) < set(got)
    assert item == {key: got[key] for key in item}
    assert "send_at" not in posted and posted["scheduled_at"] is None


def test_a_scheduled_broadcast_says_scheduled_at_everywhere(client):
    send_at = "2099-01-31T09:00:00+01:00"
    created = client.post(
        "/v1/broadcasts", json={"recipients": NUMBERS[:1], "text": "Later", "send_at": send_at}
    ).get_json()
    got = client.get(f"/v1/broadcasts/{created['id']}").get_json()
    (item,) = client.get("/v1/broadcasts").get_json()["items"]

    expected = "2099-01-31T08:00:00+00:00"
    assert created["scheduled_at"] == got["scheduled_at"] == item["scheduled_at"] == expected


@pytest.mark.parametrize(
    "path",
    [
        "/v1/broadcasts",
        "/v1/broadcasts/{id}/recipients",
        "/v1/opt-outs",
        "/v1/keys",
        "/v1/audit",
        "/v1/delivery-reports/orphans",
    ],
)
def test_every_list_pages_the_same_way(client, path):
    client.post("/v1/broadcasts", json={"recipients": NUMBERS[:1], "text": "Hi"})
    broadcast_id = client.post(
        "/v1/broadcasts", json={"recipients": NUMBERS[:3], "text": "Hi"}
    ).get_json()["id"]
    client.post("/v1/opt-outs", json={"phones": NUMBERS[10:13]})
    client.post("/v1/keys", json={"name": "a", "scopes": ["read"]})
    client.post("/v1/keys", json={"name": "b", "scopes": ["read"]})
    client.put("/v1/limits", json={"sms_mps": 5})
    client.put("/v1/limits", json={"sms_mps": 6})
    url = path.replace("{id}", broadcast_id)

    first = client.get(url, query_string={"limit": 1}).get_json()
    second = client.get(url, query_string={"limit": 1, "cursor": first["next_cursor"]})

    assert set(first) - {"count"} == {"items", "next_cursor"}  # orphans also count them all
    if path != "/v1/delivery-reports/orphans":
        assert len(first["items"]) == 1 and first["next_cursor"]
        assert second.status_code == 200
        assert second.get_json()["items"] and second.get_json()["items"] != first["items"]
    assert client.get(url, query_string={"cursor": ""}).status_code == 400
