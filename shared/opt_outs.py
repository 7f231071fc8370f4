"""The opt-out list: everyone on it is skipped at intake and again at send time."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Text, any_, bindparam, cast, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from shared.db import chunked, is_postgres
from shared.models import OptOut, utcnow


def add_opt_outs(
    session: Session, phones: Iterable[str], source: str, reason: str | None = None
) -> int:
    """Add E.164 numbers; ones already listed keep their first record. Returns how many
    were new."""
    unique = list(dict.fromkeys(phones))
    if not unique:
        return 0
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    now = utcnow()
    added = 0
    for chunk in chunked(unique):
        result = session.execute(
            dialect_insert(OptOut)
            .values(
                [
                    {"phone": phone, "source": source, "reason": reason, "created_at": now}
                    for phone in chunk
                ]
            )
            .on_conflict_do_nothing(index_elements=["phone"])
        )
        added += max(result.rowcount, 0)
    return added


def remove_opt_out(session: Session, phone: str, source: str | None = None) -> bool:
    """Take `phone` off the list (only an opt-out from `source`, when given)."""
    query = delete(OptOut).where(OptOut.phone == phone)
    if source is not None:
        query = query.where(OptOut.source == source)
    return session.execute(query).rowcount == 1


def opted_out_among(session: Session, phones: list[str]) -> set[str]:
    """The numbers of `phones` on the list (intake checks 100k at once, workers 1000)."""
    if is_postgres(session):
        # One array literal instead of a 100k-item ARRAY[...] expression for the server
        # to parse (4x faster). E.164 is only '+' and digits, so nothing needs quoting.
        literal = "{" + ",".join(phones) + "}"
        numbers = cast(bindparam("numbers", literal, type_=Text), ARRAY(Text))
        return set(session.scalars(select(OptOut.phone).where(OptOut.phone == any_(numbers))))
    found: set[str] = set()
    for chunk in chunked(phones):
        found.update(session.scalars(select(OptOut.phone).where(OptOut.phone.in_(chunk))))
    return found
