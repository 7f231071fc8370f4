"""POST /v1/broadcasts as a campaign: personalised texts, templates, contact lists, sender
pools, carrier rules, quiet hours with a fixed clock, and the quote (dry run, max_cost),
through the Flask app on SQLite and PostgreSQL with real Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import delete, func, select

from shared import models
from shared.db import session_scope
from shared.models import (
    Base,
    Batch,
    Broadcast,
    Contact,
    ContactList,
    ContactSender,
    OptOut,
    Recipient,
    Template,
)
from shared.pricing import country_of, load_price_table
from tests.conftest import API_KEY
from tests.test_intake_api import queued_tasks

ANA, BO, CY = "+14155550101", "+14155550102", "+14155550103"
NEW_YORK = "+12125550101"
BERLIN = "+493012345678"
LONDON = "+442071234567"
POOL = ["+14155550201", "+14155550202", "+14155550203"]


@pytest.fixture()
def settings(settings):
    # The conftest `db` fixture empties the broadcast tables; these are campaign tables.
    with session_scope(settings.database_url) as session:
        for model in (Contact, ContactList, Template, ContactSender):
            session.execute(delete(model))
    return settings


def every_table(database_url: str) -> dict[str, int]:
    with session_scope(database_url) as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table))
            for table in Base.metadata.sorted_tables
        }


def batches(database_url: str) -> list[Batch]:
    with session_scope(database_url) as session:
        return list(session.scalars(select(Batch).order_by(Batch.seq)))


def recipients(client, broadcast_id: str) -> dict[str, dict]:
    page = client.get(f"/v1/broadcasts/{broadcast_id}/recipients?limit=1000").get_json()
    return {item["phone"]: item for item in page["items"]}


def person(to: str, **fields) -> dict:
    return {"to": to, "fields": fields}


# Personalised texts.


def test_equal_renderings_share_one_batch_and_the_others_get_their_own(client, settings):
    response = client.post(
        "/v1/broadcasts",
        json={
            "recipients": [person(ANA, first_name="Ana"), person(BO, first_name="Bo"), CY],
            "text": "Hi {first_name}!",
            "fields": {"first_name": "Ana"},  # the default, so CY's text equals Ana's
            "name": "Spring sale",
        },
    )

    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["name"] == "Spring sale"
    assert body["counts"]["accepted"] == 3
    assert body["segments"] == {"per_message": 1, "total": 3, "longest": 1}
    found = {(batch.text, batch.size) for batch in batches(settings.database_url)}
    assert found == {("Hi Ana!", 2), ("Hi Bo!", 1)}
    assert len(queued_tasks(settings.redis_url)) == 2
    item = client.get("/v1/broadcasts").get_json()["items"][0]
    assert item["name"] == "Spring sale"


def test_three_names_give_three_texts(client, settings):
    response = client.post(
        "/v1/broadcasts",
        json={
            "recipients": [person(ANA, n="Ana"), person(BO, n="Bo"), person(CY, n="Cy")],
            "text": "Hello {n}",
        },
    )

    assert response.status_code == 202
    texts = {batch.text for batch in batches(settings.database_url)}
    assert texts == {"Hello Ana", "Hello Bo", "Hello Cy"}
    with session_scope(settings.database_url) as session:
        broadcast = session.scalars(select(Broadcast)).one()
    assert broadcast.text == "Hello {n}"


def test_a_missing_field_is_refused_naming_the_recipient_and_the_field(client, settings):
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": [person(ANA, first_name="Ana"), BO], "text": "Hi {first_name}"},
    )

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert "recipients.1" in error["message"] and "first_name" in error["message"]
    assert error["details"]["invalid"][0]["index"] == 1
    assert every_table(settings.database_url)["broadcasts"] == 0


def test_skip_invalid_counts_a_recipient_with_a_missing_field(client, settings):
    response = client.post(
        "/v1/broadcasts",
        json={
            "recipients": [person(ANA, first_name="Ana"), BO],
            "text": "Hi {first_name}",
            "skip_invalid": True,
        },
    )

    assert response.status_code == 202
    body = response.get_json()
    assert body["counts"]["accepted"] == 1 and body["counts"]["invalid"] == 1
    assert body["invalid"][0]["index"] == 1
    assert set(recipients(client, body["id"])) == {ANA}


@pytest.mark.parametrize(
    "text",
    ["Hi {user.__class__}", "Hi {0}", "Hi {}", "Hi {name!r}", "Hi {name:>10}", "Hi {name"],
)
def test_placeholders_other_than_plain_names_are_refused(client, settings, text):
    response = client.post(
        "/v1/broadcasts", json={"recipients": [person(ANA, name="Ana")], "text": text}
    )

    assert response.status_code == 400
    assert response.get_json()["error"]["message"].startswith("text:")
    assert every_table(settings.database_url)["broadcasts"] == 0


def test_doubled_braces_are_literal_braces(client, settings):
    response = client.post("/v1/broadcasts", json={"recipients": [ANA], "text": "Code {{A1}}"})

    assert response.status_code == 202
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(Broadcast.text)).one() == "Code {A1}"


def test_a_malformed_recipient_object_is_named(client, settings):
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": [ANA, {"to": BO, "fields": {"a": [1]}}], "text": "Hi"},
    )

    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["invalid"][0]["index"] == 1


def test_a_template_gives_the_text_and_its_default_fields(client, settings):
    with session_scope(settings.database_url) as session:
        template = Template(
            name="welcome",
            text="Welcome {first_name} to {shop}",
            fields={"shop": "Corner Shop", "first_name": "friend"},
            api_key_id=_key_id(client),
        )
        session.add(template)
        session.flush()
        template_id = str(template.id)

    response = client.post(
        "/v1/broadcasts",
        json={
            "recipients": [person(ANA, first_name="Ana"), BO],
            "template_id": template_id,
            "fields": {"shop": "Big Shop"},
        },
    )

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["template_id"] == template_id
    texts = {batch.text for batch in batches(settings.database_url)}
    assert texts == {"Welcome Ana to Big Shop", "Welcome friend to Big Shop"}


def test_text_and_template_id_together_are_refused(client, settings):
    response = client.post(
        "/v1/broadcasts",
        json={
            "recipients": [ANA],
            "text": "Hi",
            "template_id": "00000000-0000-0000-0000-000000000000",
        },
    )
    assert response.status_code == 400
    assert "template_id" in response.get_json()["error"]["message"]


def test_an_unknown_template_is_404(client, settings):
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": [ANA], "template_id": "00000000-0000-0000-0000-000000000000"},
    )
    assert response.status_code == 404
    assert "template_id" in response.get_json()["error"]["message"]


def _key_id(client) -> str:
    from api.auth import key_id

    return key_id(API_KEY)


# Contact lists.


def _make_list(database_url: str, owner: str, contacts: dict[str, dict | None]) -> str:
    with session_scope(database_url) as session:
        row = ContactList(name="members", api_key_id=owner)
        session.add(row)
        session.flush()
        session.add_all(
            Contact(list_id=row.id, phone=phone, fields=fields)
            for phone, fields in contacts.items()
        )
        return str(row.id)


def test_a_broadcast_to_a_list_reaches_its_contacts_with_their_fields(client, settings):
    list_id = _make_list(
        settings.database_url,
        _key_id(client),
        {ANA: {"first_name": "Ana"}, BO: {"first_name": "Bo"}, CY: {"first_name": "Cy"}},
    )
    with session_scope(settings.database_url) as session:
        session.add(OptOut(phone=CY, source="test"))

    response = client.post(
        "/v1/broadcasts",
        json={
            "list_ids": [list_id],
            "recipients": [person(ANA, first_name="Anita"), LONDON],
            "text": "Hi {first_name}",
            "fields": {"first_name": "there"},
        },
    )

    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["list_ids"] == [list_id]
    assert body["counts"] == {
        "accepted": 3,
        "invalid": 0,
        "duplicates": 1,
        "skipped": 1,
        "rejected": 0,
    }
    texts = {batch.text for batch in batches(settings.database_url)}
    # The inline recipient comes first and wins over the list's copy of the number.
    assert texts == {"Hi Anita", "Hi there", "Hi Bo"}
    assert recipients(client, body["id"])[CY]["status"] == "skipped"


def test_a_list_of_another_key_is_not_found(client, settings):
    list_id = _make_list(settings.database_url, _key_id(client), {ANA: None})
    created = client.post("/v1/keys", json={"name": "shop", "scopes": ["send"]})
    shop = {"X-API-Key": created.get_json()["key"]}
    response = client.post(
        "/v1/broadcasts", json={"list_ids": [list_id], "text": "Hi"}, headers=shop
    )

    assert response.status_code == 404
    assert "list_ids.0" in response.get_json()["error"]["message"]


def test_a_plain_list_broadcast_needs_no_rendering(client, settings):
    numbers = [f"+1415555{i:04d}" for i in range(1000, 3500)]
    list_id = _make_list(settings.database_url, _key_id(client), dict.fromkeys(numbers))

    response = client.post("/v1/broadcasts", json={"list_ids": [list_id], "text": "Hi all"})

    assert response.status_code == 202
    assert response.get_json()["counts"]["accepted"] == 2500
    assert [batch.size for batch in batches(settings.database_url)] == [1000, 1000, 500]


# Sender pools.


def test_a_recipient_keeps_its_sender_across_broadcasts(client, settings):
    numbers = [f"+1415555{i:04d}" for i in range(300, 330)]
    first = client.post(
        "/v1/broadcasts", json={"recipients": numbers, "senders": POOL, "text": "A"}
    )
    assert first.status_code == 202, first.get_json()
    assert first.get_json()["senders"] == POOL
    before = {
        phone: item["sender"] for phone, item in recipients(client, first.get_json()["id"]).items()
    }
    assert set(before.values()) == set(POOL)  # 30 numbers spread over all three

    second = client.post(
        "/v1/broadcasts", json={"recipients": numbers, "senders": POOL[::-1], "text": "B"}
    )

    after = {
        phone: item["sender"] for phone, item in recipients(client, second.get_json()["id"]).items()
    }
    assert after == before
    with session_scope(settings.database_url) as session:
        sticky = dict(session.execute(select(ContactSender.phone, ContactSender.sender)).all())
    assert sticky == before
    # One Plivo call has one source: no batch mixes senders.
    for batch in batches(settings.database_url):
        with session_scope(settings.database_url) as session:
            phones = session.scalars(select(Recipient.phone).where(Recipient.batch_id == batch.id))
            assert len({before[phone] for phone in phones}) == 1


def test_the_sticky_sender_wins_over_the_hash(client, settings):
    with session_scope(settings.database_url) as session:
        session.add(ContactSender(phone=ANA, sender=POOL[2]))
    response = client.post(
        "/v1/broadcasts", json={"recipients": [ANA], "senders": POOL, "text": "A"}
    )

    assert recipients(client, response.get_json()["id"])[ANA]["sender"] == POOL[2]


def test_a_named_pool_comes_from_configuration(client, app, settings):
    app.config["SETTINGS"] = settings.model_copy(update={"sender_pools": {"alerts": POOL[:2]}})
    response = client.post(
        "/v1/broadcasts", json={"recipients": [ANA, BO], "sender_pool": "alerts", "text": "A"}
    )
    unknown = client.post(
        "/v1/broadcasts", json={"recipients": [ANA], "sender_pool": "nope", "text": "A"}
    )

    assert response.status_code == 202
    assert response.get_json()["senders"] == POOL[:2]
    assert unknown.status_code == 400 and "sender_pool" in unknown.get_json()["error"]["message"]


def test_sender_and_senders_together_are_refused(client, settings):
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": [ANA], "sender": POOL[0], "senders": POOL, "text": "A"},
    )
    assert response.status_code == 400
    assert "sender, senders" in response.get_json()["error"]["message"]


# Carrier rules.


def test_an_alphanumeric_sender_to_a_us_number_is_refused_naming_the_rule(client, settings):
    response = client.post(
        "/v1/broadcasts", json={"recipients": [LONDON, ANA], "sender": "MyShop", "text": "Hi"}
    )

    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert message.startswith("sender:") and "alphanumeric" in message
    assert every_table(settings.database_url)["broadcasts"] == 0


@pytest.mark.parametrize(
    "number",
    ["+17877223344", "+13407731234", "+16714721234", "+16846331234", "+16702341234"],
    ids=["Puerto Rico", "US Virgin Islands", "Guam", "American Samoa", "Northern Marianas"],
)
def test_us_territories_are_under_the_us_rule_for_alphanumeric_senders(client, settings, number):
    response = client.post(
        "/v1/broadcasts", json={"recipients": [number], "sender": "MyShop", "text": "Hi"}
    )

    assert response.status_code == 400, response.get_json()
    message = response.get_json()["error"]["message"]
    assert message.startswith("sender:") and "alphanumeric" in message


def test_a_caribbean_country_on_plus_one_may_get_an_alphanumeric_sender(client):
    jamaica = "+18762345678"  # its own carriers and rules, not the US's
    response = client.post(
        "/v1/broadcasts", json={"recipients": [jamaica], "sender": "MyShop", "text": "Hi"}
    )

    assert response.status_code == 202, response.get_json()


def test_us_recipients_use_the_numeric_fallback_when_one_is_configured(client, app, settings):
    app.config["SETTINGS"] = settings.model_copy(update={"numeric_fallback_sender": "+14155550999"})
    response = client.post(
        "/v1/broadcasts", json={"recipients": [LONDON, ANA], "sender": "MyShop", "text": "Hi"}
    )

    assert response.status_code == 202
    shown = recipients(client, response.get_json()["id"])
    assert shown[LONDON]["sender"] == "MyShop"
    assert shown[ANA]["sender"] == "+14155550999"


def test_the_opt_out_text_is_appended_and_counted_in_segments(client, settings):
    text = "x" * 150
    plain = client.post("/v1/broadcasts", json={"recipients": [ANA], "text": text})
    with_opt_out = client.post(
        "/v1/broadcasts", json={"recipients": [BO], "text": text, "append_opt_out_text": True}
    )

    assert plain.get_json()["segments"]["per_message"] == 1
    assert with_opt_out.get_json()["segments"] == {"per_message": 2, "total": 2, "longest": 2}
    with session_scope(settings.database_url) as session:
        texts = set(session.scalars(select(Broadcast.text)))
    assert texts == {text, text + " Reply STOP to opt out"}


# The quote.


def test_a_dry_run_quotes_segments_times_price_and_writes_nothing(client, settings):
    before = every_table(settings.database_url)
    response = client.post(
        "/v1/broadcasts",
        json={
            "recipients": [person(ANA, n="Ana"), person(BO, n="Bo’"), LONDON, "nope"],
            "text": "Hello {n}, " + "y" * 150,
            "fields": {"n": "you"},
            "skip_invalid": True,
            "dry_run": True,
        },
    )

    assert response.status_code == 200, response.get_json()
    quote = response.get_json()
    assert every_table(settings.database_url) == before
    assert queued_tasks(settings.redis_url) == []
    assert quote["dry_run"] is True
    assert quote["counts"] == {
        "accepted": 3,
        "invalid": 1,
        "duplicates": 0,
        "skipped": 0,
        "rejected": 0,
    }
    assert quote["encoding"] == "mixed"
    assert quote["ucs2_characters"] == ["’"]
    # Ana and London: 161+ GSM characters = 2 segments; Bo's curly quote: UCS-2, 3.
    assert quote["segments"] == {"total": 7, "longest": 3}
    table = load_price_table(None)
    by_country = {item["country"]: item for item in quote["countries"]}
    assert by_country["US"]["segments"] == 5 and by_country["GB"]["segments"] == 2
    expected = Decimal(0)
    for country, item in by_country.items():
        price = table.price(country, "sms")
        assert Decimal(item["price"]) == price
        assert Decimal(item["cost"]) == price * item["segments"]
        expected += price * item["segments"]
    assert Decimal(quote["cost"]["total"]) == expected
    assert quote["cost"]["currency"] == table.currency
    assert quote["cost"]["price_table"] == str(table.date)
    assert country_of(LONDON) == "GB"


def test_a_dry_run_with_an_idempotency_key_keeps_the_key_free(client, settings):
    payload = {"recipients": [ANA], "text": "Hi"}
    dry = client.post(
        "/v1/broadcasts", json={**payload, "dry_run": True}, headers={"Idempotency-Key": "k"}
    )
    real = client.post("/v1/broadcasts", json=payload, headers={"Idempotency-Key": "k"})

    assert dry.status_code == 200 and real.status_code == 202


def test_max_cost_refuses_a_broadcast_estimated_above_it(client, settings):
    numbers = [f"+1415555{i:04d}" for i in range(400, 500)]
    refused = client.post(
        "/v1/broadcasts", json={"recipients": numbers, "text": "Hi", "max_cost": 0.0001}
    )

    assert refused.status_code == 400
    error = refused.get_json()["error"]
    assert error["message"].startswith("max_cost:")
    assert Decimal(error["details"]["quote"]["cost"]["total"]) > Decimal("0.0001")
    assert every_table(settings.database_url)["broadcasts"] == 0

    accepted = client.post(
        "/v1/broadcasts", json={"recipients": numbers, "text": "Hi", "max_cost": 1000}
    )
    assert accepted.status_code == 202
    quote = accepted.get_json()["quote"]
    assert quote["counts"]["accepted"] == 100
    assert Decimal(quote["cost"]["total"]) == load_price_table(None).price("US", "sms") * 100


# Quiet hours, with a fixed clock.


@pytest.fixture()
def frozen(monkeypatch):
    # 05:30 UTC on a winter day: 00:30 in New York, 06:30 in Berlin, 05:30 in London.
    now = datetime(2026, 1, 15, 5, 30, tzinfo=UTC)
    monkeypatch.setattr(models, "utcnow", lambda: now)
    return now


def test_quiet_hours_hold_each_recipient_until_their_own_morning(client, settings, frozen):
    response = client.post(
        "/v1/broadcasts",
        json={
            "recipients": [NEW_YORK, BERLIN],
            "text": "Good morning",
            "quiet_hours": {"start": "21:00", "end": "08:00"},
        },
    )

    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["quiet_hours"] == {"start": "21:00", "end": "08:00"}
    held = {batch.zone: batch for batch in batches(settings.database_url)}
    assert held["America/New_York"].hold_until == datetime(2026, 1, 15, 13, 0, tzinfo=UTC)
    assert held["Europe/Berlin"].hold_until == datetime(2026, 1, 15, 7, 0, tzinfo=UTC)
    assert all(batch.enqueued_at is None for batch in held.values())
    assert queued_tasks(settings.redis_url) == []
    shown = recipients(client, body["id"])
    assert shown[NEW_YORK]["send_after"] == "2026-01-15T13:00:00+00:00"
    assert shown[BERLIN]["send_after"] == "2026-01-15T07:00:00+00:00"
    assert body["quote"]["quiet_hours"]["waiting"] == 2
    assert body["quote"]["quiet_hours"]["first_release"] == "2026-01-15T07:00:00+00:00"
    assert body["quote"]["duration_seconds"] >= 7.5 * 3600


def test_recipients_outside_quiet_hours_go_at_once(client, settings, frozen):
    # 21:00-05:00 in London has ended at 05:30; in Berlin (06:30) too.
    response = client.post(
        "/v1/broadcasts",
        json={
            "recipients": [LONDON, BERLIN, NEW_YORK],
            "text": "Hi",
            "quiet_hours": {"start": "21:00", "end": "05:00"},
        },
    )

    found = {batch.zone: batch.hold_until for batch in batches(settings.database_url)}
    assert found == {
        "Europe/London": None,
        "Europe/Berlin": None,
        "America/New_York": datetime(2026, 1, 15, 10, 0, tzinfo=UTC),
    }
    assert len(queued_tasks(settings.redis_url)) == 2
    assert response.get_json()["quote"]["quiet_hours"]["waiting"] == 1


def test_configured_quiet_hours_apply_unless_the_broadcast_turns_them_off(
    client, app, settings, frozen
):
    app.config["SETTINGS"] = settings.model_copy(update={"quiet_hours": "21:00-08:00"})
    default = client.post("/v1/broadcasts", json={"recipients": [NEW_YORK], "text": "A"})
    off = client.post(
        "/v1/broadcasts", json={"recipients": [BERLIN], "text": "B", "quiet_hours": None}
    )

    assert default.get_json()["quiet_hours"] == {"start": "21:00", "end": "08:00"}
    assert off.get_json()["quiet_hours"] is None
    holds = {batch.zone: batch.hold_until for batch in batches(settings.database_url)}
    assert holds == {"America/New_York": datetime(2026, 1, 15, 13, 0, tzinfo=UTC), None: None}


def test_bad_quiet_hours_are_refused_naming_the_field(client, settings):
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": [ANA], "text": "A", "quiet_hours": {"start": "25:00", "end": "08:00"}},
    )
    assert response.status_code == 400
    assert "quiet_hours" in response.get_json()["error"]["message"]
