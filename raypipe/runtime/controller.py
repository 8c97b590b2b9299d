"""The dispatcher's control loop step, over its named parts: each round records what the
runs reported, maintains leases, stops what must stop, fires schedules, sizes the pools
and claims what can start. No Ray here: the cluster and the clock are handed in."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from raypipe import metrics, registry
from raypipe.config import Settings
from raypipe.runtime.claim_pass import ClaimPass
from raypipe.runtime.cluster import Clock, Cluster
from raypipe.runtime.context import DispatchContext, log
from raypipe.runtime.launcher import Launcher
from raypipe.runtime.leases import Leases
from raypipe.runtime.pool_manager import PoolManager
from raypipe.runtime.recording import Recorder
from raypipe.runtime.runs import RunTable
from raypipe.runtime.schedules import ScheduleFiring
from raypipe.runtime.stopping import Stopper
from raypipe.store import DispatchStore, aging
from raypipe.store.tenants import TenantStore

#: How often the in-flight and queue gauges are refreshed (Ray exports every few seconds).
METRICS_INTERVAL_S = 5.0
#: Priority aging looks for jobs to raise this many times per bound.
AGING_CHECKS_PER_BOUND = 10


class Controller:
    """One dispatcher's state and decisions; :meth:`step` is one round."""

    def __init__(
        self,
        settings: Settings,
        store: DispatchStore,
        cluster: Cluster,
        clock: Clock,
        owner: str,
        owner_prefix: str,
    ):
        processors = {
            name: spec.configured(settings)
            for name, spec in registry.load(settings.processor_modules).items()
        }
        self.ctx = ctx = DispatchContext(settings, store, cluster, clock, owner, processors)
        self.runs = runs = RunTable()
        self.pools = PoolManager(ctx, runs)
        self.recorder = Recorder(ctx, runs, on_ended=lambda ends: self.claims.note_ended(ends))
        self.launcher = Launcher(ctx, runs, self.pools, self.recorder)
        self.claims = ClaimPass(ctx, runs, self.pools, self.launcher)
        self.stopper = Stopper(ctx, runs)
        self.leases = Leases(ctx, runs, self.recorder, owner_prefix)
        self.schedules = ScheduleFiring(ctx)
        #: Look for new work and cancellations at the next round.
        self.poked = True
        #: While draining: when the attempts still running are stopped and queued again.
        self.drain_until: float | None = None
        self.drained = threading.Event()
        self._next_metrics = 0.0
        self.tenants = TenantStore(store.engine)
        self._next_aging = 0.0
        self.pools.size(clock.monotonic())  # each pool's min_size, started before any round

    @property
    def counters(self) -> Counter[str]:
        return self.ctx.counters

    def poke(self) -> None:
        self.poked = True

    def begin_drain(self, grace_s: float) -> None:
        """Claim nothing more; past ``grace_s``, stop what still runs."""
        if self.drain_until is None:
            self.drain_until = self.ctx.clock.monotonic() + grace_s
            log.info("draining: claiming nothing, stopping what still runs in %gs", grace_s)
        self.poked = True

    def step(self) -> bool:
        """One round; returns whether there may be more to claim right away."""
        now = self.ctx.clock.monotonic()
        self.leases.maintain(now)
        self.recorder.record_reports()
        poked, self.poked = self.poked, False
        if poked:
            self.claims.skip = None  # new submissions, cancellations, or the polling fallback
            self.stopper.cancel_requested()
        firing = (poked or self.schedules.due(now)) and self.drain_until is None
        if firing and self.schedules.fire():
            self.claims.skip = None
        self.stopper.enforce_timeouts(now)
        if self.drain_until is not None:
            if now >= self.drain_until:
                self.stopper.drain()
            if not len(self.runs) and not self.runs.has_reports():
                self.drained.set()
            return False
        self.pools.size(now)
        more = self.claims.claim()
        if now >= self._next_metrics:
            self._next_metrics = now + METRICS_INTERVAL_S
            self._observe()
            self._read_weights(now)
        self._age(now)
        return more

    def wait_s(self) -> float:
        """How long the loop may wait for a wake-up before the next round: until the next
        timeout, forced stop, idle actor's expiry, retry or schedule instant, or the
        polling interval; 0 while starts or ends wait to be recorded."""
        waits = [self.ctx.settings.engine.poll_interval_s]
        now = self.ctx.clock.monotonic()
        if self.drain_until is not None and self.drain_until > now:
            waits.append(self.drain_until - now)
        for due in (self.stopper.next_deadline_in(now), self.pools.next_shrink_in(now)):
            if due is not None:
                waits.append(due)
        if self.ctx.next_due is not None:
            due_in = (self.ctx.next_due - self.ctx.clock.wall()).total_seconds()
            if due_in <= 0:
                self.ctx.next_due = None
            waits.append(due_in)
        return 0.0 if self.runs.has_reports() else min(waits)

    def info(self) -> dict[str, Any]:
        """What it runs and holds (read from another thread: collections are copied)."""
        running = self.runs.snapshot()
        fair = self.claims.fair
        return {
            "running": len(running),
            "started": sum(1 for run in running if run.started_at is not None),
            "pools": self.pools.info(),
            "unrunnable": dict(self.claims.unrunnable),
            "tenants": fair.shares(self.ctx.clock.monotonic()) if fair is not None else {},
        }

    def _age(self, now: float) -> None:
        """Raise the priority of jobs that waited a bound (a tenth of it apart at most)."""
        bound = self.ctx.settings.engine.priority_aging_s
        if bound is None or now < self._next_aging:
            return
        self._next_aging = now + bound / AGING_CHECKS_PER_BOUND
        raised = aging.age(self.ctx.store.engine, bound, self.ctx.clock.wall())
        if raised:
            self.ctx.counters["priority_aged"] += raised
            self.claims.skip = None  # a raised job may now come first

    def _read_weights(self, now: float) -> None:
        """Fair share's weights again (an admin may have set some), every few seconds;
        and forget the usage of tenants it has decayed to nothing."""
        fair = self.claims.fair
        if fair is not None:
            fair.weights = self.tenants.weights(self.ctx.settings.tenants.weights)
            fair.forget_below(now)

    def _observe(self) -> None:
        """Refresh the gauges: what this dispatcher runs, and every queue's depth and wait."""
        queues = self.ctx.settings.queues.keys()
        metrics.observe_in_flight((run.job for run in self.runs), queues)
        metrics.observe_queues(self.ctx.store.jobs.queue_stats(), queues)
