"""A real local Ray for the session, and raypipe's actors started per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.runtime import cluster


@pytest.fixture
def raypipe(ray_session: None, settings: Settings) -> Iterator[DirectClient]:
    """raypipe running against this test's database: dispatcher, progress actor, client."""
    cluster.start_actors(settings)
    client = DirectClient(settings)
    yield client
    cluster.stop_actors(settings)
    client.close()


def dispatcher(settings: Settings) -> ray.actor.ActorHandle:
    return ray.get_actor("raypipe-dispatcher", namespace=settings.namespace)
