"""Tenant routes: each tenant's fair-share weight and recent usage, and setting a weight
(admin keys: a weight takes from every other tenant's share)."""

from __future__ import annotations

from fastapi import APIRouter

from raypipe.api.deps import ERRORS, AppServices, Caller
from raypipe.api.schemas import TenantView, TenantWeight
from raypipe.api.services import Services
from raypipe.exceptions import Forbidden


def router() -> APIRouter:
    """The tenant routes, to mount under ``/v1``."""
    api = APIRouter(tags=["tenants"], responses=ERRORS)

    @api.get("/tenants", response_model=list[TenantView])
    def tenants(caller: Caller, services: AppServices) -> list[TenantView]:
        """Each tenant with a weight or recent usage: its weight and its resource-seconds
        over the recent window (what fair share weighs); the caller's own tenant only,
        unless the key is an admin's."""
        views = _views(services)
        scope = caller.scope
        return [view for view in views if scope is None or view.tenant == scope]

    @api.put("/tenants/{tenant}", response_model=TenantView)
    def set_weight(
        tenant: str, body: TenantWeight, caller: Caller, services: AppServices
    ) -> TenantView:
        """Set a tenant's fair-share weight (admin keys): while several tenants wait, a
        tenant of weight 3 gets about three times the resource-seconds of one of weight 1.
        The dispatcher reads it within seconds."""
        if not caller.admin:
            raise Forbidden(
                "only an admin key may set a tenant's weight: it takes from every other's share"
            )
        services.tenants.set_weight(tenant, body.weight)
        services.wake_dispatcher()
        return next(view for view in _views(services) if view.tenant == tenant)

    return api


def _views(services: Services) -> list[TenantView]:
    weights = services.tenants.weights(services.settings.tenants.weights)
    usage = services.tenant_usage()
    return [
        TenantView(
            tenant=tenant,
            weight=weights.get(tenant, 1.0),
            usage_s=usage.get(tenant, {}).get("usage_s"),
        )
        for tenant in sorted(set(weights) | set(usage))
    ]
