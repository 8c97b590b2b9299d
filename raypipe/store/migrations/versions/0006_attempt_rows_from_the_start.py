"""attempt rows are written when an attempt starts (or ends), no longer at its claim"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    # Claims of the previous version inserted a row for an attempt not begun yet; the
    # start or the end of that attempt now inserts it.
    op.execute(
        "DELETE FROM attempts WHERE status = 'running' AND started_at IS NULL AND EXISTS ("
        "SELECT 1 FROM jobs WHERE jobs.id = attempts.job_id AND jobs.attempt = attempts.attempt"
        " AND jobs.status = 'queued')"
    )


def downgrade() -> None:
    # The previous version finds held jobs without an attempt row only when it records
    # their end, which then updates nothing: it may keep them, as this one does not write
    # them back.
    pass
