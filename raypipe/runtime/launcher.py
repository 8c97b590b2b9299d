"""Launching claimed jobs: a task of its own, or bundles on a pool's actors; and the
events their calls send back (a start, an end, a call that failed)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from raypipe import metrics, tracing
from raypipe.job_logs import job_fields
from raypipe.jobs import ClaimedJob
from raypipe.runtime import outcomes
from raypipe.runtime.cluster import Launch
from raypipe.runtime.context import DispatchContext
from raypipe.runtime.executor import Event, Started
from raypipe.runtime.fanout import PoolHandles
from raypipe.runtime.pool_manager import PoolManager
from raypipe.runtime.recording import Recorder
from raypipe.runtime.runs import Call, RunTable


@dataclass
class Launcher:
    ctx: DispatchContext
    runs: RunTable
    pools: PoolManager
    recorder: Recorder

    def launch(self, claimed: list[ClaimedJob]) -> None:
        """Hand each claimed job to the cluster (or fail it at once when nothing here can
        run it)."""
        on_pools: dict[str, list[ClaimedJob]] = {}
        for job in map(_claim_span, claimed):
            spec = self.ctx.processors.get(job.type)
            if spec is None:
                self._refuse(
                    job,
                    "no processor for this type is loaded in the dispatcher"
                    " (check RAYPIPE_PROCESSOR_MODULES)",
                )
            elif spec.pool is not None and spec.pool not in self.pools.pools:
                self._refuse(job, f"its processor runs on pool {spec.pool!r}, not configured")
            elif spec.pool is not None:
                on_pools.setdefault(spec.pool, []).append(job)
            else:
                call = Call([job.id])
                handles = {name: self.pools.pools[name].handles() for name in spec.uses}
                self.runs.add([job], call, spec.demand(), spec.uses, self.ctx.clock.monotonic())
                call.handle = self.ctx.cluster.run_task(spec, self._launch(call, [job], handles))
        for name, pool_jobs in on_pools.items():
            pool = self.pools.pools[name]
            for member, bundle in pool.place(pool_jobs):
                uses = {u for job in bundle for u in self.ctx.processors[job.type].uses}
                handles = self.pools.handles({name, *uses})
                call = Call([j.id for j in bundle], pool, member)
                self.runs.add(bundle, call, {}, tuple(uses), self.ctx.clock.monotonic())
                call.handle = self.ctx.cluster.call_actor(
                    member.handle, self._launch(call, bundle, handles)
                )

    def on_events(self, events: list[Event]) -> None:
        """A call's events: starts and ends of its attempts."""
        now = self.ctx.clock.monotonic()
        for event in events:
            if isinstance(event, Started):
                self.runs.started(event, now)
            else:
                self.runs.finished(event, now)

    def on_end(self, call: Call, error: BaseException | None, actor_lost: bool) -> None:
        """A call's stream ended: every job it held has ended; a dead actor is forgotten."""
        self.runs.call_ended(call, error, self.ctx.clock.monotonic())
        if call.pool is not None and call.member is not None and actor_lost:
            call.pool.forget(call.member)

    def _launch(self, call: Call, jobs: list[ClaimedJob], pools: PoolHandles) -> Launch:
        def on_end(error: BaseException | None, actor_lost: bool) -> None:
            self.on_end(call, error, actor_lost)

        return Launch(jobs, pools, self.on_events, on_end)

    def _refuse(self, job: ClaimedJob, message: str) -> None:
        self.recorder.record([metrics.Ended(job, outcomes.refused(job, message))])


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
