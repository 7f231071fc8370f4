"""Contacts into a list, streamed: a CSV upload (or a JSON body) is read row by row, each
number normalised, and the rows staged in a temporary table; duplicates are merged and the
list updated in the database, in the caller's transaction. A million rows never sit in this
process's memory, and a file refused halfway writes nothing."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import IO, Any

from sqlalchemy import func, literal_column, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from shared.db import is_postgres
from shared.models import Contact, ContactList, OptOut, utcnow
from shared.phone import InvalidNumber, normalise

# Header names of the number column, compared lower-cased with spaces and dashes as "_";
# the first one found (in this order of preference) is the number, the rest are fields.
PHONE_HEADERS = (
    "phone",
    "phone_number",
    "mobile",
    "mobile_number",
    "msisdn",
    "number",
    "to",
    "cell",
    "cell_phone",
    "telephone",
    "tel",
    "recipient",
    "destination",
)
INVALID_SHOWN = 20
# As the JSON `fields` of a broadcast (api/intake.py Fields): a name is 1-64 characters. A
# CSV may name at most MAX_COLUMNS columns and a cell hold FIELD_VALUE_MAX characters, so a
# wide or bloated file cannot turn each contact into kilobytes of stored JSON.
MAX_COLUMNS = 50
FIELD_NAME_MAX = 64
FIELD_VALUE_MAX = 1000
# Rows per staging write (SQLite) and per merge step: big enough to amortise a round trip,
# small enough that memory stays flat.
CHUNK = 5000
DELIMITERS = ",;\t"
READ_BUFFER = 256 * 1024
MAX_LINE = 1024 * 1024
COPY_READ = 256 * 1024
_SEPARATORS = re.compile(r"[\s-]+")


class BadImport(ValueError):
    """The file or body as a whole cannot be imported (no header, no phone column, not
    UTF-8, a broken CSV row): the import writes nothing. The message names the field."""


@dataclass
class ImportReport:
    """What an import did; `where` names the position kind of invalid rows (line or index)."""

    where: str = "line"
    rows: int = 0
    imported: int = 0
    updated: int = 0
    duplicates: int = 0
    invalid: list[dict[str, Any]] = field(default_factory=list)
    invalid_total: int = 0
    opted_out: int = 0

    def refuse(self, position: int, value: object, reason: str) -> None:
        self.invalid_total += 1
        if len(self.invalid) < INVALID_SHOWN:
            self.invalid.append({self.where: position, "value": value, "reason": reason})

    def as_dict(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "updated": self.updated,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "invalid_total": self.invalid_total,
            "opted_out": self.opted_out,
        }


# (position, E.164 number, fields): the position orders duplicates, later wins.
Row = tuple[int, str, dict[str, str]]


def _header_key(name: str) -> str:
    return _SEPARATORS.sub("_", name.strip().lower())


def phone_column(header: list[str]) -> int | None:
    """Index of the number column of a CSV header row, or None."""
    keys = [_header_key(name) for name in header]
    for wanted in PHONE_HEADERS:
        if wanted in keys:
            return keys.index(wanted)
    return None


def _delimiter(first_line: str) -> str:
    # Spreadsheets save "CSV" with ";" where "," is the decimal mark, or as tab-separated
    # text: the header line decides (csv.Sniffer guesses wrong on a single line).
    counts = {delimiter: first_line.count(delimiter) for delimiter in DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


# PostgreSQL's json/jsonb refuse \u0000; no name or greeting needs one.
NUL_PROBLEM = "contains a NUL character"


def csv_rows(stream: IO[bytes], region: str | None, report: ImportReport) -> Iterator[Row]:
    """The contacts of a CSV stream whose header row names the columns; invalid rows go to
    `report` with their line numbers. Raises BadImport for a file that cannot be read."""
    for line, raw, fields in csv_records(stream, report):
        try:
            phone = normalise(raw, region)
        except InvalidNumber as error:
            report.refuse(line, raw, str(error))
            continue
        yield line, phone, fields


def csv_records(stream: IO[bytes], report: ImportReport) -> Iterator[tuple[int, str, dict]]:
    """(line, the number as written, fields) of each row of a CSV stream whose header row
    names the columns, the number not yet checked (the console leaves that to the API). Rows
    that cannot be a contact (no number, too many cells, an oversized or NUL field) go to
    `report`. Raises BadImport for a file that cannot be read."""
    lines = _decoded(stream)
    first = next(lines, None)
    while first is not None and not first.strip():
        first = next(lines, None)
    if first is None:
        raise BadImport("body: empty; the first line must be a header naming the columns")
    reader = csv.reader(itertools.chain([first], lines), delimiter=_delimiter(first))
    try:
        header = next(reader)
    except csv.Error as error:
        raise BadImport(f"body: line 1: {error}") from None
    column = phone_column(header)
    if column is None:
        shown = ", ".join(repr(name) for name in header[:10])
        raise BadImport(
            f"header: no phone column among {shown}; name it one of "
            f"{', '.join(PHONE_HEADERS[:6])} (case does not matter)"
        )
    names = _checked_names(header)
    fields_at = [(i, name) for i, name in enumerate(names) if name and i != column]
    width = len(names)
    # A skipped line still counts: `line_num` counts physical lines, quoted newlines too.
    line_before = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise BadImport(f"body: line {reader.line_num}: {error}") from None
        line, line_before = line_before + 1, reader.line_num
        if not "".join(cells).strip():
            continue
        report.rows += 1
        if len(cells) < width:
            cells += [""] * (width - len(cells))
        raw = cells[column].strip()
        if len(cells) > width and "".join(cells[width:]).strip():
            report.refuse(line, raw, f"{len(cells)} cells, but the header names {width}")
            continue
        if not raw:
            report.refuse(line, raw, "no number")
            continue
        # An empty cell is no field: the template's default applies.
        fields = {name: value for index, name in fields_at if (value := cells[index].strip())}
        if problem := _field_problem(fields):
            report.refuse(line, raw, problem)
            continue
        yield line, raw, fields


def _checked_names(header: list[str]) -> list[str]:
    """The header's column names, or BadImport naming the header and the rule broken."""
    names = [name.strip() for name in header]
    named = [name for name in names if name]
    if len(named) > MAX_COLUMNS:
        raise BadImport(
            f"header: {len(named)} columns; at most {MAX_COLUMNS} (the number and its fields)"
        )
    seen: set[str] = set()
    for name in named:
        if len(name) > FIELD_NAME_MAX:
            raise BadImport(
                f"header: column {name[:20]!r}... is {len(name)} characters; "
                f"a name may have at most {FIELD_NAME_MAX}"
            )
        if name in seen:
            raise BadImport(f"header: column {name!r} appears twice")
        seen.add(name)
    return names


def _field_problem(fields: dict[str, str]) -> str | None:
    """Why a row's fields cannot be stored, or None."""
    for name, value in fields.items():
        if not 1 <= len(name) <= FIELD_NAME_MAX:
            return f"field name {name[:20]!r} is not 1-{FIELD_NAME_MAX} characters"
        if len(value) > FIELD_VALUE_MAX:
            return f"field {name!r} over {FIELD_VALUE_MAX} characters"
        if "\x00" in value:
            return f"field {name!r} {NUL_PROBLEM}"
    return None


def _decoded(stream: IO[bytes]) -> Iterator[str]:
    """The stream's lines as text. Decoded line by line, not by a TextIOWrapper's chunks, so
    a byte that is not UTF-8 is reported on its own line ("\n" never ends a multi-byte
    character)."""
    if isinstance(stream, io.RawIOBase):
        stream = io.BufferedReader(stream, READ_BUFFER)
    number = 0
    while raw := stream.readline(MAX_LINE + 1):
        number += 1
        if len(raw) > MAX_LINE:
            # One endless line would otherwise be read whole into memory.
            raise BadImport(f"body: line {number} is longer than {MAX_LINE} bytes")
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise BadImport(
                f"body: line {number} is not UTF-8 text; save the file as UTF-8"
            ) from None


def json_rows(
    contacts: Iterable[tuple[object, dict[str, str]]], region: str | None, report: ImportReport
) -> Iterator[Row]:
    """The contacts of a JSON body ((number, fields) in order); invalid ones go to `report`
    with their index."""
    for index, (raw, fields) in enumerate(contacts):
        report.rows += 1
        try:
            phone = normalise(raw, region)
        except InvalidNumber as error:
            report.refuse(index, raw, str(error))
            continue
        fields = {name: value for name, value in fields.items() if value}
        if problem := _field_problem(fields):
            report.refuse(index, raw, problem)
            continue
        yield index, phone, fields


def import_contacts(
    session: Session, contact_list: ContactList, rows: Iterable[Row], report: ImportReport
) -> ImportReport:
    """Merge `rows` into the list in the session's transaction: a number new to the list is
    imported, one already on it has its fields merged (updated), a number repeated in the
    rows is counted once more as a duplicate (later rows win, fields merged). Opted-out
    numbers are kept (intake skips them) and counted."""
    if is_postgres(session):
        _import_postgres(session, contact_list.id, rows, report)
    else:
        _import_sqlite(session, contact_list.id, rows, report)
    contact_list.updated_at = utcnow()
    return report


class _CopySource(io.RawIOBase):
    """Rows as a file COPY reads from: CSV text made on demand, never all at once."""

    def __init__(self, rows: Iterable[Row]):
        self._rows = iter(rows)
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")
        self._pending = b""
        self._encode = json.JSONEncoder(ensure_ascii=False).encode
        self.count = 0
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            while size < 0 or len(self._pending) < size:
                chunk = list(itertools.islice(self._rows, 1000))
                if not chunk:
                    break
                self.count += len(chunk)
                encode = self._encode
                self._writer.writerows(
                    (line, phone, encode(fields)) for line, phone, fields in chunk
                )
                self._pending += self._buffer.getvalue().encode()
                self._buffer.seek(0)
                self._buffer.truncate()
        except BaseException as error:
            # psycopg2 reports a failed read as its own error; keep ours to raise instead.
            self.error = error
            raise
        if size < 0:
            size = len(self._pending)
        data, self._pending = self._pending[:size], self._pending[size:]
        return data


def _import_postgres(
    session: Session, list_id: uuid.UUID, rows: Iterable[Row], report: ImportReport
) -> None:
    cursor = session.connection().connection.dbapi_connection.cursor()
    cursor.execute(
        "CREATE TEMP TABLE contact_import (line bigint, phone text, fields jsonb) ON COMMIT DROP"
    )
    source = _CopySource(rows)
    try:
        # One COPY for the whole upload, fed as the request is read.
        cursor.copy_expert(
            "COPY contact_import (line, phone, fields) FROM STDIN WITH (FORMAT csv)",
            source,
            size=COPY_READ,
        )
    except Exception:
        if source.error is not None:
            raise source.error from None
        raise
    staged = source.count
    if not staged:
        return
    # Duplicates within the upload: one row per number, fields merged in line order
    # (jsonb_object_agg keeps the last value of a repeated key). Most numbers appear once,
    # so only the repeated ones pay for the merge.
    cursor.execute(
        """
        CREATE TEMP TABLE contact_merge ON COMMIT DROP AS
        SELECT DISTINCT ON (phone) phone, fields FROM contact_import
        ORDER BY phone, line DESC
        """
    )
    merged = cursor.rowcount
    if merged < staged:
        cursor.execute(
            """
            UPDATE contact_merge m SET fields = d.fields FROM (
                SELECT i.phone, jsonb_object_agg(e.key, e.value ORDER BY i.line) AS fields
                FROM contact_import i, jsonb_each(i.fields) e
                WHERE i.phone IN (
                    SELECT phone FROM contact_import GROUP BY phone HAVING count(*) > 1
                )
                GROUP BY i.phone
            ) d WHERE m.phone = d.phone
            """
        )
    report.duplicates = staged - merged
    cursor.execute(
        """
        WITH written AS (
            INSERT INTO contacts (list_id, phone, fields, created_at, updated_at)
            SELECT %(list_id)s, phone, fields::json, %(now)s, %(now)s FROM contact_merge
            ON CONFLICT (list_id, phone) DO UPDATE SET
                fields = (
                    CASE WHEN json_typeof(contacts.fields) = 'object'
                         THEN contacts.fields::jsonb ELSE '{}'::jsonb END
                    || EXCLUDED.fields::jsonb
                )::json,
                updated_at = EXCLUDED.updated_at
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)
        FROM written
        """,
        {"list_id": str(list_id), "now": utcnow()},
    )
    report.imported, report.updated = cursor.fetchone()
    cursor.execute("SELECT count(*) FROM contact_merge m JOIN opt_outs o ON o.phone = m.phone")
    report.opted_out = cursor.fetchone()[0]


def _import_sqlite(
    session: Session, list_id: uuid.UUID, rows: Iterable[Row], report: ImportReport
) -> None:
    connection = session.connection().connection.dbapi_connection
    # A rollback can bring back a table this connection dropped at the end of a failed
    # import (Python's sqlite3 runs the CREATE outside the transaction, the DROP inside).
    connection.execute("DROP TABLE IF EXISTS temp.contact_import")
    connection.execute("CREATE TEMP TABLE contact_import (line INTEGER, phone TEXT, fields TEXT)")
    try:
        staged = 0
        rows = iter(rows)
        while chunk := list(itertools.islice(rows, CHUNK)):
            staged += len(chunk)
            connection.executemany(
                "INSERT INTO temp.contact_import VALUES (?, ?, ?)",
                [(line, phone, json.dumps(fields)) for line, phone, fields in chunk],
            )
        connection.execute("CREATE INDEX temp.ix_contact_import ON contact_import (phone, line)")
        reader = connection.execute(
            "SELECT phone, fields FROM temp.contact_import ORDER BY phone, line"
        )
        merged = 0
        contacts: dict[str, dict[str, str]] = {}
        for phone, group in itertools.groupby(_fetched(reader), key=itemgetter(0)):
            fields: dict[str, str] = {}
            for _, encoded in group:  # in line order: later values win
                fields.update(json.loads(encoded))
            contacts[phone] = fields
            if len(contacts) == CHUNK:
                merged += len(contacts)
                _upsert_sqlite(session, list_id, contacts, report)
                contacts = {}
        if contacts:
            merged += len(contacts)
            _upsert_sqlite(session, list_id, contacts, report)
        report.duplicates = staged - merged
    finally:
        connection.execute("DROP TABLE IF EXISTS temp.contact_import")


def _fetched(cursor) -> Iterator[tuple[str, str]]:
    while batch := cursor.fetchmany(CHUNK):
        yield from batch


def _upsert_sqlite(
    session: Session, list_id: uuid.UUID, contacts: dict[str, dict], report: ImportReport
) -> None:
    phones = list(contacts)
    existing: set[str] = set()
    opted_out = 0
    for start in range(0, len(phones), 500):  # SQLite's bound-parameter cap
        part = phones[start : start + 500]
        existing.update(
            session.scalars(
                select(Contact.phone).where(Contact.list_id == list_id, Contact.phone.in_(part))
            )
        )
        opted_out += len(list(session.scalars(select(OptOut.phone).where(OptOut.phone.in_(part)))))
    report.updated += len(existing)
    report.imported += len(phones) - len(existing)
    report.opted_out += opted_out
    now = utcnow()
    statement = sqlite.insert(Contact)
    statement = statement.on_conflict_do_update(
        index_elements=["list_id", "phone"],
        set_={
            # RFC 7396 merge: the stored fields, updated by the new ones.
            "fields": func.json_patch(
                func.coalesce(literal_column("contacts.fields"), "{}"),
                statement.excluded.fields,
            ),
            "updated_at": statement.excluded.updated_at,
        },
    )
    session.execute(
        statement,
        [
            {
                "list_id": list_id,
                "phone": phone,
                "fields": fields,
                "created_at": now,
                "updated_at": now,
            }
            for phone, fields in contacts.items()
        ],
    )
