"""batches, webhook deliveries and secrets, schedules; attempt readiness for wait times"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from raypipe.store.tables import UTCDateTime

revision = "0004"
down_revision = "0003"

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
NullableJSON = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
PENDING_ONLY = sa.text("status = 'pending'")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("batch_id", sa.String(36)))
    op.add_column("jobs", sa.Column("batch_index", sa.Integer))
    op.add_column("jobs", sa.Column("webhook_url", sa.Text))
    op.create_index("ix_jobs_batch", "jobs", ["batch_id", "status"])
    op.create_index("ix_jobs_batch_order", "jobs", ["batch_id", "batch_index"])
    op.create_index("ix_jobs_finished", "jobs", ["finished_at"])
    op.add_column("attempts", sa.Column("ready_at", UTCDateTime))
    op.create_index("ix_attempts_finished", "attempts", ["finished_at"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("tags", JSONType, nullable=False),
        sa.Column("webhook_url", sa.Text),
        sa.Column("then", NullableJSON),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("completions", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
    )
    op.create_index("ix_batches_tenant_created", "batches", ["tenant", "created_at"])
    op.create_table(
        "webhook_secrets",
        sa.Column("tenant", sa.String(200), primary_key=True),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("event", sa.String(50), nullable=False),
        sa.Column("job_id", sa.String(36)),
        sa.Column("batch_id", sa.String(36)),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime),
        sa.Column("lease_expires_at", UTCDateTime),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=PENDING_ONLY,
        sqlite_where=PENDING_ONLY,
    )
    op.create_index(
        "ix_webhook_deliveries_tenant_created", "webhook_deliveries", ["tenant", "created_at"]
    )
    op.create_index("ix_webhook_deliveries_job", "webhook_deliveries", ["job_id"])
    op.create_index(
        "ix_webhook_deliveries_lease",
        "webhook_deliveries",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'delivering'"),
        sqlite_where=sa.text("status = 'delivering'"),
    )
    op.create_table(
        "webhook_attempts",
        sa.Column(
            "delivery_id",
            sa.String(40),
            sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("response", sa.Text),
        sa.PrimaryKeyConstraint("delivery_id", "attempt", name="pk_webhook_attempts"),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("missed", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("next_fire_at", UTCDateTime),
        sa.Column("last_fire_at", UTCDateTime),
        sa.Column("last_job_id", sa.String(36)),
        sa.Column("fires", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_schedules_tenant_name"),
    )
    op.create_index("ix_schedules_due", "schedules", ["enabled", "next_fire_at"])


def downgrade() -> None:
    op.drop_table("schedules")
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_secrets")
    op.drop_table("batches")
    op.drop_index("ix_attempts_finished", table_name="attempts")
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_index("ix_jobs_batch_order", table_name="jobs")
    op.drop_index("ix_jobs_batch", table_name="jobs")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("ready_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("webhook_url")
        batch.drop_column("batch_index")
        batch.drop_column("batch_id")
