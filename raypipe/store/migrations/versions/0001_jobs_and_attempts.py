"""jobs and attempts"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from raypipe.store.tables import JSONType, UTCDateTime

revision = "0001"
down_revision = None

JOB_STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
ATTEMPT_STATUSES = ("running", "completed", "failed", "timed_out", "cancelled")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column(
            "status",
            sa.Enum(*JOB_STATUSES, name="job_status", create_constraint=True),
            nullable=False,
        ),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("tags", JSONType, nullable=False),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("message", sa.Text),
        sa.Column("stage", sa.String(200)),
        sa.Column("result", JSONType),
        sa.Column("error_type", sa.String(200)),
        sa.Column("error_message", sa.Text),
        sa.Column("error_traceback", sa.Text),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("timeout_s", sa.Float, nullable=False),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expires_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("run_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        sa.CheckConstraint("priority >= 0", name="ck_jobs_priority_non_negative"),
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name="ck_jobs_progress_range"),
    )
    queued, processing = sa.text("status = 'queued'"), sa.text("status = 'processing'")
    op.create_index(
        "ix_jobs_claim",
        "jobs",
        ["queue", sa.text("priority DESC"), "created_at", "id"],
        postgresql_where=queued,
        sqlite_where=queued,
    )
    op.create_index(
        "ix_jobs_lease",
        "jobs",
        ["queue", "lease_expires_at"],
        postgresql_where=processing,
        sqlite_where=processing,
    )
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant", "created_at"])
    op.create_table(
        "attempts",
        sa.Column(
            "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column(
            "status",
            sa.Enum(*ATTEMPT_STATUSES, name="attempt_status", create_constraint=True),
            nullable=False,
        ),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("error_type", sa.String(200)),
        sa.Column("error_message", sa.Text),
        sa.Column("error_traceback", sa.Text),
        sa.PrimaryKeyConstraint("job_id", "attempt", name="pk_attempts"),
    )


def downgrade() -> None:
    op.drop_table("attempts")
    op.drop_table("jobs")
    sa.Enum(name="attempt_status").drop(op.get_bind(), checkfirst=True)
    sa.Enum(name="job_status").drop(op.get_bind(), checkfirst=True)
