"""recipients by broadcast and status with finished_at, for index-only delivery charts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_recipients_broadcast_status", table_name="recipients")
    op.create_index(
        "ix_recipients_broadcast_status", "recipients", ["broadcast_id", "status", "finished_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_recipients_broadcast_status", table_name="recipients")
    op.create_index("ix_recipients_broadcast_status", "recipients", ["broadcast_id", "status"])
