"""Leases: renewing those of the jobs this dispatcher runs, and rescuing jobs whose lease
expired (their dispatcher died) or that an earlier incarnation of this one held."""

from __future__ import annotations

from dataclasses import dataclass

from raypipe import metrics
from raypipe.runtime import outcomes
from raypipe.runtime.context import DispatchContext
from raypipe.runtime.recording import Recorder
from raypipe.runtime.runs import RunTable


@dataclass
class Leases:
    ctx: DispatchContext
    runs: RunTable
    recorder: Recorder
    #: This actor's owners, whatever the incarnation.
    owner_prefix: str
    #: Whether the earlier incarnations' attempts were rescued (once, at the first renewal).
    recovered: bool = False
    next_renewal: float = 0.0

    def maintain(self, now: float) -> None:
        """Every third of the lease's time: renew, then rescue what was lost."""
        if now < self.next_renewal:
            return
        self.next_renewal = now + self.ctx.settings.engine.lease_ttl_s / 3
        store = self.ctx.store
        store.renew_leases(
            self.ctx.owner, self.ctx.settings.engine.lease_ttl_s, self.runs.job_ids()
        )
        lost = store.lost_jobs(expired=True)
        if not self.recovered:
            # Attempts held by an earlier incarnation of this actor died with it (Ray starts
            # a restarted actor once the old one is gone); any other owner's wait to expire.
            lost += store.lost_jobs(
                expired=False, owner_prefix=self.owner_prefix, exclude_owner=self.ctx.owner
            )
            self.recovered = True
        now_wall = self.ctx.clock.wall()
        ends = {
            job.id: metrics.Ended(
                job, outcomes.lease_lost(job, self.ctx.policy(job.type), now_wall)
            )
            for job in lost
            if self.runs.get(job.id) is None
        }
        self.recorder.record(list(ends.values()))
        self.ctx.counters["rescued"] += len(ends)
