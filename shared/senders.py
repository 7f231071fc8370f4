"""Sender pools: each recipient sticks to one sender of the pool, so a person hears from
the same number every time (replies and STOP reach the number they know)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import Text, any_, bindparam, cast, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from shared.db import chunked, is_postgres
from shared.models import ContactSender


def hashed_sender(number: str, pool: Sequence[str]) -> str:
    """The pool member a number gets when nobody has texted it yet: stable across
    processes and restarts (Python's own hash() is salted per process)."""
    digest = hashlib.sha256(number.encode()).digest()
    return pool[int.from_bytes(digest[:8], "big") % len(pool)]


def _array(values: Sequence[str]):
    # One array literal rather than a huge IN list (see shared/opt_outs.py). Senders are
    # E.164 or letters, digits and spaces: double quotes make the spaces safe.
    literal = "{" + ",".join(f'"{value}"' for value in values) + "}"
    return cast(bindparam(None, literal, type_=Text), ARRAY(Text))


def sticky_senders(session: Session, numbers: Sequence[str]) -> dict[str, str]:
    """The sender that last texted each of `numbers`, where one did."""
    if not numbers:
        return {}
    if is_postgres(session):
        query = select(ContactSender.phone, ContactSender.sender).where(
            ContactSender.phone == any_(_array(numbers))
        )
        return dict(session.execute(query).all())
    found: dict[str, str] = {}
    for chunk in chunked(numbers):
        query = select(ContactSender.phone, ContactSender.sender).where(
            ContactSender.phone.in_(chunk)
        )
        found.update(session.execute(query).all())
    return found


def choose_senders(
    session: Session, numbers: Sequence[str], pool: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """Each number's sender from the pool (its sticky one when that is still in the pool,
    else by hash), and the numbers whose sticky sender must be recorded or changed."""
    members = set(pool)
    sticky = sticky_senders(session, numbers)
    chosen: list[str] = []
    changed: dict[str, str] = {}
    for number in numbers:
        sender = sticky.get(number)
        if sender not in members:
            sender = hashed_sender(number, pool)
            changed[number] = sender
        chosen.append(sender)
    return chosen, changed


def remember_senders(session: Session, senders: Mapping[str, str], now: datetime) -> None:
    """Record (or move) each number's sticky sender, in the caller's transaction."""
    if not senders:
        return
    if is_postgres(session):
        session.execute(
            text(
                "INSERT INTO contact_senders (phone, sender, updated_at) "
                "SELECT phone, sender, :now FROM unnest(:phones, :senders) AS s(phone, sender) "
                "ON CONFLICT (phone) DO UPDATE "
                "SET sender = excluded.sender, updated_at = excluded.updated_at"
            ).bindparams(
                bindparam("now", now, type_=ContactSender.__table__.c.updated_at.type),
                bindparam("phones", list(senders), type_=ARRAY(Text)),
                bindparam("senders", list(senders.values()), type_=ARRAY(Text)),
            )
        )
        return
    rows = [
        {"phone": phone, "sender": sender, "updated_at": now} for phone, sender in senders.items()
    ]
    for chunk in chunked(rows):
        statement = sqlite.insert(ContactSender).values(list(chunk))
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["phone"],
                set_={
                    "sender": statement.excluded.sender,
                    "updated_at": statement.excluded.updated_at,
                },
            )
        )
