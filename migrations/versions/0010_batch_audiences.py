"""batches.audience: a large list broadcast's numbers per batch, written as recipients rows
after the 202 instead of before it

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("audience", sa.Text(), nullable=True))
    op.create_index(
        "ix_batches_audience",
        "batches",
        ["broadcast_id"],
        postgresql_where=sa.text("audience IS NOT NULL"),
        sqlite_where=sa.text("audience IS NOT NULL"),
    )


def downgrade() -> None:
    # Recipients not written yet become rows first (only PostgreSQL ever stores audiences).
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "INSERT INTO recipients (broadcast_id, batch_id, phone, status)"
            " SELECT b.broadcast_id, b.id, p.phone, 'pending' FROM batches b,"
            " unnest(string_to_array(b.audience, ',')) WITH ORDINALITY AS p(phone, n)"
            " WHERE b.audience IS NOT NULL ORDER BY b.id, p.n"
        )
    op.drop_index("ix_batches_audience", table_name="batches")
    with op.batch_alter_table("batches") as table:
        table.drop_column("audience")
