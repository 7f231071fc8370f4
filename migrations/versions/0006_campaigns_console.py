"""campaigns (templates, contact lists, sticky senders, per-batch sender and text, quiet
hours, names, quotes), keyword replies, and operator console sessions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("broadcasts") as table:
        table.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        table.add_column(sa.Column("template_id", sa.Uuid(), nullable=True))
        table.add_column(sa.Column("list_ids", sa.JSON(), nullable=True))
        table.add_column(sa.Column("senders", sa.JSON(), nullable=True))
        table.add_column(sa.Column("quiet_hours", sa.JSON(), nullable=True))
        table.add_column(sa.Column("quote", sa.JSON(), nullable=True))
    with op.batch_alter_table("batches") as table:
        table.add_column(sa.Column("sender", sa.String(length=32), nullable=True))
        table.add_column(sa.Column("text", sa.Text(), nullable=True))
        table.add_column(sa.Column("encoding", sa.String(length=8), nullable=True))
        table.add_column(sa.Column("segments", sa.Integer(), nullable=True))
        table.add_column(sa.Column("zone", sa.Text(), nullable=True))
        table.add_column(sa.Column("hold_until", WHEN, nullable=True))
    op.create_index(
        "ix_batches_hold_until",
        "batches",
        ["hold_until"],
        postgresql_where=sa.text("hold_until IS NOT NULL"),
        sqlite_where=sa.text("hold_until IS NOT NULL"),
    )
    with op.batch_alter_table("inbound_messages") as table:
        table.add_column(sa.Column("replied_at", WHEN, nullable=True))
    op.create_table(
        "templates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("api_key_id", sa.String(length=16), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "contact_lists",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("api_key_id", sa.String(length=16), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "contacts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("list_id", sa.Uuid(), nullable=False),
        sa.Column("phone", sa.String(length=16), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.ForeignKeyConstraint(["list_id"], ["contact_lists.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("list_id", "phone", name="uq_contacts_list_phone"),
    )
    op.create_table(
        "contact_senders",
        sa.Column("phone", sa.String(length=16), nullable=False),
        sa.Column("sender", sa.String(length=32), nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("phone"),
    )
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("expires_at", WHEN, nullable=False),
        sa.Column("last_seen_at", WHEN, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("console_sessions")
    op.drop_table("contact_senders")
    op.drop_table("contacts")
    op.drop_table("contact_lists")
    op.drop_table("templates")
    with op.batch_alter_table("inbound_messages") as table:
        table.drop_column("replied_at")
    op.drop_index("ix_batches_hold_until", table_name="batches")
    with op.batch_alter_table("batches") as table:
        for column in ("hold_until", "zone", "segments", "encoding", "text", "sender"):
            table.drop_column(column)
    with op.batch_alter_table("broadcasts") as table:
        for column in ("quote", "quiet_hours", "senders", "list_ids", "template_id", "name"):
            table.drop_column(column)
