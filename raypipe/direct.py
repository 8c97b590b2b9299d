"""The in-cluster API: submit and follow jobs through the database and Ray, without HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from raypipe import artifacts, registry
from raypipe.batches import BatchRecord
from raypipe.config import Settings, get_settings
from raypipe.handle import BatchHandle, BatchLookups, JobHandle
from raypipe.job_logs import LogFollower
from raypipe.jobs import (
    AttemptRecord,
    JobRecord,
    JobSpec,
    JobStatus,
    PayloadLike,
    SpecLike,
    payload_of,
)
from raypipe.runtime import actors
from raypipe.runtime.bells import DispatcherBell
from raypipe.store import JobStore, schema_version
from raypipe.store.logs import LogStore, attempt_of
from raypipe.submission import DEFAULT_TENANT
from raypipe.submitter import Submitter


class DirectClient(BatchLookups):
    """Submits straight into the database and wakes the dispatcher over Ray.

    Works without Ray too (the CLI's reads); then submissions wait for the
    dispatcher's next poll.
    """

    def __init__(self, settings: Settings | None = None, tenant: str = DEFAULT_TENANT):
        self.settings = settings or get_settings()
        self.tenant = tenant
        self.store = JobStore(schema_version.open_current(self.settings.database_url))
        self._submitter = Submitter(self.store, self.settings, self.wake)
        self.batches = self._submitter.batches
        self.artifacts = artifacts.ArtifactStore(self.settings.artifacts_url)
        self.logs_store = LogStore(self.store.engine)
        registry.load(self.settings.processor_modules)
        self._bell = DispatcherBell(self.settings)

    def close(self) -> None:
        self.store.dispose()

    def submit(self, type: str, payload: PayloadLike = None, **options: Any) -> JobHandle:
        """Submit one job; ``options`` are the other :class:`JobSpec` fields."""
        return self.submit_many([{"type": type, "payload": payload_of(payload), **options}])[0]

    def submit_many(self, specs: Iterable[SpecLike]) -> list[JobHandle]:
        """Submit many jobs in one transaction: all are valid and written, or none is."""
        records = self._submitter.submit([_as_spec(spec) for spec in specs], self.tenant)
        return [JobHandle(job.id, self, job) for job, _created in records]

    def get(self, job_id: str) -> JobHandle:
        return JobHandle(job_id, self, self.get_job(job_id))

    def submit_batch(
        self,
        specs: Iterable[SpecLike],
        *,
        webhook_url: str | None = None,
        then: dict[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> BatchHandle:
        """Submit a batch from any iterable of specs, in one transaction (see
        :meth:`raypipe.Client.submit_batch`)."""
        body = {
            "jobs": [_as_spec(spec) for spec in specs],
            "webhook_url": webhook_url,
            "then": then,
            "tags": list(tags or []),
        }
        batch, _created = self._submitter.submit_batch(
            body, self.tenant, idempotency_key=idempotency_key
        )
        return BatchHandle(batch.id, self, batch)

    def jobs(
        self,
        status: JobStatus | None = None,
        type: str | None = None,
        queue: str | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        return self.store.list(
            tenant=self.tenant, status=status, type=type, queue=queue, limit=limit
        )

    # -- JobBackend -----------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord:
        return self.store.get(job_id, self.tenant)

    def cancel_job(self, job_id: str) -> JobRecord:
        job = self.store.request_cancel(job_id, self.tenant)
        self.wake()
        return job

    def retry_job(self, job_id: str) -> JobRecord:
        job = self.store.retry(job_id, self.tenant)
        self.wake()
        return job

    def job_attempts(self, job_id: str) -> list[AttemptRecord]:
        self.store.get(job_id, self.tenant)
        return self.store.attempts(job_id)

    def job_artifact(self, job_id: str, name: str) -> bytes:
        job = self.store.get(job_id, self.tenant)
        info = artifacts.listed(job.artifacts, job_id, name)
        return self.artifacts.read(job.tenant, job_id, name, info.attempt)

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job, its history and its artifacts."""
        job = self.store.delete(job_id, self.tenant)
        self.artifacts.delete(job.tenant, job_id)

    def logs(self, job_id: str, attempt: int | None = None, after: int = 0) -> dict[str, Any]:
        """What the job's processor logged in one attempt (default: the latest), as
        ``GET /v1/jobs/{id}/logs`` answers."""
        job = self.store.get(job_id, self.tenant)
        return self.logs_store.read(job_id, attempt_of(job, attempt), after).to_dict()

    def follow_logs(self, job_id: str, attempt: int | None = None) -> Iterator[dict[str, Any]]:
        """An attempt's log lines (default: the latest) as they are written, ending once
        the attempt is over (read from the database every ``events_poll_interval_s``)."""
        job = self.store.get(job_id, self.tenant)
        follower = LogFollower(
            attempt_of(job, attempt),
            0,
            self.settings.engine.events_poll_interval_s,
            self.settings.engine.progress_flush_interval_s,
        )
        while True:
            job = self.store.get(job_id)
            lines = self.logs_store.read(job_id, follower.attempt, follower.after).lines
            yield from (line.to_dict() for line in lines)
            pause = follower.step(job.attempt, job.status.is_terminal, lines)
            if pause is None:
                return
            time.sleep(pause)

    # -- BatchBackend ---------------------------------------------------------------

    def batch_record(self, batch_id: str) -> BatchRecord:
        return self.batches.get(batch_id, self.tenant)

    def batch_jobs(self, batch_id: str, status: JobStatus | None = None) -> Iterator[JobRecord]:
        return self.batches.jobs(batch_id, self.tenant, status)

    def cancel_batch(self, batch_id: str) -> BatchRecord:
        batch = self.batches.cancel(batch_id, self.tenant)
        self.wake()
        return batch

    def retry_failed(self, batch_id: str) -> BatchRecord:
        batch, _count = self.batches.retry_failed(batch_id, self.tenant)
        self.wake()
        return batch

    def wake(self) -> None:
        """Tell the dispatcher there is news (fire-and-forget; a no-op without Ray)."""
        self._bell.ring()


def _as_spec(spec: SpecLike) -> JobSpec | dict[str, Any]:
    if isinstance(spec, tuple):
        type_, payload = spec
        return {"type": type_, "payload": payload_of(payload)}
    return spec


def connect(settings: Settings | None = None, *, tenant: str = DEFAULT_TENANT) -> DirectClient:
    """Join the Ray cluster (or start one in this process), make sure raypipe's actors run,
    and return a client that submits without HTTP."""
    settings = settings or get_settings()
    actors.init_ray(settings, start_local=True, owner=True)
    client = DirectClient(settings, tenant)
    actors.start_actors(settings)
    return client


@contextmanager
def running(settings: Settings) -> Iterator[DirectClient]:
    """raypipe's actors on ``settings`` (in the Ray this process joined) and a client, both
    stopped when the block ends: for scripts and tests that own their Ray."""
    actors.start_actors(settings)
    client = DirectClient(settings)
    try:
        yield client
    finally:
        actors.stop_actors(settings)
        client.close()
