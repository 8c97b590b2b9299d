"""Stops, leases and drains: cancel → interrupt → force after the grace, timeouts counted
from the start, rescued leases, a drain; and the run table's legal moves."""

from __future__ import annotations

from datetime import timedelta

import pytest

from raypipe.jobs import AttemptStatus, ClaimedJob, JobStatus
from raypipe.runtime.runs import Call, Run, RunState
from tests.helpers.fake_cluster import Rig
from tests.unit.controller.conftest import MakeRig


def _error_type(rig: Rig, job_id: str) -> str | None:
    error = rig.client.store.attempts(job_id)[-1].error
    return None if error is None else error.type


def test_a_cancelled_task_is_interrupted_then_killed_after_the_grace(make_rig: MakeRig) -> None:
    rig = make_rig()
    [job] = rig.gates(1)
    rig.round()
    rig.cluster.start(job)
    rig.round()
    rig.client.cancel_job(job)
    rig.controller.poke()
    rig.round()
    call = rig.cluster.call_of(job)
    assert (call.cancels, rig.cluster.cancelled) == ([False], [job])
    rig.round(after_s=rig.settings.engine.cancel_grace_s - 0.1)
    assert call.cancels == [False]
    rig.round(after_s=0.1)
    assert call.cancels == [False, True]  # its worker killed: its call ends
    rig.round()
    assert rig.job(job).status is JobStatus.CANCELLED


def test_a_forced_stop_replaces_the_pool_actor_and_retries_its_other_jobs(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    cancelled, other = (rig.submit("test.stubborn", {"folder": "-"}) for _ in range(2))
    rig.round()
    [actor] = rig.cluster.live_actors("test")
    rig.cluster.start(cancelled, other)
    rig.round()
    rig.client.cancel_job(cancelled)
    rig.controller.poke()
    rig.round()
    assert actor.stop_requests == [cancelled]  # interrupted: it ignores that
    rig.round(after_s=rig.settings.engine.cancel_grace_s)
    assert not actor.alive
    assert rig.counters["pool_replaced"] == 1
    rig.round()
    assert rig.job(cancelled).status is JobStatus.CANCELLED
    retried = rig.job(other)
    assert (retried.status, retried.attempt) == (JobStatus.QUEUED, 1)
    assert _error_type(rig, other) == "RayActorError"


def test_a_timeout_counts_from_the_start_and_wins_over_a_late_result(make_rig: MakeRig) -> None:
    rig = make_rig()
    [job] = rig.gates(1, timeout_s=10.0)
    rig.round()
    rig.round(after_s=20.0)  # claimed long ago, never started: no timeout yet
    call = rig.cluster.call_of(job)
    rig.cluster.start(job)
    rig.round(after_s=0.0)
    rig.round(after_s=9.9)
    assert call.cancels == []
    rig.round(after_s=0.1)
    assert call.cancels == [False]
    rig.cluster.finish(job)  # its result came too late
    rig.round()
    [attempt] = rig.client.store.attempts(job)
    assert attempt.status is AttemptStatus.TIMED_OUT
    assert (rig.job(job).status, _error_type(rig, job)) == (JobStatus.QUEUED, "JobTimeout")


def test_expired_leases_and_an_earlier_incarnations_are_rescued(make_rig: MakeRig) -> None:
    rig = make_rig()
    elsewhere, before = rig.gates(2)
    queues = {"default": 10}
    rig.store.claim("elsewhere", 3.0, queues, lambda c, _: [x for x in c if x.id == elsewhere], 1)
    rig.store.claim(Rig.OWNER_PREFIX + "before", 3.0, queues, lambda c, _: list(c), 1)
    rig.round()  # this actor's earlier incarnation died: at once
    assert rig.counters["rescued"] == 1
    assert (rig.job(before).status, _error_type(rig, before)) == (JobStatus.QUEUED, "LeaseExpired")
    assert rig.job(elsewhere).lease_owner == "elsewhere"  # live: left to its owner
    rig.round(after_s=3.5)
    assert rig.counters["rescued"] == 2
    assert _error_type(rig, elsewhere) == "LeaseExpired"


def test_running_jobs_keep_their_leases(make_rig: MakeRig) -> None:
    rig = make_rig()
    [job] = rig.gates(1)
    rig.round()
    rig.cluster.start(job)
    for _ in range(10):
        rig.round(after_s=1.0)  # well past the 3 s lease: renewed every second
    assert rig.counters["rescued"] == 0
    lease = rig.job(job).lease_expires_at
    assert lease is not None and lease > rig.clock.wall() + timedelta(seconds=1)


def test_a_drain_lets_runs_end_within_its_grace_then_queues_the_rest_uncounted(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    finishing, stopped = rig.gates(2, max_attempts=1)
    rig.round()
    rig.cluster.start(finishing, stopped)
    rig.controller.begin_drain(5.0)
    late = rig.gates(1)
    rig.round()
    rig.cluster.finish(finishing)
    rig.round(after_s=4.0)
    assert rig.job(finishing).status is JobStatus.COMPLETED
    assert rig.cluster.call_of(stopped).cancels == []
    rig.round(after_s=1.0)
    assert rig.cluster.call_of(stopped).cancels == [False]
    assert not rig.controller.drained.is_set()
    rig.cluster.crash(stopped, RuntimeError("interrupted"))
    rig.round()
    again = rig.job(stopped)
    assert (again.status, again.attempt, again.max_attempts) == (JobStatus.QUEUED, 1, 2)
    assert _error_type(rig, stopped) == "Drained"
    assert rig.controller.drained.is_set()
    assert late[0] not in rig.cluster.launched()  # a drain claims nothing


def test_a_run_moves_only_as_its_table_allows() -> None:
    job = ClaimedJob("j", "test.gate", "default", {}, 1, 3, 60.0)
    run = Run(job, Call(["j"]), {}, (), claimed_at=0.0)
    with pytest.raises(ValueError, match="no move from claimed to forced"):
        run.move(RunState.FORCED)
    for state in (RunState.STARTED, RunState.STOPPING, RunState.FORCED, RunState.ENDED):
        run.move(state)
    with pytest.raises(ValueError, match="no move from ended to started"):
        run.move(RunState.STARTED)
