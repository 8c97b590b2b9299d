"""fair share and flow control: claims read per tenant; concurrency keys, unique jobs, and
execution rate limits (run limits) with their pauses"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from raypipe.store.tables import UTCDateTime

revision = "0012"
down_revision = "0011"

QUEUED_ONLY = sa.text("status = 'queued'")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("concurrency_key", sa.String(200)))
    op.add_column("jobs", sa.Column("unique_key", sa.String(200)))
    op.add_column("jobs", sa.Column("unique_while", sa.String(16)))
    op.add_column("jobs", sa.Column("unique_slot", sa.String(200)))
    op.add_column("jobs", sa.Column("run_key", sa.String(200)))
    op.create_index(
        "ix_jobs_claim_tenant",
        "jobs",
        ["queue", "tenant", sa.text("priority DESC"), "created_at", "id"],
        postgresql_where=QUEUED_ONLY,
        sqlite_where=QUEUED_ONLY,
    )
    op.create_index("uq_jobs_unique_slot", "jobs", ["tenant", "type", "unique_slot"], unique=True)
    op.create_table(
        "run_starts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_run_starts_key", "run_starts", ["key", "started_at"])
    op.create_table(
        "run_pauses",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("until", UTCDateTime, nullable=False),
    )
    op.create_table(
        "tenant_weights",
        sa.Column("tenant", sa.String(200), primary_key=True),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("weight > 0", name="ck_tenant_weights_positive"),
    )


def downgrade() -> None:
    # Plain column drops (not batch mode): on SQLite a batch copy of jobs would cascade.
    op.drop_table("tenant_weights")
    op.drop_table("run_pauses")
    op.drop_index("ix_run_starts_key", table_name="run_starts")
    op.drop_table("run_starts")
    op.drop_index("uq_jobs_unique_slot", table_name="jobs")
    op.drop_index("ix_jobs_claim_tenant", table_name="jobs")
    for column in ("run_key", "unique_slot", "unique_while", "unique_key", "concurrency_key"):
        op.drop_column("jobs", column)
