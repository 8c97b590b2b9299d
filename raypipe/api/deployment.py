"""The API as a Ray Serve application."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.schema import LoggingConfig

from raypipe.api.app import create_app
from raypipe.config import Settings

APP_NAME = "raypipe"
DEPLOYMENT_NAME = "raypipe-api"
#: Requests a replica takes at once (Serve's ``max_ongoing_requests``); event streams hold
#: at most ``RAYPIPE_API_MAX_STREAMS`` (at most half) of them, so the rest stay free for
#: ordinary requests (``api/fair_use.py``).
REQUEST_SLOTS = 256


def build(settings: Settings) -> serve.Application:
    """A Serve application whose replicas each build the FastAPI app from ``settings``.

    The app is built inside each replica (a builder, not a pickled app), so every
    replica opens its own database pool. Replicas reserve no CPU: they only validate,
    write rows and read state.
    """

    def build_asgi_app() -> FastAPI:
        return create_app(settings)

    ingress: Any = serve.ingress(build_asgi_app)()
    # Serve's default logging unless JSON is asked for: `serve build` then writes the
    # config it always wrote.
    json_logs = _json_logging(settings)
    logging: dict[str, Any] = {"logging_config": json_logs} if json_logs else {}
    deployment = serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=settings.api.replicas,
        max_ongoing_requests=REQUEST_SLOTS,
        ray_actor_options={"num_cpus": 0},
        **logging,
    )(ingress)
    return deployment.bind()


def deploy(settings: Settings) -> None:
    """Start Serve's HTTP proxy on the configured address and run the API there."""
    serve.start(
        http_options={"host": settings.api.host, "port": settings.api.port},
        # The proxy's and the controller's logs.
        logging_config=_json_logging(settings),
    )
    serve.run(build(settings), name=APP_NAME, route_prefix="/")


def _json_logging(settings: Settings) -> LoggingConfig | None:
    """The API's logs and Serve's access log as JSON lines, when ``log_format`` says so."""
    return LoggingConfig(encoding="JSON") if settings.logs.format == "json" else None


def undeploy() -> bool:
    """Remove the API from Serve, if it runs there; returns whether it did."""
    if APP_NAME not in serve.status().applications:
        return False
    serve.delete(APP_NAME)
    return True
