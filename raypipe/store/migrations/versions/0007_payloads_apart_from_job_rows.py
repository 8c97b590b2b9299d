"""job payloads move to a table of their own, written once

Every state move rewrites a job's row: SQLite copies all of it, and walks a large value
to read any column stored after it. A megabyte payload in the row made each claim, start
and end cost a megabyte; in ``job_payloads`` it is written once and read once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from raypipe.store.tables import JSONType

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "job_payloads",
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("payload", JSONType, nullable=False),
    )
    op.execute("INSERT INTO job_payloads (job_id, payload) SELECT id, payload FROM jobs")
    op.drop_column("jobs", "payload")  # SQLite 3.35 and newer drop it in place


def downgrade() -> None:
    # NOT NULL needs a default for the rows already there (SQLite cannot add it later).
    op.add_column(
        "jobs", sa.Column("payload", JSONType, nullable=False, server_default=sa.text("'{}'"))
    )
    op.execute(
        "UPDATE jobs SET payload = (SELECT payload FROM job_payloads"
        " WHERE job_payloads.job_id = jobs.id)"
        " WHERE EXISTS (SELECT 1 FROM job_payloads WHERE job_payloads.job_id = jobs.id)"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("jobs", "payload", server_default=None)
    op.drop_table("job_payloads")
