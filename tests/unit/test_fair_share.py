"""The fair-share policy on its own: usage in scarcity-weighted resource-seconds, decayed,
and the order that serves tenants by usage per weight."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from raypipe.fair_share import FairShare, cost_rate


@dataclass(frozen=True)
class Job:
    id: int
    tenant: str
    type: str = "sleep"


def simulate(
    weights: dict[str, float], slots: int, seconds: float, duration: float = 1.0
) -> dict[str, float]:
    """Every tenant floods; ``slots`` CPUs of ``slots``; each job holds one CPU for
    ``duration``. Returns each tenant's CPU-seconds over the run, on a 0.1 s tick."""
    fair = FairShare(weights, half_life_s=60.0, now=0.0)
    capacity = {"CPU": float(slots)}
    running: list[tuple[float, Job]] = []  # (ends at, job)
    held: dict[str, float] = dict.fromkeys(weights, 0.0)
    next_id = 0
    now = 0.0
    tick = 0.1
    while now < seconds:
        fair.charge(now, [(job.tenant, cost_rate({"CPU": 1}, capacity)) for _, job in running])
        for ends, job in [r for r in running if r[0] <= now + 1e-9]:
            running.remove((ends, job))
            fair.ended(job.type, duration)
        backlog = []
        for tenant in weights:
            for _ in range(slots):
                backlog.append(Job(next_id, tenant))
                next_id += 1
        chosen = fair.order(backlog, lambda job: cost_rate({"CPU": 1}, capacity), now)
        for job in chosen[: slots - len(running)]:
            running.append((now + duration, job))
        for _, job in running:
            held[job.tenant] += tick
        now += tick
    return held


def test_weights_one_and_three_share_cpu_seconds_one_to_three() -> None:
    held = simulate({"a": 1.0, "b": 3.0}, slots=4, seconds=200.0)
    assert held["b"] / held["a"] == pytest.approx(3.0, rel=0.1)


def test_equal_weights_share_equally_whoever_came_first() -> None:
    held = simulate({"early": 1.0, "late": 1.0}, slots=2, seconds=100.0)
    assert held["early"] / held["late"] == pytest.approx(1.0, rel=0.1)


def test_a_tenant_alone_gets_every_slot() -> None:
    held = simulate({"alone": 1.0}, slots=4, seconds=20.0)
    assert held["alone"] == pytest.approx(4 * 20.0, rel=0.02)


def test_a_gpu_second_weighs_what_the_scarcer_resource_is_worth() -> None:
    capacity = {"CPU": 8.0, "GPU": 1.0}
    assert cost_rate({"GPU": 1.0}, capacity) == 1.0
    assert cost_rate({"CPU": 1.0}, capacity) == 0.125
    assert cost_rate({"CPU": 1.0, "GPU": 1.0, "unknown": 5.0}, capacity) == 1.125
    fair = FairShare({}, half_life_s=60.0, now=0.0)
    fair.charge(10.0, [("gpu-user", cost_rate({"GPU": 1}, capacity))])
    fair.charge(10.0, [])  # nothing more for no time
    fair.charge(20.0, [("cpu-user", cost_rate({"CPU": 1}, capacity))])
    # ten GPU-seconds against ten CPU-seconds, decayed for what passed since
    assert fair.usage("gpu-user", 20.0) == pytest.approx(10 * 0.5 ** (10 / 60))
    assert fair.usage("cpu-user", 20.0) == pytest.approx(1.25)
    after = fair.order([Job(1, "gpu-user"), Job(2, "cpu-user")], lambda job: 1.0, now=20.0)
    assert [job.tenant for job in after] == ["cpu-user", "gpu-user"]


def test_usage_halves_each_half_life_and_forgotten_tenants_leave() -> None:
    fair = FairShare({}, half_life_s=30.0, now=0.0)
    fair.charge(4.0, [("t", 2.0)])
    assert fair.usage("t", 4.0) == pytest.approx(8.0)
    assert fair.usage("t", 34.0) == pytest.approx(4.0)
    assert fair.shares(34.0) == {"t": {"usage_s": 4.0, "weight": 1.0}}
    fair.forget_below(10_000.0)
    assert fair.shares(10_000.0) == {}


def test_each_tenants_own_order_holds_and_one_tenant_keeps_the_given_order() -> None:
    fair = FairShare({}, half_life_s=60.0, now=0.0)
    jobs = [Job(1, "a"), Job(2, "a"), Job(3, "b"), Job(4, "a"), Job(5, "b")]
    ordered = fair.order(jobs, lambda job: 1.0, now=0.0)
    assert [job.id for job in ordered if job.tenant == "a"] == [1, 2, 4]
    assert [job.id for job in ordered if job.tenant == "b"] == [3, 5]
    assert [job.tenant for job in ordered] == ["a", "b", "a", "b", "a"]
    solo = [Job(7, "a"), Job(6, "a")]
    assert fair.order(solo, lambda job: 1.0, now=0.0) == solo


def test_a_flooding_tenant_does_not_keep_a_newcomer_waiting() -> None:
    fair = FairShare({}, half_life_s=60.0, now=0.0)
    fair.charge(50.0, [("flood", 2.0)])  # it held both CPUs for 50 s
    backlog = [Job(i, "flood") for i in range(100)] + [Job(100, "newcomer")]
    assert fair.order(backlog, lambda job: 0.5, now=50.0)[0].tenant == "newcomer"
    assert fair.rank_tenants(["flood", "newcomer"], now=50.0) == ["newcomer", "flood"]


def test_the_duration_estimate_follows_what_jobs_of_a_type_ran() -> None:
    fair = FairShare({}, half_life_s=60.0, now=0.0)
    assert fair.expected_s("x") == 1.0
    fair.ended("x", 10.0)
    assert fair.expected_s("x") == 10.0
    fair.ended("x", 0.0)
    assert fair.expected_s("x") == pytest.approx(8.0)
