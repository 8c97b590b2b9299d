"""job logs: what each attempt's processor logged through ctx.logger, bounded per attempt"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from raypipe.store.tables import UTCDateTime

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.create_table(
        "job_logs",
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "attempt", "seq", name="pk_job_logs"),
    )


def downgrade() -> None:
    op.drop_table("job_logs")
