"""A real local Ray for the session, and raypipe's actors started per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from raypipe.config import Settings
from raypipe.direct import DirectClient, running
from tests.conftest import fresh_database, make_settings


@pytest.fixture
def raypipe(ray_session: None, settings: Settings) -> Iterator[DirectClient]:
    """raypipe running against this test's database: dispatcher, progress actor, client."""
    with running(settings) as client:
        yield client


def module_system(
    request: pytest.FixtureRequest, folder: Path, **overrides: object
) -> Iterator[DirectClient]:
    """raypipe on a fresh database of ``request.param``'s kind, for a whole module: for
    tests that share warm model actors (loading a model is slow)."""
    with fresh_database(request, request.param, folder) as url:
        settings = make_settings(
            url,
            folder / "data",
            **overrides,
        )
        with running(settings) as client:
            yield client


def dispatcher(settings: Settings) -> ray.actor.ActorHandle:
    return ray.get_actor("raypipe-dispatcher", namespace=settings.namespace)


def pool_actors(settings: Settings, pool: str) -> list[ray.actor.ActorHandle]:
    """The actors the dispatcher's pool has now (named, so they can be looked up)."""
    names = ray.get(dispatcher(settings).info.remote())["pools"][pool]["actors"]
    return [ray.get_actor(name, namespace=settings.namespace) for name in names]
