"""Weighted fair share between tenants, counted in what their jobs hold over time.

A tenant's usage is the resource-seconds its running jobs held, each resource weighted by
its scarcity on the cluster (a second of one of 2 CPUs costs 0.5, a second of the only GPU
costs 1, so a GPU-second weighs what all the CPUs together weigh for a second), decayed
with a half-life: recent use counts, old use fades. When several tenants have jobs waiting
for the same room, the room goes first to the tenant furthest below its share, the least
usage per weight; within a tenant, its own order holds (priority, then age). A tenant
alone gets everything (nothing is held back for tenants that wait for nothing).

This is the policy only: a pure function of what it is told, with the clock handed in.
The dispatcher's claim pass tells it what runs and asks it to order what waits.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

#: What a job is assumed to run for, in seconds, before any job of its type has ended.
FIRST_GUESS_S = 1.0
#: How much of each new duration a type's running estimate takes in.
DURATION_SMOOTHING = 0.2


class Tenanted(Protocol):
    @property
    def tenant(self) -> str: ...

    @property
    def type(self) -> str: ...


C = TypeVar("C", bound=Tenanted)


@dataclass
class _Usage:
    #: Scarcity-weighted resource-seconds, decayed to ``at``.
    value: float = 0.0
    at: float = 0.0


def cost_rate(held: Mapping[str, float], capacity: Mapping[str, float]) -> float:
    """What holding ``held`` costs per second: each resource's share of the cluster's."""
    return sum(
        amount / capacity[name] for name, amount in held.items() if capacity.get(name, 0.0) > 0
    )


class FairShare:
    """Tenants' recent usage, their weights, and the order that serves them fairly."""

    def __init__(
        self,
        weights: Mapping[str, float],
        half_life_s: float,
        now: float,
        default_weight: float = 1.0,
    ):
        self.weights = dict(weights)
        self.default_weight = default_weight
        self.half_life_s = half_life_s
        self._usage: dict[str, _Usage] = {}
        self._charged_at = now
        #: Job type -> its running estimate of how long a job runs.
        self._duration: dict[str, float] = {}

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, self.default_weight)

    def usage(self, tenant: str, now: float) -> float:
        """The tenant's decayed resource-seconds at ``now``."""
        entry = self._usage.get(tenant)
        if entry is None:
            return 0.0
        return entry.value * 0.5 ** ((now - entry.at) / self.half_life_s)

    def charge(self, now: float, holding: Iterable[tuple[str, float]]) -> None:
        """Charge each (tenant, cost per second) running since the last charge for the time
        in between: called every round with what runs now, it integrates what was held."""
        elapsed = max(0.0, now - self._charged_at)
        self._charged_at = now
        if elapsed <= 0:
            return
        for tenant, rate in holding:
            self._add(tenant, rate * elapsed, now)

    def ended(self, job_type: str, seconds: float) -> None:
        """A job of ``job_type`` ran ``seconds``: its type's estimate moves toward that."""
        known = self._duration.get(job_type)
        self._duration[job_type] = (
            seconds if known is None else known + DURATION_SMOOTHING * (seconds - known)
        )

    def expected_s(self, job_type: str) -> float:
        return self._duration.get(job_type, FIRST_GUESS_S)

    def order(self, candidates: Sequence[C], rate: Callable[[C], float], now: float) -> list[C]:
        """The candidates interleaved by tenant: each next place goes to the tenant with
        the least (usage + what it was given so far in this order) per weight, and to
        that tenant's next candidate in the given order. Ties go to whoever comes first."""
        lanes: dict[str, list[C]] = {}
        for candidate in candidates:
            lanes.setdefault(candidate.tenant, []).append(candidate)
        if len(lanes) <= 1:
            return list(candidates)
        heap: list[tuple[float, int, str]] = []
        first_seen = {tenant: i for i, tenant in enumerate(lanes)}
        for tenant in lanes:
            heap.append((self.usage(tenant, now) / self.weight(tenant), first_seen[tenant], tenant))
        heapq.heapify(heap)
        taken = dict.fromkeys(lanes, 0)
        ordered: list[C] = []
        while heap:
            share, rank, tenant = heapq.heappop(heap)
            lane = lanes[tenant]
            candidate = lane[taken[tenant]]
            taken[tenant] += 1
            ordered.append(candidate)
            if taken[tenant] < len(lane):
                given = rate(candidate) * self.expected_s(candidate.type) / self.weight(tenant)
                heapq.heappush(heap, (share + given, rank, tenant))
        return ordered

    def rank_tenants(self, tenants: Iterable[str], now: float) -> list[str]:
        """Tenants, the furthest below their share first (for reading the backlog of the
        most deserving first when many tenants wait)."""
        return sorted(tenants, key=lambda tenant: self.usage(tenant, now) / self.weight(tenant))

    def shares(self, now: float) -> dict[str, dict[str, float]]:
        """Each known tenant's usage and weight, for display."""
        return {
            tenant: {"usage_s": round(self.usage(tenant, now), 3), "weight": self.weight(tenant)}
            for tenant in sorted(self._usage)
        }

    def forget_below(self, now: float, floor: float = 1e-6) -> None:
        """Drop tenants whose usage has decayed to nothing (the table stays small)."""
        for tenant in [t for t in self._usage if self.usage(t, now) < floor]:
            del self._usage[tenant]

    def _add(self, tenant: str, amount: float, now: float) -> None:
        entry = self._usage.setdefault(tenant, _Usage(at=now))
        entry.value = self.usage(tenant, now) + amount
        entry.at = now
