"""A handle on one submitted job, the same whether it was submitted in-cluster or over HTTP."""

from __future__ import annotations

import io
import time
from typing import Any, Protocol

from raypipe.exceptions import JobFailed
from raypipe.jobs import AttemptRecord, JobRecord, JobStatus

POLL_START_S = 0.02
POLL_MAX_S = 0.5


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
        bar = _progress_bar(self.id) if progress else None
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


def decode_artifact(name: str, data: bytes) -> Any:
    if name.endswith(".npy"):
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    return data


def _progress_bar(job_id: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=100, desc=job_id[:8], unit="%", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}")
