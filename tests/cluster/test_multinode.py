"""raypipe on a simulated multi-node Ray cluster (a head without CPUs, a CPU node, a one-GPU
node) with PostgreSQL: resources route work to the right nodes, and a lost node loses no job."""

from __future__ import annotations

from pathlib import Path

import pytest

from raypipe.handle import JobHandle
from raypipe.jobs import AttemptStatus, JobRecord, JobStatus
from tests.cluster.conftest import MultiNode
from tests.conftest import wait_for

pytestmark = pytest.mark.postgres

TIMEOUT_S = 180


def _completed(handles: list[JobHandle]) -> list[JobRecord]:
    """Wait until every job is terminal; they must all have completed."""

    def all_terminal() -> list[JobRecord] | None:
        jobs = [handle.refresh() for handle in handles]
        return jobs if all(job.status.is_terminal for job in jobs) else None

    jobs: list[JobRecord] = wait_for(all_terminal, TIMEOUT_S, "every job to end")  # type: ignore[assignment]
    assert [job.status for job in jobs] == [JobStatus.COMPLETED] * len(jobs), [
        (job.id, job.status, job.error) for job in jobs
    ]
    return jobs


def _started(folder: Path) -> dict[tuple[str, int], str]:
    """(job id, attempt) -> node id of every attempt that started, from its marker file."""
    found = {}
    for marker in folder.glob("started-*"):
        job_id, attempt, node_id = marker.name.removeprefix("started-").rsplit("-", 2)
        found[(job_id, int(attempt))] = node_id
    return found


def _gated(multinode: MultiNode, folder: Path, count: int) -> list[JobHandle]:
    """``count`` CPU jobs that each wait for ``folder/release`` once they run."""
    payload = {"folder": str(folder)}
    return multinode.client.submit_many([{"type": "cluster.cpu", "payload": payload}] * count)


def test_gpu_jobs_run_only_on_the_gpu_node(multinode: MultiNode) -> None:
    # Each job holds the GPU for a moment while the CPU node idles: without the GPU
    # demand, Ray would spread them over both worker nodes.
    handles = multinode.client.submit_many(
        [{"type": "cluster.gpu", "payload": {"seconds": 0.3}}] * 4
    )
    results = [job.result for job in _completed(handles)]
    assert {r["node_id"] for r in results} == {multinode.nodes["gpu"]}, results
    assert all(r["gpu_ids"] == [0] for r in results), results


def test_cpu_work_spreads_over_both_worker_nodes(multinode: MultiNode, tmp_path: Path) -> None:
    workers = {multinode.nodes["cpu"], multinode.nodes["gpu"]}
    handles = _gated(multinode, tmp_path, 4)
    # The head has no CPU and each worker node one: two attempts at once means both nodes.
    running = wait_for(
        lambda: len(started := _started(tmp_path)) >= 2 and started,
        TIMEOUT_S,
        "two attempts running at once",
    )
    assert set(running.values()) == workers, running  # type: ignore[union-attr]
    (tmp_path / "release").touch()
    results = [job.result for job in _completed(handles)]
    assert {r["node_id"] for r in results} == workers, results
    assert all(r["gpu_ids"] == [] for r in results), results


def test_removing_a_node_mid_run_loses_no_job_and_records_none_twice(
    multinode: MultiNode, tmp_path: Path
) -> None:
    doomed = multinode.host.add_node(num_cpus=2)
    handles = _gated(multinode, tmp_path, 8)
    # Four CPUs for eight waiting jobs: the doomed node fills up with two of them.
    wait_for(
        lambda: list(_started(tmp_path).values()).count(doomed) == 2,
        TIMEOUT_S,
        "two attempts running on the doomed node",
    )
    multinode.host.remove_node(doomed)
    lost = {key for key, node in _started(tmp_path).items() if node == doomed}

    def recorded_lost() -> bool:
        attempts = {
            (job_id, a.attempt): a.status
            for job_id in {job_id for job_id, _ in lost}
            for a in multinode.client.job_attempts(job_id)
        }
        return all(attempts.get(key) is AttemptStatus.FAILED for key in lost)

    # A killed raylet's workers linger for a moment; a lost machine's could not report, so
    # the gate opens once the dispatcher has recorded the node's attempts as lost.
    wait_for(recorded_lost, TIMEOUT_S, "the doomed node's attempts recorded as failed")
    (tmp_path / "release").touch()

    jobs = _completed(handles)
    assert all(job.result["node_id"] != doomed for job in jobs)
    for job in jobs:
        attempts = {a.attempt: a for a in multinode.client.job_attempts(job.id)}
        assert sorted(attempts) == list(range(1, job.attempt + 1)), attempts
        assert job.result["attempt"] == job.attempt
        for number, attempt in attempts.items():
            if (job.id, number) in lost:
                assert attempt.status is AttemptStatus.FAILED, attempt
                assert attempt.error is not None, attempt
                assert attempt.error.type in ("NodeDiedError", "WorkerCrashedError"), attempt
            else:
                # Only the last attempt may complete; none is left running.
                assert number == job.attempt, attempts
                assert attempt.status is AttemptStatus.COMPLETED, attempt
        completions = [
            event
            for event in multinode.client.store.events(job.id)
            if event["status"] == JobStatus.COMPLETED.value
        ]
        assert len(completions) == 1, completions
    # Every lost attempt was followed by exactly one more.
    assert sum(job.attempt for job in jobs) == len(jobs) + len(lost)


def test_held_back_gpu_demand_is_asked_of_the_autoscaler_and_withdrawn_on_cancel(
    multinode: MultiNode, tmp_path: Path
) -> None:
    holder = multinode.client.submit("cluster.gpu", {"folder": str(tmp_path)})
    wait_for(lambda: _started(tmp_path), TIMEOUT_S, "the GPU holder to start")
    waiting = multinode.client.submit("cluster.gpu", {})
    wanted = {"CPU": 1.0, "GPU": 1.0}
    wait_for(lambda: wanted in multinode.host.resource_requests(), TIMEOUT_S, "the GPU request")
    assert waiting.refresh().status is JobStatus.QUEUED
    assert waiting.refresh().message == "waiting for 1 GPU"
    multinode.client.cancel_job(waiting.id)
    wait_for(lambda: multinode.host.resource_requests() == [], TIMEOUT_S, "the request withdrawn")
    (tmp_path / "release").touch()
    assert _completed([holder])[0].result["node_id"] == multinode.nodes["gpu"]
