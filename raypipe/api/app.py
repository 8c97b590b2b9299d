"""The FastAPI app: routes under /v1, one error format, API keys, rate limits, SSE."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from importlib.resources import files
from typing import Annotated, Any

import ray
from fastapi import APIRouter, FastAPI, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raypipe import artifacts, metrics, registry
from raypipe.api import batch_routes, errors, schedule_routes, stats_routes, webhook_routes
from raypipe.api.deps import (
    ERRORS,
    KEEPALIVE_S,
    Caller,
    decode_cursor,
    encode_cursor,
    utc_param,
)
from raypipe.api.schemas import (
    BulkAccepted,
    BulkCreate,
    CheckView,
    HealthView,
    JobCreate,
    JobList,
    JobTypeView,
    JobView,
    QueueView,
)
from raypipe.api.services import Principal, Services
from raypipe.config import Settings
from raypipe.exceptions import InvalidInput, PayloadTooLarge
from raypipe.jobs import JobRecord, JobStatus, jobs_made
from raypipe.runtime.names import DISPATCHER_ACTOR, PROGRESS_ACTOR, WEBHOOK_ACTOR
from raypipe.submission import check_text, prepare

log = logging.getLogger(__name__)

#: How long a status check of an actor may take before it counts as degraded.
ACTOR_CHECK_TIMEOUT_S = 3.0
#: Events read per query while streaming.
EVENTS_PAGE = 500
#: The job page's headers: its own scripts and styles only, data only from this API, blob
#: URLs for thumbnails fetched with the key, no framing, no form submissions.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self';"
    " img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with a 413: by their Content-Length at once, and
    chunked ones as soon as they grow past it (nothing is written either way)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = PayloadTooLarge(f"body: at most {self.limit} bytes")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await errors.error_response(413, error.code, error.message)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise error
            return message

        await self.app(scope, limited, send)


def create_app(settings: Settings) -> FastAPI:
    """Build the API for ``settings``; it touches no database until the first request."""
    services = Services(settings)
    app = FastAPI(
        title="raypipe",
        version="1",
        description="Durable background jobs on Ray. Authenticate with `Bearer <api key>`.",
    )
    errors.install(app)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.state.services = services
    v1 = APIRouter(prefix="/v1", responses=ERRORS)

    def submit(
        caller: Principal, specs: list[JobCreate], prefix: tuple[str | int, ...]
    ) -> list[tuple[JobRecord, bool]]:
        services.charge(caller, "submit", jobs_made(specs))
        rows = prepare(
            specs, settings, services.jobs.clock(), caller.tenant, prefix, admin=caller.admin
        )
        records = services.jobs.insert(rows)
        metrics.record_submitted((job.type, job.queue) for job, created in records if created)
        services.wake_dispatcher()
        return records

    @v1.post(
        "/jobs",
        status_code=202,
        response_model=JobView,
        responses={200: {"model": JobView, "description": "an idempotent replay"}},
    )
    def create_job(
        spec: JobCreate,
        caller: Caller,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> JobView:
        """Submit a job; the row is committed before the answer."""
        if idempotency_key:
            spec = spec.model_copy(update={"idempotency_key": idempotency_key})
        [(job, created)] = submit(caller, [spec], ())
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        if not created:
            response.status_code = 200
            response.headers["Idempotent-Replayed"] = "true"
        return JobView.of(job)

    @v1.post("/jobs/bulk", status_code=202, response_model=BulkAccepted)
    def create_jobs(body: BulkCreate, caller: Caller) -> BulkAccepted:
        """Submit many jobs in one transaction: every one is valid and written, or none."""
        if len(body.jobs) > settings.max_bulk_jobs:
            raise InvalidInput(
                f"jobs: at most {settings.max_bulk_jobs} per request",
                details=[{"loc": ["jobs"], "msg": f"at most {settings.max_bulk_jobs} items"}],
            )
        records = submit(caller, body.jobs, ("jobs",))
        return BulkAccepted(count=len(records), jobs=[JobView.of(job) for job, _ in records])

    @v1.get("/jobs", response_model=JobList)
    def list_jobs(
        caller: Caller,
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

    @v1.get("/jobs/{job_id}", response_model=JobView, response_model_exclude_none=False)
    def get_job(
        job_id: str,
        caller: Caller,
        include: Annotated[str | None, Query(pattern="^attempts$")] = None,
    ) -> JobView:
        """A job's status, progress, result and error; `?include=attempts` adds its attempts."""
        job = services.jobs.get(job_id, caller.scope)
        attempts = services.jobs.attempts(job_id) if include == "attempts" else None
        return JobView.of(job, attempts)

    @v1.get(
        "/jobs/{job_id}/artifacts/{name}",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def get_artifact(job_id: str, name: str, caller: Caller) -> StreamingResponse:
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

    @v1.delete("/jobs/{job_id}", status_code=204, response_class=Response)
    def delete_job(job_id: str, caller: Caller) -> Response:
        """Delete a finished job with its attempts, events and artifacts (409 while it runs)."""
        job = services.jobs.delete(job_id, caller.scope)
        services.artifacts.delete(job.tenant, job_id)
        return Response(status_code=204)

    @v1.post("/jobs/{job_id}/cancel", response_model=JobView)
    def cancel_job(job_id: str, caller: Caller) -> JobView:
        """Cancel a queued job now, or stop a running one (its status follows shortly)."""
        job = services.jobs.request_cancel(job_id, caller.scope)
        services.wake_dispatcher()
        return JobView.of(job)

    @v1.post("/jobs/{job_id}/retry", response_model=JobView)
    def retry_job(job_id: str, caller: Caller) -> JobView:
        """Queue a failed or cancelled job again; its attempts so far stay on record."""
        job = services.jobs.retry(job_id, caller.scope)
        services.wake_dispatcher()
        return JobView.of(job)

    @v1.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(
        job_id: str,
        caller: Caller,
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

    @v1.get("/queues", response_model=list[QueueView])
    def queues(caller: Caller) -> list[QueueView]:
        """Per queue: depth, running jobs, the oldest runnable job's wait, and its limit;
        counting the caller's tenant's jobs only (every tenant's for an admin key)."""
        stats = services.jobs.queue_stats(caller.scope)
        return [
            QueueView(
                name=name,
                concurrency=q.concurrency,
                priority=q.priority,
                **stats.get(name, {"depth": 0, "running": 0, "oldest_waiting_s": None}),
            )
            for name, q in sorted(settings.queues.items())
        ]

    @v1.get("/job-types", response_model=list[JobTypeView])
    def job_types(caller: Caller) -> list[JobTypeView]:
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
                registry.load(settings.processor_modules).values(), key=lambda s: s.type
            )
        ]

    app.include_router(v1)
    app.include_router(batch_routes.router(), prefix="/v1")
    app.include_router(stats_routes.router(), prefix="/v1")
    app.include_router(webhook_routes.router(), prefix="/v1")
    app.include_router(schedule_routes.router(), prefix="/v1")

    page = (files("raypipe") / "web" / "index.html").read_text(encoding="utf-8")
    app.mount("/ui", StaticFiles(packages=[("raypipe", "web")]), name="ui")

    @app.get("/", include_in_schema=False)
    def job_page() -> HTMLResponse:
        """The live job page (raypipe/web): static, it reads everything from /v1 with the
        key the user enters."""
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/health", response_model=HealthView, responses={503: {"model": HealthView}})
    def health() -> JSONResponse:
        """Database, dispatcher, progress actor, webhook sender and stuck jobs; 503 if any
        is degraded."""
        checks = _health_checks(services)
        ok = all(c.status == "ok" for c in checks.values())
        body = HealthView(status="ok" if ok else "degraded", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    return app


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
        await asyncio.sleep(services.settings.events_poll_interval_s)
        idle += services.settings.events_poll_interval_s
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"


def _health_checks(services: Services) -> dict[str, CheckView]:
    checks: dict[str, CheckView] = {}
    try:
        stuck = services.jobs.count_stuck()
        checks["database"] = CheckView(status="ok")
        checks["stuck_jobs"] = (
            CheckView(status="ok")
            if stuck == 0
            else CheckView(status="degraded", detail=f"{stuck} running jobs past their lease")
        )
    except Exception as exc:  # any database failure is the report
        # /health answers anyone: the error's kind only (its text names hosts and roles).
        log.warning("health: the database check failed: %s: %s", type(exc).__name__, exc)
        checks["database"] = CheckView(
            status="degraded", detail=f"unreachable or failing ({type(exc).__name__})"
        )
    checks["dispatcher"], info = _actor_check(services, DISPATCHER_ACTOR, "info")
    checks["progress"], _ = _actor_check(services, PROGRESS_ACTOR, "stats")
    checks["webhooks"], _ = _actor_check(services, WEBHOOK_ACTOR, "stats")
    unrunnable = (info or {}).get("unrunnable") or {}
    checks["capacity"] = (
        CheckView(
            status="degraded",
            detail="jobs that cannot start on this cluster: "
            + "; ".join(f"{job_type} ({why})" for job_type, why in sorted(unrunnable.items())),
        )
        if unrunnable
        else CheckView(status="ok")
    )
    return checks


def _actor_check(
    services: Services, name: str, method: str
) -> tuple[CheckView, dict[str, Any] | None]:
    """The actor's state as a check, and what it answered."""
    if not ray.is_initialized():
        return CheckView(status="degraded", detail="this process is not connected to Ray"), None
    try:
        actor = ray.get_actor(name, namespace=services.settings.namespace)
        info = ray.get(getattr(actor, method).remote(), timeout=ACTOR_CHECK_TIMEOUT_S)
    except ValueError:
        return CheckView(status="degraded", detail=f"{name} is not running"), None
    except (ray.exceptions.RayError, TimeoutError) as exc:
        return CheckView(status="degraded", detail=f"{name}: {type(exc).__name__}"), None
    if isinstance(info, dict) and info.get("last_error"):
        # Its text can carry SQL and job data: /health, open to anyone, names the kind
        # only (the actors write it as "Kind: text"); the actor's log has the rest.
        kind = str(info["last_error"]).split(":", 1)[0]
        return CheckView(status="degraded", detail=f"{name}: its last round failed ({kind})"), info
    return CheckView(status="ok"), info if isinstance(info, dict) else None


def _finished(services: Services, job_id: str) -> bool:
    return services.jobs.get(job_id).status.is_terminal
