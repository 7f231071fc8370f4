"""template names unique per API key, not across all keys

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0006 left the constraint on `name` unnamed: PostgreSQL named it itself; SQLite keeps no
# name, so batch mode gives the reflected constraint one by this convention to drop it by.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_name() -> str:
    postgres = op.get_bind().dialect.name == "postgresql"
    return "templates_name_key" if postgres else "uq_templates_name"


def upgrade() -> None:
    with op.batch_alter_table("templates", naming_convention=NAMING) as table:
        table.drop_constraint(_old_name(), type_="unique")
        table.create_unique_constraint("uq_templates_key_name", ["api_key_id", "name"])


def downgrade() -> None:
    # Fails if two keys have a template of the same name: rename one first.
    with op.batch_alter_table("templates", naming_convention=NAMING) as table:
        table.drop_constraint("uq_templates_key_name", type_="unique")
        table.create_unique_constraint(_old_name(), ["name"])
