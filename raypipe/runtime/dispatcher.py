"""The dispatcher: admits jobs from the database, runs them as Ray tasks or on pools of warm
actors, and records how they start and end."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import ray
from ray.autoscaler.sdk import request_resources
from ray.exceptions import RayActorError, RayError, TaskCancelledError

from raypipe import admission, exceptions, metrics, registry, tracing
from raypipe.config import Settings
from raypipe.job_logs import job_fields
from raypipe.jobs import (
    CANCELLED_ON_REQUEST,
    AttemptStatus,
    ClaimedJob,
    ErrorInfo,
    JobRecord,
    JobStatus,
    Outcome,
)
from raypipe.registry import ProcessorSpec
from raypipe.retry import ErrorKind, failure_outcome
from raypipe.runtime.executor import AttemptResult, Event, Started, default_policy, run_task
from raypipe.runtime.names import DISPATCHER_ACTOR, PROGRESS_ACTOR
from raypipe.runtime.pools import Member, Pool
from raypipe.store import Candidate, DispatchStore, schema_version
from raypipe.store.schedules import ScheduleStore

log = logging.getLogger(__name__)


def _claim_span(job: ClaimedJob) -> ClaimedJob:
    """The claim as a span of the job's trace (when it has one); the attempt continues
    from it."""
    if job.trace_parent is None:
        return job
    fields = job_fields(job.id, job.attempt, job.type, job.queue, job.tenant)
    with tracing.span(
        f"claim {job.type}", parent=job.trace_parent, attributes=tracing.attributes(fields)
    ):
        return dataclasses.replace(job, trace_parent=tracing.current_parent())


def _log_failure(end: metrics.Ended) -> None:
    """One line per failed attempt, with the job's fields (the JSON logs' filters)."""
    outcome, error = end.outcome, end.outcome.error
    assert error is not None
    then = "retried" if outcome.status is JobStatus.QUEUED else outcome.status.value
    log.log(
        logging.WARNING if outcome.status is JobStatus.FAILED else logging.INFO,
        "job %s attempt %d %s, %s: %s: %s",
        outcome.job_id,
        outcome.attempt,
        outcome.final_attempt_status.value,
        then,
        error.type,
        error.message,
        extra=job_fields(
            outcome.job_id, outcome.attempt, end.job.type, end.job.queue, end.job.tenant
        ),
    )


#: How long a read of the cluster's resources is reused.
CLUSTER_RESOURCES_TTL_S = 5.0
#: Longest pause after a failing round (database down, say) before trying again.
MAX_ERROR_BACKOFF_S = 10.0
#: How often the in-flight and queue gauges are refreshed (Ray exports every few seconds).
METRICS_INTERVAL_S = 5.0
#: How long an actor must have been idle before it yields to other work: in a mixed stream
#: the next job for its pool is often a moment away, and a new actor costs a process start.
YIELD_AFTER_S = 1.0
#: Resource shapes asked of the autoscaler at most (the first waiting jobs').
MAX_REQUESTED = 100
#: Waiting messages remembered (so each is written once); forgotten all at once beyond.
WAITING_KEPT = 100_000
#: How long a drain waits beyond its grace and the cancel grace for the last outcomes.
DRAIN_MARGIN_S = 30.0


@dataclass(eq=False)
class _Call:
    """One stream of attempt events: a Ray task (one job) or a pool call (a bundle)."""

    stream: Any
    job_ids: list[str]
    pool: Pool | None = None
    member: Member | None = None
    #: Jobs of a pool call whose actor slot is still taken (freed as each one ends).
    holding: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.holding = set(self.job_ids) if self.member is not None else set()

    def release(self, job_ids: Sequence[str]) -> None:
        """Free the actor slots of these jobs of the call (each once)."""
        if self.pool is not None and self.member is not None:
            ended = self.holding.intersection(job_ids)
            if ended:
                self.holding -= ended
                self.pool.release(self.member, len(ended))


@dataclass
class _Blocked:
    """A claim pass after which nothing more could start: the room it left, the queues it
    left full, and what it lacked (for idle actors to yield). Until the room grows, or the
    candidates may have changed, a new pass would admit nothing, and is skipped."""

    left: admission.Room
    full: set[str]
    short: set[str]
    wanted: set[str]
    until: float


@dataclass
class _Running:
    job: ClaimedJob
    call: _Call
    #: What the job itself holds while in flight (a task's resources; nothing on a pool).
    held: dict[str, float]
    uses: tuple[str, ...]
    claimed: float
    started: float | None = None
    deadline: float | None = None
    ended: float | None = None
    result: Any = None
    error: BaseException | None = None
    stop: Outcome | None = None
    force_at: float | None = None


class Dispatcher:
    """Runs inside a named, detached Ray actor that Ray restarts when it dies.

    Its loop lives on a thread of its own (started in ``__init__``, so a restarted
    actor resumes by itself), with one asyncio event loop that wakes on task
    completions, on ``wake()`` calls and on deadlines. Database work is batched:
    one transaction records every attempt that ended since the last round, one
    claims the next jobs.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        # Its own identity: this actor's id (kept when Ray restarts it), then the incarnation.
        # Another dispatcher on the same database, under the same namespace or not, has
        # another actor id, so the start-up sweep below never takes its live leases.
        actor_id = ray.get_runtime_context().get_actor_id() or "driver"
        self.owner_prefix = f"{settings.namespace[:100]}/{DISPATCHER_ACTOR}:{actor_id}:"
        self.owner = self.owner_prefix + uuid.uuid4().hex[:12]
        self.store = DispatchStore.from_url(settings.database_url, wait_for_flush=False)
        self.processors = {
            name: spec.configured(settings)
            for name, spec in registry.load(settings.processor_modules).items()
        }
        self.schedules = ScheduleStore(self.store.engine, self.store.jobs.clock)
        self._schedules_synced = False
        self._next_schedule_check = 0.0
        self._settings_ref = ray.put(settings)
        self._remotes: dict[str, Any] = {}
        self._progress: ray.actor.ActorHandle | None = None
        self._running: dict[str, _Running] = {}
        self._finished: set[str] = set()
        self._starts: list[Started] = []
        self._consumers: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, str] = {}
        #: Prefetched tasks not begun that an idle actor has already yielded its share to.
        self._served: set[str] = set()
        self._unrunnable: dict[str, str] = {}
        self._needs: dict[str, admission.Need] = {}
        # None: what an earlier incarnation asked for is unknown, so the first round says.
        self._requested: list[tuple[tuple[str, float], ...]] | None = None
        self._blocked: _Blocked | None = None
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        self.pools = {
            name: Pool(name, config, settings, gpus) for name, config in settings.pools.items()
        }
        self._next_due: datetime | None = None
        self._cluster: tuple[float, dict[str, float]] = (0.0, {})
        self._poked = True
        self._recovered = False
        self._next_maintenance = 0.0
        self._next_metrics = 0.0
        self._last_round = time.monotonic()
        self._last_error: str | None = None
        #: While draining: when the attempts still running are stopped and queued again.
        self._drain_until: float | None = None
        self._drained = threading.Event()
        self.counters: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._size_pools(time.monotonic())  # each pool's min_size, started before any round
        self._thread = threading.Thread(target=self._serve, daemon=True, name="raypipe-dispatch")
        self._thread.start()

    # -- actor methods -------------------------------------------------------------

    def wake(self) -> None:
        """Look for new work and cancellations now (called on every submission and cancel)."""
        self._loop.call_soon_threadsafe(self._poke)

    def drain(self, grace_s: float) -> dict[str, int]:
        """Stop claiming; let running attempts end within ``grace_s``, then stop the rest
        and queue them again, not counted against their ``max_attempts``. Returns once
        every outcome is recorded (or the wait gives up): how many ran when it began, and
        how many are still running. For a planned stop: ``raypipe down`` then ends the
        actor; one that is not stopped keeps draining (claiming nothing)."""
        running = len(self._running)
        self._loop.call_soon_threadsafe(self._begin_drain, grace_s)
        self._drained.wait(grace_s + self.settings.cancel_grace_s + DRAIN_MARGIN_S)
        return {"running_at_start": running, "still_running": len(self._running)}

    def info(self) -> dict[str, Any]:
        # Called on the actor's thread while the loop's thread changes what it reads: every
        # collection is copied first (a copy is one step under the GIL, a loop is not).
        running = list(self._running.values())
        return {
            "owner": self.owner,
            "alive": self._thread.is_alive(),
            "running": len(running),
            "started": sum(1 for run in running if run.started is not None),
            "pools": {name: pool.info() for name, pool in self.pools.items()},
            "unrunnable": dict(self._unrunnable),
            "seconds_since_round": round(time.monotonic() - self._last_round, 3),
            "last_error": self._last_error,
            "draining": self._drain_until is not None,
            "counters": dict(self.counters),
        }

    # -- the loop --------------------------------------------------------------------

    def _poke(self) -> None:
        self._poked = True
        self._wake.set()

    def _begin_drain(self, grace_s: float) -> None:
        if self._drain_until is None:
            self._drain_until = time.monotonic() + grace_s
            log.info("draining: claiming nothing, stopping what still runs in %gs", grace_s)
        self._poke()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        failures = 0
        schema_checked = False
        while True:
            try:
                if not schema_checked:
                    # Here, not in __init__: Ray does not restart an actor whose constructor
                    # raised, so a restart while the database is away would end it for good.
                    schema_version.check(self.store.engine)
                    schema_checked = True
                began = time.monotonic()
                more = self._round()
                self.counters["rounds"] += 1
                self.counters["round_ms"] += int((time.monotonic() - began) * 1000)
                failures, self._last_error = 0, None
            except Exception as exc:  # the database or Ray is away: degrade, retry, lose nothing
                failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("dispatcher round failed (%d in a row)", failures)
                await asyncio.sleep(min(MAX_ERROR_BACKOFF_S, 0.2 * 2**failures))
                continue
            self._last_round = time.monotonic()
            if not more:
                await self._sleep()
            # While work is in flight, rounds begin at most every dispatch_interval_s, so that
            # each records and claims a batch: per-round costs (locks, commits) are then shared
            # by many jobs. A round that took longer has batched enough: the next begins now.
            spacing = self.settings.dispatch_interval_s if self._running else 0.0
            await asyncio.sleep(max(0.0, began + spacing - time.monotonic()))

    def _round(self) -> bool:
        """One pass; returns whether there may be more to claim right away."""
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._maintain_leases()
            self._next_maintenance = now + self.settings.lease_ttl_s / 3
        self._record_round()
        poked, self._poked = self._poked, False
        if poked:
            self._blocked = None  # new submissions, cancellations, or the polling fallback
            self._handle_cancel_requests()
        if (poked or now >= self._next_schedule_check) and self._drain_until is None:
            self._fire_schedules()
        self._enforce_deadlines(now)
        if self._drain_until is not None:
            self._drain(now)
            return False
        self._size_pools(now)
        more = self._claim()
        if now >= self._next_metrics:
            self._next_metrics = now + METRICS_INTERVAL_S
            self._observe()
        return more

    async def _sleep(self) -> None:
        timeout = self.settings.poll_interval_s
        now = time.monotonic()
        if self._drain_until is not None and self._drain_until > now:
            timeout = min(timeout, self._drain_until - now)
        for run in self._running.values():
            if run.stop is None and run.deadline is not None:
                timeout = min(timeout, run.deadline - now)
            elif run.force_at is not None and run.started is not None:
                timeout = min(timeout, run.force_at - now)
        in_use = self._in_use()
        for name, pool in self.pools.items():
            if name not in in_use and len(pool.members) > pool.config.min_size:
                for member in pool.idle():
                    timeout = min(timeout, member.idle_since + pool.config.idle_s - now)
        if self._next_due is not None:
            due_in = (self._next_due - self.store.clock()).total_seconds()
            if due_in <= 0:
                self._next_due = None
            timeout = min(timeout, due_in)
        if timeout > 0 and not self._finished and not self._starts:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                self._poked = True  # the polling fallback also looks for cancellations
        else:
            await asyncio.sleep(0)  # let completion callbacks in before the next round
        self._wake.clear()

    # -- schedules ---------------------------------------------------------------------

    def _fire_schedules(self) -> None:
        """Submit the jobs of due schedules (their rows make each instant fire once, however
        many dispatchers run), then sleep no later than the next instant."""
        if not self._schedules_synced:
            report = self.schedules.sync(self.settings)
            self._schedules_synced = True
            if report.created or report.updated or report.deleted:
                log.info("schedules from the configuration: %s", report)
            for problem in report.problems:
                log.warning("schedule not loaded: %s", problem)
        fired = self.schedules.fire_due(self.settings)
        self.counters["scheduled"] += len(fired)
        if fired:
            self._blocked = None
        self._next_schedule_check = time.monotonic() + self.settings.poll_interval_s
        due = self.schedules.next_fire_at()
        if due is not None and (self._next_due is None or due < self._next_due):
            self._next_due = due

    # -- claiming and submitting -------------------------------------------------------

    def _claim(self) -> bool:
        """Admit what can start now; the rest stays queued, saying what it waits for."""
        slots = self.settings.max_in_flight - len(self._running)
        if slots <= 0:
            return False
        capacity = self._cluster_resources()
        free = self._free(capacity)
        # A small, counted prefetch: a few tasks may wait in Ray's queue, to start the moment
        # a running job frees its share instead of a dispatcher round later.
        prefetch = max(1, math.ceil(self.settings.task_prefetch * capacity.get("CPU", 0.0)))
        prefetch -= len(self._waiting_in_ray())
        rooms = {name: pool.room() for name, pool in self.pools.items()}
        limit = min(slots, self.settings.claim_batch)
        blocked = self._blocked
        if (
            blocked is not None
            and time.monotonic() < blocked.until
            and admission.Room.of(free, prefetch, rooms).within(blocked.left)
        ):
            # Nothing that waited at the last pass can start now: skip reading the backlog.
            self.counters["claims_skipped"] += 1
            claimed: list[ClaimedJob] = []
            short, wanted = set(blocked.short), blocked.wanted
        else:
            claimed, short, wanted = self._claim_from(free, capacity, prefetch, rooms, limit)
        # A prefetched task waiting in Ray's queue lacks a CPU too: an idle actor yields to it,
        # once (the task may not have begun by the next round, and one actor's share is its).
        waiting = self._waiting_in_ray()
        self._served &= set(waiting)
        unserved = [job_id for job_id in waiting if job_id not in self._served]
        if unserved:
            short.add("CPU")
        yielded = self._yield_idle(short, wanted)
        self._served.update(unserved[:yielded])
        return len(claimed) == limit or yielded > 0

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

        def choose(candidates: Sequence[Candidate], queue_free: dict[str, int]) -> list[Any]:
            plan = admission.plan(
                candidates, queue_free, free, capacity, rooms, self._need, limit, prefetch
            )
            wanted: set[str] = set()
            for candidate in candidates:
                need = self._need(candidate.type)
                wanted.update((need.pool, *need.uses) if need.pool else need.uses)
            # A queue read to its limit may hold more rows, out of sight behind the chosen.
            read = Counter(candidate.queue for candidate in candidates)
            cut = any(read[q] >= min(n, limit) for q, n in queue_free.items() if n > 0)
            plans.append((plan, wanted, cut))
            return plan.chosen

        queue_limits = {name: q.concurrency for name, q in self.settings.queues.items()}
        claimed = self.store.claim(
            self.owner, self.settings.lease_ttl_s, queue_limits, choose, limit
        )
        plan, wanted, cut = plans[-1] if plans else (admission.Plan(), set(), True)
        for name, count in plan.grow.items():
            for _ in range(count):
                self.pools[name].add(self._settings_ref)
        self._launch(claimed)
        self.counters["claimed"] += len(claimed)
        self._note_waiting(plan, claimed)
        self._ask_autoscaler(plan.demand)
        self._blocked = None
        if plan.left is not None and len(claimed) == len(plan.chosen) and not (cut and claimed):
            until = time.monotonic() + self.settings.poll_interval_s
            self._blocked = _Blocked(plan.left, plan.full, set(plan.short), wanted, until)
        return claimed, set(plan.short), wanted

    def _free(self, capacity: dict[str, float]) -> dict[str, float]:
        """What neither raypipe's actors nor its running jobs hold."""
        return admission.free_resources(
            capacity,
            [pool.holds() for pool in self.pools.values()]
            + [run.held for run in self._running.values()],
        )

    def _waiting_in_ray(self) -> list[str]:
        """Admitted tasks not begun yet: the prefetch in Ray's queue (or starting)."""
        return [
            job_id
            for job_id, run in self._running.items()
            if run.call.pool is None and run.started is None
        ]

    def _need(self, job_type: str) -> admission.Need:
        """What a job of this type needs to start (fixed per type: worked out once)."""
        need = self._needs.get(job_type)
        if need is None:
            need = self._needs[job_type] = self._need_of(job_type)
        return need

    def _need_of(self, job_type: str) -> admission.Need:
        spec = self.processors.get(job_type)
        if spec is None or (spec.pool is not None and spec.pool not in self.pools):
            return admission.Need()  # admitted at once, and failed with the reason
        uses = tuple(name for name in spec.uses if name in self.pools)
        if spec.pool is not None:
            return admission.Need(pool=spec.pool, uses=uses)
        return admission.Need(resources=spec.demand(), uses=uses)

    def _note_waiting(self, plan: admission.Plan, claimed: list[ClaimedJob]) -> None:
        """Write what each job left queued waits for, once per change."""
        for job in claimed:
            self._waiting.pop(job.id, None)
        changes = {
            job_id: message
            for job_id, message in plan.waiting.items()
            if self._waiting.get(job_id) != message
        }
        if changes:
            self.store.set_waiting(changes)
            if len(self._waiting) > WAITING_KEPT:
                self._waiting.clear()
            self._waiting.update(changes)
        for job_type, reason in plan.impossible.items():
            if self._unrunnable.get(job_type) != reason:
                log.warning("%s jobs cannot start on this cluster: %s", job_type, reason)
        self._unrunnable = dict(plan.impossible)

    def _ask_autoscaler(self, demand: list[dict[str, float]]) -> None:
        """Hand what waits for resources to Ray's autoscaler (it starts nodes for it, from
        zero if need be), and withdraw it once nothing waits; only changes are sent."""
        shapes = sorted(tuple(sorted(bundle.items())) for bundle in demand[:MAX_REQUESTED])
        if shapes != self._requested:
            request_resources(bundles=[dict(shape) for shape in shapes])
            self._requested = shapes

    def _yield_idle(self, short: set[str], wanted: set[str]) -> int:
        """An actor idle for a moment (``YIELD_AFTER_S``, not its idle time) gives up what
        queued work lacks, unless that work is its own pool's or its pool is at its
        ``min_size`` (kept loaded, as asked); returns how many yielded."""
        yielded = 0
        now = time.monotonic()
        in_use = self._in_use()
        for name, pool in self.pools.items():
            if name in wanted or name in in_use or not short & set(pool.actor):
                continue
            idle = [m for m in pool.idle() if now - m.idle_since >= YIELD_AFTER_S]
            if idle and len(pool.members) > pool.config.min_size:
                pool.remove(idle[0])
                self.counters["pool_yielded"] += 1
                yielded += 1
        return yielded

    def _size_pools(self, now: float) -> None:
        """Remove actors idle past their pool's ``idle_s``; bring a pool that lost actors
        (one died, or was replaced) back to its ``min_size`` as resources allow."""
        in_use = self._in_use()
        for name, pool in self.pools.items():
            if name not in in_use:
                for member in pool.expired(now):
                    pool.remove(member)
                    self.counters["pool_shrunk"] += 1
        below = [pool for pool in self.pools.values() if len(pool.members) < pool.config.min_size]
        if not below:
            return
        free = self._free(self._cluster_resources())
        for pool in below:
            while len(pool.members) < pool.config.min_size and all(
                free.get(name, 0.0) + admission.EPSILON >= amount
                for name, amount in pool.actor.items()
            ):
                pool.add(self._settings_ref)
                free = admission.free_resources(free, [pool.actor])
                self.counters["pool_refilled"] += 1

    def _in_use(self) -> set[str]:
        """Pools that running tasks call into (their actors must stay)."""
        return {name for run in self._running.values() for name in run.uses}

    def _launch(self, claimed: list[ClaimedJob]) -> None:
        on_pools: dict[str, list[ClaimedJob]] = {}
        for job in map(_claim_span, claimed):
            spec = self.processors.get(job.type)
            if spec is None:
                self._finish_now(
                    job,
                    "no processor for this type is loaded in the dispatcher"
                    " (check RAYPIPE_PROCESSOR_MODULES)",
                )
            elif spec.pool is not None and spec.pool not in self.pools:
                self._finish_now(job, f"its processor runs on pool {spec.pool!r}, not configured")
            elif spec.pool is not None:
                on_pools.setdefault(spec.pool, []).append(job)
            else:
                handles = {name: self.pools[name].handles() for name in spec.uses}
                stream = self._task_for(spec).remote(self._settings_ref, job, handles)
                self._track(_Call(stream, [job.id]), [job], spec.demand(), spec.uses)
        for name, pool_jobs in on_pools.items():
            pool = self.pools[name]
            for member, bundle in pool.place(pool_jobs):
                uses = {u for job in bundle for u in self.processors[job.type].uses}
                handles = {u: self.pools[u].handles() for u in {name, *uses} if u in self.pools}
                stream = member.handle.run.remote(bundle, handles)
                call = _Call(stream, [j.id for j in bundle], pool, member)
                self._track(call, bundle, {}, tuple(uses))

    def _track(
        self, call: _Call, jobs: list[ClaimedJob], held: dict[str, float], uses: tuple[str, ...]
    ) -> None:
        now = time.monotonic()
        for job in jobs:
            self._running[job.id] = _Running(job, call, held, uses, claimed=now)
        consumer = self._loop.create_task(self._consume(call))
        self._consumers.add(consumer)
        consumer.add_done_callback(self._consumers.discard)

    def _task_for(self, spec: ProcessorSpec) -> Any:
        remote = self._remotes.get(spec.type)
        if remote is None:
            # raypipe owns retries (with backoff); Ray's own would double them.
            remote = ray.remote(run_task).options(max_retries=0, **spec.ray_options())
            self._remotes[spec.type] = remote
        return remote

    def _finish_now(self, job: ClaimedJob, message: str) -> None:
        error = ErrorInfo("PermanentError", message)
        self._record(
            [metrics.Ended(job, Outcome(job.id, job.attempt, JobStatus.FAILED, error=error))]
        )

    # -- attempt events ---------------------------------------------------------------------

    async def _consume(self, call: _Call) -> None:
        """Take a call's events as they come; when it ends, every job it held has ended."""
        error: BaseException | None = None
        try:
            async for ref in call.stream:
                self._on_events(await ref)
        except Exception as exc:  # the task or actor failed: its jobs' outcomes say how
            error = exc
        now = time.monotonic()
        for job_id in call.job_ids:
            run = self._running.get(job_id)
            if run is not None and run.call is call and job_id not in self._finished:
                run.error = error or RuntimeError("the attempt ended without an outcome")
                run.ended = now
                self._finished.add(job_id)
        call.release(call.job_ids)
        if call.pool is not None and call.member is not None and isinstance(error, RayActorError):
            call.pool.forget(call.member)
        self._wake.set()

    def _on_events(self, events: list[Event]) -> None:
        now = time.monotonic()
        for event in events:
            run = self._running.get(event.job_id)
            if run is None or run.job.attempt != event.attempt:
                continue
            if isinstance(event, Started):
                run.started = now
                run.deadline = now + run.job.timeout_s
                self._starts.append(event)
            else:
                run.result = event.result
                run.ended = now
                self._finished.add(event.job_id)
                run.call.release([event.job_id])
        self._wake.set()

    # -- recording starts and outcomes ------------------------------------------------------

    def _record_round(self) -> None:
        """The starts and ends reported since the last round, in one transaction (a start
        first: a job may begin and end within a round). ``processing`` from the moment the
        worker began; stale reports (a job already ended, cancelled or rescued) change
        nothing. If this raises, the same reports are recorded next round."""
        if not self._starts and not self._finished:
            return
        starts = self._starts
        done = [self._running[job_id] for job_id in self._finished if job_id in self._running]
        ends = [
            metrics.Ended(
                run.job,
                _with_logs(self._outcome(run), run.result),
                (run.ended or run.started) - run.started if run.started is not None else 0.0,
            )
            for run in done
        ]
        self.store.advance(
            self.owner, [(e.job_id, e.attempt, e.at) for e in starts], [e.outcome for e in ends]
        )
        metrics.record_started(
            run.job for e in starts if (run := self._running.get(e.job_id)) is not None
        )
        self._starts = []
        self._ended(ends)
        for run in done:
            del self._running[run.job.id]
        self._finished.clear()

    def _outcome(self, run: _Running) -> Outcome:
        job = run.job
        if run.stop is not None:
            return run.stop  # cancellation and timeouts win over a late result
        if isinstance(run.error, TaskCancelledError):
            return self._failure(
                job,
                ErrorKind.SYSTEM,
                ErrorInfo("TaskCancelled", "the Ray task was cancelled outside raypipe"),
            )
        if isinstance(run.error, RayError):
            return self._failure(job, ErrorKind.SYSTEM, _system_error(run.error))
        if run.error is not None:
            error = ErrorInfo(type(run.error).__name__, str(run.error)[:1000])
            return self._failure(job, ErrorKind.SYSTEM, error)
        result = run.result
        if result.ok:
            return Outcome(
                job.id,
                job.attempt,
                JobStatus.COMPLETED,
                result=result.result,
                message=result.message,
                stage=result.stage,
                artifacts=result.artifacts,
            )
        assert result.kind is not None and result.error is not None
        return self._failure(job, result.kind, result.error, result.delay_s)

    def _failure(
        self,
        job: ClaimedJob | JobRecord,
        kind: ErrorKind,
        error: ErrorInfo,
        delay_s: float | None = None,
        attempt_status: AttemptStatus | None = None,
    ) -> Outcome:
        spec = self.processors.get(job.type)
        policy = (spec.retry if spec else None) or default_policy(self.settings)
        return failure_outcome(
            job.id,
            job.attempt,
            job.max_attempts,
            policy,
            kind,
            error,
            self.store.clock(),
            delay_s,
            attempt_status,
        )

    def _record(self, ends: list[metrics.Ended]) -> None:
        if ends:
            self.store.record([end.outcome for end in ends])
            self._ended(ends)

    def _ended(self, ends: list[metrics.Ended]) -> None:
        """What follows recorded outcomes: metrics, counters, retry wake-ups, live state."""
        if not ends:
            return
        outcomes = [end.outcome for end in ends]
        blocked = self._blocked
        if blocked is not None and any(
            end.outcome.status is JobStatus.QUEUED or end.job.queue in blocked.full for end in ends
        ):
            self._blocked = None  # a retry is a new candidate; a full queue has a slot again
        metrics.record_outcomes(ends)
        for end in ends:
            if end.outcome.error is not None:
                _log_failure(end)
        for outcome in outcomes:
            self.counters[
                outcome.status.value if outcome.status is not JobStatus.QUEUED else "retried"
            ] += 1
            if outcome.run_at is not None and (
                self._next_due is None or outcome.run_at < self._next_due
            ):
                self._next_due = outcome.run_at
        progress = self._progress_actor()
        if progress is not None:
            progress.finished.remote([(o.job_id, o.attempt, o.status.value) for o in outcomes])

    # -- stopping attempts -------------------------------------------------------------------

    def _drain(self, now: float) -> None:
        """Past the drain's grace, stop what still runs and queue it again (its attempt
        refunded); once every outcome is recorded, say the drain is done."""
        assert self._drain_until is not None
        if now >= self._drain_until:
            for run in self._running.values():
                if run.stop is None and run.job.id not in self._finished:
                    job = run.job
                    run.stop = Outcome(
                        job.id,
                        job.attempt,
                        JobStatus.QUEUED,
                        error=ErrorInfo(
                            "Drained",
                            f"attempt {job.attempt} was stopped by a drain (raypipe down)"
                            " and queued again; it does not count against max_attempts",
                        ),
                        run_at=self.store.clock(),
                        attempt_status=AttemptStatus.CANCELLED,
                        refund=True,
                    )
                    self._stop(run)
                    self.counters["drained"] += 1
        if not self._running and not self._starts and not self._finished:
            self._drained.set()

    def _handle_cancel_requests(self) -> None:
        requests = self.store.cancel_requests(self.owner)
        cancelled = []
        for job_id, attempt in requests:
            run = self._running.get(job_id)
            if run is None or run.stop is not None or run.job.attempt != attempt:
                continue
            run.stop = Outcome(
                job_id,
                attempt,
                JobStatus.CANCELLED,
                error=CANCELLED_ON_REQUEST,
            )
            self._stop(run)
            cancelled.append(job_id)
        progress = self._progress_actor()
        if cancelled and progress is not None:
            progress.cancel.remote(cancelled)

    def _enforce_deadlines(self, now: float) -> None:
        for run in list(self._running.values()):
            if run.job.id in self._finished:
                continue
            if run.stop is None and run.deadline is not None and now >= run.deadline:
                job = run.job
                error = ErrorInfo(
                    "JobTimeout",
                    f"attempt {job.attempt} ran past its timeout"
                    f" of {job.timeout_s:g}s and was stopped",
                )
                run.stop = self._failure(
                    job, ErrorKind.SYSTEM, error, attempt_status=AttemptStatus.TIMED_OUT
                )
                self._stop(run)
            elif run.force_at is not None and now >= run.force_at and run.started is not None:
                run.force_at = None
                self._force(run)

    def _stop(self, run: _Running) -> None:
        """Interrupt the attempt now (or drop it before it begins), and end it by force if it
        still runs after the grace."""
        call = run.call
        if call.member is None:
            ray.cancel(call.stream, force=False)
        else:
            call.member.handle.stop.remote([run.job.id])
        run.force_at = time.monotonic() + self.settings.cancel_grace_s

    def _force(self, run: _Running) -> None:
        """Kill the task's worker, or replace the pool actor: the other jobs it held end as
        system failures and are retried."""
        call = run.call
        if call.pool is None or call.member is None:
            ray.cancel(call.stream, force=True)
            return
        call.pool.remove(call.member)
        self.counters["pool_replaced"] += 1

    # -- leases -----------------------------------------------------------------------------

    def _maintain_leases(self) -> None:
        self.store.renew_leases(self.owner, self.settings.lease_ttl_s, list(self._running))
        lost = self.store.lost_jobs(expired=True)
        if not self._recovered:
            # Attempts held by an earlier incarnation of this actor died with it (Ray starts
            # a restarted actor once the old one is gone); any other owner's wait to expire.
            lost += self.store.lost_jobs(
                expired=False, owner_prefix=self.owner_prefix, exclude_owner=self.owner
            )
            self._recovered = True
        ends = {
            job.id: metrics.Ended(job, self._rescue(job))
            for job in lost
            if job.id not in self._running
        }
        self._record(list(ends.values()))
        self.counters["rescued"] += len(ends)

    def _rescue(self, job: JobRecord) -> Outcome:
        if job.cancel_requested:
            return Outcome(
                job.id,
                job.attempt,
                JobStatus.CANCELLED,
                error=CANCELLED_ON_REQUEST,
            )
        error = ErrorInfo(
            "LeaseExpired",
            f"attempt {job.attempt} was lost: its dispatcher"
            f" ({job.lease_owner}) stopped renewing its lease",
        )
        return self._failure(job, ErrorKind.SYSTEM, error)

    # -- helpers -------------------------------------------------------------------------

    def _observe(self) -> None:
        """Refresh the gauges: what this dispatcher runs, and every queue's depth and wait."""
        queues = self.settings.queues.keys()
        metrics.observe_in_flight((run.job for run in self._running.values()), queues)
        metrics.observe_queues(self.store.jobs.queue_stats(), queues)

    def _cluster_resources(self) -> dict[str, float]:
        read_at, resources = self._cluster
        if time.monotonic() - read_at > CLUSTER_RESOURCES_TTL_S or not resources:
            resources = {k: float(v) for k, v in ray.cluster_resources().items()}
            self._cluster = (time.monotonic(), resources)
        return resources

    def _progress_actor(self) -> ray.actor.ActorHandle | None:
        if self._progress is None:
            try:
                self._progress = ray.get_actor(PROGRESS_ACTOR, namespace=self.settings.namespace)
            except ValueError:
                return None
        return self._progress


def _with_logs(outcome: Outcome, result: AttemptResult | None) -> Outcome:
    """``outcome`` with the log lines its attempt had not shipped when it ended, to be
    written in the same transaction: whatever decided the outcome (a stop wins over a late
    result), the attempt logged them."""
    if result is None or not result.logs:
        return outcome
    return dataclasses.replace(outcome, logs=result.logs)


def _system_error(exc: RayError) -> ErrorInfo:
    """A short, readable record of why Ray could not finish the attempt."""
    text = exceptions.reason(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    cause = getattr(exc, "cause", None)
    name = type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__
    return ErrorInfo(name, message[:1000])
