"""Artifacts, fan-out to Ray tasks, and follow-up jobs, through the real dispatcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from raypipe.direct import DirectClient
from raypipe.exceptions import Conflict, NotFound
from raypipe.jobs import JobStatus
from tests.conftest import wait_for


def _done(handle, timeout: float = 120):
    return handle.wait(timeout=timeout)


def test_artifacts_are_listed_served_and_deleted_with_the_job(
    raypipe: DirectClient,
) -> None:
    handle = raypipe.submit("test.echo", {"artifacts": {"a.txt": "alpha", "b.json": "{}"}})
    job = _done(handle)
    assert job.status is JobStatus.COMPLETED
    assert {a["name"]: a["size"] for a in job.artifacts} == {"a.txt": 5, "b.json": 2}
    assert {a["content_type"] for a in job.artifacts} == {"text/plain", "application/json"}
    assert handle.artifact("a.txt") == b"alpha"
    with pytest.raises(NotFound, match=r"has no artifact 'c\.txt'"):
        handle.artifact("c.txt")
    folder = Path(raypipe.settings.artifacts_url) / "default" / job.id
    assert {a["attempt"] for a in job.artifacts} == {1}
    assert sorted(p.name for p in (folder / "1").iterdir()) == ["a.txt", "b.json"]

    raypipe.delete_job(job.id)
    assert not folder.exists()
    with pytest.raises(NotFound):
        raypipe.get_job(job.id)


def test_a_running_job_cannot_be_deleted(raypipe: DirectClient, tmp_path: Path) -> None:
    handle = raypipe.submit("test.gate", {"folder": str(tmp_path)})
    wait_for(lambda: handle.status() is JobStatus.PROCESSING, what="the gate to start")
    with pytest.raises(Conflict, match="cancel it before deleting"):
        raypipe.delete_job(handle.id)
    (tmp_path / "release").touch()
    assert _done(handle).status is JobStatus.COMPLETED


def test_another_tenants_artifacts_are_out_of_reach(raypipe: DirectClient) -> None:
    job = _done(raypipe.submit("test.echo", {"artifacts": {"lines.txt": "one\ntwo"}}))
    other = DirectClient(raypipe.settings, tenant="other")
    try:
        with pytest.raises(NotFound):
            other.get(job.id)
        stolen = other.submit("embed.texts", {"texts_artifact": f"{job.id}/lines.txt"})
        failed = _done(stolen)
    finally:
        other.close()
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.type == "PermanentError"
    assert "no artifact 'lines.txt'" in failed.error.message
    assert failed.attempt == 1  # permanent: not retried


def test_parallel_sub_tasks_run_on_ray_in_order(raypipe: DirectClient) -> None:
    numbers = list(range(12))
    job = _done(raypipe.submit("test.fanout", {"numbers": numbers}))
    assert job.status is JobStatus.COMPLETED
    assert job.result["squares"] == [n * n for n in numbers]
    assert job.result["reported"] == numbers


def test_a_permanent_error_in_a_sub_task_fails_the_job_once(raypipe: DirectClient) -> None:
    job = _done(raypipe.submit("test.fanout", {"numbers": [1, 2, 3, 4], "fail_on": 3}))
    assert job.status is JobStatus.FAILED
    assert job.error is not None and "refusing 3" in job.error.message
    assert job.attempt == 1


def test_a_follow_up_runs_when_its_condition_holds(raypipe: DirectClient) -> None:
    then = {
        "type": "test.echo",
        "payload": {"result": {"step": "quantity"}},
        "when": {"field": "confidence", "gte": 0.8},
        "with_result": "parent",
        "tags": ["follow-up"],
    }
    sure = _done(raypipe.submit("test.echo", {"result": {"confidence": 0.93}}, then=then))
    unsure = _done(raypipe.submit("test.echo", {"result": {"confidence": 0.5}}, then=then))
    assert sure.status is unsure.status is JobStatus.COMPLETED
    children = wait_for(
        lambda: [j for j in raypipe.jobs() if j.parent_id == sure.id] or None,
        what="the follow-up to be submitted",
    )
    assert len(children) == 1
    child = _done(raypipe.get(children[0].id))
    assert child.status is JobStatus.COMPLETED
    assert child.tags == ["follow-up"]
    assert child.result == {"step": "quantity", "parent": {"confidence": 0.93}}
    assert not [j for j in raypipe.jobs() if j.parent_id == unsure.id]


def test_follow_ups_chain(raypipe: DirectClient) -> None:
    then = {"type": "test.echo", "payload": {"result": {"n": 2}}, "then": {"type": "noop"}}
    first = _done(raypipe.submit("test.echo", {"result": {"n": 1}}, then=then))
    second = wait_for(
        lambda: next((j for j in raypipe.jobs() if j.parent_id == first.id), None),
        what="the second job",
    )
    _done(raypipe.get(second.id))
    third = wait_for(
        lambda: next((j for j in raypipe.jobs() if j.parent_id == second.id), None),
        what="the third job",
    )
    assert _done(raypipe.get(third.id)).status is JobStatus.COMPLETED
    assert third.type == "noop"
