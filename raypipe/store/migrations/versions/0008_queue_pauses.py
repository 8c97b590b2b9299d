"""queue pauses: a paused queue claims nothing until resumed, across restarts"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from raypipe.store.tables import UTCDateTime

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "queue_pauses",
        sa.Column("queue", sa.String(200), primary_key=True),
        sa.Column("paused_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("queue_pauses")
