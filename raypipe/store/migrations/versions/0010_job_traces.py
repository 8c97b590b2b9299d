"""job traces: the submission's trace context, which the claim, the attempt and the job's
webhook delivery continue
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    for table in ("jobs", "webhook_deliveries"):
        op.add_column(table, sa.Column("trace_parent", sa.String(64)))


def downgrade() -> None:
    # Not in batch mode: on SQLite that copies the table and drops the old one, and the
    # drop would cascade to the jobs' attempts. SQLite drops a plain column in place.
    for table in ("jobs", "webhook_deliveries"):
        op.drop_column(table, "trace_parent")
