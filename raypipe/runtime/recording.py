"""Recording starts and ends: one transaction per round for what the runs reported, and
what follows a recorded end (metrics, counters, the wake-up for a retry, the progress
actor)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from raypipe import metrics
from raypipe.job_logs import job_fields
from raypipe.jobs import JobStatus
from raypipe.runtime import outcomes
from raypipe.runtime.context import DispatchContext, log
from raypipe.runtime.runs import RunTable


class Recorder:
    """Writes what happened to the database; ``on_ended`` hears of every recorded end."""

    def __init__(
        self,
        ctx: DispatchContext,
        runs: RunTable,
        on_ended: Callable[[Sequence[metrics.Ended]], None],
    ):
        self.ctx = ctx
        self.runs = runs
        self.on_ended = on_ended

    def record_reports(self) -> None:
        """The starts and ends reported since the last round, in one transaction (a start
        first: a job may begin and end within a round). ``processing`` from the moment the
        worker began; stale reports (a job already ended, cancelled or rescued) change
        nothing. If this raises, the same reports are recorded next round."""
        if not self.runs.has_reports():
            return
        starts, done = self.runs.reports()
        now = self.ctx.clock.wall()
        ends = [
            metrics.Ended(
                run.job,
                outcomes.attempt_ended(
                    run.job, run.stop, run.result, run.error, self.ctx.policy(run.job.type), now
                ),
                run.duration_s,
            )
            for run in done
        ]
        self.ctx.store.advance(
            self.ctx.owner,
            [(e.job_id, e.attempt, e.at) for e in starts],
            [e.outcome for e in ends],
        )
        metrics.record_started(
            run.job for e in starts if (run := self.runs.get(e.job_id)) is not None
        )
        self.runs.recorded(done)
        self._after(ends)

    def record(self, ends: list[metrics.Ended]) -> None:
        """Record ends decided outside any run (refused claims, rescued leases)."""
        if ends:
            self.ctx.store.record([end.outcome for end in ends])
            self._after(ends)

    def _after(self, ends: list[metrics.Ended]) -> None:
        """What follows recorded outcomes: metrics, counters, retry wake-ups, live state."""
        if not ends:
            return
        self.on_ended(ends)
        metrics.record_outcomes(ends)
        for end in ends:
            if end.outcome.error is not None:
                _log_failure(end)
        for end in ends:
            outcome = end.outcome
            queued = outcome.status is JobStatus.QUEUED
            self.ctx.counters["retried" if queued else outcome.status.value] += 1
            if outcome.run_at is not None:
                self.ctx.due_at(outcome.run_at)
        self.ctx.cluster.attempts_ended(
            [(end.outcome.job_id, end.outcome.attempt, end.outcome.status.value) for end in ends]
        )


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
