"""The API deployed on the session's Ray Serve, for the tests that talk HTTP to it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from ray import serve

from raypipe.api.deployment import APP_NAME, build
from raypipe.config import Settings
from raypipe.runtime import actors
from raypipe.store import create_engine
from raypipe.store.access import AccessStore
from tests.conftest import POSTGRES_ONLY, fresh_database, make_settings


@dataclass
class Api:
    """A running deployment: its URL, settings, and keys made on demand."""

    url: str
    settings: Settings
    folder: Path

    def key(self, tenant: str, admin: bool = False) -> str:
        engine = create_engine(self.settings.database_url)
        try:
            return AccessStore(engine).create_key(tenant, admin=admin)[0]
        finally:
            engine.dispose()

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def deploy_api(
    request: pytest.FixtureRequest, kind: str, folder: Path, port: int, **overrides: object
) -> Iterator[Api]:
    with fresh_database(request, kind, folder) as url:
        yield from serve_api(make_settings(url, folder / "data", **overrides), folder, port)


def serve_api(settings: Settings, folder: Path, port: int) -> Iterator[Api]:
    """raypipe's actors and the API on Serve for ``settings``, until the caller resumes.

    The app is left deployed afterwards: the next deployment replaces it in place, which
    takes ~4 s here where deleting it first and deploying again takes ~7 s.
    """
    actors.start_actors(settings)
    serve.run(build(settings), name=APP_NAME, route_prefix="/")
    yield Api(f"http://127.0.0.1:{port}", settings, folder)
    actors.stop_actors(settings)


def loopback_api(
    request: pytest.FixtureRequest,
    kind: str,
    serve_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Api]:
    """The API for one test module: webhooks may reach loopback (the tests' receivers) and
    are retried quickly."""
    yield from deploy_api(
        request,
        kind,
        tmp_path_factory.mktemp("api"),
        serve_port,
        # The tests' receivers listen on loopback, which outbound requests may not reach
        # by default.
        webhook_allow_networks=["127.0.0.0/8"],
        webhook_poll_interval_s=0.1,
        webhook_backoff_s=0.05,
        webhook_max_attempts=3,
    )


def limited_api(
    request: pytest.FixtureRequest,
    serve_port: int,
    tmp_path_factory: pytest.TempPathFactory,
    limit: int,
    **overrides: object,
) -> Iterator[Api]:
    """The API on PostgreSQL with a submit rate limit small enough for a test to reach
    (``limit`` jobs per tenant an hour)."""
    yield from deploy_api(
        request,
        "postgres",
        tmp_path_factory.mktemp("limited"),
        serve_port,
        rate_limits={"submit": {"limit": limit, "window_s": 3600}},
        **overrides,
    )


@pytest.fixture(name="api", scope="module", params=POSTGRES_ONLY)
def postgres_api(
    request: pytest.FixtureRequest, serve_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """``api`` on PostgreSQL (production) only, for modules that import it: their storage
    behaviour runs on both databases in tests/integration, and a second deployment per
    module costs CI time."""
    yield from loopback_api(request, request.param, serve_port, tmp_path_factory)
