"""job traces: the submission's trace context, which the claim and the attempt continue

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("trace_parent", sa.String(64)))


def downgrade() -> None:
    # Not in batch mode: on SQLite that copies the table and drops the old one, and the
    # drop would cascade to the jobs' attempts. SQLite drops a plain column in place.
    op.drop_column("jobs", "trace_parent")
