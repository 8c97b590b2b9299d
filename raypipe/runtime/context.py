"""What every part of the dispatcher shares: its settings, store, cluster, clock, identity,
processors and counters."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from raypipe.config import Settings
from raypipe.registry import ProcessorSpec
from raypipe.retry import RetryPolicy
from raypipe.runtime.cluster import Clock, Cluster
from raypipe.runtime.executor import default_policy
from raypipe.store import DispatchStore

#: The dispatcher's log, whichever part writes to it.
log = logging.getLogger("raypipe.runtime.dispatcher")
#: How long a read of the cluster's resources is reused.
CLUSTER_RESOURCES_TTL_S = 5.0


@dataclass
class DispatchContext:
    settings: Settings
    store: DispatchStore
    cluster: Cluster
    clock: Clock
    #: The lease owner this dispatcher writes on the rows it holds.
    owner: str
    processors: dict[str, ProcessorSpec]
    counters: Counter[str] = field(default_factory=Counter)
    #: The earliest retry or schedule instant known to be due: the loop wakes for it.
    next_due: datetime | None = None
    #: The last read of the cluster's resources: (when, what).
    _capacity: tuple[float, dict[str, float]] = field(default=(0.0, {}), init=False, repr=False)

    def due_at(self, when: datetime) -> None:
        """Wake no later than ``when`` (a retry's ``run_at``, a schedule's next instant)."""
        if self.next_due is None or when < self.next_due:
            self.next_due = when

    def capacity(self) -> dict[str, float]:
        """The cluster's resources, read again every few seconds."""
        read_at, resources = self._capacity
        if self.clock.monotonic() - read_at > CLUSTER_RESOURCES_TTL_S or not resources:
            resources = self.cluster.resources()
            self._capacity = (self.clock.monotonic(), resources)
        return resources

    def policy(self, job_type: str) -> RetryPolicy:
        """The retry policy of a job type (the default one for an unknown type)."""
        spec = self.processors.get(job_type)
        return (spec.retry if spec else None) or default_policy(self.settings)
