"""Queue routes: each configured queue's depth and state for the caller's tenant, and
pausing and resuming one (admin keys: a queue serves every tenant)."""

from __future__ import annotations

from fastapi import APIRouter

from raypipe.api.deps import ERRORS, AppServices, Caller
from raypipe.api.schemas import QueueView
from raypipe.api.services import Principal, Services
from raypipe.exceptions import Forbidden


def router() -> APIRouter:
    """The queue routes, to mount under ``/v1``."""
    api = APIRouter(tags=["queues"], responses=ERRORS)

    @api.get("/queues", response_model=list[QueueView])
    def queues(caller: Caller, services: AppServices) -> list[QueueView]:
        """Per queue: depth, running jobs, the oldest runnable job's wait, its limit, and
        whether it is paused; counting the caller's tenant's jobs only (every tenant's for
        an admin key)."""
        return _views(services, caller.scope, list(services.settings.queues))

    @api.post("/queues/{name}/pause", response_model=QueueView)
    def pause_queue(name: str, caller: Caller, services: AppServices) -> QueueView:
        """Stop starting the queue's jobs, across restarts, until it is resumed; it still
        accepts submissions and its running jobs finish (admin keys)."""
        _admin(caller, "pause")
        services.queues.pause(services.settings, name)
        return _views(services, None, [name])[0]

    @api.post("/queues/{name}/resume", response_model=QueueView)
    def resume_queue(name: str, caller: Caller, services: AppServices) -> QueueView:
        """Start the queue's jobs again (admin keys)."""
        _admin(caller, "resume")
        services.queues.resume(services.settings, name)
        services.wake_dispatcher()
        return _views(services, None, [name])[0]

    return api


def _admin(caller: Principal, verb: str) -> None:
    if not caller.admin:
        raise Forbidden(f"only an admin key may {verb} a queue: it serves every tenant")


def _views(services: Services, tenant: str | None, names: list[str]) -> list[QueueView]:
    stats = services.jobs.queue_stats(tenant)
    tenants = services.tenants.by_queue(
        services.settings.tenants.weights, services.tenant_usage(), tenant
    )
    return [
        QueueView(**view, tenants=tenants.get(view["name"], []))
        for view in services.queues.overview(services.settings, stats, names)
    ]
