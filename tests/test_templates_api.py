"""/v1/templates: stored texts with placeholders, checked when stored, owned by their key."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete

from shared.db import session_scope
from shared.models import Template
from tests.test_api_keys import client_for, create_key
from tests.test_cli import run


@pytest.fixture(autouse=True)
def no_templates(db):
    with session_scope(db) as session:
        session.execute(delete(Template))


def create(client, name="welcome", text="Hi {first_name}, welcome to {shop}", **fields):
    response = client.post("/v1/templates", json={"name": name, "text": text, "fields": fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_a_template_is_stored_with_its_placeholders_and_defaults(client):
    created = create(client, shop="Corner Shop")

    fetched = client.get(f"/v1/templates/{created['id']}")

    assert fetched.status_code == 200
    body = fetched.get_json()
    assert body == created
    assert body["text"] == "Hi {first_name}, welcome to {shop}"
    assert body["fields"] == {"shop": "Corner Shop"}
    assert body["placeholders"] == ["first_name", "shop"]


def test_a_name_is_unique(client):
    create(client, name="welcome")
    clash = client.post("/v1/templates", json={"name": "welcome", "text": "Hello"})

    assert clash.status_code == 409
    assert clash.get_json()["error"]["message"].startswith("name:")


@pytest.mark.parametrize(
    "text",
    [
        "Hi {user.__class__}",  # attribute access
        "Hi {items[0]}",  # index access
        "Hi {0}",  # a position
        "Hi {}",  # an empty placeholder
        "Hi {name:>10}",  # a format spec
        "Hi {name!r}",  # a conversion
        "Hi {name",  # unbalanced
        "Hi name}",
        "   ",
        "",
    ],
)
def test_a_text_with_anything_but_named_placeholders_is_400_naming_text(client, text):
    response = client.post("/v1/templates", json={"name": "t", "text": text})

    assert response.status_code == 400
    assert response.get_json()["error"]["message"].startswith("text")
    assert client.get("/v1/templates").get_json()["items"] == []


def test_literal_braces_are_written_doubled(client):
    created = create(client, text="Use code {{SAVE10}}, {first_name}")
    assert created["placeholders"] == ["first_name"]


def test_default_fields_must_be_strings(client):
    response = client.post(
        "/v1/templates", json={"name": "t", "text": "Hi {n}", "fields": {"n": 5}}
    )

    assert response.status_code == 400
    assert "fields.n" in response.get_json()["error"]["message"]


def test_a_text_too_long_for_any_message_is_refused(client):
    response = client.post("/v1/templates", json={"name": "t", "text": "a" * 1601})
    assert response.status_code == 400
    assert "GSM maximum" in response.get_json()["error"]["message"]


def test_an_update_replaces_what_it_gives(client):
    created = create(client, shop="Corner Shop")
    create(client, name="other", text="Other")

    changed = client.put(f"/v1/templates/{created['id']}", json={"text": "Bye {first_name}"})
    clash = client.put(f"/v1/templates/{created['id']}", json={"name": "other"})
    bad = client.put(f"/v1/templates/{created['id']}", json={"text": "Bye {x.y}"})

    assert changed.status_code == 200
    body = changed.get_json()
    assert (body["name"], body["text"], body["fields"]) == (
        "welcome",
        "Bye {first_name}",
        {"shop": "Corner Shop"},
    )
    assert body["placeholders"] == ["first_name"]
    assert clash.status_code == 409
    assert bad.status_code == 400
    assert client.get(f"/v1/templates/{created['id']}").get_json()["text"] == "Bye {first_name}"


def test_a_deleted_template_is_gone(client):
    created = create(client)

    assert client.delete(f"/v1/templates/{created['id']}").status_code == 204
    assert client.get(f"/v1/templates/{created['id']}").status_code == 404
    assert client.delete(f"/v1/templates/{created['id']}").status_code == 404
    assert client.get("/v1/templates/not-a-uuid").status_code == 404


def test_the_list_pages_by_name(client):
    for name in ("c", "a", "b"):
        create(client, name=name, text=f"Text {name}")

    first = client.get("/v1/templates?limit=2").get_json()
    rest = client.get("/v1/templates", query_string={"cursor": first["next_cursor"]}).get_json()

    assert [t["name"] for t in first["items"]] == ["a", "b"]
    assert [t["name"] for t in rest["items"]] == ["c"]
    assert rest["next_cursor"] is None


def test_a_key_sees_only_its_own_templates_and_a_read_key_cannot_write(app, client):
    sender = client_for(app, create_key(client, "marketing", "send"))
    reader = client_for(app, create_key(client, "dashboard", "read"))
    admins = create(client, name="admins")
    mine = create(sender, name="mine")

    assert sender.get(f"/v1/templates/{admins['id']}").status_code == 404
    assert [t["name"] for t in sender.get("/v1/templates").get_json()["items"]] == ["mine"]
    assert sender.delete(f"/v1/templates/{admins['id']}").status_code == 404
    # The admin key sees every key's templates.
    assert client.get(f"/v1/templates/{mine['id']}").status_code == 200
    assert reader.post("/v1/templates", json={"name": "r", "text": "x"}).status_code == 403
    assert reader.get("/v1/templates").status_code == 200


def test_two_keys_may_each_have_a_template_named_welcome(app, client):
    marketing = client_for(app, create_key(client, "marketing", "send"))
    support = client_for(app, create_key(client, "support", "send"))
    theirs = create(marketing, name="Welcome", text="Hi from marketing")

    mine = support.post("/v1/templates", json={"name": "Welcome", "text": "Hi from support"})
    again = support.post("/v1/templates", json={"name": "Welcome", "text": "Hi again"})

    assert mine.status_code == 201, mine.get_json()
    assert again.status_code == 409  # still unique within one key
    renamed = create(support, name="Other", text="x")
    assert (
        support.put(f"/v1/templates/{renamed['id']}", json={"name": "Welcome"}).status_code == 409
    )
    assert [t["text"] for t in marketing.get("/v1/templates").get_json()["items"]] == [
        theirs["text"]
    ]


def test_the_admin_pages_through_templates_of_the_same_name(app, client):
    for name in ("one", "two", "three"):
        key = client_for(app, create_key(client, f"key-{name}", "send"))
        create(key, name="Welcome", text=f"Hi from {name}")

    seen, cursor = [], None
    while True:
        page = client.get("/v1/templates", query_string={"limit": 1, "cursor": cursor}).get_json()
        seen += [t["text"] for t in page["items"]]
        if not (cursor := page["next_cursor"]):
            break

    assert sorted(seen) == ["Hi from one", "Hi from three", "Hi from two"]
    assert client.get("/v1/templates?cursor=welcome").status_code == 400


def test_a_body_that_is_not_json_is_415(client):
    response = client.post("/v1/templates", data="name=x", content_type="text/plain")
    assert response.status_code == 415


def test_the_cli_manages_templates(live_api):
    created = run(
        live_api, "templates", "create", "welcome", "--text", "Hi {first_name}",
        "--field", "first_name=there", "--json",
    )  # fmt: skip
    template_id = json.loads(created.stdout)["id"]

    updated = run(live_api, "templates", "update", template_id, "--text", "Bye {first_name}")
    listed = run(live_api, "templates", "list")
    bad = run(live_api, "templates", "create", "bad", "--text", "Hi {x.y}")
    deleted = run(live_api, "templates", "delete", template_id)
    gone = run(live_api, "templates", "show", template_id)

    assert "text: Bye {first_name}" in updated.stdout
    assert "default first_name: there" in updated.stdout
    assert "welcome" in listed.stdout and "first_name" in listed.stdout
    assert bad.returncode == 2 and "text: placeholder {x.y}" in bad.stderr
    assert deleted.returncode == 0
    assert gone.returncode == 2 and "no template" in gone.stderr
