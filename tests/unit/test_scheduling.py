"""Claim selection and resource budgets, without a database or a cluster."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from raypipe.scheduling import choose_claims, resource_budget

DEMAND = {
    "cpu": {"CPU": 1.0},
    "big": {"CPU": 4.0},
    "gpu": {"CPU": 1.0, "GPU": 1.0},
    "tpu": {"CPU": 1.0, "TPU": 1.0},
    "free": {},
}


@dataclass(frozen=True)
class Candidate:
    name: str
    type: str = "cpu"
    queue: str = "default"
    priority: int = 0


def demand_of(job_type: str) -> dict[str, float]:
    return DEMAND[job_type]


def names(chosen: Sequence[Any]) -> list[str]:
    return [c.name for c in chosen]


def choose(
    candidates: list[Candidate],
    queue_free: dict[str, int] | None = None,
    budget: dict[str, float] | None = None,
    max_jobs: int = 100,
) -> list[str]:
    chosen = choose_claims(
        candidates,
        queue_free if queue_free is not None else {"default": 100},
        budget if budget is not None else {"CPU": 100.0},
        demand_of,
        max_jobs,
    )
    return names(chosen)


# -- choose_claims ----------------------------------------------------------------------


def test_keeps_candidate_order() -> None:
    candidates = [Candidate("c"), Candidate("a"), Candidate("b"), Candidate("d")]
    assert choose(candidates) == ["c", "a", "b", "d"]


def test_returns_the_candidate_objects_themselves() -> None:
    candidates = [Candidate("a"), Candidate("b")]
    chosen = choose_claims(candidates, {"default": 5}, {"CPU": 5}, demand_of, 5)
    assert chosen[0] is candidates[0] and chosen[1] is candidates[1]


def test_empty_candidates() -> None:
    assert choose([]) == []


def test_respects_max_jobs() -> None:
    candidates = [Candidate(str(i)) for i in range(10)]
    assert choose(candidates, max_jobs=3) == ["0", "1", "2"]
    assert choose(candidates, max_jobs=0) == []


def test_respects_free_slots_per_queue() -> None:
    candidates = [
        Candidate("a1", queue="a"),
        Candidate("a2", queue="a"),
        Candidate("b1", queue="b"),
        Candidate("a3", queue="a"),
        Candidate("b2", queue="b"),
        Candidate("b3", queue="b"),
    ]
    assert choose(candidates, queue_free={"a": 2, "b": 1}) == ["a1", "a2", "b1"]


def test_full_queue_is_skipped_but_other_queues_still_taken() -> None:
    candidates = [
        Candidate("full1", queue="full"),
        Candidate("open1", queue="open"),
        Candidate("full2", queue="full"),
        Candidate("open2", queue="open"),
    ]
    assert choose(candidates, queue_free={"full": 0, "open": 5}) == ["open1", "open2"]


def test_negative_free_slots_count_as_full() -> None:
    # More running than the limit (a limit lowered while jobs run) must not claim more.
    candidates = [Candidate("x", queue="q"), Candidate("y")]
    assert choose(candidates, queue_free={"q": -2, "default": 1}) == ["y"]


def test_unknown_queue_has_no_slots() -> None:
    candidates = [Candidate("ghost", queue="removed"), Candidate("ok")]
    assert choose(candidates, queue_free={"default": 1}) == ["ok"]


def test_budget_limits_total_demand() -> None:
    candidates = [Candidate(str(i)) for i in range(6)]
    assert choose(candidates, budget={"CPU": 4.0}) == ["0", "1", "2", "3"]


def test_fractional_budget_does_not_fit_a_whole_cpu() -> None:
    assert choose([Candidate("a"), Candidate("b")], budget={"CPU": 1.5}) == ["a"]


def test_backfills_cpu_jobs_behind_a_gpu_job_that_does_not_fit() -> None:
    candidates = [
        Candidate("gpu1", type="gpu"),
        Candidate("cpu1"),
        Candidate("cpu2"),
        Candidate("gpu2", type="gpu"),
        Candidate("cpu3"),
    ]
    assert choose(candidates, budget={"CPU": 8.0, "GPU": 0.0}) == ["cpu1", "cpu2", "cpu3"]
    # a resource missing from the budget altogether counts as none left
    assert choose(candidates, budget={"CPU": 8.0}) == ["cpu1", "cpu2", "cpu3"]


def test_gpu_budget_is_consumed() -> None:
    candidates = [
        Candidate("gpu1", type="gpu"),
        Candidate("gpu2", type="gpu"),
        Candidate("gpu3", type="gpu"),
        Candidate("cpu1"),
    ]
    assert choose(candidates, budget={"CPU": 8.0, "GPU": 2.0}) == ["gpu1", "gpu2", "cpu1"]


def test_big_job_skipped_smaller_jobs_backfill() -> None:
    candidates = [Candidate("small1"), Candidate("big", type="big"), Candidate("small2")]
    assert choose(candidates, budget={"CPU": 3.0}) == ["small1", "small2"]


def test_custom_resource_not_in_cluster_is_never_chosen() -> None:
    candidates = [Candidate("t", type="tpu"), Candidate("c")]
    assert choose(candidates, budget={"CPU": 4.0, "GPU": 4.0}) == ["c"]


def test_job_without_demand_only_needs_a_slot() -> None:
    candidates = [Candidate("f1", type="free"), Candidate("c1"), Candidate("f2", type="free")]
    assert choose(candidates, budget={"CPU": 0.0}) == ["f1", "f2"]


def test_skipped_jobs_do_not_use_queue_slots() -> None:
    # The GPU job does not fit, so its slot stays free for the CPU job behind it.
    candidates = [Candidate("gpu", type="gpu", queue="q"), Candidate("cpu", queue="q")]
    assert choose(candidates, queue_free={"q": 1}, budget={"CPU": 2.0}) == ["cpu"]


def test_does_not_mutate_its_inputs() -> None:
    queue_free = {"default": 2}
    budget = {"CPU": 2.0}
    choose([Candidate("a"), Candidate("b")], queue_free=queue_free, budget=budget)
    assert queue_free == {"default": 2}
    assert budget == {"CPU": 2.0}


def test_all_limits_together() -> None:
    candidates = [
        Candidate("g1", type="gpu", queue="gpu"),
        Candidate("g2", type="gpu", queue="gpu"),
        Candidate("c1", queue="cpu"),
        Candidate("c2", queue="cpu"),
        Candidate("c3", queue="cpu"),
        Candidate("c4", queue="cpu"),
    ]
    chosen = choose(
        candidates,
        queue_free={"gpu": 1, "cpu": 10},
        budget={"CPU": 3.0, "GPU": 4.0},
        max_jobs=10,
    )
    assert chosen == ["g1", "c1", "c2"]


# -- resource_budget --------------------------------------------------------------------


def test_budget_without_in_flight_is_cluster_times_oversubscription() -> None:
    assert resource_budget({"CPU": 8.0, "GPU": 2.0}, [], 4.0) == {"CPU": 32.0, "GPU": 8.0}
    assert resource_budget({"CPU": 8.0}, [], 1.0) == {"CPU": 8.0}


def test_budget_subtracts_in_flight_demand() -> None:
    in_flight = [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 2.0}]
    budget = resource_budget({"CPU": 8.0, "GPU": 2.0}, in_flight, 2.0)
    assert budget == {"CPU": 12.0, "GPU": 3.0}


def test_budget_can_go_negative_and_then_nothing_fits() -> None:
    budget = resource_budget({"CPU": 2.0}, [{"CPU": 1.0}] * 5, 1.0)
    assert budget == {"CPU": -3.0}
    assert choose([Candidate("a")], budget=budget) == []


def test_budget_records_in_flight_resources_missing_from_cluster() -> None:
    budget = resource_budget({"CPU": 4.0}, [{"CPU": 1.0, "GPU": 1.0}], 1.0)
    assert budget == {"CPU": 3.0, "GPU": -1.0}


def test_budget_does_not_mutate_cluster() -> None:
    cluster = {"CPU": 4.0}
    resource_budget(cluster, [{"CPU": 1.0}], 2.0)
    assert cluster == {"CPU": 4.0}


@pytest.mark.parametrize(("oversubscription", "expected"), [(1.0, 2), (2.0, 6), (4.0, 14)])
def test_oversubscription_lets_more_jobs_in(oversubscription: float, expected: int) -> None:
    budget = resource_budget({"CPU": 4.0}, [{"CPU": 1.0}, {"CPU": 1.0}], oversubscription)
    candidates = [Candidate(str(i)) for i in range(50)]
    assert len(choose(candidates, budget=budget)) == expected
