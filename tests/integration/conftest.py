"""A real local Ray for the session, and raypipe's actors started per test."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import ray

from raypipe.config import Settings
from raypipe.direct import DirectClient, running
from tests.conftest import fresh_settings


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
    with (
        fresh_settings(request, request.param, folder, **overrides) as settings,
        running(settings) as client,
    ):
        yield client


def system_fixture(folder: str, kinds: Sequence[object], **overrides: object) -> Any:
    """A module's ``system`` fixture: :func:`module_system` with ``overrides``, once per
    database kind of ``kinds``, in a temporary folder named after ``folder``."""

    @pytest.fixture(name="system", scope="module", params=kinds)
    def system(
        request: pytest.FixtureRequest, ray_session: None, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[DirectClient]:
        yield from module_system(request, tmp_path_factory.mktemp(folder), **overrides)

    return system


def dispatcher(settings: Settings) -> ray.actor.ActorHandle:
    return ray.get_actor("raypipe-dispatcher", namespace=settings.namespace)


def pool_actors(settings: Settings, pool: str) -> list[ray.actor.ActorHandle]:
    """The actors the dispatcher's pool has now (named, so they can be looked up)."""
    names = ray.get(dispatcher(settings).info.remote())["pools"][pool]["actors"]
    return [ray.get_actor(name, namespace=settings.namespace) for name in names]
