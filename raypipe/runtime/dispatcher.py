"""The dispatcher: claims jobs from the database, runs them as Ray tasks, records how they end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import ray
from ray.exceptions import RayError, TaskCancelledError

from raypipe import metrics, registry
from raypipe.config import Settings
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
from raypipe.runtime.executor import AttemptResult, default_policy, run_attempt
from raypipe.runtime.names import DISPATCHER_ACTOR, PROGRESS_ACTOR
from raypipe.scheduling import choose_claims, resource_budget
from raypipe.store import JobStore
from raypipe.store import schema as store_schema
from raypipe.store.schedules import ScheduleStore

log = logging.getLogger(__name__)

#: How long a read of the cluster's resources is reused.
CLUSTER_RESOURCES_TTL_S = 5.0
#: Longest pause after a failing round (database down, say) before trying again.
MAX_ERROR_BACKOFF_S = 10.0
#: How often the in-flight and queue gauges are refreshed (Ray exports every few seconds).
METRICS_INTERVAL_S = 5.0


@dataclass
class _Running:
    job: ClaimedJob
    future: concurrent.futures.Future[Any]
    ref: ray.ObjectRef
    deadline: float
    demand: dict[str, float]
    started: float
    ended: float | None = None
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
        self.owner_prefix = f"{settings.namespace}/{DISPATCHER_ACTOR}:"
        self.owner = self.owner_prefix + uuid.uuid4().hex[:12]
        self.store = JobStore.from_url(settings.database_url, wait_for_flush=False)
        self.processors = registry.load(settings.processor_modules)
        self.schedules = ScheduleStore(self.store.engine, self.store.clock)
        self._schedules_synced = False
        self._next_schedule_check = 0.0
        self._settings_ref = ray.put(settings)
        self._remotes: dict[str, Any] = {}
        self._progress: ray.actor.ActorHandle | None = None
        self._running: dict[str, _Running] = {}
        self._finished: set[str] = set()
        self._next_due: datetime | None = None
        self._cluster: tuple[float, dict[str, float]] = (0.0, {})
        self._poked = True
        self._recovered = False
        self._next_maintenance = 0.0
        self._next_metrics = 0.0
        self._last_round = time.monotonic()
        self._last_error: str | None = None
        self.counters: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="raypipe-dispatch")
        self._thread.start()

    # -- actor methods -------------------------------------------------------------

    def wake(self) -> None:
        """Look for new work and cancellations now (called on every submission and cancel)."""
        self._loop.call_soon_threadsafe(self._poke)

    def info(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "alive": self._thread.is_alive(),
            "running": len(self._running),
            "seconds_since_round": round(time.monotonic() - self._last_round, 3),
            "last_error": self._last_error,
            "counters": dict(self.counters),
        }

    # -- the loop --------------------------------------------------------------------

    def _poke(self) -> None:
        self._poked = True
        self._wake.set()

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
                    store_schema.check(self.store.engine)
                    schema_checked = True
                started = time.perf_counter()
                more = self._round()
                self.counters["rounds"] += 1
                self.counters["round_ms"] += int((time.perf_counter() - started) * 1000)
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
            # While work is in flight, space rounds out so that each one records and
            # claims a batch: per-round costs (locks, commits) are then shared by many jobs.
            await asyncio.sleep(self.settings.dispatch_interval_s if self._running else 0)

    def _round(self) -> bool:
        """One pass; returns whether there may be more to claim right away."""
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._maintain_leases()
            self._next_maintenance = now + self.settings.lease_ttl_s / 3
        self._record_finished()
        poked, self._poked = self._poked, False
        if poked:
            self._handle_cancel_requests()
        if poked or now >= self._next_schedule_check:
            self._fire_schedules()
        self._enforce_deadlines(now)
        more = self._claim()
        if now >= self._next_metrics:
            self._next_metrics = now + METRICS_INTERVAL_S
            self._observe()
        return more

    async def _sleep(self) -> None:
        timeout = self.settings.poll_interval_s
        now = time.monotonic()
        for run in self._running.values():
            timeout = min(timeout, (run.force_at or run.deadline) - now)
        if self._next_due is not None:
            due_in = (self._next_due - self.store.clock()).total_seconds()
            if due_in <= 0:
                self._next_due = None
            timeout = min(timeout, due_in)
        if timeout > 0 and not self._finished:
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
        self._next_schedule_check = time.monotonic() + self.settings.poll_interval_s
        due = self.schedules.next_fire_at()
        if due is not None and (self._next_due is None or due < self._next_due):
            self._next_due = due

    # -- claiming and submitting -------------------------------------------------------

    def _claim(self) -> bool:
        slots = self.settings.max_in_flight - len(self._running)
        if slots <= 0:
            return False
        budget = resource_budget(
            self._cluster_resources(),
            [run.demand for run in self._running.values()],
            self.settings.oversubscription,
        )
        limit = min(slots, self.settings.claim_batch)
        choose = partial(choose_claims, budget=budget, demand_of=self._demand, max_jobs=limit)
        queue_limits = {name: q.concurrency for name, q in self.settings.queues.items()}
        claimed = self.store.claim(
            self.owner, self.settings.lease_ttl_s, queue_limits, choose, limit
        )
        for job in claimed:
            self._submit(job)
        self.counters["claimed"] += len(claimed)
        metrics.record_started(claimed)
        return len(claimed) == limit

    def _demand(self, job_type: str) -> dict[str, float]:
        spec = self.processors.get(job_type)
        return spec.demand() if spec else {}

    def _submit(self, job: ClaimedJob) -> None:
        spec = self.processors.get(job.type)
        if spec is None:
            self._finish_now(
                job,
                "no processor for this type is loaded in the dispatcher"
                " (check RAYPIPE_PROCESSOR_MODULES)",
            )
            return
        ref = self._task_for(spec).remote(self._settings_ref, job)
        future = ref.future()
        now = time.monotonic()
        self._running[job.id] = _Running(
            job=job,
            future=future,
            ref=ref,
            deadline=now + job.timeout_s,
            demand=spec.demand(),
            started=now,
        )
        future.add_done_callback(
            lambda _f, job_id=job.id: self._loop.call_soon_threadsafe(self._on_done, job_id)
        )

    def _task_for(self, spec: ProcessorSpec) -> Any:
        remote = self._remotes.get(spec.type)
        if remote is None:
            # raypipe owns retries (with backoff); Ray's own would double them.
            remote = ray.remote(run_attempt).options(max_retries=0, **spec.ray_options())
            self._remotes[spec.type] = remote
        return remote

    def _finish_now(self, job: ClaimedJob, message: str) -> None:
        error = ErrorInfo("PermanentError", message)
        self._record(
            [metrics.Ended(job, Outcome(job.id, job.attempt, JobStatus.FAILED, error=error))]
        )

    def _on_done(self, job_id: str) -> None:
        run = self._running.get(job_id)
        if run is not None:
            run.ended = time.monotonic()
        self._finished.add(job_id)
        self._wake.set()

    # -- recording outcomes ---------------------------------------------------------------

    def _record_finished(self) -> None:
        if not self._finished:
            return
        done = [self._running[job_id] for job_id in self._finished if job_id in self._running]
        ends = [
            metrics.Ended(run.job, self._outcome(run), (run.ended or run.started) - run.started)
            for run in done
        ]
        self._record(ends)  # if this raises, the same runs are recorded next round
        for run in done:
            del self._running[run.job.id]
        self._finished.clear()

    def _outcome(self, run: _Running) -> Outcome:
        job = run.job
        try:
            result: AttemptResult = run.future.result()
        except TaskCancelledError:
            if run.stop is not None:
                return run.stop
            return self._failure(
                job,
                ErrorKind.SYSTEM,
                ErrorInfo("TaskCancelled", "the Ray task was cancelled outside raypipe"),
            )
        except RayError as exc:
            if run.stop is not None:
                return run.stop
            return self._failure(job, ErrorKind.SYSTEM, _system_error(exc))
        if run.stop is not None:
            return run.stop  # cancellation and timeouts win over a late result
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
        if not ends:
            return
        outcomes = [end.outcome for end in ends]
        self.store.record(outcomes)
        metrics.record_outcomes(ends)
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
        for run in self._running.values():
            if run.stop is None and now >= run.deadline:
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
            elif run.force_at is not None and now >= run.force_at and not run.future.done():
                run.force_at = None
                ray.cancel(run.ref, force=True)

    def _stop(self, run: _Running) -> None:
        """Interrupt the task now, and kill its worker if it is still running after the grace."""
        ray.cancel(run.ref, force=False)
        run.force_at = time.monotonic() + self.settings.cancel_grace_s

    # -- leases -----------------------------------------------------------------------------

    def _maintain_leases(self) -> None:
        self.store.renew_leases(self.owner, self.settings.lease_ttl_s, list(self._running))
        lost = self.store.lost_jobs(expired=True)
        if not self._recovered:
            # Attempts held by an earlier incarnation of this dispatcher died with it.
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
        metrics.observe_queues(self.store.queue_stats(), queues)

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


def _system_error(exc: RayError) -> ErrorInfo:
    """A short, readable record of why Ray could not finish the attempt."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cause = getattr(exc, "cause", None)
    name = type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__
    return ErrorInfo(name, message[:1000])
