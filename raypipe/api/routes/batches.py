"""Batches over HTTP: submit thousands of jobs at once, follow their counts, progress and ETA,
cancel them or retry their failures, and stream the batch's progress."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from raypipe.api.deps import (
    ERRORS,
    KEEPALIVE_S,
    AppServices,
    Caller,
    IdempotencyKey,
    bad_cursor,
    submission,
    submitted,
)
from raypipe.api.schemas import JobView
from raypipe.api.services import Services
from raypipe.batches import BatchRecord, BatchSpec
from raypipe.jobs import JobStatus, follow_ups, jobs_made


class BatchView(BaseModel):
    id: str
    status: Literal["running", "completed", "completed_with_failures", "cancelled"]
    outcome: Literal["completed", "completed_with_failures", "cancelled"] | None
    total: int
    counts: dict[str, int]
    progress: float
    eta_s: float | None
    tenant: str
    tags: list[str]
    webhook_url: str | None
    then: dict[str, Any] | None
    cancel_requested: bool
    created_at: str
    finished_at: str | None
    links: dict[str, str]

    @classmethod
    def of(cls, batch: BatchRecord) -> BatchView:
        return cls(**batch.to_dict())


class BatchAccepted(BatchView):
    job_ids: list[str]


class BatchRetried(BatchView):
    retried: int


class BatchList(BaseModel):
    batches: list[BatchView]


class BatchJobs(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None


def router() -> APIRouter:
    routes = APIRouter(responses=ERRORS, tags=["batches"])

    @routes.post("/batches", **submission(BatchAccepted))
    def create_batch(
        body: BatchSpec,
        caller: Caller,
        services: AppServices,
        response: Response,
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        """Submit a batch: every job valid and written in one transaction, or none. With
        `Idempotency-Key`, the same key and body again returns the first batch (200)."""
        services.charge(caller, "submit", jobs_made(body.jobs) + follow_ups(body.then))
        batch, created = services.submitter.submit_batch(
            body, caller.tenant, admin=caller.admin, idempotency_key=idempotency_key or None
        )
        submitted(response, f"/v1/batches/{batch.id}", created)
        return BatchAccepted(**batch.to_dict(), job_ids=batch.job_ids)

    @routes.get("/batches", response_model=BatchList)
    def list_batches(
        caller: Caller, services: AppServices, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> BatchList:
        """The newest batches first, with their counts."""
        found = services.batches.list(caller.scope, limit)
        return BatchList(batches=[BatchView.of(batch) for batch in found])

    @routes.get("/batches/{batch_id}", response_model=BatchView)
    def get_batch(batch_id: str, caller: Caller, services: AppServices) -> BatchView:
        """Counts by status, progress (terminal jobs weighted with running jobs' progress),
        ETA from the rate so far, and the outcome once every job is terminal."""
        return BatchView.of(services.batches.get(batch_id, caller.scope))

    @routes.get("/batches/{batch_id}/jobs", response_model=BatchJobs)
    def batch_jobs(
        batch_id: str,
        caller: Caller,
        services: AppServices,
        status: JobStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> BatchJobs:
        """The batch's jobs in submission order; follow `next_cursor` for the next page."""
        if cursor is not None and not (cursor.isdigit() and int(cursor) < 2**31):
            raise bad_cursor()
        after = int(cursor) if cursor is not None else -1
        found = list(services.batches.jobs(batch_id, caller.scope, status, after, limit))
        next_cursor = str(found[-1].batch_index) if len(found) == limit else None
        return BatchJobs(jobs=[JobView.of(job) for job in found], next_cursor=next_cursor)

    @routes.post("/batches/{batch_id}/cancel", response_model=BatchView)
    def cancel_batch(batch_id: str, caller: Caller, services: AppServices) -> BatchView:
        """Cancel its queued jobs now and stop its running ones; 409 once it has ended."""
        batch = services.batches.cancel(batch_id, caller.scope)
        services.wake_dispatcher()
        return BatchView.of(batch)

    @routes.post("/batches/{batch_id}/retry-failed", response_model=BatchRetried)
    def retry_failed(batch_id: str, caller: Caller, services: AppServices) -> BatchRetried:
        """Queue its failed jobs again, each charged to the tenant's submit rate limit (429
        past it, nothing retried); the batch runs again and its callbacks fire again when
        it ends."""
        batch, retried = services.batches.retry_failed(
            batch_id, caller.scope, services.charger(caller)
        )
        services.wake_dispatcher()
        return BatchRetried(**batch.to_dict(), retried=retried)

    @routes.get(
        "/batches/{batch_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def batch_events(
        batch_id: str, caller: Caller, services: AppServices
    ) -> StreamingResponse:
        """Server-Sent Events: a `progress` event whenever counts or progress change, then
        one `status` event with the outcome, after which the stream ends. Each event is
        the whole batch state, so a reconnect needs no `Last-Event-ID`."""
        await run_in_threadpool(services.batches.get, batch_id, caller.scope)
        return StreamingResponse(
            _stream(services, batch_id, caller.scope),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return routes


async def _stream(services: Services, batch_id: str, tenant: str | None) -> Any:
    last: tuple[Any, ...] | None = None
    idle = 0.0
    while True:
        batch = await run_in_threadpool(services.batches.get, batch_id, tenant)
        state = (batch.status, tuple(sorted(batch.counts.items())), batch.progress)
        if state != last:
            last, idle = state, 0.0
            data = {k: v for k, v in batch.to_dict().items() if k != "links"}
            kind = "status" if batch.is_finished else "progress"
            yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
            if batch.is_finished:
                return
        await asyncio.sleep(services.settings.engine.events_poll_interval_s)
        idle += services.settings.engine.events_poll_interval_s
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"
