"""artifacts listed on jobs, follow-up specs and parent links"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"

JSONType = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("artifacts", JSONType))
    op.add_column("jobs", sa.Column("then", JSONType))
    op.add_column("jobs", sa.Column("parent_id", sa.String(36)))
    op.create_index("ix_jobs_parent", "jobs", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_parent", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("parent_id")
        batch.drop_column("then")
        batch.drop_column("artifacts")
