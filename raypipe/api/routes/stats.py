"""``GET /v1/stats``: processing statistics of the caller's jobs, computed by the database."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from raypipe.api.deps import ERRORS, AppServices, Caller, utc_param
from raypipe.exceptions import InvalidInput
from raypipe.submission import check_text


class WindowView(BaseModel):
    since: str
    until: str
    hours: float


class FiltersView(BaseModel):
    tenant: str | None
    type: str | None
    queue: str | None


class AttemptCountsView(BaseModel):
    total: int
    completed: int
    failed: int
    timed_out: int
    cancelled: int


class JobCountsView(BaseModel):
    total: int
    completed: int
    failed: int
    cancelled: int


class DistributionView(BaseModel):
    """Seconds; percentiles by nearest rank; null when ``count`` is 0."""

    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    max: float | None


class ErrorCountView(BaseModel):
    type: str
    count: int


class QueueStatsView(BaseModel):
    queue: str
    depth: int
    runnable: int
    running: int
    oldest_waiting_s: float | None
    wait_s: DistributionView


class BucketView(BaseModel):
    """Jobs that reached each terminal status in `[start, end)`."""

    start: str
    end: str
    completed: int
    failed: int
    cancelled: int


class SeriesView(BaseModel):
    """`jobs` over time: consecutive buckets of `bucket_s` seconds (about 60 over the
    window, at most 61), aligned to multiples of `bucket_s` since the Unix epoch; the
    first and the last are cut to the window."""

    bucket_s: int
    buckets: list[BucketView]


class StatsView(BaseModel):
    window: WindowView
    filters: FiltersView
    attempts: AttemptCountsView
    jobs: JobCountsView
    success_rate: float | None
    duration_s: DistributionView
    throughput_per_hour: float
    retries: int
    retried_jobs: int
    errors: list[ErrorCountView]
    queues: list[QueueStatsView]
    series: SeriesView


Name = Annotated[str | None, Query(min_length=1, max_length=200)]


def router() -> APIRouter:
    """The statistics route, to mount under ``/v1``."""
    routes = APIRouter(responses=ERRORS)

    @routes.get("/stats", response_model=StatsView)
    def stats(
        services: AppServices,
        caller: Caller,
        type: Name = None,
        queue: Name = None,
        tenant: Name = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> StatsView:
        """Success rate, durations (completed attempts), throughput, retries, errors by
        type, per-queue depth and wait, and ended jobs over time (`series`), over `[since,
        until)` (default: the last 24 h, at most 366 days). Keys that are not admin keys see
        their own tenant only."""
        check_text({"type": type, "queue": queue, "tenant": tenant})
        if caller.scope is not None and tenant not in (None, caller.scope):
            problem = "only admin keys may read other tenants"
            raise InvalidInput(f"tenant: {problem}", details=[{"loc": ["tenant"], "msg": problem}])
        found = services.stats.compute(
            tenant=caller.scope or tenant,
            type=type,
            queue=queue,
            since=utc_param("since", since),
            until=utc_param("until", until),
        )
        return StatsView.model_validate(found.to_dict())

    return routes
