"""claimed jobs stay queued until started: lease index over held jobs, attempts start later"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from raypipe.store.tables import UTCDateTime

revision = "0005"
down_revision = "0004"

HELD = sa.text("lease_owner IS NOT NULL")
PROCESSING_ONLY = sa.text("status = 'processing'")


def upgrade() -> None:
    _lease_index(HELD)
    with op.batch_alter_table("attempts") as batch:
        batch.alter_column("started_at", existing_type=UTCDateTime, nullable=True)


def downgrade() -> None:
    # An attempt that ended before its start was reported gets its end as its start.
    op.execute(
        "UPDATE attempts SET started_at = COALESCE(finished_at, ready_at, CURRENT_TIMESTAMP)"
        " WHERE started_at IS NULL"
    )
    with op.batch_alter_table("attempts") as batch:
        batch.alter_column("started_at", existing_type=UTCDateTime, nullable=False)
    _lease_index(PROCESSING_ONLY)


def _lease_index(where: sa.TextClause) -> None:
    op.drop_index("ix_jobs_lease", table_name="jobs")
    op.create_index(
        "ix_jobs_lease",
        "jobs",
        ["queue", "lease_expires_at"],
        postgresql_where=where,
        sqlite_where=where,
    )
