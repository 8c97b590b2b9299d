"""The operator's routes outside /v1: ``/health`` (the database, raypipe's actors, stuck
jobs and capacity; 503 when any is degraded) and the live job page at ``/``."""

from __future__ import annotations

import logging
from importlib.resources import files
from typing import Any

import ray
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse

from raypipe.api.deps import AppServices
from raypipe.api.schemas import CheckView, HealthView
from raypipe.api.services import Services
from raypipe.runtime.names import DISPATCHER_ACTOR, PROGRESS_ACTOR, WEBHOOK_ACTOR

log = logging.getLogger(__name__)

#: How long a status check of an actor may take before it counts as degraded.
ACTOR_CHECK_TIMEOUT_S = 3.0
#: The job page's headers: its own scripts and styles only, data only from this API, blob
#: URLs for thumbnails fetched with the key, no framing, no form submissions.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self';"
    " img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def router() -> APIRouter:
    """``/health`` and the job page (whose scripts the app serves under ``/ui``)."""
    api = APIRouter()
    page = (files("raypipe") / "web" / "index.html").read_text(encoding="utf-8")

    @api.get("/", include_in_schema=False)
    def job_page() -> HTMLResponse:
        """The live job page (raypipe/web): static, it reads everything from /v1 with the
        key the user enters."""
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @api.get("/health", response_model=HealthView, responses={503: {"model": HealthView}})
    def health(services: AppServices) -> JSONResponse:
        """Database, dispatcher, progress actor, webhook sender and stuck jobs; 503 if any
        is degraded."""
        checks = _health_checks(services)
        ok = all(c.status == "ok" for c in checks.values())
        body = HealthView(status="ok" if ok else "degraded", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    return api


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
