"""The one path a submission takes from specs to committed rows, for the API, batches and
the in-cluster client: check and prepare (:mod:`raypipe.submission`), write in one
transaction, count, then wake the dispatcher.

Schedules' fires and follow-up jobs are written inside the dispatcher's own transactions,
from the same prepared rows by the same :meth:`JobStore.add`; the dispatcher needs no bell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from raypipe import metrics
from raypipe.batches import BatchRecord, BatchSpec
from raypipe.config import Settings
from raypipe.jobs import JobRecord, JobSpec
from raypipe.store import JobStore
from raypipe.store.batches import BatchStore
from raypipe.store.jobs import Made, Replay
from raypipe.submission import prepare, prepare_batch


class Submitter:
    """Submits for any tenant; the caller says which, and whether it may use admin-only
    job types (the API's keys decide; the CLI and in-cluster clients may)."""

    def __init__(self, jobs: JobStore, settings: Settings, wake: Callable[[], None]):
        self.jobs = jobs
        self.batches = BatchStore(jobs)
        self.settings = settings
        self._wake = wake

    def submit(
        self,
        specs: Sequence[JobSpec | dict[str, Any]],
        tenant: str,
        *,
        admin: bool = True,
        loc_prefix: tuple[str | int, ...] = (),
        made: Made | None = None,
    ) -> list[tuple[JobRecord, Replay | None]]:
        """Write every spec as a queued job, all or none; returns each job, and why it is
        not new (None: it is; else an idempotent replay, or a unique job's duplicate).
        ``loc_prefix`` locates errors in a body; ``made`` is told, in the transaction,
        which specs made jobs (see :meth:`JobStore.insert`)."""
        rows = prepare(specs, self.settings, self.jobs.clock(), tenant, loc_prefix, admin)
        records = self.jobs.insert(rows, made)
        metrics.record_submitted((job.type, job.queue) for job, why in records if why is None)
        self._wake()
        return records

    def submit_batch(
        self,
        spec: BatchSpec | dict[str, Any],
        tenant: str,
        *,
        admin: bool = True,
        idempotency_key: str | None = None,
    ) -> tuple[BatchRecord, bool]:
        """Write a batch and its jobs, all or none; returns it and whether it is new (False:
        an idempotent replay of the request that made it under ``idempotency_key``)."""
        rows, fields = prepare_batch(
            spec, self.settings, self.jobs.clock(), tenant, admin, idempotency_key
        )
        batch, created = self.batches.create(tenant, rows, **fields)
        if created:
            metrics.record_submitted((row["type"], row["queue"]) for row in rows)
            self._wake()
        return batch, created
