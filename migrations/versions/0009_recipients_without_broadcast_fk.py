"""recipients without a foreign key to broadcasts: written in the broadcast's own
transaction and never deleted apart, the per-row check was half of a 1M-recipient intake

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL named the constraint of 0001 itself; SQLite keeps no name, so batch mode names
# the reflected one by this convention to drop it by.
NAMING = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}
NAME = "recipients_broadcast_id_fkey"


def upgrade() -> None:
    with op.batch_alter_table("recipients", naming_convention=NAMING) as table:
        table.drop_constraint(NAME, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("recipients", naming_convention=NAMING) as table:
        table.create_foreign_key(NAME, "broadcasts", ["broadcast_id"], ["id"], ondelete="CASCADE")
