"""Admission against what can start now, without a database or a cluster."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from raypipe.admission import Need, Plan, PoolRoom, Room, describe, free_resources, plan
from raypipe.config_groups import RunLimit
from raypipe.flow_control import FlowLimits, FlowPass, FlowState, RunUse

NEEDS = {
    "cpu": Need({"CPU": 1.0}),
    "half": Need({"CPU": 0.5}),
    "big": Need({"CPU": 64.0}),
    "gpu": Need({"CPU": 1.0, "GPU": 1.0}),
    "tpu": Need({"CPU": 1.0, "tpu": 1.0}),
    "mem": Need({"CPU": 1.0, "memory": 4 * 2**30}),
    "embed": Need(pool="embeddings"),
    "doc": Need({"CPU": 1.0}, uses=("embeddings",)),
}
CAPACITY = {"CPU": 2.0, "memory": 8.0 * 2**30}


@dataclass(frozen=True)
class Candidate:
    id: str
    type: str = "cpu"
    queue: str = "default"
    tenant: str = "acme"
    concurrency_key: str | None = None
    run_key: str | None = None


def room(size: int = 0, free_slots: int = 0, max_size: int | None = 2) -> PoolRoom:
    return PoolRoom(size, max_size, free_slots, slots_per_actor=9, actor={"CPU": 1.0})


def run(
    *types: str,
    free: dict[str, float] | None = None,
    pools: dict[str, PoolRoom] | None = None,
    queue_free: dict[str, int] | None = None,
    max_jobs: int = 100,
) -> Plan:
    candidates = [Candidate(f"{t}{i}", t) for i, t in enumerate(types)]
    return plan(
        candidates,
        queue_free if queue_free is not None else {"default": 100},
        free if free is not None else CAPACITY,
        CAPACITY,
        pools if pools is not None else {"embeddings": room()},
        NEEDS.__getitem__,
        max_jobs,
    )


def ids(result: Plan) -> list[str]:
    return [c.id for c in result.chosen]


def test_admits_only_what_fits_now_and_says_what_the_rest_waits_for() -> None:
    result = run(*["cpu"] * 6)
    assert ids(result) == ["cpu0", "cpu1"]
    assert result.waiting == {f"cpu{i}": "waiting for 1 CPU" for i in range(2, 6)}
    assert result.short == {"CPU"}
    assert result.impossible == {}


def test_smaller_jobs_backfill_behind_one_that_does_not_fit() -> None:
    result = run("cpu", "gpu", "half", "half", free={"CPU": 2.0})
    assert ids(result) == ["cpu0", "half2", "half3"]
    assert result.waiting["gpu1"].startswith("waiting for 1 GPU")


def test_resources_no_node_has_are_named_and_the_type_is_unrunnable() -> None:
    result = run("tpu", "big")
    assert ids(result) == []
    assert result.waiting["tpu0"] == "waiting for 1 tpu; no node has tpu"
    assert result.waiting["big1"] == "waiting for 64 CPU; the cluster has 2 CPU in all"
    assert set(result.impossible) == {"tpu", "big"}
    assert result.short == set()  # nothing freed here would let them start
    assert result.demand == [{"CPU": 1.0, "tpu": 1.0}, {"CPU": 64.0}]  # for the autoscaler


def test_a_pool_job_grows_its_pool_by_one_actor_when_it_has_no_free_slot() -> None:
    result = run("embed", "embed", "cpu")
    # One actor (1 CPU) takes both embeds (9 slots); the sleep gets the other CPU.
    assert ids(result) == ["embed0", "embed1", "cpu2"]
    assert result.grow == {"embeddings": 1}


def test_a_pool_job_uses_a_free_slot_without_resources() -> None:
    result = run("embed", "cpu", "cpu", pools={"embeddings": room(size=1, free_slots=1)})
    assert ids(result) == ["embed0", "cpu1", "cpu2"]
    assert result.grow == {}


def test_a_full_pool_at_its_maximum_makes_its_jobs_wait_for_a_worker() -> None:
    full = {"embeddings": room(size=2, free_slots=0, max_size=2)}
    result = run("embed", "cpu", pools=full)
    assert ids(result) == ["cpu1"]
    assert result.waiting == {"embed0": "waiting for a free worker of pool embeddings"}


def test_a_pool_that_cannot_grow_for_lack_of_resources_waits_for_them() -> None:
    result = run("cpu", "cpu", "embed")
    assert ids(result) == ["cpu0", "cpu1"]
    assert result.waiting == {"embed2": "waiting for 1 CPU"}
    assert result.grow == {}


def test_a_job_that_uses_an_empty_pool_brings_one_actor_with_it() -> None:
    result = run("doc", "cpu", free={"CPU": 2.0})
    assert ids(result) == ["doc0"]
    assert result.grow == {"embeddings": 1}
    assert result.waiting == {"cpu1": "waiting for 1 CPU"}
    alone = run("doc", free={"CPU": 1.5})
    assert alone.waiting == {"doc0": "waiting for 2 CPU"}


def test_full_queues_and_the_job_limit_hold() -> None:
    assert ids(run("cpu", "half", queue_free={"default": 1})) == ["cpu0"]
    assert ids(run("half", "half", "half", max_jobs=2)) == ["half0", "half1"]


def test_free_resources_subtract_what_actors_and_jobs_hold() -> None:
    held = [{"CPU": 1.0}, {"CPU": 0.5, "GPU": 1.0}]
    assert free_resources({"CPU": 2.0, "GPU": 1.0}, held) == {"CPU": 0.5, "GPU": 0.0}


@pytest.mark.parametrize(
    ("amounts", "text"),
    [
        ({"CPU": 1.0}, "1 CPU"),
        ({"GPU": 0.5, "CPU": 2.0}, "2 CPU, 0.5 GPU"),
        ({"memory": 1.5 * 2**30}, "1.5 GiB memory"),
    ],
)
def test_amounts_read_as_people_write_them(amounts: dict[str, float], text: str) -> None:
    assert describe(amounts) == text


def test_memory_is_counted_in_bytes_and_shown_in_gib() -> None:
    result = run("mem", "mem", "mem", free={"CPU": 10.0, "memory": 8.0 * 2**30})
    assert ids(result) == ["mem0", "mem1"]
    assert result.waiting == {"mem2": "waiting for 4.0 GiB memory"}


def test_the_prefetch_is_for_tasks_never_for_new_actors() -> None:
    types = ["gpu", "cpu", "cpu", "cpu", "cpu", "embed", "big"]
    candidates = [Candidate(f"c{i}", t) for i, t in enumerate(types)]
    result = plan(
        candidates,
        {"default": 100},
        {"CPU": 2.0, "GPU": 0.0},
        {**CAPACITY, "GPU": 1.0},
        {"embeddings": room()},
        NEEDS.__getitem__,
        100,
        prefetch=1,
    )
    assert result.waiting["c0"] == "waiting for 1 GPU"  # a busy GPU is waited for here
    assert ids(result) == ["c1", "c2", "c3"]  # the third CPU job waits in Ray's queue
    assert result.waiting["c4"] == "waiting for 1 CPU"  # one prefetched task, no more
    assert result.waiting["c5"] == "waiting for 1 CPU"  # an actor needs a free CPU
    assert "c6" in result.waiting  # never more than the cluster has


def test_a_pass_that_weighed_every_candidate_says_the_room_it_left() -> None:
    result = run("cpu", "embed", "cpu", "gpu", queue_free={"default": 3})
    assert ids(result) == ["cpu0", "embed1"]
    assert result.left == Room({"CPU": 0.0, "memory": 8.0 * 2**30}, 0, {"embeddings": (1, 8)})
    assert result.full == set()
    assert run("cpu", queue_free={"default": 1}).full == {"default"}
    # Cut short by max_jobs, the rest was never weighed: no room is promised.
    assert run("cpu", "cpu", max_jobs=1).left is None


def test_a_room_is_within_another_only_if_nothing_in_it_grew() -> None:
    then = Room({"CPU": 0.0, "GPU": 1.0}, 0, {"embeddings": (1, 3)})
    assert Room({"CPU": 0.0, "GPU": 0.5}, 0, {"embeddings": (1, 3)}).within(then)
    assert Room({"CPU": -1.0, "GPU": 1.0}, -1, {"embeddings": (1, 0)}).within(then)
    assert Room({"CPU": 0.1 + 0.2 - 0.3, "GPU": 1.0}, 0, {"embeddings": (1, 3)}).within(then)
    assert not Room({"CPU": 1.0, "GPU": 1.0}, 0, {"embeddings": (1, 3)}).within(then)
    assert not Room({"CPU": 0.0, "GPU": 1.0}, 1, {"embeddings": (1, 3)}).within(then)
    assert not Room({"CPU": 0.0, "GPU": 1.0}, 0, {"embeddings": (1, 4)}).within(then)
    # A pool that shrank, or grew, changes whether its users need an actor started.
    assert not Room({"CPU": 0.0, "GPU": 1.0}, 0, {"embeddings": (0, 0)}).within(then)
    assert not Room({"CPU": 0.0, "GPU": 1.0}, 0, {"embeddings": (2, 3)}).within(then)
    # A resource the cluster did not have before (a new node's) is room that grew.
    assert not Room({"CPU": 0.0, "GPU": 1.0, "tpu": 1.0}, 0, {"embeddings": (1, 3)}).within(then)


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
#: "cpu" jobs run one per key, "half" jobs two; "cpu" jobs count against "api"'s run limit.
API = RunLimit(key="api", limit=3, window_s=10)
LIMITS = FlowLimits(
    key_limit=lambda job_type, _queue: 2 if job_type == "half" else 1,
    run_limit=lambda job_type, _queue: API if job_type == "cpu" else None,
    queue_key_limit={"default": 1},
    own_key_limits={"half": 2},
    run_limits=[API],
)


def flow_plan(candidates: list[Candidate], state: FlowState) -> tuple[Plan, FlowPass]:
    flow = FlowPass(LIMITS, state)
    free = {"CPU": 100.0}
    result = plan(candidates, {"default": 100}, free, free, {}, NEEDS.__getitem__, 100, 0, flow)
    return result, flow


def test_a_pass_counts_what_it_admits_per_key_and_other_keys_still_start() -> None:
    candidates = [
        Candidate("a0", "half", concurrency_key="a"),
        Candidate("a1", "half", concurrency_key="a"),
        Candidate("a2", "half", concurrency_key="a"),
        Candidate("b0", "half", concurrency_key="b"),
        Candidate("b0-other-tenant", "half", tenant="zeta", concurrency_key="b"),
        Candidate("c0", "half", concurrency_key="c"),
    ]
    result, _ = flow_plan(candidates, FlowState(NOW, held={("acme", "default", "c"): 2}))
    assert ids(result) == ["a0", "a1", "b0", "b0-other-tenant"]
    assert result.waiting == {
        "a2": "waiting for concurrency key 'a' (2 running, limit 2)",
        "c0": "waiting for concurrency key 'c' (2 running, limit 2)",
    }


def test_a_run_limit_admits_what_its_window_has_left_and_says_when_the_next_start_is() -> None:
    oldest = NOW - timedelta(seconds=7.5)
    state = FlowState(NOW, starts={(10.0, "api"): RunUse(1, oldest)})
    candidates = [Candidate(f"c{i}", run_key="api") for i in range(4)]
    result, flow = flow_plan(candidates, state)
    assert ids(result) == ["c0", "c1"]  # 3 per window, 1 started already
    next_start = "waiting for run limit 'api': next start at 12:00:03Z"
    assert result.waiting == {"c2": next_start, "c3": next_start}
    assert flow.next_free == oldest + timedelta(seconds=10)


def test_a_paused_run_key_admits_nothing_until_its_pause_ends() -> None:
    until = NOW + timedelta(seconds=30.2)
    result, flow = flow_plan(
        [Candidate("c0", run_key="api")], FlowState(NOW, paused={"api": until})
    )
    assert ids(result) == []
    assert result.waiting == {
        "c0": "waiting for run limit 'api': paused by its service until 12:00:31Z"
    }
    assert flow.next_free == until


def test_full_keys_and_saturated_pairs_are_left_out_of_the_read() -> None:
    state = FlowState(
        NOW,
        held={("acme", "default", "a"): 1, ("acme", "default", "b"): 2},
        starts={(10.0, "api"): RunUse(3, NOW - timedelta(seconds=4)), (10.0, "x"): RunUse(1, NOW)},
        paused={"old": NOW - timedelta(seconds=1), "svc": NOW + timedelta(seconds=5)},
    )
    # "a" is full for types without a larger limit of their own ("half" may run 2).
    assert state.saturated(LIMITS) == {
        ("acme", "default", "a"): frozenset({"half"}),
        ("acme", "default", "b"): frozenset(),
    }
    assert state.full_run_keys(LIMITS) == {
        "api": NOW + timedelta(seconds=6),
        "svc": NOW + timedelta(seconds=5),
    }
