"""The tables: broadcasts, their batches (one Plivo call each), recipients and opt-outs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; every one we store is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime on both databases. SQLite keeps no zone, and SQLAlchemy drops
    the offset of an aware value without converting it, so a `-05:00` time would be stored
    five hours early: convert on the way in, attach UTC on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return as_utc(value).astimezone(UTC)

    def process_result_value(self, value, dialect):
        return None if value is None else as_utc(value).astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime}


class BroadcastStatus:
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"

    # A batch may only be claimed while its broadcast is in one of these.
    SENDABLE = (QUEUED, SENDING)
    FINAL = (CANCELLED, COMPLETED, COMPLETED_WITH_FAILURES)


class BatchStatus:
    PENDING = "pending"
    CLAIMED = "claimed"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"

    FINAL = (SUBMITTED, FAILED, UNKNOWN, CANCELLED)


class RecipientStatus:
    PENDING = "pending"
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"

    # Any of these makes a finished broadcast `completed_with_failures`.
    FAILURES = (FAILED, UNDELIVERED, REJECTED, UNKNOWN)


class Broadcast(Base):
    __tablename__ = "broadcasts"
    __table_args__ = (
        # Idempotency keys are scoped to the API key that used them.
        UniqueConstraint("api_key_id", "idempotency_key", name="uq_broadcasts_idempotency"),
        Index("ix_broadcasts_status_created", "status", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(8), default="sms")
    sender: Mapped[str] = mapped_column(String(32))
    text: Mapped[str | None] = mapped_column(Text)
    media: Mapped[dict | None] = mapped_column(JSON)
    encoding: Mapped[str | None] = mapped_column(String(8))
    segments: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(32), default=BroadcastStatus.QUEUED)
    status_reason: Mapped[str | None] = mapped_column(Text)
    # Intake counts (accepted, invalid, duplicates, skipped): fixed once the broadcast exists.
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    api_key_id: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # The 202 body as first sent, so a retried POST gets exactly the same answer.
    intake_response: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # `high` (alerts, one-time codes) books pacing slots before `normal` on the same sender.
    priority: Mapped[str] = mapped_column(
        String(8), default="normal", server_default="normal"
    )
    # The client's own URL for a signed completion notice, and when it was delivered.
    callback_url: Mapped[str | None] = mapped_column(Text)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What people call it ("Spring sale"), shown in listings where a UUID says nothing.
    name: Mapped[str | None] = mapped_column(String(200))
    # Where the text and the audience came from, when not given inline.
    template_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    list_ids: Mapped[list | None] = mapped_column(JSON)
    # A sender pool: each recipient sticks to one of these (batches carry the sender).
    senders: Mapped[list | None] = mapped_column(JSON)
    # {"start": "21:00", "end": "08:00"} in each recipient's local time; NULL: any hour.
    quiet_hours: Mapped[dict | None] = mapped_column(JSON)
    # The cost and duration estimate made at intake (the dry-run quote), kept to show.
    quote: Mapped[dict | None] = mapped_column(JSON)


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("broadcast_id", "seq", name="uq_batches_broadcast_seq"),
        Index("ix_batches_status_not_before", "status", "not_before"),
        # Batches held by quiet hours, found by the reconciler when they are due.
        Index(
            "ix_batches_hold_until",
            "hold_until",
            postgresql_where=text("hold_until IS NOT NULL"),
            sqlite_where=text("hold_until IS NOT NULL"),
        ),
        # Batches whose recipients are not rows yet, found by the writer (shared/audience.py).
        Index(
            "ix_batches_audience",
            "broadcast_id",
            postgresql_where=text("audience IS NOT NULL"),
            sqlite_where=text("audience IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    broadcast_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("broadcasts.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Fencing token written by each claim; later transitions of that attempt require it.
    claim_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The batch's reserved slot on its sender's timeline (set once reserved, so a batch
    # handed back never books capacity twice).
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The slot booked on the pacing timelines (NULL: not booked). Booked only a short
    # horizon ahead, so `not_before` alone may be an estimate of an unbooked batch.
    slot_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the current attempt's Plivo call started: the window an ambiguous attempt is
    # looked up in (Plivo's message_time).
    submitting_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Automatic resolution of an `unknown` batch: when to try next, how often it was
    # tried, when it ended, and what was found (shown to operators).
    resolve_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolve_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolution: Mapped[str | None] = mapped_column(Text)
    # When a task for it was last handed to the broker; NULL means "no task exists".
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    api_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # One Plivo call has one source and one text: a batch of a pooled or personalised
    # broadcast carries its own (NULL: the broadcast's sender, text, encoding, segments).
    sender: Mapped[str | None] = mapped_column(String(32))
    text: Mapped[str | None] = mapped_column(Text)
    encoding: Mapped[str | None] = mapped_column(String(8))
    segments: Mapped[int | None] = mapped_column(Integer)
    # Quiet hours: the time zone whose night governs every recipient of this batch, and
    # the moment they may be texted (the batch waits, `pending`, until then).
    zone: Mapped[str | None] = mapped_column(Text)
    hold_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The batch's numbers, comma-separated, in send order, while they are not recipients
    # rows yet: a list broadcast of a million contacts is written this way at intake and
    # its rows in the background (shared/audience.py). NULL once written.
    audience: Mapped[str | None] = mapped_column(Text)


class Recipient(Base):
    __tablename__ = "recipients"
    __table_args__ = (
        # The database itself refuses a second row for one number in one broadcast.
        UniqueConstraint("broadcast_id", "phone", name="uq_recipients_broadcast_phone"),
        Index("ix_recipients_batch_status", "batch_id", "status"),
        # finished_at too: the console's delivery-over-time chart of a 100k-recipient
        # broadcast reads the index alone instead of every row.
        Index("ix_recipients_broadcast_status", "broadcast_id", "status", "finished_at"),
        # Unique where set: most rows have none yet at intake, and indexing NULLs is waste.
        Index(
            "uq_recipients_message_uuid",
            "message_uuid",
            unique=True,
            postgresql_where=text("message_uuid IS NOT NULL"),
            sqlite_where=text("message_uuid IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign keys: the broadcast, its batches and its recipients are written in one
    # transaction and never deleted apart, and the per-row checks were half of the time
    # PostgreSQL took to write a 1,000,000-contact list broadcast (0.45 s of a 100k one).
    broadcast_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    batch_id: Mapped[int | None] = mapped_column(BigId)
    phone: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=RecipientStatus.PENDING)
    message_uuid: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(16))
    error_reason: Mapped[str | None] = mapped_column(Text)
    units: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # From Plivo's delivery reports: when the carrier took it, and when it became final.
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the status sweep looked the message up at Plivo; one still only `sent` then is
    # final ("sent, no delivery report").
    report_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OptOut(Base):
    __tablename__ = "opt_outs"

    phone: Mapped[str] = mapped_column(String(16), primary_key=True)
    source: Mapped[str] = mapped_column(String(32), default="api")
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InboundMessage(Base):
    """A reply to one of our numbers (STOP, START, HELP or anything else), as Plivo sent it."""

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_uuid: Mapped[str | None] = mapped_column(String(64), unique=True)
    phone: Mapped[str] = mapped_column(String(32), index=True)
    to: Mapped[str] = mapped_column(String(32))
    text: Mapped[str | None] = mapped_column(Text)
    intent: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the keyword's confirmation or HELP text went back (once per inbound message).
    replied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeliveryReport(Base):
    """A verified status callback, committed before Plivo gets its 200 (Redis may lose what
    it holds). Applied in bulk by workers; one whose uuid is not recorded yet waits, and after
    ORPHAN_REPORT_AFTER is kept as an orphan an operator can see. The unique nonce refuses
    replays; rows are purged some time after they were applied."""

    __tablename__ = "delivery_reports"
    __table_args__ = (
        # The applier's work list: unapplied reports that are due. Reports waiting for their
        # uuid are pushed back (`due_at`), so a pass never walks over thousands of them.
        Index(
            "ix_delivery_reports_due",
            "due_at",
            postgresql_where=text("applied_at IS NULL"),
            sqlite_where=text("applied_at IS NULL"),
        ),
        # The purge of applied reports, without scanning the table.
        Index(
            "ix_delivery_reports_applied",
            "applied_at",
            postgresql_where=text("applied_at IS NOT NULL"),
            sqlite_where=text("applied_at IS NOT NULL"),
        ),
        # No index on message_uuid: nothing looks reports up by it, and random uuids made
        # every insert and every applied mark a third dearer.
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    nonce: Mapped[str] = mapped_column(String(128), unique=True)
    message_uuid: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the applier should look at it (again): on arrival, then later and later while
    # its uuid is not recorded.
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    orphaned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A named API key with its scopes. Only a SHA-256 of the key is stored: the key itself
    is shown once, when it is created. Revoked keys keep their row (and name) so that the
    audit trail and `broadcasts.api_key_id` still say whose they were."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # The first 16 hex digits of the hash: non-secret, shown in listings, recorded on
    # broadcasts and audit events (the same id a key in API_KEYS gets).
    key_id: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """One operator action that succeeded: who (key), what (action), on what (target)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_action", "action"),
        Index("ix_audit_events_actor_key_id", "actor_key_id"),
        Index("ix_audit_events_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_key_id: Mapped[str] = mapped_column(String(16))
    actor_name: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(64))


class Template(Base):
    """A stored text with placeholders ({first_name}) and default field values."""

    __tablename__ = "templates"
    __table_args__ = (
        # A name is unique per key: one key's "Welcome" neither blocks nor reveals another's.
        UniqueConstraint("api_key_id", "name", name="uq_templates_key_name"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    fields: Mapped[dict] = mapped_column(JSON, default=dict)
    api_key_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )


class ContactList(Base):
    """A named list of contacts a broadcast can be sent to (`list_ids`)."""

    __tablename__ = "contact_lists"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    api_key_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )


class Contact(Base):
    """One number on a list, once (imports merge duplicates), with its fields for
    personalised texts. Opted-out numbers stay on the list and are skipped at intake."""

    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("list_id", "phone", name="uq_contacts_list_phone"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    list_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("contact_lists.id", ondelete="CASCADE")
    )
    phone: Mapped[str] = mapped_column(String(16))
    fields: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )


class ContactSender(Base):
    """Sticky senders: the pool number that last texted a phone, so it hears from the same
    number next time (as Twilio's Messaging Services do)."""

    __tablename__ = "contact_senders"

    phone: Mapped[str] = mapped_column(String(16), primary_key=True)
    sender: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConsoleSession(Base):
    """A browser session of the operator console: the cookie holds a random token, only its
    SHA-256 is stored; the key it was signed in with decides what it may see and do."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
