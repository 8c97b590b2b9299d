"""A handle on one submitted job, the same whether it was submitted in-cluster or over HTTP."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any, Protocol

from raypipe.batches import BatchRecord
from raypipe.exceptions import JobFailed
from raypipe.jobs import AttemptRecord, JobRecord, JobStatus

POLL_START_S = 0.02
POLL_MAX_S = 0.5
#: Batches change less often than one job and may be large to read: poll them more gently.
BATCH_POLL_MAX_S = 1.0


class JobBackend(Protocol):
    """What a handle needs from whoever submitted the job."""

    def get_job(self, job_id: str) -> JobRecord: ...

    def cancel_job(self, job_id: str) -> JobRecord: ...

    def retry_job(self, job_id: str) -> JobRecord: ...

    def job_attempts(self, job_id: str) -> list[AttemptRecord]: ...

    def job_artifact(self, job_id: str, name: str) -> bytes: ...


class JobHandle:
    """``status()``, ``progress()``, ``wait()``, ``result()``, ``cancel()`` for one job."""

    def __init__(self, job_id: str, backend: JobBackend, job: JobRecord | None = None):
        self.id = job_id
        self._backend = backend
        self._job = job

    def __repr__(self) -> str:
        status = self._job.status.value if self._job else "?"
        return f"<JobHandle {self.id} {status}>"

    def refresh(self) -> JobRecord:
        """The job as the database has it now."""
        self._job = self._backend.get_job(self.id)
        return self._job

    def status(self) -> JobStatus:
        return self.refresh().status

    def progress(self) -> float:
        """Percent done (0–100)."""
        return self.refresh().progress

    def attempts(self) -> list[AttemptRecord]:
        return self._backend.job_attempts(self.id)

    def wait(self, timeout: float | None = None, progress: bool = False) -> JobRecord:
        """Block until the job is terminal; raise :class:`TimeoutError` after ``timeout`` s.

        ``progress=True`` shows a tqdm bar (notebook-aware).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = progress_bar(self.id) if progress else None
        delay = POLL_START_S
        try:
            while True:
                job = self.refresh()
                if bar is not None:
                    bar.n = round(job.progress, 1)
                    bar.set_postfix_str(job.message or job.status.value, refresh=True)
                if job.status.is_terminal:
                    return job
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {self.id} still {job.status.value} after {timeout}s")
                time.sleep(delay)
                delay = min(POLL_MAX_S, delay * 1.5)
        finally:
            if bar is not None:
                bar.close()

    def result(self, timeout: float | None = None) -> Any:
        """The job's result once it completed; :class:`JobFailed` if it failed or was cancelled."""
        job = self.wait(timeout)
        if job.status is JobStatus.COMPLETED:
            return job.result
        reason = f": {job.error.type}: {job.error.message}" if job.error else ""
        raise JobFailed(f"job {job.id} {job.status.value}{reason}", job=job)

    def cancel(self) -> JobRecord:
        self._job = self._backend.cancel_job(self.id)
        return self._job

    def retry(self) -> JobRecord:
        self._job = self._backend.retry_job(self.id)
        return self._job

    def artifact(self, name: str) -> Any:
        """An artifact of the job: a numpy array for ``.npy``, bytes otherwise."""
        return decode_artifact(name, self._backend.job_artifact(self.id, name))


class BatchBackend(Protocol):
    """What a batch handle needs from whoever submitted the batch."""

    def batch_record(self, batch_id: str) -> BatchRecord: ...

    def batch_jobs(self, batch_id: str, status: JobStatus | None = None) -> Iterator[JobRecord]: ...

    def cancel_batch(self, batch_id: str) -> BatchRecord: ...

    def retry_failed(self, batch_id: str) -> BatchRecord: ...


class BatchHandle:
    """``refresh()``, ``wait()``, ``jobs()``, ``cancel()``, ``retry_failed()`` for one batch."""

    def __init__(self, batch_id: str, backend: BatchBackend, batch: BatchRecord | None = None):
        self.id = batch_id
        self._backend = backend
        self._batch = batch

    def __repr__(self) -> str:
        batch = self._batch
        if batch is None:
            return f"<BatchHandle {self.id}>"
        return f"<BatchHandle {self.id} {batch.status.value} {batch.done}/{batch.total}>"

    def refresh(self) -> BatchRecord:
        """The batch with its counts as the database has them now."""
        self._batch = self._backend.batch_record(self.id)
        return self._batch

    def wait(self, timeout: float | None = None, progress: bool = False) -> BatchRecord:
        """Block until every job of the batch is terminal; :class:`TimeoutError` after
        ``timeout`` s. ``progress=True`` shows a tqdm bar of jobs done (notebook-aware)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        delay = POLL_START_S
        try:
            while True:
                batch = self.refresh()
                if progress:
                    if bar is None:
                        bar = progress_bar(self.id, batch.total, "job")
                    bar.n = batch.done
                    bar.set_postfix_str(batch_postfix(batch), refresh=True)
                if batch.is_finished:
                    return batch
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"batch {self.id} still running after {timeout}s"
                        f" ({batch.done}/{batch.total} jobs done)"
                    )
                time.sleep(delay)
                delay = min(BATCH_POLL_MAX_S, delay * 1.5)
        finally:
            if bar is not None:
                bar.close()

    def jobs(self, status: JobStatus | str | None = None) -> Iterator[JobRecord]:
        """The batch's jobs in submission order (optionally only those in ``status``)."""
        return self._backend.batch_jobs(self.id, JobStatus(status) if status else None)

    def cancel(self) -> BatchRecord:
        self._batch = self._backend.cancel_batch(self.id)
        return self._batch

    def retry_failed(self) -> BatchRecord:
        """Queue the failed jobs again; the batch runs again."""
        self._batch = self._backend.retry_failed(self.id)
        return self._batch


def batch_postfix(batch: BatchRecord) -> str:
    shown = ("processing", "completed", "failed", "cancelled")
    parts = [f"{batch.counts[s]} {s}" for s in shown if batch.counts.get(s)]
    eta = f", eta {batch.eta_s:.0f}s" if batch.eta_s and not batch.is_finished else ""
    return (", ".join(parts) or batch.status.value) + eta


def decode_artifact(name: str, data: bytes) -> Any:
    if name.endswith(".npy"):
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    return data


def progress_bar(id_: str, total: int = 100, unit: str = "%") -> Any:
    """A tqdm bar: a widget in notebooks, text in terminals (``tqdm.auto`` decides)."""
    from tqdm.auto import tqdm

    if unit == "%":
        return tqdm(
            total=total, desc=id_[:8], unit=unit, bar_format="{l_bar}{bar}| {n:.0f}% {postfix}"
        )
    return tqdm(total=total, desc=id_[:8], unit=unit)
