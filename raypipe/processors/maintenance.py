"""Maintenance as job types, so the scheduler runs it and its reports are kept as results.

They act on every tenant's jobs, whichever tenant submitted them: only admin keys
should be allowed to submit them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raypipe.context import JobContext
from raypipe.jobs import utcnow
from raypipe.registry import processor
from raypipe.store import maintenance
from raypipe.store.schema_version import current_database

QUEUE = "maintenance"
#: Mostly waiting on the database and the artifact store.
NUM_CPUS = 0.1


class PrunePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than_days: float | None = Field(
        default=None, ge=0, description="unset: the retention_days setting"
    )
    dry_run: bool = False


class OrphansPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dry_run: bool = False


class StuckPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


@processor("maintenance.prune", queue=QUEUE, num_cpus=NUM_CPUS, admin_only=True)
def prune(payload: PrunePayload, ctx: JobContext) -> dict[str, Any]:
    """Deletes jobs finished longer ago than the retention, with their attempts, events,
    webhook deliveries and artifacts, then the emptied batches."""
    with current_database(ctx.settings.database_url) as engine:
        report = maintenance.prune(
            engine,
            ctx.artifact_store,
            ctx.settings,
            utcnow(),
            older_than_days=payload.older_than_days,
            dry_run=payload.dry_run,
        )
    return report.to_dict()


@processor("maintenance.orphans", queue=QUEUE, num_cpus=NUM_CPUS, admin_only=True)
def orphans(payload: OrphansPayload, ctx: JobContext) -> dict[str, Any]:
    """Removes artifact folders whose job no longer exists, after a grace period."""
    with current_database(ctx.settings.database_url) as engine:
        report = maintenance.orphans(
            engine, ctx.artifact_store, ctx.settings, utcnow(), dry_run=payload.dry_run
        )
    return report.to_dict()


@processor("maintenance.stuck", queue=QUEUE, num_cpus=NUM_CPUS, admin_only=True)
def stuck(payload: StuckPayload, ctx: JobContext) -> dict[str, Any]:
    """Reports jobs whose lease expired, that overran their timeout, or that wait to be
    claimed for too long; logs a warning when there are any."""
    with current_database(ctx.settings.database_url) as engine:
        report = maintenance.stuck(engine, ctx.settings, utcnow())
    if report.total:
        ctx.logger.warning(
            "%d stuck jobs: %d with an expired lease, %d overrunning, %d waiting",
            report.total,
            report.lease_expired.count,
            report.overrunning.count,
            report.waiting.count,
        )
    return report.to_dict()
