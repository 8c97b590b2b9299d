"""batch idempotency keys: POST /v1/batches with the same Idempotency-Key and body returns
the first batch
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.add_column("batches", sa.Column("idempotency_key", sa.String(255)))
    op.add_column(
        "batches", sa.Column("request_hash", sa.String(64), nullable=False, server_default="")
    )
    op.create_index(
        "uq_batches_tenant_idempotency_key",
        "batches",
        ["tenant", "idempotency_key"],
        unique=True,
    )


def downgrade() -> None:
    # Not in batch mode: on SQLite that copies the table and drops the old one, and the
    # drop would cascade to the batch's jobs. SQLite drops a plain column in place.
    op.drop_index("uq_batches_tenant_idempotency_key", table_name="batches")
    op.drop_column("batches", "request_hash")
    op.drop_column("batches", "idempotency_key")
