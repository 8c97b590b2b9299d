"""Which runnable jobs may start now: a pure function of candidates, free resources and pools.

Admission is against what can really start: the cluster's capacity minus what raypipe's
own actors and running jobs hold. A job that does not fit is not handed to Ray; it stays
queued with a message saying what it waits for, so priorities, pauses and cancellations
keep acting on the whole backlog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from raypipe.flow_control import FlowPass, Keyed
from raypipe.lifecycle import WAITING_PREFIX

#: What a prefetched task may be short of: CPUs, which turn over fast. Scarcer resources
#: (GPUs, memory, custom ones) are waited for in the database, and asked of the autoscaler.
PREFETCHED = frozenset({"CPU"})
#: Resources shown in bytes by Ray, shown in GiB to people.
BYTE_RESOURCES = frozenset({"memory", "object_store_memory"})
#: Slack when comparing fractional resource amounts (0.1 + 0.2 CPUs and the like).
EPSILON = 1e-9


class ClaimCandidate(Keyed, Protocol):
    """What admission reads of a candidate (read-only: candidates are frozen): what flow
    control reads, and its id."""

    @property
    def id(self) -> str: ...


C = TypeVar("C", bound=ClaimCandidate)


@dataclass(frozen=True)
class Need:
    """What one job of a type needs to start."""

    #: Held by the job itself while it runs (a task's CPUs, GPUs, memory…).
    resources: Mapping[str, float] = field(default_factory=dict)
    #: The pool whose actors run it; it needs a free slot there (or room for one more actor).
    pool: str | None = None
    #: Pools it calls into while running: each needs at least one actor.
    uses: tuple[str, ...] = ()


@dataclass
class PoolRoom:
    """A pool as admission sees it."""

    size: int
    max_size: int | None
    free_slots: int
    slots_per_actor: int
    #: What one more actor would hold.
    actor: Mapping[str, float]

    def can_grow(self) -> bool:
        return self.max_size is None or self.size < self.max_size


@dataclass(frozen=True)
class Room:
    """What admission has to give out: free resources, prefetch places, and each pool's
    (size, free slots)."""

    free: Mapping[str, float]
    prefetch: int
    pools: Mapping[str, tuple[int, int]]

    @classmethod
    def of(cls, free: Mapping[str, float], prefetch: int, pools: Mapping[str, PoolRoom]) -> Room:
        return cls(dict(free), prefetch, {n: (r.size, r.free_slots) for n, r in pools.items()})

    def within(self, other: Room) -> bool:
        """Whether nothing here exceeds ``other``. Admission only admits more as free
        resources, prefetch places and free slots grow, so candidates that all waited in
        ``other`` all wait here too. A pool whose size changed changes what its users need
        (an actor to start or not): that is never within."""
        return (
            self.prefetch <= other.prefetch
            and all(amount <= other.free.get(n, 0.0) + EPSILON for n, amount in self.free.items())
            and self.pools.keys() == other.pools.keys()
            and all(
                size == other.pools[n][0] and slots <= other.pools[n][1]
                for n, (size, slots) in self.pools.items()
            )
        )


@dataclass
class Plan:
    """The outcome of one admission pass."""

    chosen: list[ClaimCandidate] = field(default_factory=list)
    #: Pool -> actors to add for the chosen jobs.
    grow: dict[str, int] = field(default_factory=dict)
    #: Candidate id -> what it waits for ("waiting for 1 CPU").
    waiting: dict[str, str] = field(default_factory=dict)
    #: Resources some candidate lacked that this cluster has: idle actors holding them yield.
    short: set[str] = field(default_factory=set)
    #: Job type -> why it can never start on this cluster (more than its capacity).
    impossible: dict[str, str] = field(default_factory=dict)
    #: What each candidate left waiting for resources needs in all: for the autoscaler.
    demand: list[dict[str, float]] = field(default_factory=list)
    #: The room left once every candidate was weighed (None when ``max_jobs`` cut the pass
    #: short): until the room grows, or the candidates change, no other pass admits more.
    left: Room | None = None
    #: Queues left without a free slot.
    full: set[str] = field(default_factory=set)


def plan(
    candidates: Sequence[C],
    queue_free: Mapping[str, int],
    free: Mapping[str, float],
    capacity: Mapping[str, float],
    pools: Mapping[str, PoolRoom],
    need_of: Callable[[str], Need],
    max_jobs: int,
    prefetch: int = 0,
    flow: FlowPass | None = None,
) -> Plan:
    """Take candidates in the order given (highest priority, then oldest) while they fit.

    A candidate fits when its queue has a free slot and what it needs is left in
    ``free``: its own resources, plus one more actor of its pool when the pool has no
    free slot, plus one actor of each pool it uses that has none. Besides, up to
    ``prefetch`` tasks short only of CPUs the cluster has may be admitted to wait in
    Ray's queue (new actors never are). A job that does not fit is
    skipped, so smaller jobs behind it may still start (backfilling). With ``flow``, a
    candidate whose concurrency key or run limit is full waits too, and each one
    admitted counts against its keys for the candidates after it.
    """
    slots = dict(queue_free)
    left = dict(free)
    rooms = {name: PoolRoom(**vars(room)) for name, room in pools.items()}
    result = Plan()
    for candidate in candidates:
        if len(result.chosen) >= max_jobs:
            break
        if slots.get(candidate.queue, 0) <= 0:
            continue
        held_back = flow.held_back(candidate) if flow is not None else None
        if held_back is not None:
            result.waiting[candidate.id] = held_back
            continue
        need = need_of(candidate.type)
        grown: list[str] = []
        room = rooms.get(need.pool) if need.pool else None
        if room is not None and room.free_slots <= 0:
            if not room.can_grow():
                result.waiting[candidate.id] = f"{WAITING_PREFIX} a free worker of pool {need.pool}"
                continue
            grown.append(need.pool or "")
        for used in need.uses:
            used_room = rooms.get(used)
            if used_room is not None and used_room.size == 0 and used not in grown:
                grown.append(used)
        actors: dict[str, float] = {}
        for name in grown:
            _add(actors, rooms[name].actor)
        required = dict(actors)
        _add(required, need.resources)
        missing = {n: amount for n, amount in required.items() if left.get(n, 0.0) < amount}
        if (
            missing
            and prefetch > 0
            and need.pool is None
            and set(missing) <= PREFETCHED
            and all(left.get(n, 0.0) >= amount for n, amount in actors.items())
            and all(capacity.get(n, 0.0) >= amount for n, amount in required.items())
        ):
            prefetch -= 1  # it waits in Ray's queue, counted in what running jobs hold
            missing = {}
        if missing:
            result.waiting[candidate.id] = waiting_message(missing, capacity)
            result.demand.append(required)
            if any(capacity.get(name, 0.0) < amount for name, amount in missing.items()):
                result.impossible[candidate.type] = result.waiting[candidate.id]
            else:  # only what freeing resources here could cure
                result.short.update(missing)
            continue
        for name, amount in required.items():
            left[name] = left.get(name, 0.0) - amount
        for name in grown:
            grown_room = rooms[name]
            grown_room.size += 1
            grown_room.free_slots += grown_room.slots_per_actor
            result.grow[name] = result.grow.get(name, 0) + 1
        if room is not None:
            room.free_slots -= 1
        slots[candidate.queue] -= 1
        if flow is not None:
            flow.admit(candidate)
        result.chosen.append(candidate)
    else:
        result.left = Room.of(left, prefetch, rooms)
    result.full = {queue for queue, free_slots in slots.items() if free_slots <= 0}
    return result


def free_resources(
    capacity: Mapping[str, float], held: Iterable[Mapping[str, float]]
) -> dict[str, float]:
    """The cluster's capacity minus what raypipe's actors and running jobs hold."""
    free = dict(capacity)
    for amounts in held:
        for name, amount in amounts.items():
            free[name] = free.get(name, 0.0) - amount
    return free


def waiting_message(missing: Mapping[str, float], capacity: Mapping[str, float]) -> str:
    """ "waiting for 1 CPU", and why it never will when the cluster is too small for it."""
    message = f"{WAITING_PREFIX} {describe(missing)}"
    beyond = [name for name, amount in missing.items() if capacity.get(name, 0.0) < amount]
    for name in beyond:
        if capacity.get(name, 0.0) <= 0:
            message += f"; no node has {name}"
        else:
            message += f"; the cluster has {describe({name: capacity[name]})} in all"
    return message


def describe(amounts: Mapping[str, float]) -> str:
    """Resource amounts as people read them: "1 CPU, 0.5 GPU, 2.0 GiB memory"."""
    parts = []
    for name, amount in sorted(amounts.items(), key=lambda item: _ORDER.get(item[0], 9)):
        if name in BYTE_RESOURCES:
            parts.append(f"{amount / 2**30:.1f} GiB {name}")
        else:
            parts.append(f"{amount:g} {name}")
    return ", ".join(parts)


_ORDER = {"CPU": 0, "GPU": 1, "memory": 2}


def _add(into: dict[str, float], amounts: Mapping[str, float]) -> None:
    for name, amount in amounts.items():
        into[name] = into.get(name, 0.0) + amount
