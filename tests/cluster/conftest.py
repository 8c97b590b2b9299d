"""One simulated multi-node Ray cluster per module, beside (never instead of) the session's
local Ray, with raypipe's actors on its head and a PostgreSQL database of its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from raypipe.direct import DirectClient
from tests.cluster.host import ClusterHost
from tests.conftest import fresh_settings


@dataclass
class MultiNode:
    """The running cluster, its node ids by role, and a client that submits through the
    database (the test process is not a driver of this cluster; the dispatcher polls)."""

    host: ClusterHost
    client: DirectClient

    @property
    def nodes(self) -> dict[str, str]:
        return self.host.nodes


@pytest.fixture(scope="module")
def multinode(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MultiNode]:
    folder = tmp_path_factory.mktemp("multinode")
    with fresh_settings(
        request, "postgres", folder, processor_modules=["tests.helpers.cluster_processors"]
    ) as settings:
        host = ClusterHost(settings)
        client = DirectClient(settings)
        try:
            yield MultiNode(host, client)
        finally:
            client.close()
            host.close()
