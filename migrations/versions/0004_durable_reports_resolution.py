"""durable delivery reports, status sweep, resolution of unknown batches, horizon pacing

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "delivery_reports",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("message_uuid", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("orphaned_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("nonce"),
    )
    op.create_index(
        "ix_delivery_reports_due",
        "delivery_reports",
        ["due_at"],
        postgresql_where=sa.text("applied_at IS NULL"),
        sqlite_where=sa.text("applied_at IS NULL"),
    )
    op.create_index(
        "ix_delivery_reports_applied",
        "delivery_reports",
        ["applied_at"],
        postgresql_where=sa.text("applied_at IS NOT NULL"),
        sqlite_where=sa.text("applied_at IS NOT NULL"),
    )
    with op.batch_alter_table("broadcasts") as batch_op:
        batch_op.add_column(
            sa.Column("priority", sa.String(length=8), server_default="normal", nullable=False)
        )
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("slot_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("submitting_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("resolve_after", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("resolve_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("resolution", sa.Text(), nullable=True))
    with op.batch_alter_table("recipients") as batch_op:
        batch_op.add_column(
            sa.Column("report_checked_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("recipients") as batch_op:
        batch_op.drop_column("report_checked_at")
    with op.batch_alter_table("batches") as batch_op:
        for column in (
            "resolution",
            "resolved_at",
            "resolve_attempts",
            "resolve_after",
            "submitting_at",
            "slot_at",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("broadcasts") as batch_op:
        batch_op.drop_column("priority")
    op.drop_index("ix_delivery_reports_applied", table_name="delivery_reports")
    op.drop_index("ix_delivery_reports_due", table_name="delivery_reports")
    op.drop_table("delivery_reports")
