"""The streamed contact import: how a CSV is read (phone column, delimiter, line numbers), and
a 1,000,000-row file imported through the API under granian on PostgreSQL with the API
process's memory measured."""

from __future__ import annotations

import io
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import requests
from sqlalchemy import delete, func, select

from shared.contact_import import (
    FIELD_VALUE_MAX,
    MAX_COLUMNS,
    BadImport,
    ImportReport,
    csv_records,
    csv_rows,
    json_rows,
    phone_column,
)
from shared.db import session_scope
from shared.models import Contact, ContactList
from tests.conftest import API_KEY, granian_serving
from tests.services import free_port

POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
MILLION = 1_000_000
# What the import may add to the API process's peak memory, whatever the file's size.
MEMORY_BOUND = 250 * 1024 * 1024


def read(text: str | bytes, region: str | None = None) -> tuple[list, ImportReport]:
    report = ImportReport()
    data = text.encode() if isinstance(text, str) else text
    return list(csv_rows(io.BytesIO(data), region, report)), report


@pytest.mark.parametrize(
    ("header", "column"),
    [
        (["name", "Phone"], 1),
        (["Mobile Number", "x"], 0),
        (["MSISDN"], 0),
        (["to", "phone"], 1),  # "phone" is preferred to "to"
        (["cell-phone"], 0),
        (["name", "telephone"], 1),
        (["name", "email"], None),
        (["+14155550101"], None),  # no header at all
    ],
)
def test_the_phone_column_is_found_by_name(header, column):
    assert phone_column(header) == column


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_the_delimiter_is_taken_from_the_header_line(delimiter):
    rows, _ = read(f"name{delimiter}phone\nAna{delimiter}+14155550101\n")
    assert rows == [(2, "+14155550101", {"name": "Ana"})]


def test_a_byte_order_mark_and_crlf_line_ends_are_read():
    rows, _ = read(b"\xef\xbb\xbfphone,name\r\n+14155550101,Ana\r\n")
    assert rows == [(2, "+14155550101", {"name": "Ana"})]


def test_numbers_without_a_country_code_use_the_default_region():
    rows, report = read("phone\n(415) 555-0101\n020 7946 0018\n", region="US")

    assert [row[1] for row in rows] == ["+14155550101"]
    assert [item["line"] for item in report.invalid] == [3]


def test_only_the_first_invalid_rows_are_listed_but_all_are_counted():
    rows, report = read("phone\n" + "nope\n" * 50 + "+14155550101\n")

    assert len(rows) == 1
    assert report.invalid_total == 50
    assert [item["line"] for item in report.invalid] == list(range(2, 22))


def test_a_field_with_a_nul_refuses_its_row():
    rows, report = read("phone,name\n+14155550101,A\x00na\n+14155550102,Bob\n")

    assert [row[1] for row in rows] == ["+14155550102"]
    assert report.invalid[0]["line"] == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "body: empty"),
        (b"name,email\nAna,a@example.com\n", "header: no phone column"),
        (b"phone,name,name\n+14155550101,A,B\n", "header: column 'name' appears twice"),
        (b"phone\n+14155550101\n\xff\n", "body: line 3 is not UTF-8"),
        (b"phone\n" + b"1" * (1024 * 1024 + 1), "body: line 2 is longer than"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_with_where(text, message):
    with pytest.raises(BadImport, match="^" + message.replace("(", r"\(")):
        read(text)


def test_a_header_of_more_than_50_columns_is_refused_naming_the_header():
    wide = ",".join(["phone", *(f"f{i}" for i in range(MAX_COLUMNS))])  # 51 columns
    fits = ",".join(["phone", *(f"f{i}" for i in range(MAX_COLUMNS - 1))])

    with pytest.raises(BadImport, match="^header: 51 columns; at most 50"):
        read(wide + "\n+14155550101\n")
    assert [row[1] for row in read(fits + "\n+14155550101\n")[0]] == ["+14155550101"]


def test_a_column_name_over_64_characters_is_refused_naming_the_header():
    with pytest.raises(BadImport, match="^header: column .* is 65 characters; .* at most 64"):
        read(f"phone,{'n' * 65}\n+14155550101,x\n")
    assert read(f"phone,{'n' * 64}\n+14155550101,x\n")[0][0][2] == {"n" * 64: "x"}


def test_a_cell_over_1000_characters_refuses_its_row_naming_the_field():
    big, fits = "x" * (FIELD_VALUE_MAX + 1), "x" * FIELD_VALUE_MAX
    rows, report = read(f"phone,note\n+14155550101,{big}\n+14155550102,{fits}\n")

    assert rows == [(3, "+14155550102", {"note": fits})]
    assert report.invalid == [
        {"line": 2, "value": "+14155550101", "reason": "field 'note' over 1000 characters"}
    ]


def test_json_contacts_are_held_to_the_same_field_rules():
    report = ImportReport(where="index")
    contacts = [
        ("+14155550101", {"note": "x" * (FIELD_VALUE_MAX + 1)}),
        ("+14155550102", {"n" * 65: "x"}),
        ("+14155550103", {"note": "ok"}),
    ]

    rows = list(json_rows(contacts, None, report))

    assert rows == [(2, "+14155550103", {"note": "ok"})]
    assert [item["index"] for item in report.invalid] == [0, 1]


def test_records_keep_the_number_as_written_for_the_api_to_judge():
    report = ImportReport()
    data = io.BytesIO(b"first_name,Phone\nAna,(415) 555-0101\nBob,nope\n,\n")

    records = list(csv_records(data, report))

    assert records == [
        (2, "(415) 555-0101", {"first_name": "Ana"}),
        (3, "nope", {"first_name": "Bob"}),
    ]
    assert report.invalid_total == 0


# --- a million rows through the API, as deployed ---


def _write_million(path: Path) -> int:
    """1,000,000 distinct numbers with two fields, then 10 repeats and 10 invalid rows;
    written line by line, never held."""
    with path.open("w") as out:
        out.write("phone,first_name,city\n")
        for i in range(MILLION):
            out.write(f"+1415{2_000_000 + i:07d},Name{i},City{i % 97}\n")
        for i in range(10):
            out.write(f"+1415{2_000_000 + i:07d},Again{i},\n")
        for _ in range(10):
            out.write("12345,Short,\n")
    return path.stat().st_size


def _api_processes(base_pid: int) -> list[psutil.Process]:
    parent = psutil.Process(base_pid)
    return [parent, *parent.children(recursive=True)]


def _peak_rss(process: psutil.Process) -> int:
    """VmHWM: the most resident memory the process has ever had, in bytes."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@POSTGRES_ONLY
@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc")
def test_a_million_row_csv_is_imported_through_the_api_with_bounded_memory(settings, db, tmp_path):
    with session_scope(db) as session:
        session.execute(delete(Contact))
        session.execute(delete(ContactList))
    csv_path = tmp_path / "contacts.csv"
    size = _write_million(csv_path)
    port = free_port()
    argv = [
        sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", "1",
        "--blocking-threads", "2", "--host", "127.0.0.1", "--port", str(port), "api.wsgi:app",
    ]  # fmt: skip
    headers = {"X-API-Key": API_KEY}
    with granian_serving(settings, tmp_path / "granian.log", argv, port) as base:
        granian_pid = _granian_pid(port)
        # Warm: every module imported, the database pool open, before the baseline.
        created = requests.post(f"{base}/v1/lists", json={"name": "All"}, headers=headers)
        list_id = created.json()["id"]
        requests.post(
            f"{base}/v1/lists/{list_id}/contacts",
            data="phone\n+14155550100\n",
            headers={**headers, "Content-Type": "text/csv"},
            timeout=30,
        ).raise_for_status()
        processes = _api_processes(granian_pid)
        before = {p.pid: p.memory_info().rss for p in processes}
        with csv_path.open("rb") as body:
            response = requests.post(
                f"{base}/v1/lists/{list_id}/contacts",
                data=body,
                headers={**headers, "Content-Type": "text/csv"},
                timeout=600,
            )
        growth = max(_peak_rss(p) - before[p.pid] for p in processes)
    print(
        f"\n1M-row import: {size / 1e6:.1f} MB CSV, API peak RSS growth "
        f"{growth / 1024 / 1024:.1f} MiB over {len(processes)} process(es)"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["imported"], body["duplicates"], body["invalid_total"]) == (MILLION, 10, 10)
    assert body["invalid"][0]["line"] == MILLION + 12
    with session_scope(db) as session:
        stored = session.scalar(
            select(func.count()).select_from(Contact).where(Contact.list_id == uuid.UUID(list_id))
        )
        again = session.scalar(
            select(Contact.fields).where(
                Contact.list_id == uuid.UUID(list_id), Contact.phone == "+14152000003"
            )
        )
    assert stored == MILLION + 1
    assert again == {"first_name": "Again3", "city": "City3"}
    assert growth < MEMORY_BOUND


def _granian_pid(port: int) -> int:
    """granian's main process, by its command line (its workers are its children)."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "granian" in cmdline and str(port) in cmdline:
            return process.pid
    raise AssertionError(f"no granian process serving port {port}")
