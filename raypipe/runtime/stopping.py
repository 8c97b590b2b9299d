"""Stopping attempts: cancellations asked for, timeouts (counted from each attempt's
start) and a drain's end. Each stop interrupts the attempt, then ends it by force if it
still runs after ``cancel_grace_s``: a task's worker is killed, a pool actor replaced
(the other jobs it held end as system failures and are retried)."""

from __future__ import annotations

from dataclasses import dataclass

from raypipe.jobs import Outcome
from raypipe.runtime import outcomes
from raypipe.runtime.context import DispatchContext
from raypipe.runtime.runs import Run, RunState, RunTable


@dataclass
class Stopper:
    ctx: DispatchContext
    runs: RunTable

    def cancel_requested(self) -> None:
        """Stop the attempts whose cancellation was asked for (they end ``cancelled``)."""
        cancelled = []
        for job_id, attempt in self.ctx.store.cancel_requests(self.ctx.owner):
            run = self.runs.get(job_id)
            if run is None or run.job.attempt != attempt or not _running(run):
                continue
            self._stop(run, outcomes.cancelled(job_id, attempt))
            cancelled.append(job_id)
        if cancelled:
            self.ctx.cluster.attempts_cancelled(cancelled)

    def enforce_timeouts(self, now: float) -> None:
        """Stop attempts past their timeout; force those stopped whose grace is over."""
        for run in self.runs.in_flight():
            deadline = run.deadline
            if run.state is RunState.STARTED and deadline is not None and now >= deadline:
                policy = self.ctx.policy(run.job.type)
                self._stop(run, outcomes.timed_out(run.job, policy, self.ctx.clock.wall()))
            elif _forced_by(run, now):
                self.runs.forced(run)
                self._force(run)

    def drain(self) -> None:
        """Stop what still runs, to be queued again with its attempt refunded."""
        for run in self.runs.in_flight():
            if _running(run):
                self._stop(run, outcomes.drained(run.job, self.ctx.clock.wall()))
                self.ctx.counters["drained"] += 1

    def next_deadline_in(self, now: float) -> float | None:
        """Seconds until the next timeout or forced stop (None: none is due)."""
        soonest: float | None = None
        for run in self.runs:
            if run.state is RunState.STARTED and run.deadline is not None:
                due = run.deadline - now
            elif run.state is RunState.STOPPING and run.started_at is not None:
                due = run.force_at - now
            else:
                continue
            soonest = due if soonest is None else min(soonest, due)
        return soonest

    def _stop(self, run: Run, outcome: Outcome) -> None:
        """Interrupt the attempt now (or drop it before it begins), and end it by force if
        it still runs after the grace."""
        self.runs.stopping(
            run, outcome, self.ctx.clock.monotonic() + self.ctx.settings.engine.cancel_grace_s
        )
        call = run.call
        if call.member is None:
            self.ctx.cluster.cancel_task(call.handle, force=False)
        else:
            self.ctx.cluster.stop_on_actor(call.member.handle, [run.job.id])

    def _force(self, run: Run) -> None:
        """Kill the task's worker, or replace the pool actor: the other jobs it held end as
        system failures and are retried."""
        call = run.call
        if call.pool is None or call.member is None:
            self.ctx.cluster.cancel_task(call.handle, force=True)
            return
        call.pool.remove(call.member)
        self.ctx.counters["pool_replaced"] += 1


def _running(run: Run) -> bool:
    """Not stopped yet, and its end not heard."""
    return run.state in (RunState.CLAIMED, RunState.STARTED)


def _forced_by(run: Run, now: float) -> bool:
    """Stopped, begun, and still running past its grace."""
    return run.state is RunState.STOPPING and run.started_at is not None and now >= run.force_at
