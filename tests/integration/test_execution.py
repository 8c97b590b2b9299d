"""Where jobs run: admission against the 2-CPU test Ray, warm pools, and stops on pools."""

from __future__ import annotations

import base64
import io
import threading
import time
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from PIL import Image

from raypipe.direct import DirectClient
from raypipe.jobs import AttemptStatus, JobStatus
from tests.conftest import RAY_SIDE, make_settings, wait_for
from tests.integration.conftest import dispatcher, pool_actors, running

WAIT_S = 240


def _info(client: DirectClient) -> dict[str, Any]:
    return ray.get(dispatcher(client.settings).info.remote())


def _all_ended(client: DirectClient, handles: list, timeout: float = WAIT_S) -> list:
    def ended() -> list | None:
        jobs = [h.refresh() for h in handles]
        return jobs if all(j.status.is_terminal for j in jobs) else None

    return wait_for(ended, timeout, "every job to end")  # type: ignore[return-value]


def _png() -> str:
    pixels = np.tile(np.linspace(0, 200, 64, dtype=np.uint8), (48, 1))
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# -- admission ----------------------------------------------------------------------------


@RAY_SIDE
def test_six_one_cpu_sleeps_on_two_cpus_run_two_at_a_time_and_none_times_out(
    raypipe: DirectClient,
) -> None:
    # Each sleeps 1.5 s with a 4 s timeout: the last two wait about 3 s before they start,
    # so a timeout that counted from the claim (not the start) would end them.
    handles = [
        raypipe.submit("sleep", {"seconds": 1.5, "steps": 3}, timeout_s=4, max_attempts=1)
        for _ in range(6)
    ]
    most, waiting_seen = 0, set()
    while True:
        jobs = raypipe.jobs(type="sleep")  # one query: every job as of one moment
        most = max(most, sum(j.status is JobStatus.PROCESSING for j in jobs))
        waiting_seen |= {
            j.id for j in jobs if j.status is JobStatus.QUEUED and j.message == "waiting for 1 CPU"
        }
        if all(j.status.is_terminal for j in jobs):
            break
    assert most <= 2
    assert len(waiting_seen) >= 3  # the later ones said what they waited for
    assert {j.id for j in jobs} == {h.id for h in handles}
    assert [j.status for j in jobs] == [JobStatus.COMPLETED] * 6
    assert all(j.attempt == 1 and j.started_at is not None for j in jobs)
    ordered = sorted(jobs, key=lambda j: j.started_at)
    # A third start only once one of the first two had slept its 1.5 s: no third CPU.
    assert ordered[2].started_at >= ordered[0].started_at + timedelta(seconds=1.5)


def test_jobs_that_can_never_fit_stay_queued_with_the_reason_and_disturb_nothing(
    raypipe: DirectClient,
) -> None:
    huge = raypipe.submit("test.huge", {}, priority=9)
    tpu = raypipe.submit("test.tpu", {}, priority=9)
    small = raypipe.submit("noop", {})
    assert small.wait(timeout=WAIT_S).status is JobStatus.COMPLETED
    wait_for(lambda: huge.refresh().message and tpu.refresh().message, what="the reasons")
    assert huge.refresh().message == "waiting for 64 CPU; the cluster has 2 CPU in all"
    assert tpu.refresh().message == "waiting for 1 tpu; no node has tpu"
    assert (huge.refresh().status, tpu.refresh().status) == (JobStatus.QUEUED,) * 2
    unrunnable = _info(raypipe)["unrunnable"]
    assert set(unrunnable) == {"test.huge", "test.tpu"}
    stats = raypipe.store.queue_stats()["default"]
    assert stats["waiting"]["waiting for 1 tpu; no node has tpu"] == 1


# -- the README's flow on its defaults --------------------------------------------------------


def _flow(client: DirectClient, folder: Path) -> list:
    """embed, then sleep, mesh, document and noop together, then embed again."""
    texts = ["The cat sits on the mat.", "Quarterly revenue grew by eight percent."]
    first = client.submit("embed.texts", {"texts": texts})
    assert first.wait(timeout=WAIT_S).status is JobStatus.COMPLETED, first.refresh().error
    rest = [
        client.submit("sleep", {"seconds": 1, "steps": 2}),
        client.submit("mesh.from_image", {"image_b64": _png(), "formats": ["stl"]}),
        client.submit("document.process", {"text": "Ray runs tasks. " * 40}),
        client.submit("noop", {}),
    ]
    jobs = _all_ended(client, rest)
    last = client.submit("embed.texts", {"texts": texts[::-1]})
    return [first.refresh(), *jobs, last.wait(timeout=WAIT_S)]


def _on_the_defaults(
    db_url: str, tmp_path: Path, idle_s: float
) -> AbstractContextManager[DirectClient]:
    """raypipe on the README's pool and CPU defaults, untouched but for the idle time of
    both built-in pools."""
    idle = {"idle_s": idle_s}
    pools = {"embeddings": idle, "workers": idle}
    return running(make_settings(db_url, tmp_path / "data", pools=pools))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the Quickstart's database
def test_the_readme_flow_completes_on_the_defaults_and_again_after_the_pools_shrink(
    ray_session: None, db_url: str, tmp_path: Path
) -> None:
    # Only the idle times are shortened, so that the second round runs on pools shrunk to
    # nothing without waiting ten minutes.
    with _on_the_defaults(db_url, tmp_path, idle_s=2) as client:
        for round_ in range(2):
            jobs = _flow(client, tmp_path)
            assert [j.status for j in jobs] == [JobStatus.COMPLETED] * 6, [
                (j.type, j.error) for j in jobs
            ]
            if round_ == 0:
                wait_for(
                    lambda: all(p["size"] == 0 for p in _info(client)["pools"].values()),
                    timeout=120,
                    what="every pool to shrink to nothing",
                )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # pool sizing: no SQL
def test_a_cpu_task_after_warm_actors_fill_the_cpus_starts_without_waiting_out_their_idle_time(
    ray_session: None, db_url: str, tmp_path: Path
) -> None:
    # An hour of idle time on both built-in pools (their defaults are 600 s and 60 s), so
    # that a sleep which waited for an actor to idle out could not end within WAIT_S: it
    # ends in time only if an idle actor yields its CPU to it.
    with _on_the_defaults(db_url, tmp_path, idle_s=3600) as client:
        warm = [client.submit("embed.texts", {"texts": ["warm"]}), client.submit("noop", {})]
        assert [j.status for j in _all_ended(client, warm)] == [JobStatus.COMPLETED] * 2
        pools = _info(client)["pools"]
        assert (pools["embeddings"]["size"], pools["workers"]["size"]) == (1, 1)  # 2 of 2 CPUs
        sleep = client.submit("sleep", {"seconds": 0.1, "steps": 1})
        assert sleep.wait(timeout=WAIT_S).status is JobStatus.COMPLETED, sleep.refresh().error
        pools = _info(client)["pools"]
        # One actor yielded its CPU, and only one: the sleep needed one CPU, even when it had
        # not begun by the next round.
        assert pools["embeddings"]["size"] + pools["workers"]["size"] == 1


# -- pools ----------------------------------------------------------------------------------


@RAY_SIDE
def test_the_worker_pool_grows_with_depth_within_admission_and_shrinks_when_idle(
    ray_session: None, db_url: str, tmp_path: Path
) -> None:
    # Bundles of 20 (not 200), so that the queue's 100 slots need more actors than the
    # cluster holds; a one-second idle time, so that the shrink is seen within the test.
    workers = {"bundle": 20, "idle_s": 1}
    settings = make_settings(db_url, tmp_path / "data", pools={"workers": workers})
    sizes: list[int] = []
    done = threading.Event()
    with running(settings) as client:

        def watch() -> None:
            while not done.is_set():
                info = _info(client)
                sizes.append(info["pools"]["workers"]["size"])
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        try:
            handles = client.submit_many([("noop", {})] * 1000)
            watcher.start()
            jobs = _all_ended(client, handles)
            assert all(j.status is JobStatus.COMPLETED for j in jobs)
            assert max(sizes) == 2  # two 1-CPU actors: all a 2-CPU cluster can hold, not three
            wait_for(
                lambda: _info(client)["pools"]["workers"]["size"] == 0, what="the pool to shrink"
            )
        finally:
            done.set()
            if watcher.is_alive():  # before `running` stops the dispatcher it asks
                watcher.join()


@RAY_SIDE
def test_cancelling_a_running_pool_job_interrupts_it(raypipe: DirectClient, tmp_path: Path) -> None:
    handle = raypipe.submit("test.pool_gate", {"folder": str(tmp_path)})
    wait_for(lambda: handle.refresh().status is JobStatus.PROCESSING, what="the job to start")
    raypipe.cancel_job(handle.id)
    job = handle.wait(timeout=WAIT_S)
    assert job.status is JobStatus.CANCELLED
    wait_for(lambda: (tmp_path / "stopped-1").exists(), what="the attempt to stop")
    assert _info(raypipe)["counters"].get("pool_replaced", 0) == 0  # no kill was needed


@RAY_SIDE
def test_a_pool_job_past_its_timeout_is_interrupted_and_retried(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    handle = raypipe.submit(
        "test.pool_gate", {"folder": str(tmp_path), "release_on_attempt": 2}, timeout_s=1
    )
    job = handle.wait(timeout=WAIT_S)
    assert (job.status, job.attempt) == (JobStatus.COMPLETED, 2)
    attempts = raypipe.store.attempts(handle.id)
    assert [a.status for a in attempts] == [AttemptStatus.TIMED_OUT, AttemptStatus.COMPLETED]
    assert (tmp_path / "stopped-1").exists()


@RAY_SIDE
def test_a_pool_job_that_ignores_its_stop_costs_its_actor_and_its_neighbour_is_retried(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    stubborn_dir, neighbour_dir = tmp_path / "stubborn", tmp_path / "neighbour"
    stubborn_dir.mkdir()
    neighbour_dir.mkdir()
    stubborn = raypipe.submit("test.stubborn", {"folder": str(stubborn_dir)})
    neighbour = raypipe.submit(
        "test.pool_gate", {"folder": str(neighbour_dir), "release_on_attempt": 2}
    )
    for handle in (stubborn, neighbour):
        wait_for(lambda h=handle: h.refresh().status is JobStatus.PROCESSING, what="both to run")
    [actor] = pool_actors(raypipe.settings, "test")
    raypipe.cancel_job(stubborn.id)
    assert stubborn.wait(timeout=WAIT_S).status is JobStatus.CANCELLED
    assert (stubborn_dir / "ignored-1").exists()  # it was interrupted, and carried on
    job = neighbour.wait(timeout=WAIT_S)
    assert (job.status, job.attempt) == (JobStatus.COMPLETED, 2)
    first = raypipe.store.attempts(neighbour.id)[0]
    assert first.status is AttemptStatus.FAILED
    assert first.error is not None and first.error.type == "ActorDiedError"
    assert _info(raypipe)["counters"]["pool_replaced"] == 1
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.info.remote(), timeout=30)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # pool sizing: no SQL
def test_a_pool_keeps_its_min_size_through_waiting_work_and_a_dead_actor(
    ray_session: None, db_url: str, tmp_path: Path
) -> None:
    # The setting under test: the test pool asked to keep one actor (1 CPU of the two).
    test_pool = {"concurrency": 2, "min_size": 1, "max_size": 1}
    settings = make_settings(db_url, tmp_path / "data", pools={"test": test_pool})
    with running(settings) as client:
        [kept] = _info(client)["pools"]["test"]["actors"]
        sleeps = [client.submit("sleep", {"seconds": 1.5, "steps": 1}) for _ in range(2)]
        first, second = sorted(_all_ended(client, sleeps), key=lambda j: j.started_at)
        # The idle actor did not give its CPU up: the sleeps took turns on the other one.
        assert second.started_at >= first.started_at + timedelta(seconds=1.5)
        info = _info(client)
        assert info["pools"]["test"]["actors"] == [kept]
        assert info["counters"].get("pool_yielded", 0) == 0

        folder = tmp_path / "gate"
        folder.mkdir()
        gate = client.submit("test.pool_gate", {"folder": str(folder), "release_on_attempt": 2})
        wait_for(lambda: gate.refresh().status is JobStatus.PROCESSING, what="the gate to run")
        refilled = _info(client)["counters"]["pool_refilled"]  # 1: the start's min_size
        ray.kill(ray.get_actor(kept, namespace=settings.namespace), no_restart=True)
        job = gate.wait(timeout=WAIT_S)
        assert (job.status, job.attempt) == (JobStatus.COMPLETED, 2)
        info = _info(client)
        [replacement] = info["pools"]["test"]["actors"]
        assert replacement != kept
        assert info["counters"]["pool_refilled"] == refilled + 1  # to min_size, not by demand


@RAY_SIDE
def test_a_pool_actor_killed_mid_job_has_each_of_its_jobs_retried_once(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    folders = [tmp_path / "a", tmp_path / "b"]
    handles = []
    for folder in folders:
        folder.mkdir()
        handles.append(
            raypipe.submit("test.pool_gate", {"folder": str(folder), "release_on_attempt": 2})
        )
    for handle in handles:
        wait_for(lambda h=handle: h.refresh().status is JobStatus.PROCESSING, what="both to run")
    [actor] = pool_actors(raypipe.settings, "test")
    ray.kill(actor, no_restart=True)
    jobs = _all_ended(raypipe, handles)
    assert [(j.status, j.attempt) for j in jobs] == [(JobStatus.COMPLETED, 2)] * 2
    for handle in handles:
        attempts = raypipe.store.attempts(handle.id)
        assert [a.status for a in attempts] == [AttemptStatus.FAILED, AttemptStatus.COMPLETED]
