"""Which runnable jobs to start now: a pure function of candidates, queue slots and resources."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol


class ClaimCandidate(Protocol):
    type: str
    queue: str
    priority: int


def choose_claims(
    candidates: Sequence[ClaimCandidate],
    queue_free: Mapping[str, int],
    budget: Mapping[str, float],
    demand_of: Callable[[str], Mapping[str, float]],
    max_jobs: int,
) -> list[ClaimCandidate]:
    """Take candidates in the order given (highest priority, then oldest) while they fit.

    A candidate fits when its queue has a free slot and every resource it needs is
    left in ``budget``. A job that does not fit is skipped, so smaller jobs behind
    it may still start (backfilling), but never one from a full queue.
    """
    free = dict(queue_free)
    left = dict(budget)
    chosen: list[ClaimCandidate] = []
    for candidate in candidates:
        if len(chosen) >= max_jobs:
            break
        if free.get(candidate.queue, 0) <= 0:
            continue
        demand = demand_of(candidate.type)
        if any(left.get(name, 0.0) < amount for name, amount in demand.items()):
            continue
        for name, amount in demand.items():
            left[name] -= amount
        free[candidate.queue] -= 1
        chosen.append(candidate)
    return chosen


def resource_budget(
    cluster: Mapping[str, float],
    in_flight: Sequence[Mapping[str, float]],
    oversubscription: float,
) -> dict[str, float]:
    """What may still be handed to Ray: the cluster's totals times ``oversubscription``,
    minus what raypipe's running jobs hold.

    A little oversubscription keeps Ray's own queue fed between dispatcher rounds;
    keeping it bounded is what keeps priorities meaningful.
    """
    budget = {name: amount * oversubscription for name, amount in cluster.items()}
    for demand in in_flight:
        for name, amount in demand.items():
            budget[name] = budget.get(name, 0.0) - amount
    return budget
