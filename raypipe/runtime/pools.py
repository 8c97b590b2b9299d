"""The dispatcher's pools of warm actors: what each holds, where its jobs go, its size."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raypipe.admission import PoolRoom, describe
from raypipe.config import PoolConfig, Settings
from raypipe.jobs import ClaimedJob

if TYPE_CHECKING:
    from raypipe.runtime.cluster import Cluster

#: Calls an actor takes besides attempts: stop requests, embedding calls, info.
CONTROL_CALLS = 1000


@dataclass(eq=False)
class Member:
    """One actor of a pool, and the jobs the dispatcher has in flight on it."""

    name: str
    handle: Any
    jobs: int = 0
    idle_since: float = field(default_factory=time.monotonic)


class Pool:
    """A named pool: creates and removes its actors (owned by the dispatcher, so they end
    with it) and sends jobs in calls of at most ``bundle`` jobs to the least busy actor.

    An actor holds up to ``slots_per_actor`` jobs: the bundles that keep its
    ``concurrency`` busy, plus ``prefetch`` bundles waiting there, so the next job starts
    without a dispatcher round trip. A job's slot is free again as soon as it ends."""

    def __init__(
        self,
        name: str,
        config: PoolConfig,
        settings: Settings,
        cluster_gpus: float,
        cluster: Cluster | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        #: Where its actors start and end (None: a pool only described, never run).
        self.cluster = cluster
        self.clock = clock
        self.config = config
        self.settings = settings
        running_bundles = math.ceil(config.concurrency / config.bundle)
        self.slots_per_actor = (running_bundles + config.prefetch) * config.bundle
        gpus = config.num_gpus
        if gpus is None:
            gpus = min(1.0, cluster_gpus) if cluster_gpus > 0 else 0.0
        actor = {"CPU": config.num_cpus, "GPU": gpus, **config.resources}
        if config.memory:
            actor["memory"] = float(config.memory)
        self.actor = {key: amount for key, amount in actor.items() if amount}
        self.members: dict[str, Member] = {}

    def room(self) -> PoolRoom:
        return PoolRoom(
            size=len(self.members),
            max_size=self.config.max_size,
            free_slots=sum(self._free(m) for m in self.members.values()),
            slots_per_actor=self.slots_per_actor,
            actor=self.actor,
        )

    def _free(self, member: Member) -> int:
        return max(0, self.slots_per_actor - member.jobs)

    def holds(self) -> dict[str, float]:
        return {key: amount * len(self.members) for key, amount in self.actor.items()}

    def add(self) -> Member:
        assert self.cluster is not None, "a pool without a cluster starts no actors"
        name = f"raypipe-pool-{self.name}-{uuid.uuid4().hex[:8]}"
        options: dict[str, Any] = {
            "namespace": self.settings.namespace,
            "num_cpus": self.config.num_cpus,
            "num_gpus": self.actor.get("GPU", 0.0),
            "max_restarts": 0,  # the dispatcher replaces a dead actor; Ray must not rerun jobs
            # A call per job at most, besides the control calls.
            "max_concurrency": self.slots_per_actor + CONTROL_CALLS,
        }
        if self.config.memory:
            options["memory"] = self.config.memory
        if self.config.resources:
            options["resources"] = dict(self.config.resources)
        member = Member(name, self.cluster.start_actor(self.name, name, options), 0, self.clock())
        self.members[name] = member
        return member

    def remove(self, member: Member) -> None:
        """Kill the actor (its running calls end with an actor error) and forget it."""
        if self.members.pop(member.name, None) is not None and self.cluster is not None:
            self.cluster.kill_actor(member.handle)

    def forget(self, member: Member) -> None:
        """The actor died by itself."""
        self.members.pop(member.name, None)

    def place(self, jobs: list[ClaimedJob]) -> list[tuple[Member, list[ClaimedJob]]]:
        """Calls of at most ``bundle`` of ``jobs``, each to the actor with the most free
        slots, as many as it has (admission has made sure the pool has enough)."""
        calls = []
        at = 0
        while at < len(jobs):
            member = max(self.members.values(), key=self._free)
            bundle = jobs[at : at + max(1, min(self.config.bundle, self._free(member)))]
            member.jobs += len(bundle)
            calls.append((member, bundle))
            at += len(bundle)
        return calls

    def release(self, member: Member, jobs: int = 1) -> None:
        """``jobs`` of the member's ended (or their call did)."""
        member.jobs -= jobs
        if member.jobs == 0:
            member.idle_since = self.clock()

    def idle(self) -> list[Member]:
        return [m for m in self.members.values() if m.jobs == 0]

    def expired(self, now: float) -> list[Member]:
        """Idle actors past ``idle_s``, as many as may go above ``min_size``."""
        spare = len(self.members) - self.config.min_size
        old = [m for m in self.idle() if now - m.idle_since >= self.config.idle_s]
        return old[: max(spare, 0)]

    def handles(self) -> list[Any]:
        return [m.handle for m in self.members.values()]

    def info(self) -> dict[str, Any]:
        members = list(self.members.values())  # one step: the dispatcher's loop may change it
        return {
            "size": len(members),
            "busy": sum(1 for m in members if m.jobs),
            "jobs": sum(m.jobs for m in members),
            "per_actor": describe(self.actor) or "nothing",
            "actors": sorted(m.name for m in members),
        }


def unsatisfiable(settings: Settings, cluster: Mapping[str, float]) -> list[str]:
    """Pool settings this cluster can never honour (``min_size`` actors beyond its size),
    one line each naming the setting."""
    problems = []
    need: dict[str, float] = {}
    for name, config in settings.pools.items():
        pool = Pool(name, config, settings, cluster.get("GPU", 0.0))
        for key, amount in pool.actor.items():
            total = amount * config.min_size
            need[key] = need.get(key, 0.0) + total
            if total > cluster.get(key, 0.0):
                problems.append(
                    f"pools.{name}.min_size={config.min_size} needs {describe({key: total})},"
                    f" the cluster has {describe({key: cluster.get(key, 0.0)})}"
                )
    if not problems:
        over = {k: v for k, v in need.items() if v > cluster.get(k, 0.0)}
        if over:
            problems.append(
                f"the pools' min_size together need {describe(over)}, more than the cluster has"
            )
    return problems
