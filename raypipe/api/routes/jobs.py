"""Job routes: submit, read, list, cancel, retry, delete, artifacts, events (SSE), and the
job types there are."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.engine import Connection

from raypipe import artifacts, registry
from raypipe.api.deps import (
    ERRORS,
    KEEPALIVE_S,
    AppServices,
    Caller,
    IdempotencyKey,
    answered,
    decode_cursor,
    encode_cursor,
    replayed_in_bulk,
    submission,
    utc_param,
)
from raypipe.api.schemas import (
    BulkAccepted,
    BulkCreate,
    JobCreate,
    JobList,
    JobTypeView,
    JobView,
    LogsView,
)
from raypipe.api.services import Principal, Services
from raypipe.exceptions import InvalidInput, NotFound
from raypipe.job_logs import LogFollower
from raypipe.jobs import JobRecord, JobStatus, jobs_made
from raypipe.store.jobs import Replay
from raypipe.store.logs import attempt_of
from raypipe.submission import check_text

#: Events read per query while streaming.
EVENTS_PAGE = 500


def router() -> APIRouter:
    """The job routes, to mount under ``/v1``."""
    api = APIRouter(tags=["jobs"], responses=ERRORS)

    @api.post("/jobs", **submission(JobView))
    def create_job(
        spec: JobCreate,
        caller: Caller,
        services: AppServices,
        response: Response,
        idempotency_key: IdempotencyKey = None,
    ) -> JobView:
        """Submit a job; the row is committed before the answer."""
        if idempotency_key:
            spec = spec.model_copy(update={"idempotency_key": idempotency_key})
        [(job, replay)] = _submit(services, caller, [spec], ())
        answered(response, f"/v1/jobs/{job.id}", replay)
        return JobView.of(job)

    @api.post("/jobs/bulk", status_code=202, response_model=BulkAccepted)
    def create_jobs(
        body: BulkCreate, caller: Caller, services: AppServices, response: Response
    ) -> BulkAccepted:
        """Submit many jobs in one transaction: every one is valid and written, or none.
        A job made earlier (an idempotency key's, a unique key's) stands in for its spec;
        headers `Idempotent-Replayed` and `Unique-Replayed` list the positions of those."""
        most = services.settings.limits.max_bulk_jobs
        if len(body.jobs) > most:
            raise InvalidInput(
                f"jobs: at most {most} per request",
                details=[{"loc": ["jobs"], "msg": f"at most {most} items"}],
            )
        records = _submit(services, caller, body.jobs, ("jobs",))
        replayed_in_bulk(response, [replay for _, replay in records])
        return BulkAccepted(count=len(records), jobs=[JobView.of(job) for job, _ in records])

    @api.get("/jobs", response_model=JobList)
    def list_jobs(
        caller: Caller,
        services: AppServices,
        status: JobStatus | None = None,
        type: str | None = None,
        queue: str | None = None,
        tag: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> JobList:
        """Jobs, newest first, filtered; follow `next_cursor` for the next page."""
        created_after, created_before = (
            utc_param(name, value)
            for name, value in (
                ("created_after", created_after),
                ("created_before", created_before),
            )
        )
        check_text({"type": type, "queue": queue, "tag": tag, "cursor": cursor})
        found = services.jobs.list(
            tenant=caller.scope,
            status=status,
            type=type,
            queue=queue,
            tag=tag,
            created_after=created_after,
            created_before=created_before,
            before=decode_cursor(cursor) if cursor else None,
            limit=limit,
        )
        last = found[-1] if len(found) == limit else None
        next_cursor = encode_cursor(last.created_at, last.id) if last else None
        return JobList(jobs=[JobView.of(job) for job in found], next_cursor=next_cursor)

    @api.get("/jobs/{job_id}", response_model=JobView, response_model_exclude_none=False)
    def get_job(
        job_id: str,
        caller: Caller,
        services: AppServices,
        include: Annotated[str | None, Query(pattern="^attempts$")] = None,
    ) -> JobView:
        """A job's status, progress, result and error; `?include=attempts` adds its attempts."""
        job = services.jobs.get(job_id, caller.scope)
        attempts = services.jobs.attempts(job_id) if include == "attempts" else None
        return JobView.of(job, attempts)

    @api.get(
        "/jobs/{job_id}/artifacts/{name}",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def get_artifact(
        job_id: str, name: str, caller: Caller, services: AppServices
    ) -> StreamingResponse:
        """One file a job produced, with its content type (only listed artifacts are served)."""
        job = services.jobs.get(job_id, caller.scope)
        info = artifacts.listed(job.artifacts, job_id, name)
        source = services.artifacts.open(job.tenant, job_id, info.name, info.attempt)
        return StreamingResponse(
            _chunks(source),
            media_type=info.content_type,
            headers={
                "Content-Length": str(info.size),
                "Content-Disposition": f'inline; filename="{info.name}"',
            },
        )

    @api.delete("/jobs/{job_id}", status_code=204, response_class=Response)
    def delete_job(job_id: str, caller: Caller, services: AppServices) -> Response:
        """Delete a finished job with its attempts, events and artifacts (409 while it runs)."""
        job = services.jobs.delete(job_id, caller.scope)
        services.artifacts.delete(job.tenant, job_id)
        return Response(status_code=204)

    @api.post("/jobs/{job_id}/cancel", response_model=JobView)
    def cancel_job(job_id: str, caller: Caller, services: AppServices) -> JobView:
        """Cancel a queued job now, or stop a running one (its status follows shortly)."""
        job = services.jobs.request_cancel(job_id, caller.scope)
        services.wake_dispatcher()
        return JobView.of(job)

    @api.post("/jobs/{job_id}/retry", response_model=JobView)
    def retry_job(job_id: str, caller: Caller, services: AppServices) -> JobView:
        """Queue a failed or cancelled job again, charged to the tenant's submit rate limit
        as a submission is (429 past it); its attempts so far stay on record."""
        job = services.jobs.retry(job_id, caller.scope, services.charger(caller))
        services.wake_dispatcher()
        return JobView.of(job)

    @api.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(
        job_id: str,
        caller: Caller,
        services: AppServices,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: every status and progress change, resumable with
        `Last-Event-ID`, closed after the terminal status."""
        await run_in_threadpool(services.jobs.get, job_id, caller.scope)
        if last_event_id and not (last_event_id.isdigit() and int(last_event_id) < 2**63):
            raise InvalidInput(
                "Last-Event-ID: must be an event id from this stream (a whole number)",
                details=[{"loc": ["header", "Last-Event-ID"], "msg": "must be a whole number"}],
            )
        after = int(last_event_id or 0)
        return StreamingResponse(
            _stream(services, job_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @api.get(
        "/jobs/{job_id}/logs",
        response_model=LogsView,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_logs(
        job_id: str,
        caller: Caller,
        services: AppServices,
        attempt: Annotated[
            int | None, Query(ge=1, le=2**31 - 1, description="default: the latest")
        ] = None,
        after: Annotated[int, Query(ge=0, le=2**31 - 1, description="lines after this seq")] = 0,
        follow: Annotated[
            bool, Query(description="stream lines as Server-Sent Events until it ends")
        ] = False,
    ) -> Any:
        """What the processor logged through `ctx.logger` in one attempt (within
        `log_max_bytes`; `dropped` older lines fell out); `follow=true` streams them."""
        job = await run_in_threadpool(services.jobs.get, job_id, caller.scope)
        number = attempt_of(job, attempt)
        if follow:
            return StreamingResponse(
                _follow_logs(services, job_id, number, after),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        logs = await run_in_threadpool(services.logs.read, job_id, number, after)
        return logs.to_dict()

    @api.get("/job-types", response_model=list[JobTypeView])
    def job_types(caller: Caller, services: AppServices) -> list[JobTypeView]:
        """Registered processors, with the JSON schema of each one's payload."""
        services.jobs  # noqa: B018 - loads the registry
        return [
            JobTypeView(
                type=spec.type,
                description=spec.description,
                queue=spec.queue,
                resources=spec.demand() if spec.pool is None else {},
                pool=spec.pool,
                timeout_s=spec.timeout_s,
                max_attempts=spec.retry.max_attempts if spec.retry else None,
                payload_schema=spec.payload_model.model_json_schema(),
            )
            for spec in sorted(
                registry.load(services.settings.processor_modules).values(), key=lambda s: s.type
            )
        ]

    return api


def _submit(
    services: Services, caller: Principal, specs: list[JobCreate], prefix: tuple[str | int, ...]
) -> list[tuple[JobRecord, Replay | None]]:
    """Submit ``specs``, charging the tenant's submit rate limit for the jobs they made
    (and the follow-ups those may make): a replay of a job made earlier is free."""

    def charge(conn: Connection, made: list[int]) -> None:
        services.charge(caller, "submit", jobs_made(specs[i] for i in made), conn)

    return services.submitter.submit(
        specs, caller.tenant, admin=caller.admin, loc_prefix=prefix, made=charge
    )


def _chunks(source: Any, size: int = 1 << 20) -> Any:
    with source:
        while chunk := source.read(size):
            yield chunk


def _stream_event(event: dict[str, Any]) -> str:
    data = {
        "id": event["job_id"],
        "status": event["status"],
        "progress": event["progress"],
        "message": event["message"],
        "stage": event["stage"],
        "attempt": event["attempt"],
    }
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: {json.dumps(data)}\n\n"


async def _stream(services: Services, job_id: str, after: int) -> Any:
    terminal = {s.value for s in JobStatus if s.is_terminal}
    idle = 0.0
    while True:
        # Read the status before the events: a terminal status seen here has its event
        # committed already, so an empty read after it means nothing more will come.
        finished = await run_in_threadpool(_finished, services, job_id)
        events = await run_in_threadpool(services.jobs.events, job_id, after, EVENTS_PAGE)
        for event in events:
            after = event["id"]
            yield _stream_event(event)
        if not events and finished:
            return  # resumed past the end of a finished job
        if events:
            last = events[-1]
            # Close on the job's latest event only: a job retried after failing has a
            # terminal event in the middle of its history.
            if (
                len(events) < EVENTS_PAGE
                and last["kind"] == "status"
                and last["status"] in terminal
            ):
                return
            idle = 0.0
            continue
        await asyncio.sleep(services.settings.engine.events_poll_interval_s)
        idle += services.settings.engine.events_poll_interval_s
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"


def _finished(services: Services, job_id: str) -> bool:
    return services.jobs.get(job_id).status.is_terminal


async def _follow_logs(services: Services, job_id: str, attempt: int, after: int) -> Any:
    """Each new line as an event (``id`` is its seq) until the attempt is over."""
    settings = services.settings
    follower = LogFollower(
        attempt,
        after,
        settings.engine.events_poll_interval_s,
        settings.engine.progress_flush_interval_s,
    )
    idle = 0.0
    while True:
        # The job before its lines: an attempt seen over here has its last lines written
        # by the next read after the settle pause.
        try:
            job = await run_in_threadpool(services.jobs.get, job_id)
        except NotFound:  # deleted while followed: its lines went with it
            return
        logs = await run_in_threadpool(services.logs.read, job_id, attempt, follower.after)
        for line in logs.lines:
            yield f"id: {line.seq}\nevent: log\ndata: {json.dumps(line.to_dict())}\n\n"
        pause = follower.step(job.attempt, job.status.is_terminal, logs.lines)
        if pause is None:
            return
        idle = 0.0 if logs.lines else idle + pause
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(pause)
