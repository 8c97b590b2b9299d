"""Routes of cron schedules: ``/schedules`` (mounted under ``/v1``), scoped to the caller's
tenant. Schedules from the configuration file can be paused and resumed here, not edited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from raypipe.api.deps import ERRORS, AppServices, Caller
from raypipe.api.services import Principal, Services
from raypipe.config import MissedFires
from raypipe.cron import MAX_CRON_LENGTH, MAX_TIMEZONE_LENGTH, NAME_PATTERN, Schedule
from raypipe.jobs import Strict

JOB_DESCRIPTION = (
    "The job each fire submits, as POST /v1/jobs takes it, without run_at and"
    " idempotency_key (each fire sets them); jobs are tagged schedule:<name>"
)


class ScheduleCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="unique within the tenant")
    cron: str = Field(
        max_length=MAX_CRON_LENGTH,
        description="five fields (minute hour day-of-month month day-of-week) or @hourly,"
        " @daily, @weekly, @monthly, @yearly",
        examples=["0 3 * * *"],
    )
    timezone: str = Field(
        default="UTC", max_length=MAX_TIMEZONE_LENGTH, description="IANA name: Europe/Paris"
    )
    job: dict[str, Any] = Field(description=JOB_DESCRIPTION)
    missed: MissedFires = Field(
        default="run_once",
        description="instants missed while nothing ran: skip them, run_once (the latest),"
        " or run_all (each, the latest 100 at most)",
    )
    enabled: bool = True


class ScheduleUpdate(Strict):
    """Fields to change; the others stay as they are."""

    cron: str | None = Field(default=None, max_length=MAX_CRON_LENGTH)
    timezone: str | None = Field(default=None, max_length=MAX_TIMEZONE_LENGTH)
    job: dict[str, Any] | None = Field(default=None, description=JOB_DESCRIPTION)
    missed: MissedFires | None = None
    enabled: bool | None = None


class ScheduleView(BaseModel):
    id: str
    name: str
    tenant: str
    cron: str
    timezone: str
    job: dict[str, Any]
    missed: MissedFires
    enabled: bool
    source: str = Field(description="api, or config (from the configuration file)")
    next_fire_at: str | None = Field(description="null while paused")
    last_fire_at: str | None
    last_job_id: str | None
    fires: int = Field(description="jobs submitted so far")
    created_at: str
    updated_at: str
    links: dict[str, str]

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleView:
        return cls(
            **schedule.to_dict(),
            links={
                "self": f"/v1/schedules/{schedule.id}",
                "jobs": f"/v1/jobs?tag=schedule:{schedule.name}",
            },
        )


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]


def router() -> APIRouter:
    """The schedule routes, to mount under ``/v1``."""
    routes = APIRouter(tags=["schedules"], responses=ERRORS)

    @routes.post("/schedules", status_code=201, response_model=ScheduleView)
    def create_schedule(
        body: ScheduleCreate, caller: Caller, services: AppServices, response: Response
    ) -> ScheduleView:
        """Create a cron schedule; its job spec is validated now, as a submission would be."""
        schedule = services.schedules.create(
            services.settings,
            tenant=caller.tenant,
            name=body.name,
            cron=body.cron,
            timezone=body.timezone,
            spec=body.job,
            missed=body.missed,
            enabled=body.enabled,
            admin=caller.admin,
        )
        services.wake_dispatcher()
        response.headers["Location"] = f"/v1/schedules/{schedule.id}"
        return ScheduleView.of(schedule)

    @routes.get("/schedules", response_model=ScheduleList)
    def list_schedules(caller: Caller, services: AppServices) -> ScheduleList:
        """The tenant's schedules (every tenant's for an admin key), by name."""
        found = services.schedules.list(caller.scope)
        return ScheduleList(schedules=[ScheduleView.of(s) for s in found])

    @routes.get("/schedules/{schedule_id}", response_model=ScheduleView)
    def get_schedule(schedule_id: str, caller: Caller, services: AppServices) -> ScheduleView:
        return ScheduleView.of(services.schedules.get(schedule_id, caller.scope))

    @routes.patch("/schedules/{schedule_id}", response_model=ScheduleView)
    def update_schedule(
        schedule_id: str, body: ScheduleUpdate, caller: Caller, services: AppServices
    ) -> ScheduleView:
        """Change a schedule. A new cron or time zone, or enabling it again, counts from now."""
        return _update(services, schedule_id, caller, **body.model_dump(exclude_unset=True))

    @routes.delete("/schedules/{schedule_id}", status_code=204, response_class=Response)
    def delete_schedule(schedule_id: str, caller: Caller, services: AppServices) -> Response:
        """Delete a schedule; the jobs it submitted stay."""
        services.schedules.delete(schedule_id, caller.scope)
        return Response(status_code=204)

    @routes.post("/schedules/{schedule_id}/pause", response_model=ScheduleView)
    def pause_schedule(schedule_id: str, caller: Caller, services: AppServices) -> ScheduleView:
        """Stop firing until resumed."""
        return _update(services, schedule_id, caller, enabled=False)

    @routes.post("/schedules/{schedule_id}/resume", response_model=ScheduleView)
    def resume_schedule(schedule_id: str, caller: Caller, services: AppServices) -> ScheduleView:
        """Fire again from the next instant after now (what was missed while paused is not)."""
        return _update(services, schedule_id, caller, enabled=True)

    return routes


def _update(
    services: Services, schedule_id: str, caller: Principal, **changes: Any
) -> ScheduleView:
    if "job" in changes:
        changes["spec"] = changes.pop("job")
    schedule = services.schedules.update(
        schedule_id, caller.scope, services.settings, admin=caller.admin, **changes
    )
    services.wake_dispatcher()
    return ScheduleView.of(schedule)
