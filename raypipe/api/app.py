"""The FastAPI app: its routes (``api/routes/``, under /v1), one error format, limits on
request bodies and on what each key and tenant holds at once (``api/fair_use.py``), and the
per-process services the routes share."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raypipe import tracing
from raypipe.api import errors
from raypipe.api.fair_use import FairUse
from raypipe.api.routes import (
    batches,
    health,
    jobs,
    queues,
    schedules,
    stats,
    tenants,
    webhooks,
)
from raypipe.api.services import Services
from raypipe.config import Settings
from raypipe.exceptions import PayloadTooLarge


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

    app.add_middleware(BodyLimit, limit=settings.limits.max_body_bytes)
    # Added last, so it runs first: keys are checked, and slots counted, before any body.
    app.add_middleware(FairUse, services=services)
    # FastAPI traces each request on the global tracer provider (continuing a caller's
    # `traceparent`); with traces asked for, that provider exports them.
    tracing.configured()
    app.state.services = services
    for routes in (jobs, queues, batches, stats, webhooks, schedules, tenants):
        app.include_router(routes.router(), prefix="/v1")
    app.mount("/ui", StaticFiles(packages=[("raypipe", "web")]), name="ui")
    app.include_router(health.router())
    return app
