"""GET /v1/inbound: replies arrive through the signed webhook and are read back, newest first,
each with the broadcast it most likely answers; on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete, update

from shared.db import session_scope
from shared.models import Batch, Broadcast, InboundMessage, Recipient
from tests.test_api_keys import client_for, create_key
from tests.test_keywords import TEXTED, post_inbound
from tests.test_webhooks import PUBLIC

ANA, BEN, EVE = "+14155550101", "+14155550102", "+14155550103"
POOL_NUMBER = "+14155550077"


@pytest.fixture()
def inbound_app(settings):
    from api import create_app

    with session_scope(settings.database_url) as session:
        session.execute(delete(InboundMessage))
    return create_app(settings.model_copy(update={"public_base_url": PUBLIC}))


@pytest.fixture()
def api(inbound_app):
    return client_for(inbound_app, "test-key")


@pytest.fixture()
def hooks(inbound_app):
    return inbound_app.test_client()


def texted(settings, api, numbers, name=None, sender_of_batch=None) -> str:
    """A broadcast whose recipients Plivo accepted (as after its batches went)."""
    body = {"recipients": numbers, "text": "Doors open at 9"}
    response = api.post("/v1/broadcasts", json=body)
    assert response.status_code == 202, response.get_json()
    broadcast_id = response.get_json()["id"]
    with session_scope(settings.database_url) as session:
        bid = uuid.UUID(broadcast_id)
        session.execute(update(Broadcast).where(Broadcast.id == bid).values(name=name))
        session.execute(
            update(Recipient).where(Recipient.broadcast_id == bid).values(status="queued")
        )
        if sender_of_batch:
            session.execute(
                update(Batch).where(Batch.broadcast_id == bid).values(sender=sender_of_batch)
            )
    return broadcast_id


def test_replies_are_listed_newest_first_with_the_broadcast_they_answer(settings, api, hooks):
    older = texted(settings, api, [ANA, BEN], name="Spring sale")
    newer = texted(settings, api, [ANA])  # no name: a broadcast from before names
    post_inbound(hooks, "What time does it start?", "in-1", sender=ANA)
    post_inbound(hooks, "STOP", "in-2", sender=BEN)
    post_inbound(hooks, "Who is this?", "in-3", sender=EVE)  # never texted

    items = api.get("/v1/inbound").get_json()["items"]

    assert [item["text"] for item in items] == ["Who is this?", "STOP", "What time does it start?"]
    eve, ben, ana = items
    assert ana["from"] == ANA and ana["to"] == TEXTED
    assert (ana["action"], ana["replied_at"]) == (None, None)
    assert ana["received_at"].endswith("Z") or "+00:00" in ana["received_at"]
    assert ana["broadcast"] == {"id": newer, "name": None}
    assert ben["action"] == "opt_out"
    assert ben["broadcast"] == {"id": older, "name": "Spring sale"}
    assert eve["broadcast"] is None
    assert set(ana) == {
        "id", "from", "to", "text", "action", "received_at", "replied_at", "broadcast"
    }  # fmt: skip


def test_keyword_false_leaves_only_the_replies_to_read(settings, api, hooks):
    post_inbound(hooks, "Is parking free?", "in-q", sender=ANA)
    post_inbound(hooks, "HELP", "in-h", sender=ANA)
    post_inbound(hooks, "stop", "in-s", sender=BEN)
    # The answer to a campaign's "reply YES" from someone never opted out: one to read.
    post_inbound(hooks, "Yes", "in-y", sender=EVE)

    to_read = api.get("/v1/inbound?keyword=false").get_json()["items"]
    keywords = api.get("/v1/inbound?keyword=true").get_json()["items"]

    assert [item["text"] for item in to_read] == ["Yes", "Is parking free?"]
    assert [item["action"] for item in keywords] == ["opt_out", "help"]


def test_phone_keeps_one_senders_replies_however_it_is_written(settings, api, hooks):
    post_inbound(hooks, "one", "in-a", sender=ANA)
    post_inbound(hooks, "two", "in-b", sender=BEN)

    items = api.get("/v1/inbound", query_string={"phone": "+1 (415) 555-0101"}).get_json()

    assert [item["text"] for item in items["items"]] == ["one"]


def test_the_answered_broadcast_is_the_one_whose_batch_went_from_the_number_replied_to(
    settings, api, hooks
):
    pooled = texted(settings, api, [ANA], sender_of_batch=POOL_NUMBER)
    texted(settings, api, [BEN])  # from the default sender, later
    post_inbound(hooks, "to the pool number", "in-p", sender=ANA, to=POOL_NUMBER)
    post_inbound(hooks, "to the main number", "in-m", sender=ANA)

    by_text = {item["text"]: item for item in api.get("/v1/inbound").get_json()["items"]}

    assert by_text["to the pool number"]["broadcast"]["id"] == pooled
    # Ana's only broadcast went from the pool number, not the one she texted here.
    assert by_text["to the main number"]["broadcast"] is None


def test_a_recipient_not_yet_texted_is_not_answering(settings, api, hooks):
    response = api.post("/v1/broadcasts", json={"recipients": [ANA], "text": "Soon"})
    assert response.status_code == 202  # its recipient is still pending
    post_inbound(hooks, "hello?", "in-early", sender=ANA)

    (item,) = api.get("/v1/inbound").get_json()["items"]

    assert item["broadcast"] is None


def test_pages_follow_the_cursor_to_the_end(settings, api, hooks):
    for index in range(5):
        post_inbound(hooks, f"reply {index}", f"in-{index}", sender=ANA)

    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.get("/v1/inbound", query_string=query).get_json()
        seen += [item["text"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == [f"reply {index}" for index in reversed(range(5))]
    assert pages == 3


@pytest.mark.parametrize(
    "query, field",
    [
        ({"keyword": "maybe"}, "keyword"),
        ({"phone": "not-a-number"}, "phone"),
        ({"limit": "0"}, "limit"),
        ({"cursor": "abc"}, "cursor"),
    ],
)
def test_bad_filters_are_refused_naming_the_field(api, query, field):
    response = api.get("/v1/inbound", query_string=query)

    assert response.status_code == 400
    assert response.get_json()["error"]["message"].startswith(f"{field}:")


def test_a_key_without_admin_sees_only_replies_to_its_own_broadcasts(
    settings, inbound_app, api, hooks
):
    marketing = client_for(inbound_app, create_key(api, "inbox-marketing", "send", "read"))
    own = texted(settings, marketing, [BEN], name="Marketing's")
    others = texted(settings, api, [ANA, BEN], name="Someone else's")  # later, another key's
    post_inbound(hooks, "hi from Ana", "in-ana", sender=ANA)
    post_inbound(hooks, "hi from Ben", "in-ben", sender=BEN)
    post_inbound(hooks, "who is this?", "in-eve", sender=EVE)  # texted by nobody

    mine = marketing.get("/v1/inbound").get_json()["items"]
    everything = api.get("/v1/inbound").get_json()["items"]

    assert [(item["text"], item["broadcast"]) for item in mine] == [
        ("hi from Ben", {"id": own, "name": "Marketing's"})  # not the other key's, though later
    ]
    assert [item["text"] for item in everything] == ["who is this?", "hi from Ben", "hi from Ana"]
    assert everything[1]["broadcast"]["id"] == others  # an admin key sees the latest of all
    by_phone = marketing.get("/v1/inbound", query_string={"phone": ANA}).get_json()
    assert by_phone["items"] == []


def test_replies_need_a_read_or_send_key_and_a_read_key_sees_none_of_others(
    inbound_app, api, hooks
):
    post_inbound(hooks, "hi", "in-scope", sender=ANA)
    reader = client_for(inbound_app, create_key(api, "inbox-reader", "read"))
    sender = client_for(inbound_app, create_key(api, "inbox-sender", "send"))

    assert reader.get("/v1/inbound").get_json()["items"] == []  # it texted nobody
    assert sender.get("/v1/inbound").status_code == 200
    assert inbound_app.test_client().get("/v1/inbound").status_code == 401
