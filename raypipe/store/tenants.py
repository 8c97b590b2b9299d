"""Tenants as fair share sees them: the weights an admin set (over the settings'), and
each tenant's waiting and running jobs per queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from raypipe.exceptions import InvalidInput
from raypipe.jobs import JobStatus, utcnow
from raypipe.store.engine import read_only
from raypipe.store.jobs import Clock
from raypipe.store.tables import HELD, jobs, status_in, tenant_weights
from raypipe.tenants import check_tenant

#: The most a weight may be: beyond, one tenant's share would round every other's to 0.
MAX_WEIGHT = 1_000_000.0


class TenantStore:
    """Reads and sets tenants' fair-share weights; counts their jobs per queue."""

    def __init__(self, engine: Engine, clock: Clock = utcnow):
        self.engine = engine
        self.clock = clock

    def set_weight(self, tenant: str, weight: float) -> None:
        """Set ``tenant``'s weight (it replaces the setting's for that tenant)."""
        check_tenant(tenant)
        if not 0 < weight <= MAX_WEIGHT:
            raise InvalidInput(
                f"weight: must be above 0 and at most {MAX_WEIGHT:g} (got {weight:g})",
                details=[{"loc": ["weight"], "msg": f"must be in (0, {MAX_WEIGHT:g}]"}],
            )
        row = {"tenant": tenant, "weight": weight, "updated_at": self.clock()}
        insert = (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert
        upsert = insert(tenant_weights).values(row)
        upsert = upsert.on_conflict_do_update(
            index_elements=[tenant_weights.c.tenant],
            set_={"weight": upsert.excluded.weight, "updated_at": upsert.excluded.updated_at},
        )
        with self.engine.begin() as conn:
            conn.execute(upsert)

    def weights(self, defaults: Mapping[str, float]) -> dict[str, float]:
        """Every weight: the settings' ``defaults``, and over them what an admin set."""
        with read_only(self.engine) as conn:
            stored = {row.tenant: row.weight for row in conn.execute(sa.select(tenant_weights))}
        return {**defaults, **stored}

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """Queue -> tenant -> its ``waiting`` (queued, not held) and ``running`` (held)
        jobs."""
        state = sa.case((HELD, "running"), else_="waiting")
        query = (
            sa.select(jobs.c.queue, jobs.c.tenant, state, sa.func.count())
            .where(status_in([JobStatus.QUEUED, JobStatus.PROCESSING]))
            .group_by(jobs.c.queue, jobs.c.tenant, state)
        )
        found: dict[str, dict[str, dict[str, int]]] = {}
        with read_only(self.engine) as conn:
            for queue, owner, state, count in conn.execute(query):
                row = found.setdefault(queue, {}).setdefault(owner, {"waiting": 0, "running": 0})
                row[state] = count
        return found

    def by_queue(
        self,
        defaults: Mapping[str, float],
        usage: Mapping[str, Mapping[str, Any]],
        tenant: str | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Queue -> its tenants as :func:`shares` shows them; ``tenant``'s row alone when
        given (its share is still of every tenant with jobs in the queue)."""
        weights = self.weights(defaults)
        return {
            queue: [
                row
                for row in shares(counts, weights, usage)
                if tenant is None or row["tenant"] == tenant
            ]
            for queue, counts in self.counts().items()
        }


def shares(
    counts: Mapping[str, Mapping[str, int]],
    weights: Mapping[str, float],
    usage: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One queue's tenants as ``GET /v1/queues`` shows them: waiting and running jobs,
    weight, recent usage (resource-seconds, None where the dispatcher could not say) and
    share (its weight over the weights of the tenants with jobs in the queue)."""
    total = sum(weights.get(tenant, 1.0) for tenant in counts) or 1.0
    return [
        {
            "tenant": tenant,
            **counts[tenant],
            "weight": weights.get(tenant, 1.0),
            "share": round(weights.get(tenant, 1.0) / total, 4),
            "usage_s": usage.get(tenant, {}).get("usage_s"),
        }
        for tenant in sorted(counts)
    ]
