"""The API deployed on the session's Ray Serve, for the tests that talk HTTP to it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

from raypipe.api.deployment import APP_NAME, build
from raypipe.config import Settings
from raypipe.runtime import actors
from raypipe.store import create_engine
from raypipe.store.access import AccessStore
from tests.conftest import POSTGRES_ONLY, fresh_settings


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
    with fresh_settings(request, kind, folder, **overrides) as settings:
        yield from serve_api(settings, folder, port)


def serve_api(settings: Settings, folder: Path, port: int) -> Iterator[Api]:
    """raypipe's actors and the API on Serve for ``settings``, until the caller resumes.

    The app is left deployed afterwards: the next deployment replaces it in place, which
    takes ~4 s here where deleting it first and deploying again takes ~7 s.
    """
    actors.start_actors(settings)
    serve.run(build(settings), name=APP_NAME, route_prefix="/")
    yield Api(f"http://127.0.0.1:{port}", settings, folder)
    actors.stop_actors(settings)


#: Webhooks may reach loopback (the tests' receivers listen there, and outbound requests
#: may not reach it by default), and are retried quickly.
LOOPBACK_WEBHOOKS: dict[str, object] = {
    "webhook_allow_networks": ["127.0.0.0/8"],
    "webhook_poll_interval_s": 0.1,
    "webhook_backoff_s": 0.05,
    "webhook_max_attempts": 3,
}


def submit_limit(limit: int) -> dict[str, object]:
    """``rate_limits`` small enough for a test to reach: ``limit`` jobs per tenant an hour."""
    return {"submit": {"limit": limit, "window_s": 3600}}


def module_api(folder: str, kind: str | Sequence[object], **overrides: object) -> Any:
    """A module's ``api`` fixture: the API deployed once for the module with ``overrides``
    of the test settings, in a temporary folder named after ``folder``.

    ``kind`` is one database kind, or a fixture's ``params`` of kinds (``pytest.param``
    with its marks allowed): one deployment per kind. A module assigns the fixture to a
    name of its own (``api = module_api(...)``); pytest knows it as ``api``.
    """

    @pytest.fixture(name="api", scope="module", params=None if isinstance(kind, str) else kind)
    def api(
        request: pytest.FixtureRequest, serve_port: int, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Api]:
        chosen = kind if isinstance(kind, str) else request.param
        yield from deploy_api(
            request, chosen, tmp_path_factory.mktemp(folder), serve_port, **overrides
        )

    return api


#: ``api`` on PostgreSQL (production) only, for modules that import it: their storage
#: behaviour runs on both databases in tests/integration, and a second deployment per
#: module costs CI time.
postgres_api = module_api("api", POSTGRES_ONLY, **LOOPBACK_WEBHOOKS)
