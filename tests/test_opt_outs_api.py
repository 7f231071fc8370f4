"""/v1/opt-outs: add (JSON or CSV), list in pages or as CSV, remove."""

from __future__ import annotations

import csv
import io

import pytest


def test_numbers_are_added_normalised_and_counted(client):
    response = client.post(
        "/v1/opt-outs", json={"phones": ["+1 (415) 555-0101", "+14155550102"], "reason": "asked"}
    )
    again = client.post("/v1/opt-outs", json={"phones": ["+14155550101"]})

    assert response.status_code == 201
    assert response.get_json() == {"added": 2, "already": 0, "invalid": 0}
    assert again.get_json() == {"added": 0, "already": 1, "invalid": 0}
    listed = client.get("/v1/opt-outs").get_json()["opt_outs"]
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
    rest = client.get("/v1/opt-outs", query_string={"limit": 10, "after": first["next"]})
    rest = rest.get_json()
    exported = client.get("/v1/opt-outs", headers={"Accept": "text/csv"}).get_data(as_text=True)

    assert [r["phone"] for r in first["opt_outs"] + rest["opt_outs"]] == phones
    assert rest["next"] is None
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0] == ["phone", "source", "reason", "created_at"]
    assert [row[0] for row in rows[1:]] == phones
    assert client.get("/v1/opt-outs?limit=0").status_code == 400


def test_a_number_can_be_removed_once(client):
    client.post("/v1/opt-outs", json={"phones": ["+14155550101"]})
    assert client.delete("/v1/opt-outs/+14155550101").status_code == 204
    assert client.delete("/v1/opt-outs/+14155550101").status_code == 404
    assert client.delete("/v1/opt-outs/nope").status_code == 400
