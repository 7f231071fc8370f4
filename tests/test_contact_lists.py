"""/v1/lists: lists, contacts added as JSON or imported from CSV (text/csv or multipart),
merged, paged and removed; on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from sqlalchemy import delete, func, select

from api import create_app
from shared.db import session_scope
from shared.models import Contact, ContactList
from tests.test_api_keys import client_for, create_key
from tests.test_cli import run


@pytest.fixture(autouse=True)
def no_lists(db):
    with session_scope(db) as session:
        session.execute(delete(Contact))
        session.execute(delete(ContactList))


def new_list(client, name="Customers") -> str:
    response = client.post("/v1/lists", json={"name": name})
    assert response.status_code == 201, response.get_json()
    assert response.headers["Location"].endswith(response.get_json()["id"])
    return response.get_json()["id"]


def upload(client, list_id: str, text: str):
    return client.post(f"/v1/lists/{list_id}/contacts", data=text, content_type="text/csv")


def contacts(client, list_id: str) -> dict[str, dict]:
    page = client.get(f"/v1/lists/{list_id}/contacts", query_string={"limit": 1000}).get_json()
    return {item["phone"]: item["fields"] for item in page["items"]}


def stored(db, list_id: str) -> int:
    with session_scope(db) as session:
        return session.scalar(
            select(func.count()).select_from(Contact).where(Contact.list_id == uuid.UUID(list_id))
        )


def test_a_list_is_created_empty_and_listed_with_its_count(client):
    list_id = new_list(client)

    body = client.get(f"/v1/lists/{list_id}").get_json()
    listed = client.get("/v1/lists").get_json()

    assert (body["name"], body["contacts"], body["opted_out"]) == ("Customers", 0, 0)
    assert [(item["id"], item["contacts"]) for item in listed["items"]] == [(list_id, 0)]


def test_json_contacts_are_numbers_or_objects_with_fields(client):
    list_id = new_list(client)

    response = client.post(
        f"/v1/lists/{list_id}/contacts",
        json={
            "contacts": [
                "+1 415 555 0101",
                {"to": "+14155550102", "fields": {"first_name": "Ana"}},
                "not a number",
            ]
        },
    )

    assert response.status_code == 200
    body = response.get_json()
    assert (body["imported"], body["updated"], body["duplicates"], body["invalid_total"]) == (
        2,
        0,
        0,
        1,
    )
    assert body["invalid"] == [
        {"index": 2, "value": "not a number", "reason": body["invalid"][0]["reason"]}
    ]
    assert contacts(client, list_id) == {"+14155550101": {}, "+14155550102": {"first_name": "Ana"}}


def test_a_csv_import_finds_the_phone_column_by_name_and_keeps_the_rest_as_fields(client):
    list_id = new_list(client)
    text = (
        "First Name;Mobile Number;City\r\n"
        "Ana;+14155550101;Lisbon\r\n"
        "Bob;+1 (415) 555-0102;\r\n"  # an empty cell is no field
    )

    body = upload(client, list_id, text).get_json()

    assert body["imported"] == 2
    assert contacts(client, list_id) == {
        "+14155550101": {"First Name": "Ana", "City": "Lisbon"},
        "+14155550102": {"First Name": "Bob"},
    }


def test_invalid_rows_are_reported_with_their_csv_line_numbers(client):
    list_id = new_list(client)
    text = (
        "phone,note\n"  # line 1
        "+14155550101,ok\n"  # 2
        "12345,short\n"  # 3
        '+14155550102,"two\nlines"\n'  # 4-5: one row over two lines
        "\n"  # 6: blank, skipped
        ",no number\n"  # 7
        "+14155550103,x,surplus\n"  # 8
        "+999123,unknown country\n"  # 9
    )

    body = upload(client, list_id, text).get_json()

    assert body["imported"] == 2
    assert body["invalid_total"] == 4
    assert [(item["line"], item["value"]) for item in body["invalid"]] == [
        (3, "12345"),
        (7, ""),
        (8, "+14155550103"),
        (9, "+999123"),
    ]
    assert contacts(client, list_id)["+14155550102"] == {"note": "two\nlines"}


def test_duplicates_are_merged_with_later_values_winning(client):
    list_id = new_list(client)
    client.post(
        f"/v1/lists/{list_id}/contacts",
        json={"contacts": [{"to": "+14155550101", "fields": {"first_name": "A", "tier": "gold"}}]},
    )
    text = (
        "phone,first_name,city\n"
        "+14155550101,Ana,\n"  # on the list already: fields merged into its own
        "+14155550102,Bob,Porto\n"
        "+14155550102,Bobby,\n"  # a duplicate in the file: later wins, city kept
    )

    body = upload(client, list_id, text).get_json()

    assert (body["imported"], body["updated"], body["duplicates"]) == (1, 1, 1)
    assert contacts(client, list_id) == {
        "+14155550101": {"first_name": "Ana", "tier": "gold"},
        "+14155550102": {"first_name": "Bobby", "city": "Porto"},
    }


def test_opted_out_numbers_are_kept_and_counted(client):
    client.post("/v1/opt-outs", json={"phones": ["+14155550102"]})
    list_id = new_list(client)

    body = upload(client, list_id, "phone\n+14155550101\n+14155550102\n").get_json()
    page = client.get(f"/v1/lists/{list_id}/contacts").get_json()["items"]

    assert (body["imported"], body["opted_out"]) == (2, 1)
    assert [(item["phone"], item["opted_out"]) for item in page] == [
        ("+14155550101", False),
        ("+14155550102", True),
    ]
    assert client.get(f"/v1/lists/{list_id}").get_json()["opted_out"] == 1


def test_a_multipart_upload_is_imported(client):
    list_id = new_list(client)

    response = client.post(
        f"/v1/lists/{list_id}/contacts",
        data={"file": (io.BytesIO(b"\xef\xbb\xbfto,name\n+14155550101,Ana\n"), "list.csv")},
        content_type="multipart/form-data",
    )
    missing = client.post(
        f"/v1/lists/{list_id}/contacts",
        data={"other": (io.BytesIO(b"to\n+14155550101\n"), "list.csv")},
        content_type="multipart/form-data",
    )

    assert response.status_code == 200, response.get_json()
    assert contacts(client, list_id) == {"+14155550101": {"name": "Ana"}}
    assert missing.status_code == 400
    assert missing.get_json()["error"]["message"].startswith("file:")


def test_a_file_without_a_phone_column_is_400_naming_the_header(client, db):
    list_id = new_list(client)

    response = upload(client, list_id, "name,email\nAna,a@example.com\n")

    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert message.startswith("header:") and "'name'" in message
    assert stored(db, list_id) == 0


def test_a_wide_file_is_400_and_an_oversized_cell_is_reported_by_line(client, db):
    list_id = new_list(client)
    wide = ",".join(["phone", *(f"field{i}" for i in range(50))])

    too_wide = upload(client, list_id, f"{wide}\n+14155550101\n")
    bloated = upload(client, list_id, f"phone,note\n+14155550101,{'x' * 1001}\n+14155550102,fine\n")

    assert too_wide.status_code == 400
    assert too_wide.get_json()["error"]["message"].startswith("header: 51 columns")
    assert bloated.status_code == 200, bloated.get_json()
    body = bloated.get_json()
    assert (body["imported"], body["invalid_total"]) == (1, 1)
    assert body["invalid"][0] == {
        "line": 2,
        "value": "+14155550101",
        "reason": "field 'note' over 1000 characters",
    }
    assert contacts(client, list_id) == {"+14155550102": {"note": "fine"}}


def test_a_file_that_breaks_halfway_writes_nothing(client, db):
    list_id = new_list(client)
    good = "".join(f"+1415{i:07d},Ana\n" for i in range(12_000))
    # Past the first chunks staged, a byte that is not UTF-8.
    body = ("phone,name\n" + good).encode() + b"+14155550000,\xff\xfe\n"

    response = client.post(f"/v1/lists/{list_id}/contacts", data=body, content_type="text/csv")

    assert response.status_code == 400
    assert "line 12002" in response.get_json()["error"]["message"]
    assert stored(db, list_id) == 0


@pytest.mark.parametrize("text", ["", "\n\n", "phone\n", "phone\n\n"])
def test_a_file_with_no_contacts_is_400(client, text):
    list_id = new_list(client)
    assert upload(client, list_id, text).status_code == 400


def test_a_csv_may_pass_max_body_bytes_but_not_max_import_bytes(settings, db):
    app = create_app(
        settings.model_copy(update={"max_body_bytes": 4096, "max_import_bytes": 60_000})
    )
    client = client_for(app, "test-key")
    list_id = new_list(client)
    rows = "".join(f"+1415{i:07d}\n" for i in range(2000))  # 26 kB

    accepted = upload(client, list_id, "phone\n" + rows)
    refused = upload(client, list_id, "phone\n" + rows * 3)  # 78 kB
    too_big_json = client.post(f"/v1/lists/{list_id}/contacts", json={"contacts": rows.split()})

    assert accepted.status_code == 200, accepted.get_json()
    assert accepted.get_json()["imported"] == 2000
    assert refused.status_code == 413
    assert "MAX_IMPORT_BYTES" in refused.get_json()["error"]["message"]
    assert too_big_json.status_code == 413


def test_contacts_page_by_number_and_one_can_be_removed(client, db):
    list_id = new_list(client)
    phones = [f"+1415555{i:04d}" for i in range(101, 106)]
    upload(client, list_id, "phone\n" + "\n".join(reversed(phones)) + "\n")

    first = client.get(f"/v1/lists/{list_id}/contacts?limit=2").get_json()
    rest = client.get(
        f"/v1/lists/{list_id}/contacts", query_string={"cursor": first["next_cursor"]}
    ).get_json()
    removed = client.delete(f"/v1/lists/{list_id}/contacts/{phones[0].replace('+', '%2B')}")
    again = client.delete(f"/v1/lists/{list_id}/contacts/{phones[0].replace('+', '%2B')}")

    assert [c["phone"] for c in first["items"] + rest["items"]] == phones
    assert rest["next_cursor"] is None
    assert removed.status_code == 204
    assert again.status_code == 404
    assert stored(db, list_id) == 4
    assert client.get(f"/v1/lists/{list_id}/contacts?cursor=x").status_code == 400


def test_a_deleted_list_takes_its_contacts_with_it(client, db):
    list_id = new_list(client)
    upload(client, list_id, "phone\n+14155550101\n")

    assert client.delete(f"/v1/lists/{list_id}").status_code == 204
    assert client.get(f"/v1/lists/{list_id}").status_code == 404
    assert stored(db, list_id) == 0


def test_the_lists_page_newest_first(client):
    ids = [new_list(client, name) for name in ("a", "b", "c")]

    first = client.get("/v1/lists?limit=2").get_json()
    rest = client.get("/v1/lists", query_string={"cursor": first["next_cursor"]}).get_json()

    assert [item["id"] for item in first["items"] + rest["items"]] == ids[::-1]


def test_a_key_sees_only_its_own_lists_and_a_read_key_cannot_import(app, client):
    sender = client_for(app, create_key(client, "marketing", "send"))
    reader = client_for(app, create_key(client, "dashboard", "read"))
    admins = new_list(client, "admins")
    mine = new_list(sender, "mine")

    assert sender.get(f"/v1/lists/{admins}").status_code == 404
    assert upload(sender, admins, "phone\n+14155550101\n").status_code == 404
    assert [item["id"] for item in sender.get("/v1/lists").get_json()["items"]] == [mine]
    assert client.get(f"/v1/lists/{mine}").status_code == 200
    assert upload(reader, mine, "phone\n+14155550101\n").status_code == 403
    assert reader.post("/v1/lists", json={"name": "x"}).status_code == 403


@pytest.mark.parametrize("body", [{}, {"contacts": []}, {"contacts": [5]}, {"phones": ["+1"]}])
def test_a_malformed_json_body_is_400(client, body):
    list_id = new_list(client)
    assert client.post(f"/v1/lists/{list_id}/contacts", json=body).status_code == 400


# --- the CLI against the API over HTTP ---


def test_the_cli_creates_imports_and_shows_a_list(live_api, tmp_path):
    created = run(live_api, "lists", "create", "Newsletter", "--json")
    list_id = json.loads(created.stdout)["id"]
    csv_file = tmp_path / "contacts.csv"
    csv_file.write_text("Mobile,first_name\n+14155550101,Ana\nnope,Bob\n+14155550102,Cy\n")

    imported = run(live_api, "lists", "import", list_id, str(csv_file))
    shown = run(live_api, "lists", "show", list_id)
    listed = run(live_api, "lists")

    assert imported.returncode == 0, imported.stderr
    assert "imported 2," in imported.stdout and "invalid 1," in imported.stdout
    assert "line 3: 'nope'" in imported.stdout
    assert "2 contacts, 0 opted out" in shown.stdout
    assert "+14155550101" in shown.stdout and "Ana" in shown.stdout
    assert list_id in listed.stdout and "Newsletter" in listed.stdout


def test_the_cli_names_a_file_the_api_refuses(live_api, tmp_path):
    list_id = json.loads(run(live_api, "lists", "create", "X", "--json").stdout)["id"]
    csv_file = tmp_path / "contacts.csv"
    csv_file.write_text("name\nAna\n")

    refused = run(live_api, "lists", "import", list_id, str(csv_file))

    assert refused.returncode == 2
    assert "header: no phone column" in refused.stderr


def test_imports_and_deletions_are_in_the_audit_trail(client):
    list_id = new_list(client)
    assert upload(client, list_id, "phone,first_name\n+14155550101,Ana\n").status_code == 200
    assert client.delete(f"/v1/lists/{list_id}/contacts/+14155550101").status_code == 204
    assert client.delete(f"/v1/lists/{list_id}").status_code == 204

    events = client.get("/v1/audit", query_string={"limit": 10}).get_json()["items"]
    actions = [(event["action"], event["target"]) for event in events]
    assert ("list.import", list_id) in actions
    assert ("list.contact_delete", list_id) in actions
    assert ("list.delete", list_id) in actions
    (imported,) = [event for event in events if event["action"] == "list.import"]
    assert imported["details"]["imported"] == 1
