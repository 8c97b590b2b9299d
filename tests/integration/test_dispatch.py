"""The dispatcher against real SQLite and PostgreSQL on a real local Ray."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest
import ray

from raypipe.direct import DirectClient
from raypipe.exceptions import InvalidInput
from raypipe.jobs import AttemptStatus, JobStatus
from raypipe.runtime.dispatcher import Dispatcher
from raypipe.store import DispatchStore
from tests.conftest import RAY_SIDE, process_alive, wait_for
from tests.helpers.processors import Repeated, Word, repeat
from tests.integration.conftest import dispatcher


def _terminal(client: DirectClient, handles: list, timeout: float = 120) -> list:
    def all_done() -> list | None:
        jobs = [h.refresh() for h in handles]
        return jobs if all(j.status.is_terminal for j in jobs) else None

    return wait_for(all_done, timeout, "every job to end")  # type: ignore[return-value]


def _processing(handle) -> bool:
    return handle.refresh().status is JobStatus.PROCESSING


def test_priorities_are_honoured_under_a_concurrency_limit_of_one(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    blocker = raypipe.submit("test.gate", {"folder": str(tmp_path)}, queue="solo", priority=100)
    wait_for(lambda: _processing(blocker), what="the blocker to start")
    priorities = [3, 1, 5, 2, 4, 0, 5]
    handles = [raypipe.submit("noop", {}, queue="solo", priority=p) for p in priorities]
    (tmp_path / "release").touch()
    jobs = _terminal(raypipe, handles)
    assert all(job.status is JobStatus.COMPLETED for job in jobs)
    started = sorted(jobs, key=lambda job: job.started_at)
    assert [job.priority for job in started] == sorted(priorities, reverse=True)
    # Equal priorities run oldest first.
    fives = [job.id for job in started if job.priority == 5]
    assert fives == [handles[2].id, handles[6].id]


def test_a_queue_never_runs_more_than_its_limit(raypipe: DirectClient, tmp_path: Path) -> None:
    folders = [tmp_path / str(i) for i in range(5)]
    for folder in folders:
        folder.mkdir()
    handles = [raypipe.submit("test.gate", {"folder": str(f)}, queue="pair") for f in folders]
    wait_for(lambda: sum(_processing(h) for h in handles) == 2, what="two gates to run")
    dispatch = DispatchStore(raypipe.store)
    assert dispatch.running_by_queue() == {"pair": 2}
    for folder in folders:
        (folder / "release").touch()
    jobs = _terminal(raypipe, handles)
    assert all(job.status is JobStatus.COMPLETED for job in jobs)
    spans = [(a.started_at, a.finished_at) for h in handles for a in h.attempts()]
    most = max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans)
    assert most == 2


@RAY_SIDE
def test_retryable_errors_back_off_with_growing_delays(raypipe: DirectClient) -> None:
    job = raypipe.submit("fail", {"error": "RetryableError"}, max_attempts=4)
    final = job.wait(60)
    assert final.status is JobStatus.FAILED
    assert final.error is not None and final.error.type == "RetryableError"
    attempts = job.attempts()
    assert [a.attempt for a in attempts] == [1, 2, 3, 4]
    assert all(a.status is AttemptStatus.FAILED for a in attempts)
    base, jitter = raypipe.settings.engine.default_backoff_s, 0.1
    gaps = [
        (nxt.started_at - prev.finished_at).total_seconds()
        for prev, nxt in itertools.pairwise(attempts)
    ]
    for n, gap in enumerate(gaps, start=1):
        # Attempt n+1 never starts before its backoff: base * 2**(n-1), less the jitter.
        assert gap >= base * 2 ** (n - 1) * (1 - jitter) - 0.01, gaps


def test_a_job_that_succeeds_on_a_retry_completes(raypipe: DirectClient) -> None:
    job = raypipe.submit("fail", {"error": "ValueError", "succeed_on_attempt": 2})
    assert job.result(timeout=60) == {"attempt": 2}
    assert [a.status for a in job.attempts()] == [AttemptStatus.FAILED, AttemptStatus.COMPLETED]


def test_a_permanent_error_is_not_retried(raypipe: DirectClient) -> None:
    job = raypipe.submit(
        "fail", {"error": "PermanentError", "message": "bad input"}, max_attempts=5
    )
    final = job.wait(60)
    assert final.status is JobStatus.FAILED
    assert final.error is not None
    assert (final.error.type, final.error.message) == ("PermanentError", "bad input")
    assert "Traceback" in (final.error.traceback or "")
    assert len(job.attempts()) == 1


@RAY_SIDE
def test_a_timed_out_attempt_is_recorded_and_retried(raypipe: DirectClient) -> None:
    job = raypipe.submit("sleep", {"seconds": 120, "steps": 1200}, timeout_s=1, max_attempts=2)
    final = job.wait(90)
    assert final.status is JobStatus.FAILED
    assert final.error is not None and final.error.type == "JobTimeout"
    attempts = job.attempts()
    assert [a.status for a in attempts] == [AttemptStatus.TIMED_OUT, AttemptStatus.TIMED_OUT]


def test_cancelling_a_queued_job(raypipe: DirectClient) -> None:
    job = raypipe.submit("noop", {}, delay_s=3600)
    assert job.cancel().status is JobStatus.CANCELLED
    assert job.attempts() == []
    with pytest.raises(Exception, match="only queued or processing"):
        job.cancel()


@RAY_SIDE
def test_cancelling_a_running_job_stops_its_task(raypipe: DirectClient, tmp_path: Path) -> None:
    job = raypipe.submit("test.gate", {"folder": str(tmp_path)})
    wait_for(lambda: (tmp_path / "pid-1").exists(), what="the gate to start")
    pid = int((tmp_path / "pid-1").read_text())
    # The task starts before the dispatcher's round records it: wait for the record.
    wait_for(lambda: _processing(job), what="the gate's start to be recorded")
    asked = job.cancel()
    assert asked.status is JobStatus.PROCESSING and asked.cancel_requested
    final = job.wait(60)
    assert final.status is JobStatus.CANCELLED
    assert [a.status for a in job.attempts()] == [AttemptStatus.CANCELLED]
    # The task itself stopped: it left its marker, or its worker process is gone.
    wait_for(
        lambda: (tmp_path / "stopped-1").exists() or not process_alive(pid),
        what="the cancelled task to stop",
    )
    assert not (tmp_path / "pid-2").exists()


def test_killing_the_dispatcher_loses_nothing(raypipe: DirectClient) -> None:
    handles = raypipe.submit_many([("sleep", {"seconds": 0.4, "steps": 4}) for _ in range(16)])
    wait_for(
        lambda: raypipe.store.count_by_status().get(JobStatus.COMPLETED, 0) >= 2,
        what="some jobs to complete",
    )
    ray.kill(dispatcher(raypipe.settings), no_restart=False)
    jobs = _terminal(raypipe, handles, timeout=180)
    assert all(job.status is JobStatus.COMPLETED for job in jobs)
    for handle in handles:
        statuses = [a.status for a in handle.attempts()]
        assert statuses.count(AttemptStatus.COMPLETED) == 1, statuses
        assert AttemptStatus.RUNNING not in statuses


@RAY_SIDE
def test_a_killed_worker_is_a_system_failure_and_is_retried(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    job = raypipe.submit("test.gate", {"folder": str(tmp_path), "release_on_attempt": 2})
    wait_for(lambda: (tmp_path / "pid-1").exists(), what="the gate to start")
    os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGKILL)
    assert job.result(timeout=90)["attempt"] == 2
    first, second = job.attempts()
    assert first.status is AttemptStatus.FAILED
    assert first.error is not None and first.error.type in (
        "WorkerCrashedError",
        "ActorDiedError",
        "RayTaskError",
        "LocalRayletDiedError",
    ), first.error
    assert second.status is AttemptStatus.COMPLETED


def test_progress_reports_are_coalesced(raypipe: DirectClient) -> None:
    job = raypipe.submit("test.spin_progress", {"calls": 100_000})
    assert job.result(timeout=120) == {"calls": 100_000}
    progress = ray.get_actor("raypipe-progress", namespace=raypipe.settings.namespace)
    stats = ray.get(progress.stats.remote())
    # 100,000 reports became a handful of actor messages, not 100,000.
    assert 1 <= stats["messages"] < 1000
    assert job.refresh().progress == 100.0


def test_progress_is_live_and_reaches_the_database(raypipe: DirectClient, tmp_path: Path) -> None:
    job = raypipe.submit("sleep", {"seconds": 6, "steps": 60})
    seen = wait_for(lambda: job.refresh().progress >= 10 and job.refresh(), what="progress")
    assert seen.status is JobStatus.PROCESSING
    assert seen.stage == "sleep" and seen.message and seen.message.startswith("step ")
    progress = ray.get_actor("raypipe-progress", namespace=raypipe.settings.namespace)
    live = ray.get(progress.wait.remote(job.id, 0, 10))
    assert live is not None and live["progress"] > 0
    job.cancel()
    assert job.wait(60).status is JobStatus.CANCELLED


def test_a_cancel_asked_while_no_dispatcher_runs_is_honoured_on_restart(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    from raypipe.runtime import actors

    job = raypipe.submit("test.gate", {"folder": str(tmp_path)})
    wait_for(lambda: _processing(job), what="the gate's start to be recorded")
    ray.kill(dispatcher(raypipe.settings), no_restart=True)
    assert job.cancel().status is JobStatus.PROCESSING  # only flagged: nobody runs it now
    actors.start_actors(raypipe.settings)
    final = job.wait(60)
    assert final.status is JobStatus.CANCELLED
    assert [a.status for a in job.attempts()] == [AttemptStatus.CANCELLED]
    assert not (tmp_path / "pid-2").exists()


def test_a_second_dispatcher_on_the_database_leaves_the_first_ones_live_leases(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    gate = raypipe.submit("test.gate", {"folder": str(tmp_path)})
    wait_for(lambda: _processing(gate), what="the gate to start")
    # Another dispatcher in the same namespace, as a second cluster on this database would
    # run: its start-up sweep of earlier incarnations' leases must not take this one.
    second = ray.remote(Dispatcher).options(namespace=raypipe.settings.namespace, num_cpus=0)
    other = second.remote(raypipe.settings)
    try:
        wait_for(
            lambda: ray.get(other.info.remote())["counters"].get("rounds", 0) > 0,
            what="the second dispatcher's first round",
        )
        assert ray.get(other.info.remote())["counters"].get("rescued", 0) == 0
        assert (gate.refresh().status, gate.refresh().attempt) == (JobStatus.PROCESSING, 1)
    finally:
        ray.kill(other)
    (tmp_path / "release").touch()
    job = gate.wait(timeout=60)
    assert (job.status, job.attempt) == (JobStatus.COMPLETED, 1)
    assert [a.status for a in gate.attempts()] == [AttemptStatus.COMPLETED]


def test_a_typed_processor_submits_in_the_cluster_and_is_still_its_function(
    raypipe: DirectClient,
) -> None:
    job = repeat.submit(Word(text="ab", times=2), client=raypipe, tags=["typed"])
    assert job.result(60) == Repeated(text="abab", length=4)
    assert job.refresh().tags == ["typed"]
    batch = repeat.map([{"text": "x"}, Word(text="y", times=3)], client=raypipe)
    assert batch.results(60) == [Repeated(text="x", length=1), Repeated(text="yyy", length=3)]
    with pytest.raises(InvalidInput, match=r"payload\.text"):
        repeat.submit(client=raypipe)
    assert repeat(Word(text="z"), None) == Repeated(text="z", length=1)


@RAY_SIDE
def test_a_drain_lets_attempts_end_within_its_grace_and_queues_the_rest_uncounted(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    quick, slow = tmp_path / "quick", tmp_path / "slow"
    for folder in (quick, slow):
        folder.mkdir()
    finishing = raypipe.submit("test.gate", {"folder": str(quick)})
    stopped = raypipe.submit(
        "test.gate", {"folder": str(slow), "release_on_attempt": 2}, max_attempts=1
    )
    wait_for(lambda: _processing(finishing) and _processing(stopped), what="both gates to run")
    actor = dispatcher(raypipe.settings)
    # A grace far longer than the released gate needs to end; the other one outlives it.
    drain = actor.drain.remote(10.0)
    (quick / "release").touch()
    assert ray.get(drain, timeout=120) == {"running_at_start": 2, "still_running": 0}
    assert finishing.refresh().status is JobStatus.COMPLETED
    again = stopped.refresh()
    assert (again.status, again.attempt, again.max_attempts) == (JobStatus.QUEUED, 1, 2)
    [attempt] = stopped.attempts()
    assert attempt.status is AttemptStatus.CANCELLED
    assert attempt.error is not None and attempt.error.type == "Drained"
    # Draining, it claims nothing: rounds go by and a new job stays queued.
    late = raypipe.submit("noop", {})
    rounds = ray.get(actor.info.remote())["counters"]["rounds"]
    wait_for(
        lambda: ray.get(actor.info.remote())["counters"]["rounds"] >= rounds + 3,
        what="three rounds of the draining dispatcher",
    )
    assert late.status() is JobStatus.QUEUED and ray.get(actor.info.remote())["draining"]
    # A dispatcher that starts again runs both; the stopped job's next attempt is its 2nd.
    ray.kill(actor, no_restart=False)
    assert stopped.wait(60).status is JobStatus.COMPLETED
    assert late.wait(60).status is JobStatus.COMPLETED
    assert [a.status for a in stopped.attempts()] == [
        AttemptStatus.CANCELLED,
        AttemptStatus.COMPLETED,
    ]
