"""The chaos soak of ``bench/chaos.py`` as a test, at a size CI affords: mixed jobs over HTTP
while a task's worker, a pool actor, the dispatcher, the progress actor and the Serve
replica are each killed once (SIGKILL) and PostgreSQL is stopped for 5 seconds; every job
ends exactly once, as its kind must, and no attempt, artifact or callback is doubled.

``RAYPIPE_CHAOS_SEED`` draws other moments (and another mix) than the default seed's;
the seed and the moments are printed with the table.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raypipe.api.deployment import APP_NAME, DEPLOYMENT_NAME
from raypipe.config import Settings
from tests.conftest import ROOT
from tests.faults.conftest import PrivatePostgres
from tests.helpers.serving import Api, serve_api
from tests.helpers.webhook_receiver import receiver

sys.path.insert(0, str(ROOT / "bench"))
import chaos

PLAN = chaos.Plan(
    jobs=500,
    seed=int(os.environ.get("RAYPIPE_CHAOS_SEED", "33")),
    kills=1,
    outage_s=5.0,
    timeout_s=180.0,
)


@pytest.fixture
def settings(private_postgres: PrivatePostgres, tmp_path: Path) -> Settings:
    """The soak's settings on this test's own PostgreSQL server (for the `api` fixture)."""
    return chaos.soak_settings(private_postgres.url, tmp_path)


@pytest.fixture
def api(settings: Settings, serve_port: int, tmp_path: Path) -> Iterator[Api]:
    yield from serve_api(settings, tmp_path, serve_port)


def test_every_job_ends_once_through_kills_and_a_database_outage(
    api: Api, private_postgres: PrivatePostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    with receiver() as hooks:
        found = chaos.soak(
            PLAN,
            api.settings,
            api.url,
            api.key(chaos.TENANT),
            private_postgres,
            (APP_NAME, DEPLOYMENT_NAME),
            hooks,
        )
    with capsys.disabled():  # the figures belong in the test log
        print("\n" + chaos.table(PLAN, found).text())
    assert found.problems == []
    assert found.kills == {what: 1 for what in (*chaos.KILLS, chaos.OUTAGE)}
    assert found.outage_s >= PLAN.outage_s
    assert found.retried > 0  # the replica died under a request, sent again with its key
