"""All pool policy: when a pool grows (with the depth of its backlog), shrinks (idle past
its ``idle_s``), yields an idle actor to other work, and is refilled to its ``min_size``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from raypipe import admission
from raypipe.runtime.context import DispatchContext
from raypipe.runtime.pools import Pool
from raypipe.runtime.runs import RunTable

#: How long an actor must have been idle before it yields to other work: in a mixed stream
#: the next job for its pool is often a moment away, and a new actor costs a process start.
YIELD_AFTER_S = 1.0


class PoolManager:
    """The dispatcher's pools, sized against its runs and the cluster's free resources."""

    def __init__(self, ctx: DispatchContext, runs: RunTable):
        self.ctx = ctx
        self.runs = runs
        gpus = float(ctx.cluster.resources().get("GPU", 0.0))
        self.pools = {
            name: Pool(name, config, ctx.settings, gpus, ctx.cluster, ctx.clock.monotonic)
            for name, config in ctx.settings.pools.items()
        }
        #: Prefetched tasks not begun that an idle actor has already yielded its share to.
        self._served: set[str] = set()

    def in_use(self) -> set[str]:
        """Pools that running tasks call into (their actors must stay)."""
        return {name for run in self.runs for name in run.uses}

    def free(self, capacity: Mapping[str, float]) -> dict[str, float]:
        """What neither raypipe's actors nor its running jobs hold."""
        return admission.free_resources(
            capacity,
            [pool.holds() for pool in self.pools.values()] + [run.held for run in self.runs],
        )

    def rooms(self) -> dict[str, admission.PoolRoom]:
        return {name: pool.room() for name, pool in self.pools.items()}

    def handles(self, names: Iterable[str]) -> dict[str, list[Any]]:
        """The actors of these pools (those configured), for attempts that call into them."""
        return {name: self.pools[name].handles() for name in names if name in self.pools}

    def grow(self, actors: Mapping[str, int]) -> None:
        """Start the actors admission counted on for the jobs it chose."""
        for name, count in actors.items():
            for _ in range(count):
                self.pools[name].add()

    def size(self, now: float) -> None:
        """Remove actors idle past their pool's ``idle_s``; bring a pool that lost actors
        (one died, or was replaced) back to its ``min_size`` as resources allow."""
        in_use = self.in_use()
        for name, pool in self.pools.items():
            if name not in in_use:
                for member in pool.expired(now):
                    pool.remove(member)
                    self.ctx.counters["pool_shrunk"] += 1
        below = [pool for pool in self.pools.values() if len(pool.members) < pool.config.min_size]
        if not below:
            return
        free = self.free(self.ctx.capacity())
        for pool in below:
            while len(pool.members) < pool.config.min_size and all(
                free.get(name, 0.0) + admission.EPSILON >= amount
                for name, amount in pool.actor.items()
            ):
                pool.add()
                free = admission.free_resources(free, [pool.actor])
                self.ctx.counters["pool_refilled"] += 1

    def next_shrink_in(self, now: float) -> float | None:
        """Seconds until the next idle actor may be removed (None: none may)."""
        soonest: float | None = None
        in_use = self.in_use()
        for name, pool in self.pools.items():
            if name not in in_use and len(pool.members) > pool.config.min_size:
                for member in pool.idle():
                    due = member.idle_since + pool.config.idle_s - now
                    soonest = due if soonest is None else min(soonest, due)
        return soonest

    def yield_to(self, short: set[str], wanted: set[str], waiting_in_ray: list[str]) -> int:
        """Let idle actors give up what queued work lacks (``short``) and what prefetched
        tasks waiting in Ray's queue lack (a CPU each, served once: the task may not have
        begun by the next round, and one actor's share is its); returns how many yielded."""
        self._served &= set(waiting_in_ray)
        unserved = [job_id for job_id in waiting_in_ray if job_id not in self._served]
        if unserved:
            short = short | {"CPU"}
        yielded = self._yield_idle(short, wanted)
        self._served.update(unserved[:yielded])
        return yielded

    def _yield_idle(self, short: set[str], wanted: set[str]) -> int:
        """An actor idle for a moment (``YIELD_AFTER_S``, not its idle time) gives up what
        queued work lacks, unless that work is its own pool's or its pool is at its
        ``min_size`` (kept loaded, as asked)."""
        yielded = 0
        now = self.ctx.clock.monotonic()
        in_use = self.in_use()
        for name, pool in self.pools.items():
            if name in wanted or name in in_use or not short & set(pool.actor):
                continue
            idle = [m for m in pool.idle() if now - m.idle_since >= YIELD_AFTER_S]
            if idle and len(pool.members) > pool.config.min_size:
                pool.remove(idle[0])
                self.ctx.counters["pool_yielded"] += 1
                yielded += 1
        return yielded

    def info(self) -> dict[str, Any]:
        return {name: pool.info() for name, pool in self.pools.items()}
