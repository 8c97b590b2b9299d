"""The HTTP API on a real Ray Serve, over real HTTP, against SQLite and PostgreSQL."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from ray import serve

from raypipe.api.deployment import APP_NAME, build
from raypipe.config import Settings
from raypipe.runtime import cluster
from raypipe.store import create_engine
from raypipe.store.access import AccessStore
from tests.conftest import DB_KINDS, fresh_database, make_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def serve_port(ray_session: None) -> Iterator[int]:
    """Serve's HTTP proxy, started once for the session on a free loopback port."""
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


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
        settings = make_settings(url, folder / "data", **overrides)
        cluster.start_actors(settings)
        serve.run(build(settings), name=APP_NAME, route_prefix="/")
        yield Api(f"http://127.0.0.1:{port}", settings, folder)
        serve.delete(APP_NAME)
        cluster.stop_actors(settings)


@pytest.fixture(scope="module", params=DB_KINDS)
def api(
    request: pytest.FixtureRequest, serve_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """The API deployed on Serve for one test module, per database kind; webhooks may reach
    loopback (the tests' receivers) and are retried quickly."""
    yield from deploy_api(
        request,
        request.param,
        tmp_path_factory.mktemp("api"),
        serve_port,
        webhook_allow_networks=["127.0.0.0/8"],
        webhook_poll_interval_s=0.1,
        webhook_backoff_s=0.05,
        webhook_max_attempts=3,
    )
