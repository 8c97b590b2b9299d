"""Pool policy: growth with the backlog, shrinking when idle, yielding to other work."""

from __future__ import annotations

from raypipe.jobs import JobStatus
from raypipe.runtime.pool_manager import YIELD_AFTER_S
from tests.helpers.fake_cluster import Rig
from tests.unit.controller.conftest import MakeRig

#: One job running and one waiting per actor, up to three actors, gone after 30 s idle.
POOL = {"test": {"concurrency": 1, "max_size": 3, "idle_s": 30.0}}


def _pool_jobs(rig: Rig, count: int) -> list[str]:
    return [rig.submit("test.pool_gate", {"folder": "-"}) for _ in range(count)]


def test_a_pool_grows_with_its_backlog_up_to_its_max_size(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 4.0}, pools=POOL)
    first = _pool_jobs(rig, 2)
    rig.round()
    assert len(rig.cluster.live_actors("test")) == 1  # two slots: enough
    more = _pool_jobs(rig, 6)
    rig.controller.poke()
    rig.round()
    assert len(rig.cluster.live_actors("test")) == 3
    # Three actors of two slots: six jobs placed, the rest waits for a free slot.
    assert rig.cluster.launched() == first + more[:4]
    assert rig.job(more[4]).message == "waiting for a free worker of pool test"
    assert rig.controller.info()["pools"]["test"]["jobs"] == 6


def test_an_idle_pool_shrinks_after_its_idle_time(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 4.0}, pools=POOL)
    jobs = _pool_jobs(rig, 5)
    rig.round()
    rig.cluster.start(*jobs)
    for job in jobs:
        rig.cluster.finish(job)
    rig.round()
    assert [rig.job(j).status for j in jobs] == [JobStatus.COMPLETED] * 5
    assert rig.controller.wait_s() <= 30.0
    rig.round(after_s=29.0)
    assert len(rig.cluster.live_actors("test")) == 3
    rig.round(after_s=1.0)
    assert rig.cluster.live_actors("test") == []
    assert rig.counters["pool_shrunk"] == 3


def test_an_idle_actor_yields_its_cpu_to_queued_work_without_waiting_its_idle_time(
    make_rig: MakeRig,
) -> None:
    rig = make_rig({"CPU": 1.0}, pools=POOL)
    [pooled] = _pool_jobs(rig, 1)
    rig.round()
    rig.cluster.start(pooled)
    rig.cluster.finish(pooled)
    rig.round()
    [gate] = rig.gates(1)
    rig.controller.poke()
    rig.round()  # prefetched: it waits in Ray's queue for the actor's CPU
    assert rig.cluster.launched() == [pooled, gate]
    assert len(rig.cluster.live_actors("test")) == 1  # idle for a moment only: kept
    rig.round(after_s=YIELD_AFTER_S)
    assert rig.cluster.live_actors("test") == []
    assert rig.counters["pool_yielded"] == 1
    rig.round(after_s=5.0)
    assert rig.counters["pool_yielded"] == 1  # the waiting task was served once


def test_a_pool_that_lost_an_actor_is_refilled_to_its_min_size(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 2.0}, pools={"test": {"min_size": 1, "max_size": 2}})
    [actor] = rig.cluster.live_actors("test")  # started before any round
    [job] = _pool_jobs(rig, 1)
    rig.round()
    rig.cluster.kill_actor(actor)  # it died: its call ends with an actor error
    rig.round()
    [again] = rig.cluster.live_actors("test")
    assert again is not actor
    assert rig.counters["pool_refilled"] == 2
    assert (rig.job(job).status, rig.job(job).attempt) == (JobStatus.QUEUED, 1)  # retried
