"""Priority aging: a queued job that has waited a bound is raised one priority step, and
one more each further bound, so that a steady stream of higher-priority work never
starves it (Oban Pro's reprioritizer does the same). Its ``priority`` shows the raised
value: it is what the claim orders by."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from raypipe.jobs import MAX_PRIORITY
from raypipe.lifecycle import Change
from raypipe.store.tables import guard, jobs


def age(engine: Engine, bound_s: float, now: datetime) -> int:
    """Raise by one the priority of every runnable queued job that has waited ``bound_s``
    since it became due or was last raised (``updated_at``: a retry starts again), below
    the highest priority waiting in its queue (a job at the top gains nothing). Returns
    how many were raised."""
    cutoff = now - timedelta(seconds=bound_s)
    ahead = sa.alias(jobs, "ahead")
    highest = (
        sa.select(sa.func.max(ahead.c.priority))
        .where(ahead.c.queue == jobs.c.queue, sa.text("ahead.status = 'queued'"))
        .scalar_subquery()
    )
    statement = (
        sa.update(jobs)
        .where(
            guard(Change.CLAIM),
            jobs.c.updated_at <= cutoff,
            jobs.c.run_at <= cutoff,
            jobs.c.priority < MAX_PRIORITY,
            jobs.c.priority < highest,
        )
        .values(priority=jobs.c.priority + 1, updated_at=now)
    )
    with engine.begin() as conn:
        return conn.execute(statement).rowcount
