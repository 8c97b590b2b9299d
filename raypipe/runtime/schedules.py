"""Firing schedules: the jobs of due schedules are submitted (their rows make each instant
fire once, however many dispatchers run), and the loop wakes for the next instant."""

from __future__ import annotations

from raypipe.runtime.context import DispatchContext, log
from raypipe.store.schedules import ScheduleStore


class ScheduleFiring:
    def __init__(self, ctx: DispatchContext):
        self.ctx = ctx
        self.store = ScheduleStore(ctx.store.engine, ctx.store.jobs.clock)
        self._synced = False
        self._next_check = 0.0

    def due(self, now: float) -> bool:
        """Whether the polling fallback looks at schedules this round."""
        return now >= self._next_check

    def fire(self) -> int:
        """Submit the jobs of due schedules (the configured ones synced first); how many."""
        settings = self.ctx.settings
        if not self._synced:
            report = self.store.sync(settings)
            self._synced = True
            if report.created or report.updated or report.deleted:
                log.info("schedules from the configuration: %s", report)
            for problem in report.problems:
                log.warning("schedule not loaded: %s", problem)
        fired = self.store.fire_due(settings)
        self.ctx.counters["scheduled"] += len(fired)
        self._next_check = self.ctx.clock.monotonic() + settings.engine.poll_interval_s
        due = self.store.next_fire_at()
        if due is not None:
            self.ctx.due_at(due)
        return len(fired)
