"""The progress actor killed while jobs report progress: Ray restarts it, no job notices."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.handle import JobHandle
from raypipe.jobs import AttemptStatus, JobStatus
from raypipe.runtime.names import PROGRESS_ACTOR
from tests.conftest import make_settings, wait_for
from tests.faults.conftest import actor_pid

STEPS = 3


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """This module's settings, for the `raypipe` fixture: the paced processor's module."""
    return make_settings(db_url, tmp_path / "data", processor_modules=["tests.faults.processors"])


def _step(folders: list[Path], handles: list[JobHandle], step: int) -> None:
    """Let every job report ``step`` and wait until the database shows it."""
    for folder in folders:
        (folder / f"go-{step}").touch()
    expected = 100.0 * step / STEPS
    wait_for(
        lambda: all(h.refresh().progress == pytest.approx(expected) for h in handles),
        what=f"step {step} to reach the database",
    )


def _finished_state(actor: ray.actor.ActorHandle, job_id: str) -> dict | None:
    state = ray.get(actor.get.remote(job_id), timeout=60)
    return state if state and state.get("status") == JobStatus.COMPLETED.value else None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the actor's fault, not the DB's
def test_killing_the_progress_actor_loses_no_job_and_progress_resumes(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    progress = ray.get_actor(PROGRESS_ACTOR, namespace=raypipe.settings.namespace)
    folders = [tmp_path / str(i) for i in range(2)]
    for folder in folders:
        folder.mkdir()
    handles = raypipe.submit_many(
        [("test.paced_progress", {"folder": str(f), "steps": STEPS}) for f in folders]
    )
    _step(folders, handles, 1)
    pid = actor_pid(progress)
    ray.kill(progress, no_restart=False)
    wait_for(lambda: actor_pid(progress) != pid, what="Ray to restart the actor in a new process")

    # Reports sent now can only reach the database through the restarted actor.
    _step(folders, handles, 2)
    _step(folders, handles, 3)
    for handle in handles:
        job = handle.wait(60)
        assert job.status is JobStatus.COMPLETED, job
        assert job.progress == 100.0
        assert [a.status for a in handle.attempts()] == [AttemptStatus.COMPLETED]
        # The restarted actor keeps the job's last state for live readers, told of its end.
        live = wait_for(lambda h=handle: _finished_state(progress, h.id), what="the last state")
        assert live["progress"] >= 100.0 * 2 / STEPS, live  # type: ignore[index]
