"""The HTTP API on a real Ray Serve, over real HTTP, against SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import DB_KINDS
from tests.helpers.serving import Api, loopback_api


@pytest.fixture(scope="module", params=DB_KINDS)
def api(
    request: pytest.FixtureRequest, serve_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """The API deployed on Serve for one test module, per database kind (see
    :func:`tests.helpers.serving.loopback_api`)."""
    yield from loopback_api(request, request.param, serve_port, tmp_path_factory)
