"""The claim pass: admits what can start now (against free resources, queue limits, pool
slots and a small prefetch), writes what the rest waits for, and hands what waits for
resources to the autoscaler. A pass that could admit nothing leaves a :class:`ClaimSkip`:
until the room grows, or the candidates may have changed, the next pass is skipped."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from raypipe import admission, metrics
from raypipe.fair_share import FairShare, cost_rate
from raypipe.flow_control import (
    FlowControl,
    FlowLimits,
    FlowPass,
    FlowState,
    KeyPair,
    key_message,
    run_message,
)
from raypipe.jobs import ClaimedJob, JobStatus
from raypipe.runtime.context import DispatchContext, log
from raypipe.runtime.launcher import Launcher
from raypipe.runtime.pool_manager import PoolManager
from raypipe.runtime.runs import RunTable
from raypipe.store import Candidate

#: Resource shapes asked of the autoscaler at most (the first waiting jobs').
MAX_REQUESTED = 100
#: Waiting messages remembered (so each is written once); forgotten all at once beyond.
WAITING_KEPT = 100_000


@dataclass
class ClaimSkip:
    """A claim pass after which nothing more could start: the room it left, the queues it
    left full, what its candidates lacked and which pools they wanted (for idle actors to
    yield), and until when it holds."""

    room_left: admission.Room
    full_queues: set[str]
    short: set[str]
    wanted_pools: set[str]
    until: float


@dataclass
class ClaimPass:
    ctx: DispatchContext
    runs: RunTable
    pools: PoolManager
    launcher: Launcher
    skip: ClaimSkip | None = None
    #: Job type -> why it can never start on this cluster.
    unrunnable: dict[str, str] = field(default_factory=dict)
    #: Job id -> what it waits for, as last written.
    waiting: dict[str, str] = field(default_factory=dict)
    needs: dict[str, admission.Need] = field(default_factory=dict)
    #: Shapes last asked of the autoscaler (None: what an earlier incarnation asked for is
    #: unknown, so the first pass says).
    requested: list[tuple[tuple[str, float], ...]] | None = None
    #: Tenants' recent use and weights (None: fair share off, first come first served).
    fair: FairShare | None = None
    #: Concurrency keys' and run limits' limits, and what the latest claim read of them.
    flow: FlowControl = field(init=False)
    #: Saturated (tenant, queue, key) -> the message its unread jobs were given (and the
    #: types read all the same, which were not).
    key_waiting: dict[KeyPair, tuple[str, frozenset[str]]] = field(default_factory=dict)
    #: Full run key -> the message its unread jobs were given, and when.
    run_waiting: dict[str, tuple[str, datetime]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.flow = FlowControl(FlowLimits.of(self.ctx.settings, self.ctx.processors))
        tenants = self.ctx.settings.tenants
        if tenants.fair_share:
            self.fair = FairShare(
                tenants.weights, tenants.usage_half_life_s, self.ctx.clock.monotonic()
            )

    def note_ended(self, ends: Sequence[metrics.Ended]) -> None:
        """A retry is a new candidate; a full queue has a slot again: no skip holds. What
        each job ran teaches fair share how long its type runs."""
        if self.fair is not None:
            for end in ends:
                if end.duration_s:
                    self.fair.ended(end.job.type, end.duration_s)
        skip = self.skip
        if skip is not None and any(
            end.outcome.status is JobStatus.QUEUED or end.job.queue in skip.full_queues
            for end in ends
        ):
            self.skip = None

    def claim(self) -> bool:
        """Admit what can start now; the rest stays queued, saying what it waits for.
        Returns whether there may be more to claim right away."""
        settings = self.ctx.settings
        slots = settings.engine.max_in_flight - len(self.runs)
        if slots <= 0:
            return False
        capacity = self.ctx.capacity()
        self._charge(capacity)
        free = self.pools.free(capacity)
        # A small, counted prefetch: a few tasks may wait in Ray's queue, to start the moment
        # a running job frees its share instead of a dispatcher round later.
        prefetch = max(1, math.ceil(settings.engine.task_prefetch * capacity.get("CPU", 0.0)))
        prefetch -= len(self.waiting_in_ray())
        rooms = self.pools.rooms()
        limit = min(slots, settings.engine.claim_batch)
        skip = self.skip
        if (
            skip is not None
            and self.ctx.clock.monotonic() < skip.until
            and admission.Room.of(free, prefetch, rooms).within(skip.room_left)
        ):
            # Nothing that waited at the last pass can start now: skip reading the backlog.
            self.ctx.counters["claims_skipped"] += 1
            claimed: list[ClaimedJob] = []
            short, wanted = set(skip.short), skip.wanted_pools
        else:
            claimed, short, wanted = self._claim_from(free, capacity, prefetch, rooms, limit)
        yielded = self.pools.yield_to(short, wanted, self.waiting_in_ray())
        return len(claimed) == limit or yielded > 0

    def waiting_in_ray(self) -> list[str]:
        """Admitted tasks not begun yet: the prefetch in Ray's queue (or starting)."""
        return [run.job.id for run in self.runs if run.call.pool is None and run.started_at is None]

    def _claim_from(
        self,
        free: dict[str, float],
        capacity: dict[str, float],
        prefetch: int,
        rooms: dict[str, admission.PoolRoom],
        limit: int,
    ) -> tuple[list[ClaimedJob], set[str], set[str]]:
        """Read the backlog, admit up to ``limit`` jobs that fit and launch them;
        (claimed, short of, wanted)."""
        plans: list[tuple[admission.Plan, set[str], bool]] = []
        fair, now = self.fair, self.ctx.clock.monotonic()
        flow = self.flow
        passes: list[FlowPass] = []

        rate_of = self._rates(capacity)

        def rate(candidate: Candidate) -> float:
            return rate_of(candidate.type)

        def choose(candidates: Sequence[Candidate], queue_free: dict[str, int]) -> list[Any]:
            if fair is not None:
                candidates = fair.order(candidates, rate, now)
            if flow.state is not None:
                passes.append(FlowPass(flow.limits, flow.state))
            plan = admission.plan(
                candidates,
                queue_free,
                free,
                capacity,
                rooms,
                self.need,
                limit,
                prefetch,
                passes[-1] if passes else None,
            )
            wanted: set[str] = set()
            for candidate in candidates:
                need = self.need(candidate.type)
                wanted.update((need.pool, *need.uses) if need.pool else need.uses)
            # A queue read to its limit may hold more rows, out of sight behind the chosen.
            read = Counter(candidate.queue for candidate in candidates)
            cut = any(read[q] >= min(n, limit) for q, n in queue_free.items() if n > 0)
            plans.append((plan, wanted, cut))
            return plan.chosen

        settings = self.ctx.settings
        queue_limits = {name: q.concurrency for name, q in settings.queues.items()}
        rank = None if fair is None else (lambda tenants: fair.rank_tenants(tenants, now))
        flow.state = None
        claimed = self.ctx.store.claim(
            self.ctx.owner, settings.engine.lease_ttl_s, queue_limits, choose, limit, rank, flow
        )
        plan, wanted, cut = plans[-1] if plans else (admission.Plan(), set(), True)
        self.pools.grow(plan.grow)
        self.launcher.launch(claimed)
        self.ctx.counters["claimed"] += len(claimed)
        self._note_waiting(plan, claimed)
        wake = self._note_held_back(flow.state, passes[-1] if passes else None)
        self._ask_autoscaler(plan.demand)
        self.skip = None
        if plan.left is not None and len(claimed) == len(plan.chosen) and not (cut and claimed):
            until = self.ctx.clock.monotonic() + settings.engine.poll_interval_s
            if wake is not None and flow.state is not None:
                # A run key's next free start is a candidate that changed.
                until = min(until, now + (wake - flow.state.now).total_seconds())
            self.skip = ClaimSkip(plan.left, plan.full, set(plan.short), wanted, until)
        return claimed, set(plan.short), wanted

    def _charge(self, capacity: dict[str, float]) -> None:
        """Charge each tenant for what its running jobs held since the last pass."""
        if self.fair is not None:
            rate_of = self._rates(capacity)
            self.fair.charge(
                self.ctx.clock.monotonic(),
                (
                    (run.job.tenant, rate_of(run.job.type))
                    for run in self.runs
                    if run.started_at is not None and run.ended_at is None
                ),
            )

    def _rates(self, capacity: dict[str, float]) -> Callable[[str], float]:
        """What one running job of a type costs per second (its own resources, or on a
        pool its share of an actor), worked out once per type for this pass: a pass asks
        it of every run and every candidate."""
        rates: dict[str, float] = {}

        def rate_of(job_type: str) -> float:
            rate = rates.get(job_type)
            if rate is None:
                need = self.need(job_type)
                pool = self.pools.pools.get(need.pool) if need.pool else None
                if pool is None:
                    rate = cost_rate(need.resources, capacity)
                else:
                    rate = cost_rate(pool.actor, capacity) / max(1, pool.slots_per_actor)
                rates[job_type] = rate
            return rate

        return rate_of

    def need(self, job_type: str) -> admission.Need:
        """What a job of this type needs to start (fixed per type: worked out once)."""
        need = self.needs.get(job_type)
        if need is None:
            need = self.needs[job_type] = self._need_of(job_type)
        return need

    def _need_of(self, job_type: str) -> admission.Need:
        spec = self.ctx.processors.get(job_type)
        pools = self.pools.pools
        if spec is None or (spec.pool is not None and spec.pool not in pools):
            return admission.Need()  # admitted at once, and failed with the reason
        uses = tuple(name for name in spec.uses if name in pools)
        if spec.pool is not None:
            return admission.Need(pool=spec.pool, uses=uses)
        return admission.Need(resources=spec.demand(), uses=uses)

    def _note_waiting(self, plan: admission.Plan, claimed: list[ClaimedJob]) -> None:
        """Write what each job left queued waits for, once per change."""
        for job in claimed:
            self.waiting.pop(job.id, None)
        changes = {
            job_id: message
            for job_id, message in plan.waiting.items()
            if self.waiting.get(job_id) != message
        }
        if changes:
            self.ctx.store.set_waiting(changes)
            if len(self.waiting) > WAITING_KEPT:
                self.waiting.clear()
            self.waiting.update(changes)
        for job_type, reason in plan.impossible.items():
            if self.unrunnable.get(job_type) != reason:
                log.warning("%s jobs cannot start on this cluster: %s", job_type, reason)
        self.unrunnable = dict(plan.impossible)

    def _note_held_back(self, state: FlowState | None, flow: FlowPass | None) -> datetime | None:
        """Write why the jobs the claim left unread wait (saturated concurrency keys, full
        or paused run keys), and have the loop wake when a run key frees a start, which
        it returns. A pair's message is written once per saturation; a run key's when it
        changes, at most once per shortest window (its time moves with every start)."""
        if state is None:
            return None
        limits = self.flow.limits
        pairs = {
            pair: (
                key_message(pair[2], state.held[pair], limits.queue_key_limit.get(pair[1], 1)),
                allowed,
            )
            for pair, allowed in state.saturated(limits).items()
        }
        full = state.full_run_keys(limits)
        runs = {key: run_message(key, at, state.paused.get(key) == at) for key, at in full.items()}
        every = timedelta(seconds=min(limits.windows, default=0.0))
        due = {
            key: message
            for key, message in runs.items()
            if key not in self.run_waiting
            or (
                self.run_waiting[key][0] != message
                and state.now - self.run_waiting[key][1] >= every
            )
        }
        self.ctx.store.set_held_back(
            {pair: m for pair, m in pairs.items() if self.key_waiting.get(pair) != m}, due
        )
        self.key_waiting = pairs
        self.run_waiting.update((key, (message, state.now)) for key, message in due.items())
        wakes = [*full.values(), *([flow.next_free] if flow and flow.next_free else [])]
        if not wakes:
            return None
        wake = min(wakes)
        self.ctx.due_at(wake)
        return wake

    def _ask_autoscaler(self, demand: list[dict[str, float]]) -> None:
        """Hand what waits for resources to Ray's autoscaler (it starts nodes for it, from
        zero if need be), and withdraw it once nothing waits; only changes are sent."""
        shapes = sorted(tuple(sorted(bundle.items())) for bundle in demand[:MAX_REQUESTED])
        if shapes != self.requested:
            self.ctx.cluster.request_resources([dict(shape) for shape in shapes])
            self.requested = shapes
