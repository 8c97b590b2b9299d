"""The relational schema. Alembic migrations in ``migrations/`` create exactly this."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from raypipe.jobs import AttemptStatus
from raypipe.lifecycle import Change, Hold, JobStatus


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


def _job_id(**options: Any) -> sa.Column[Any]:
    """The column of a job's own rows (attempts, events, logs…): they go with the job."""
    return sa.Column(
        "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), **options
    )


def _partial_index(name: str, *columns: Any, where: sa.TextClause) -> sa.Index:
    """An index over only the rows ``where`` holds, on PostgreSQL and SQLite alike."""
    return sa.Index(name, *columns, postgresql_where=where, sqlite_where=where)


jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("queue", sa.String(200), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("status", _status_enum(JobStatus, "job_status"), nullable=False),
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
    # The spec's fingerprint where it has an idempotency key (a replay must match it); "".
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
    sa.Column("batch_id", sa.String(36)),
    sa.Column("batch_index", sa.Integer),
    sa.Column("webhook_url", sa.Text),
    # The submission's trace context (W3C traceparent) when traces are on: the claim and
    # the attempt continue its trace.
    sa.Column("trace_parent", sa.String(64)),
    # At most the queue's (or processor's) key limit of a tenant's jobs with one key run
    # at once.
    sa.Column("concurrency_key", sa.String(200)),
    # A unique job: while it is in its window (``unique_while``: queued, or queued and
    # running) its ``unique_slot`` holds the key, and the unique index refuses a second
    # of the tenant's jobs of its type with that key; leaving the window clears the slot.
    sa.Column("unique_key", sa.String(200)),
    sa.Column("unique_while", sa.String(16)),
    sa.Column("unique_slot", sa.String(200)),
    # The run limit's key this job counts against (its processor's or queue's limit).
    sa.Column("run_key", sa.String(200)),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    sa.CheckConstraint("priority >= 0", name="ck_jobs_priority_non_negative"),
    sa.CheckConstraint("progress >= 0 AND progress <= 100", name="ck_jobs_progress_range"),
)

#: Each job's payload, apart from its row: every state move rewrites the job's row (SQLite
#: copies all of it, and walks a large value to read any column stored after it), so a
#: megabyte payload there made each claim, start and end cost a megabyte. Written once.
job_payloads = sa.Table(
    "job_payloads",
    metadata,
    _job_id(primary_key=True),
    sa.Column("payload", JSONType, nullable=False),
)


def status_in(statuses: Iterable[JobStatus]) -> sa.TextClause:
    """``status = 'queued'`` or ``status IN (…)``, in literal SQL: SQLite uses a partial
    index only for a WHERE that holds the index's own terms, which a bound parameter
    does not."""
    wanted = set(statuses)
    values = [f"'{status.value}'" for status in JobStatus if status in wanted]
    if len(values) == 1:
        return sa.text(f"status = {values[0]}")
    return sa.text(f"status IN ({', '.join(values)})")


# Partial indexes: each holds only the rows its query looks for, so the churn of
# finished jobs never touches them. The claim: runnable jobs by queue, highest
# priority first, then oldest. The lease sweep: held jobs by lease expiry.
QUEUED_ONLY = status_in([JobStatus.QUEUED])
PROCESSING_ONLY = status_in([JobStatus.PROCESSING])
#: Claimed by a dispatcher and not ended: queued until its worker reports the start, then
#: processing. Exact because every write that ends or requeues a job clears the lease, and
#: only a job no one holds is cancelled at once.
HELD = sa.text("lease_owner IS NOT NULL")
UNHELD = sa.text("lease_owner IS NULL")


@cache
def guard(change: Change) -> sa.ColumnElement[bool]:
    """The rows ``change`` applies to (:mod:`raypipe.lifecycle`): its statuses, and its
    hold (a dispatcher's lease, or none)."""
    hold = {Hold.HELD: [HELD], Hold.UNHELD: [UNHELD], Hold.EITHER: []}[change.hold]
    return sa.and_(status_in(change.sources), *hold)


#: Queued and held by no dispatcher: what a claim may take.
UNHELD_QUEUED = guard(Change.CLAIM)
_partial_index(
    "ix_jobs_claim",
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.created_at,
    jobs.c.id,
    where=QUEUED_ONLY,
)
# The fair claim: one tenant's runnable jobs in claim order, and the tenants that wait.
_partial_index(
    "ix_jobs_claim_tenant",
    jobs.c.queue,
    jobs.c.tenant,
    jobs.c.priority.desc(),
    jobs.c.created_at,
    jobs.c.id,
    where=QUEUED_ONLY,
)
sa.Index("uq_jobs_unique_slot", jobs.c.tenant, jobs.c.type, jobs.c.unique_slot, unique=True)
_partial_index(
    "ix_jobs_lease",
    jobs.c.queue,
    jobs.c.lease_expires_at,
    where=HELD,
)
sa.Index("ix_jobs_tenant_created", jobs.c.tenant, jobs.c.created_at)
sa.Index("ix_jobs_parent", jobs.c.parent_id)
sa.Index("ix_jobs_batch", jobs.c.batch_id, jobs.c.status)
sa.Index("ix_jobs_batch_order", jobs.c.batch_id, jobs.c.batch_index)
sa.Index("ix_jobs_finished", jobs.c.finished_at)

attempts = sa.Table(
    "attempts",
    metadata,
    _job_id(nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", _status_enum(AttemptStatus, "attempt_status"), nullable=False),
    sa.Column("lease_owner", sa.String(200)),
    # Null until the worker reports the start (a claimed attempt may end before it does).
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("error_type", sa.String(200)),
    sa.Column("error_message", sa.Text),
    sa.Column("error_traceback", sa.Text),
    # When the attempt became runnable (its job's run_at when claimed): wait = started - ready.
    sa.Column("ready_at", UTCDateTime),
    sa.PrimaryKeyConstraint("job_id", "attempt", name="pk_attempts"),
)
sa.Index("ix_attempts_finished", attempts.c.finished_at)

# Every status change and coalesced progress step, in order: the history a job's
# event stream replays from (`Last-Event-ID`), the same on every API replica.
job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    _job_id(nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("progress", sa.Float, nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("stage", sa.String(200)),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
sa.Index("ix_job_events_job", job_events.c.job_id, job_events.c.id)

# What each attempt's processor logged through ctx.logger, numbered per attempt by its
# worker; an attempt keeps its newest lines within `log_max_bytes` (the worker says which
# older ones to delete), so `min(seq) - 1` lines were dropped.
job_logs = sa.Table(
    "job_logs",
    metadata,
    _job_id(nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("ts", UTCDateTime, nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("job_id", "attempt", "seq", name="pk_job_logs"),
)

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

# A queue paused by an operator (its row) claims nothing until resumed; it still accepts
# submissions. Kept here so a pause outlives restarts of the dispatcher and of Ray.
queue_pauses = sa.Table(
    "queue_pauses",
    metadata,
    sa.Column("queue", sa.String(200), primary_key=True),
    sa.Column("paused_at", UTCDateTime, nullable=False),
)

# A set of jobs submitted together. Counts are read from the jobs themselves (exact
# whatever finishes concurrently); ``status`` leaves ``running`` in the transaction that
# records the last job's end, which is also where the completion callback is written.
batches = sa.Table(
    "batches",
    metadata,
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
    # As a job's: the Idempotency-Key of the request that made it, and its body's fingerprint.
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("request_hash", sa.String(64), nullable=False, server_default=""),
)
sa.Index("ix_batches_tenant_created", batches.c.tenant, batches.c.created_at)
sa.Index(
    "uq_batches_tenant_idempotency_key",
    batches.c.tenant,
    batches.c.idempotency_key,
    unique=True,
)

# The secret each tenant's webhooks are signed with (Standard Webhooks: ``whsec_…``).
webhook_secrets = sa.Table(
    "webhook_secrets",
    metadata,
    sa.Column("tenant", sa.String(200), primary_key=True),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# An outbox: a delivery row is written in the transaction that records the terminal
# event, so it exists exactly once; the sender claims due rows and records each try.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
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
    # The job's trace (W3C traceparent), which its delivery continues when traces are on.
    sa.Column("trace_parent", sa.String(64)),
)
PENDING_ONLY = sa.text("status = 'pending'")
_partial_index(
    "ix_webhook_deliveries_due",
    webhook_deliveries.c.next_attempt_at,
    where=PENDING_ONLY,
)
sa.Index(
    "ix_webhook_deliveries_tenant_created",
    webhook_deliveries.c.tenant,
    webhook_deliveries.c.created_at,
)
sa.Index("ix_webhook_deliveries_job", webhook_deliveries.c.job_id)
DELIVERING_ONLY = sa.text("status = 'delivering'")
_partial_index(
    "ix_webhook_deliveries_lease",
    webhook_deliveries.c.lease_expires_at,
    where=DELIVERING_ONLY,
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
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

# Cron schedules that submit a job spec. A fire inserts its job with the idempotency key
# ``schedule:<id>:<instant>`` and moves ``next_fire_at`` in one transaction, so an instant
# can never fire twice, however many dispatchers race or restart.
schedules = sa.Table(
    "schedules",
    metadata,
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
sa.Index("ix_schedules_due", schedules.c.enabled, schedules.c.next_fire_at)

# Run limits: each start of a job with a run key, kept for the longest window; and keys
# paused until a time (a service answered 429 with Retry-After).
run_starts = sa.Table(
    "run_starts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
)
sa.Index("ix_run_starts_key", run_starts.c.key, run_starts.c.started_at)
run_pauses = sa.Table(
    "run_pauses",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("until", UTCDateTime, nullable=False),
)

# Fair-share weights set by an admin (over RAYPIPE_TENANT_WEIGHTS).
tenant_weights = sa.Table(
    "tenant_weights",
    metadata,
    sa.Column("tenant", sa.String(200), primary_key=True),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("weight > 0", name="ck_tenant_weights_positive"),
)
