"""A claim the dispatcher never heard about: its connection died as the claim committed.

The row then says the dispatcher runs the job, yet the dispatcher knows nothing of it.
Its lease must run out (not be renewed forever) so that the job is rescued and run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import ray

from raypipe.direct import DirectClient
from raypipe.jobs import JobStatus
from raypipe.store import Candidate, DispatchStore
from tests.conftest import wait_for
from tests.faults.conftest import rescued_then_completed
from tests.integration.conftest import dispatcher


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the dispatcher's logic, any DB
def test_a_claim_whose_answer_was_lost_is_rescued(raypipe: DirectClient, tmp_path: Path) -> None:
    # The gate fills the "solo" queue, so the dispatcher itself cannot claim the job.
    gate = raypipe.submit("test.gate", {"folder": str(tmp_path)}, queue="solo")
    wait_for(lambda: (tmp_path / "pid-1").exists(), what="the gate to start")
    job = raypipe.submit("noop", {}, queue="solo")
    owner = ray.get(dispatcher(raypipe.settings).info.remote(), timeout=60)["owner"]

    def only_the_job(candidates: Sequence[Candidate], _free: dict[str, int]) -> list[Candidate]:
        return [c for c in candidates if c.id == job.id]

    dispatch = DispatchStore(raypipe.store)
    claimed = dispatch.claim(
        owner, raypipe.settings.engine.lease_ttl_s, {"solo": 2}, only_the_job, 1
    )
    assert [c.id for c in claimed] == [job.id]
    (tmp_path / "release").touch()

    rescued_then_completed(job)
    assert gate.wait(60).status is JobStatus.COMPLETED
