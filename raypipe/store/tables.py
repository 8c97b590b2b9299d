"""The relational schema. Alembic migrations in ``migrations/`` create exactly this."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from raypipe.jobs import AttemptStatus, JobStatus


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both PostgreSQL and SQLite (which keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous: pass an aware UTC datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _status_enum(enum: type[JobStatus] | type[AttemptStatus], name: str) -> sa.Enum:
    return sa.Enum(
        enum,
        name=name,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
        create_constraint=True,
    )


metadata = sa.MetaData()

JSONType: Any = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
#: For optional JSON columns: Python None is SQL NULL (not JSON 'null'), so IS NULL finds it.
NullableJSON: Any = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("queue", sa.String(200), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("status", _status_enum(JobStatus, "job_status"), nullable=False),
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
    sa.Column("artifacts", NullableJSON),
    sa.Column("then", NullableJSON),
    sa.Column("parent_id", sa.String(36)),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    sa.CheckConstraint("priority >= 0", name="ck_jobs_priority_non_negative"),
    sa.CheckConstraint("progress >= 0 AND progress <= 100", name="ck_jobs_progress_range"),
)

# Partial indexes: each holds only the rows its query looks for, so the churn of
# finished jobs never touches them. The claim: runnable jobs by queue, highest
# priority first, then oldest. The lease sweep: running jobs by lease expiry.
QUEUED_ONLY = sa.text("status = 'queued'")
PROCESSING_ONLY = sa.text("status = 'processing'")
sa.Index(
    "ix_jobs_claim",
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.created_at,
    jobs.c.id,
    postgresql_where=QUEUED_ONLY,
    sqlite_where=QUEUED_ONLY,
)
sa.Index(
    "ix_jobs_lease",
    jobs.c.queue,
    jobs.c.lease_expires_at,
    postgresql_where=PROCESSING_ONLY,
    sqlite_where=PROCESSING_ONLY,
)
sa.Index("ix_jobs_tenant_created", jobs.c.tenant, jobs.c.created_at)
sa.Index("ix_jobs_parent", jobs.c.parent_id)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column(
        "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", _status_enum(AttemptStatus, "attempt_status"), nullable=False),
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("error_type", sa.String(200)),
    sa.Column("error_message", sa.Text),
    sa.Column("error_traceback", sa.Text),
    sa.PrimaryKeyConstraint("job_id", "attempt", name="pk_attempts"),
)

# Every status change and coalesced progress step, in order: the history a job's
# event stream replays from (`Last-Event-ID`), the same on every API replica.
job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column(
        "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("progress", sa.Float, nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("stage", sa.String(200)),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
sa.Index("ix_job_events_job", job_events.c.job_id, job_events.c.id)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)

# Fixed-window counters per tenant and action, shared by every API replica.
rate_limits = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("action", sa.String(50), nullable=False),
    sa.Column("window_start", UTCDateTime, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("tenant", "action", "window_start", name="pk_rate_limits"),
)
