"""Request and response shapes of the HTTP API (what /docs shows)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from raypipe.jobs import AttemptRecord, JobRecord, JobSpec, Strict
from raypipe.lifecycle import JobStatus


class JobCreate(JobSpec):
    """A job to submit. `Idempotency-Key` travels as a header."""


class BulkCreate(Strict):
    jobs: list[JobCreate] = Field(min_length=1)


class ErrorInfoView(BaseModel):
    type: str
    message: str


class AttemptErrorView(ErrorInfoView):
    traceback: str | None = Field(
        default=None, description="the end of the attempt's traceback, where one was kept"
    )


class AttemptView(BaseModel):
    attempt: int
    status: str
    started_at: str | None  # None: claimed, not begun yet
    finished_at: str | None
    error: AttemptErrorView | None

    @classmethod
    def of(cls, attempt: AttemptRecord) -> AttemptView:
        data = attempt.to_dict()
        if attempt.error is not None:
            data["error"]["traceback"] = attempt.error.traceback
        return cls(**data)


class ArtifactView(BaseModel):
    name: str
    size: int
    content_type: str
    url: str


class JobView(BaseModel):
    id: str
    type: str
    queue: str
    priority: int
    status: JobStatus
    progress: float
    message: str | None
    stage: str | None
    attempt: int
    max_attempts: int
    timeout_s: float
    cancel_requested: bool
    tenant: str
    tags: list[str]
    batch_id: str | None = None
    batch_index: int | None = None
    webhook_url: str | None = None
    payload: dict[str, Any]
    result: Any
    error: ErrorInfoView | None
    created_at: str
    run_at: str
    started_at: str | None
    finished_at: str | None
    artifacts: list[ArtifactView] = Field(default_factory=list)
    parent_id: str | None = None
    then: dict[str, Any] | None = None
    trace_id: str | None = Field(
        default=None, description="the trace its submission began, when traces are on"
    )
    concurrency_key: str | None = Field(
        default=None, description="at most the key limit of the tenant's jobs with it run at once"
    )
    unique_key: str | None = Field(
        default=None, description="while in its window, another submission returns this job"
    )
    unique_while: str | None = Field(
        default=None, description="the unique key's window: queued, or running (queued or running)"
    )
    run_key: str | None = Field(
        default=None, description="the run limit (starts per window) this job counts against"
    )
    links: dict[str, str]
    attempts: list[AttemptView] | None = None

    @classmethod
    def of(cls, job: JobRecord, attempts: list[AttemptRecord] | None = None) -> JobView:
        return cls(
            **job.to_dict(),
            links={"self": f"/v1/jobs/{job.id}", "events": f"/v1/jobs/{job.id}/events"},
            attempts=[AttemptView.of(a) for a in attempts] if attempts is not None else None,
        )


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None


class BulkAccepted(BaseModel):
    count: int
    jobs: list[JobView]


class TenantView(BaseModel):
    tenant: str
    weight: float = Field(description="its fair-share weight (default 1)")
    usage_s: float | None = Field(
        description="resource-seconds its jobs held, recent ones counting most (decayed);"
        " null when the dispatcher did not answer"
    )


class TenantWeight(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(gt=0, le=1_000_000, allow_inf_nan=False)


class QueueTenantView(BaseModel):
    """A tenant's jobs in one queue, and where it stands against its share."""

    tenant: str
    waiting: int
    running: int
    weight: float
    share: float = Field(
        description="its weight over the weights of the tenants with jobs in the queue"
    )
    usage_s: float | None = Field(
        description="its recent resource-seconds (all queues); null when unknown"
    )


class QueueView(BaseModel):
    name: str
    concurrency: int
    priority: int
    depth: int
    running: int
    oldest_waiting_s: float | None
    #: What its queued jobs wait for ("waiting for 1 CPU") and how many wait for it.
    waiting: dict[str, int] = {}
    paused: bool = Field(
        default=False, description="a paused queue accepts submissions and starts nothing"
    )
    paused_at: str | None = None
    admin_only: bool = Field(
        default=False, description="only admin API keys may submit to it (an operator's lane)"
    )
    tenants: list[QueueTenantView] = Field(
        default_factory=list,
        description="each tenant with jobs waiting or running in it (the caller's own only,"
        " unless an admin key)",
    )


class LogLineView(BaseModel):
    seq: int = Field(description="the line's number in its attempt, from 1")
    ts: str
    level: str
    message: str
    attempt: int


class LogsView(BaseModel):
    """What one attempt's processor logged through `ctx.logger`, oldest first."""

    job_id: str
    attempt: int = Field(description="the latest by default (1 before the job is claimed)")
    lines: list[LogLineView]
    dropped: int = Field(description="older lines that fell out of the log's bound")


class JobTypeView(BaseModel):
    type: str
    description: str
    queue: str | None
    #: What each job holds as a Ray task; empty for pool types (the pool holds them).
    resources: dict[str, float]
    pool: str | None = None
    timeout_s: float | None
    max_attempts: int | None
    payload_schema: dict[str, Any]


class CheckView(BaseModel):
    status: Literal["ok", "degraded"]
    detail: str | None = None


class HealthView(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, CheckView]


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody
