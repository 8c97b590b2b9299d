"""Webhook routes: the deliveries of the caller's tenant, replays, and its signing secret."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from raypipe.api.deps import ERRORS, AppServices, Caller, decode_cursor, encode_cursor
from raypipe.store.webhooks import Delivery, DeliveryStatus
from raypipe.submission import check_text


class DeliveryAttemptView(BaseModel):
    attempt: int
    started_at: str
    duration_ms: float
    status_code: int | None
    error: str | None


class DeliveryView(BaseModel):
    id: str
    tenant: str
    event: str
    job_id: str | None
    batch_id: str | None
    url: str
    status: Literal["pending", "delivering", "delivered", "failed"]
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None
    attempt_log: list[DeliveryAttemptView]

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryView:
        return cls(**delivery.to_dict())


class DeliveryList(BaseModel):
    deliveries: list[DeliveryView]
    next_cursor: str | None


class SecretView(BaseModel):
    """The tenant's signing secret: verify webhooks with it (Standard Webhooks)."""

    secret: str


def router() -> APIRouter:
    """The webhook routes, to mount under ``/v1``."""
    api = APIRouter(tags=["webhooks"], responses=ERRORS)

    @api.get("/webhooks/deliveries", response_model=DeliveryList)
    def list_deliveries(
        caller: Caller,
        services: AppServices,
        status: DeliveryStatus | None = None,
        job_id: str | None = None,
        batch_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> DeliveryList:
        """Webhook deliveries with their attempts, newest first; follow `next_cursor`."""
        check_text({"job_id": job_id, "batch_id": batch_id, "cursor": cursor})
        found = services.webhooks.list(
            tenant=caller.scope,
            status=status,
            job_id=job_id,
            batch_id=batch_id,
            before=decode_cursor(cursor) if cursor else None,
            limit=limit,
        )
        last = found[-1] if len(found) == limit else None
        return DeliveryList(
            deliveries=[DeliveryView.of(d) for d in found],
            next_cursor=encode_cursor(last.created_at, last.id) if last else None,
        )

    @api.get("/webhooks/deliveries/{delivery_id}", response_model=DeliveryView)
    def get_delivery(delivery_id: str, caller: Caller, services: AppServices) -> DeliveryView:
        """One delivery with every attempt: status code, error, duration."""
        return DeliveryView.of(services.webhooks.get(delivery_id, caller.scope))

    @api.post(
        "/webhooks/deliveries/{delivery_id}/replay", status_code=202, response_model=DeliveryView
    )
    def replay_delivery(delivery_id: str, caller: Caller, services: AppServices) -> DeliveryView:
        """Send a delivery again now, with the same `webhook-id` (409 while it is being sent)."""
        delivery = services.webhooks.replay(delivery_id, caller.scope)
        services.wake_webhook_sender()
        return DeliveryView.of(delivery)

    @api.get("/webhooks/secret", response_model=SecretView)
    def get_secret(caller: Caller, services: AppServices) -> SecretView:
        """The secret the tenant's webhooks are signed with (created on first use)."""
        return SecretView(secret=services.webhooks.secret(caller.tenant))

    @api.post("/webhooks/secret/rotate", response_model=SecretView)
    def rotate_secret(caller: Caller, services: AppServices) -> SecretView:
        """Replace the tenant's secret: attempts from now on are signed with the new one."""
        return SecretView(secret=services.webhooks.rotate_secret(caller.tenant))

    return api
