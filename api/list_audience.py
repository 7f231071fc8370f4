"""Contact lists resolved inside PostgreSQL. When every recipient of a list broadcast gets
the same text from the same sender at once (no placeholders, no pool, no quiet hours),
nothing needs doing per recipient in Python: the audience is counted and priced with one
grouped query at planning, and written with one INSERT ... SELECT, so a million contacts
never travel from the database to the API and back (60 s to 202 that way, measured).

The audience is what api/intake.plan_audience makes of the same lists: contacts in list
order then as added, each number once, minus the request's own numbers (those were first),
the sender's number (invalid) and opted-out numbers (skipped)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.orm import Session

from api.errors import ApiError
from shared.models import RecipientStatus
from shared.quotes import PREFIX_LENGTH

OPTED_OUT = "opted out"
# The window sort of a million rows spills to disk at the default 4 MB; for this one
# transaction only, so concurrent intakes cannot add up to much.
SORT_MEMORY = "128MB"
# Up to this many accepted contacts a list broadcast's recipients are all rows at the 202;
# past it they are kept per batch and written after it (shared/audience.py).
KEEP_ABOVE = 100_000


@dataclass
class ListAudience:
    """The contacts of `list_ids` that join the request's own numbers, counted."""

    list_ids: list[UUID]
    # The request's own valid numbers (a contact among them is a duplicate) and the sender.
    inline: list[str]
    sender: str
    # Contact rows in all (duplicates included) and distinct numbers among them that were
    # not given inline (the sender's number included).
    contacts: int
    fresh: int
    accepted: int
    skipped: int
    has_sender: bool
    # Accepted +1 numbers (the alphanumeric-sender rule needs to know there are some).
    nanp: int
    # (one number, accepted numbers) per number prefix: enough to price them by country.
    prefixes: list[tuple[str, int]]

    @property
    def duplicates(self) -> int:
        return self.contacts - self.fresh


def _array(values: Sequence[object]) -> str:
    """A PostgreSQL array literal: one bound value however long the list (as in
    shared/opt_outs.py). Only E.164 numbers, UUIDs and integers go in: nothing to quote."""
    return "{" + ",".join(map(str, values)) + "}"


def _fresh(list_ids: Sequence[UUID], inline: bool, ordered: bool) -> str:
    """SQL for the distinct contact numbers not given inline: `phone`, and with `ordered`
    where each first appears (`lpos` the list's place in the request, `id` the contact)."""
    not_inline = (
        " AND NOT EXISTS (SELECT 1 FROM unnest(CAST(:inline AS text[])) AS i(phone)"
        " WHERE i.phone = c.phone)"
        if inline
        else ""
    )
    if len(list_ids) == 1:
        # One list holds a number once (uq_contacts_list_phone): nothing to de-duplicate.
        columns = "c.phone, 1 AS lpos, c.id" if ordered else "c.phone"
        return f"SELECT {columns} FROM contacts c WHERE c.list_id = CAST(:list AS uuid){not_inline}"
    return (
        "SELECT DISTINCT ON (c.phone) c.phone, "
        "array_position(CAST(:lists AS uuid[]), c.list_id) AS lpos, c.id "
        f"FROM contacts c WHERE c.list_id = ANY(CAST(:lists AS uuid[])){not_inline} "
        "ORDER BY c.phone, lpos, c.id"
    )


def _params(list_ids: Sequence[UUID], inline: Sequence[str]) -> dict:
    params = {"lists": _array(list_ids), "list": str(list_ids[0])}
    if inline:
        params["inline"] = _array(inline)
    return params


def summarise(
    session: Session, list_ids: Sequence[UUID], inline: Sequence[str], sender: str
) -> ListAudience:
    """Count and price the lists' contacts that `inline` (the request's own valid numbers)
    does not already hold: one grouped pass over the contacts, plus a count when lists or
    inline numbers can hold duplicates."""
    params = _params(list_ids, inline) | {"sender": sender, "cut": PREFIX_LENGTH}
    rows = session.execute(
        text(
            f"WITH fresh AS ({_fresh(list_ids, bool(inline), ordered=False)}) "
            "SELECT left(f.phone, :cut), min(f.phone), "
            "count(*) FILTER (WHERE o.phone IS NULL AND f.phone <> :sender), "
            "count(*) FILTER (WHERE o.phone IS NOT NULL AND f.phone <> :sender), "
            "count(*) FILTER (WHERE f.phone = :sender), "
            "count(*) FILTER (WHERE o.phone IS NULL AND f.phone <> :sender "
            "AND f.phone LIKE '+1%') "
            "FROM fresh f LEFT JOIN opt_outs o ON o.phone = f.phone GROUP BY 1"
        ),
        params,
    ).all()
    accepted = sum(row[2] for row in rows)
    skipped = sum(row[3] for row in rows)
    own = sum(row[4] for row in rows)
    fresh = accepted + skipped + own
    if len(list_ids) == 1 and not inline:
        contacts = fresh
    else:
        contacts = session.scalar(
            text("SELECT count(*) FROM contacts WHERE list_id = ANY(CAST(:lists AS uuid[]))"),
            params,
        )
    return ListAudience(
        list_ids=list(list_ids),
        inline=list(inline),
        sender=sender,
        contacts=contacts,
        fresh=fresh,
        accepted=accepted,
        skipped=skipped,
        has_sender=own > 0,
        nanp=sum(row[5] for row in rows),
        prefixes=[(row[1], row[2]) for row in rows if row[2]],
    )


def write_recipients(
    session: Session,
    audience: ListAudience,
    broadcast_id: UUID,
    batch_ids: Sequence[int],
    offset: int,
    size: int,
) -> None:
    """Insert the audience's recipients, in the caller's transaction: the accepted ones
    `pending` in batches of `size` after the `offset` recipients given inline, and the
    opted-out ones `skipped`.
    Past KEEP_ABOVE accepted contacts, the batches wholly made of contacts keep their
    numbers as `batches.audience` instead, written as rows after the 202 (shared/audience.py).
    Refuses (409) and so rolls everything back if the contacts or opt-outs changed since
    `summarise` counted them: the counts must stay exact."""
    session.execute(text(f"SET LOCAL work_mem = '{SORT_MEMORY}'"))
    # Contacts numbered up to `rows` become rows; the rest start on a batch boundary.
    rows = audience.accepted
    if audience.accepted > KEEP_ABOVE:
        rows = min(rows, -offset % size)
    params = _params(audience.list_ids, audience.inline) | {
        "sender": audience.sender,
        "broadcast_id": str(broadcast_id),
        "batch_ids": _array(batch_ids),
        "offset": offset,
        "size": size,
        "rows": rows,
        "pending": RecipientStatus.PENDING,
        "skipped": RecipientStatus.SKIPPED,
        "reason": OPTED_OUT,
    }
    fresh = _fresh(audience.list_ids, bool(audience.inline), ordered=True)
    batch = "(CAST(:batch_ids AS bigint[]))[(:offset + n - 1) / :size + 1]"
    # One statement: the contacts are read, joined and numbered once. An accepted contact's
    # batch is its place among the accepted, as plan_audience numbers them.
    numbered, written, kept, skipped = session.execute(
        text(
            f"WITH fresh AS ({fresh}), "
            "audience AS ("
            " SELECT f.phone, f.lpos, f.id, o.phone IS NOT NULL AS opted"
            " FROM fresh f LEFT JOIN opt_outs o ON o.phone = f.phone"
            " WHERE f.phone <> :sender), "
            "accepted AS ("
            " SELECT phone, row_number() OVER (ORDER BY lpos, id) AS n"
            " FROM audience WHERE NOT opted), "
            "written AS ("
            " INSERT INTO recipients (broadcast_id, batch_id, phone, status)"
            f" SELECT CAST(:broadcast_id AS uuid), {batch}, phone, :pending"
            " FROM accepted WHERE n <= :rows ORDER BY n RETURNING 1), "
            "kept AS ("
            " UPDATE batches b SET audience = k.phones"
            f" FROM (SELECT {batch} AS batch_id, string_agg(phone, ',' ORDER BY n) AS phones,"
            " count(*) AS n FROM accepted WHERE n > :rows GROUP BY 1) k"
            " WHERE b.id = k.batch_id RETURNING k.n), "
            "skipped AS ("
            " INSERT INTO recipients (broadcast_id, batch_id, phone, status, error_reason)"
            " SELECT CAST(:broadcast_id AS uuid), NULL, phone, :skipped, :reason"
            " FROM audience WHERE opted ORDER BY lpos, id RETURNING 1) "
            "SELECT (SELECT count(*) FROM accepted), (SELECT count(*) FROM written),"
            " (SELECT coalesce(sum(n), 0) FROM kept), (SELECT count(*) FROM skipped)"
        ),
        params,
    ).one()
    # `numbered` too: a contact added since counting that numbers past the last batch
    # would be neither written nor kept (its batch id is NULL) and the sums still match.
    if (numbered, written + kept, skipped) != (audience.accepted,) * 2 + (audience.skipped,):
        raise ApiError(
            409,
            "conflict",
            "list_ids: the contacts or the opt-out list changed while this broadcast was "
            "being accepted; nothing was written, send it again",
        )
