"""/v1/opt-outs: add (JSON or CSV), list in pages or as CSV, remove."""

from __future__ import annotations

import csv
import io
from datetime import datetime

import pytest


def test_numbers_are_added_normalised_and_counted(client):
    response = client.post(
        "/v1/opt-outs", json={"phones": ["+1 (415) 555-0101", "+14155550102"], "reason": "asked"}
    )
    again = client.post("/v1/opt-outs", json={"phones": ["+14155550101"]})

    assert response.status_code == 201
    assert response.get_json() == {"added": 2, "already": 0, "invalid": 0}
    assert again.get_json() == {"added": 0, "already": 1, "invalid": 0}
    listed = client.get("/v1/opt-outs").get_json()["items"]
    assert [(row["phone"], row["reason"]) for row in listed] == [
        ("+14155550101", "asked"),
        ("+14155550102", "asked"),
    ]


def test_a_csv_import_skips_its_header(client):
    body = "phone,name\n+14155550101,Ann\n+14155550102,Bob\n"
    response = client.post("/v1/opt-outs", data=body, content_type="text/csv")
    assert response.get_json()["added"] == 2


def test_invalid_numbers_are_refused_by_index_unless_skipped(client):
    refused = client.post("/v1/opt-outs", json={"phones": ["+14155550101", "nope"]})
    skipped = client.post(
        "/v1/opt-outs", json={"phones": ["+14155550101", "nope"], "skip_invalid": True}
    )

    assert refused.status_code == 400
    assert refused.get_json()["error"]["details"]["invalid"][0]["index"] == 1
    assert skipped.get_json() == {"added": 1, "already": 0, "invalid": 1}


@pytest.mark.parametrize("body", [{}, {"phones": []}, {"phones": "x"}, {"numbers": ["+1"]}])
def test_a_malformed_body_is_400(client, body):
    assert client.post("/v1/opt-outs", json=body).status_code == 400


def test_the_list_pages_and_exports_as_csv(client):
    phones = [f"+1415555{i:04d}" for i in range(101, 106)]
    client.post("/v1/opt-outs", json={"phones": phones})

    first = client.get("/v1/opt-outs?limit=2").get_json()
    rest = client.get("/v1/opt-outs", query_string={"limit": 10, "cursor": first["next_cursor"]})
    rest = rest.get_json()
    exported = client.get("/v1/opt-outs", headers={"Accept": "text/csv"}).get_data(as_text=True)

    assert [r["phone"] for r in first["items"] + rest["items"]] == phones
    assert rest["next_cursor"] is None
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0] == ["phone", "source", "reason", "created_at"]
    assert [row[0] for row in rows[1:]] == phones
    assert client.get("/v1/opt-outs?limit=0").status_code == 400


def test_a_number_can_be_removed_once(client):
    client.post("/v1/opt-outs", json={"phones": ["+14155550101"]})
    assert client.delete("/v1/opt-outs/+14155550101").status_code == 204
    assert client.delete("/v1/opt-outs/+14155550101").status_code == 404
    assert client.delete("/v1/opt-outs/nope").status_code == 400


def test_every_time_has_its_zone_in_json_and_csv(client):
    client.post("/v1/opt-outs", json={"phones": ["+14155550101"]})

    (row,) = client.get("/v1/opt-outs").get_json()["items"]
    exported = client.get("/v1/opt-outs?format=csv").get_data(as_text=True)

    assert datetime.fromisoformat(row["created_at"]).utcoffset() is not None
    (csv_row,) = list(csv.DictReader(io.StringIO(exported)))
    assert csv_row["created_at"] == row["created_at"]


@pytest.mark.parametrize(
    "query",
    ["cursor=", "cursor=nope", "format=xml", "limit=0"],
)
def test_a_bad_query_parameter_is_400_naming_it(client, query):
    response = client.get(f"/v1/opt-outs?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"]["message"].startswith(query.split("=")[0] + ":")


def test_an_import_that_adds_no_number_is_refused(client):
    empty = client.post("/v1/opt-outs", data="phone\n", content_type="text/csv")
    all_bad = client.post("/v1/opt-outs", json={"phones": ["nope"], "skip_invalid": True})

    assert [empty.status_code, all_bad.status_code] == [400, 400]
    assert "no phone numbers" in empty.get_json()["error"]["message"]
    assert "no valid phone number" in all_bad.get_json()["error"]["message"]
