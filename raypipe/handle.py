"""Handles on one submitted job or batch: :class:`JobHandle` and :class:`BatchHandle`, the same
whether it was submitted in-cluster or over HTTP, and their asyncio twins
:class:`AsyncJobHandle` and :class:`AsyncBatchHandle` for :class:`~raypipe.AsyncClient`.

Twins differ only in how they read and sleep: when to read again, when to give up and what
the progress bar shows are decided once, by :class:`_JobWait` and :class:`_BatchWait`.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast, overload

from pydantic import BaseModel

from raypipe.batches import BatchRecord
from raypipe.exceptions import JobFailed, RateLimited, ServerError
from raypipe.jobs import AttemptRecord, JobRecord, JobStatus

if TYPE_CHECKING:
    from typing_extensions import Self

POLL_START_S = 0.02
POLL_MAX_S = 0.5
#: Batches change less often than one job and may be large to read: poll them more gently.
BATCH_POLL_MAX_S = 1.0

B = TypeVar("B")
#: What a job's result is read as: a pydantic model is rebuilt from the stored JSON.
R = TypeVar("R")


class JobBackend(Protocol):
    """What a handle needs from whoever submitted the job."""

    def get_job(self, job_id: str) -> JobRecord: ...

    def cancel_job(self, job_id: str) -> JobRecord: ...

    def retry_job(self, job_id: str) -> JobRecord: ...

    def job_attempts(self, job_id: str) -> list[AttemptRecord]: ...

    def job_artifact(self, job_id: str, name: str) -> bytes: ...


class AsyncJobBackend(Protocol):
    """:class:`JobBackend`, awaited, plus the job's event stream, which ``wait`` follows."""

    async def get_job(self, job_id: str) -> JobRecord: ...

    async def cancel_job(self, job_id: str) -> JobRecord: ...

    async def retry_job(self, job_id: str) -> JobRecord: ...

    async def job_attempts(self, job_id: str) -> list[AttemptRecord]: ...

    async def job_artifact(self, job_id: str, name: str) -> bytes: ...

    def stream(
        self, job_id: str, last_event_id: int | str | None = None
    ) -> AsyncIterator[dict[str, Any]]: ...


class BatchBackend(Protocol):
    """What a batch handle needs from whoever submitted the batch."""

    def batch_record(self, batch_id: str) -> BatchRecord: ...

    def batch_jobs(self, batch_id: str, status: JobStatus | None = None) -> Iterator[JobRecord]: ...

    def cancel_batch(self, batch_id: str) -> BatchRecord: ...

    def retry_failed(self, batch_id: str) -> BatchRecord: ...


class AsyncBatchBackend(Protocol):
    """:class:`BatchBackend`, awaited; ``batch_jobs`` is an async iterator."""

    async def batch_record(self, batch_id: str) -> BatchRecord: ...

    def batch_jobs(
        self, batch_id: str, status: JobStatus | None = None
    ) -> AsyncIterator[JobRecord]: ...

    async def cancel_batch(self, batch_id: str) -> BatchRecord: ...

    async def retry_failed(self, batch_id: str) -> BatchRecord: ...


# -- waiting ------------------------------------------------------------------------------


class _Wait(ABC):
    """One wait for a job or a batch to end, apart from reading it and sleeping: reads
    ``POLL_START_S`` apart at first, half as far again each time up to ``max_pause_s``;
    :class:`TimeoutError` past ``timeout`` s; closes its tqdm bar, if any, at the end."""

    def __init__(self, timeout: float | None, max_pause_s: float):
        self.timeout = timeout
        self.bar: Any = None
        self._deadline = math.inf if timeout is None else time.monotonic() + timeout
        self._pause = POLL_START_S
        self._max_pause_s = max_pause_s

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()

    @abstractmethod
    def still(self) -> str:
        """What has not ended yet, for the timeout's message."""

    def timed_out(self) -> TimeoutError:
        return TimeoutError(f"{self.still()} after {self.timeout}s")

    def pause(self) -> float:
        """The pause before the next read (never past the deadline); :class:`TimeoutError`
        once the deadline has passed."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out()
        pause, self._pause = self._pause, min(self._max_pause_s, self._pause * 1.5)
        return min(pause, left)


class _JobWait(_Wait):
    """A wait for one job; ``progress=True`` shows a tqdm bar of its percent done."""

    def __init__(self, job_id: str, timeout: float | None, progress: bool):
        super().__init__(timeout, POLL_MAX_S)
        self.job_id = job_id
        self.status = "unknown"
        self.bar = progress_bar(job_id) if progress else None

    def show(self, status: str, progress: float, message: str | None) -> None:
        """Take the job's state, read or from an event."""
        self.status = status
        if self.bar is not None:
            self.bar.n = round(progress, 1)
            self.bar.set_postfix_str(message or status, refresh=True)

    def ended(self, job: JobRecord) -> bool:
        """Take a read of the job; whether it is terminal."""
        self.show(job.status.value, job.progress, job.message)
        return job.status.is_terminal

    def still(self) -> str:
        return f"job {self.job_id} still {self.status}"


class _BatchWait(_Wait):
    """A wait for every job of a batch; ``progress=True`` shows a tqdm bar of jobs done."""

    def __init__(self, batch_id: str, timeout: float | None, progress: bool):
        super().__init__(timeout, BATCH_POLL_MAX_S)
        self.batch_id = batch_id
        self.progress = progress
        self.batch: BatchRecord | None = None

    def ended(self, batch: BatchRecord) -> bool:
        """Take a read of the batch; whether every job of it is terminal."""
        self.batch = batch
        if self.progress:
            if self.bar is None:
                self.bar = progress_bar(self.batch_id, batch.total, "job")
            self.bar.n = batch.done
            self.bar.set_postfix_str(batch_postfix(batch), refresh=True)
        return batch.is_finished

    def still(self) -> str:
        done = f" ({self.batch.done}/{self.batch.total} jobs done)" if self.batch else ""
        return f"batch {self.batch_id} still running{done}"


# -- jobs ---------------------------------------------------------------------------------


class _JobHandleBase(Generic[B, R]):
    """What both job handles hold: the job's id, its backend, its last read, and what its
    result is read as (``result_type``: a pydantic model is rebuilt; None: the JSON)."""

    def __init__(
        self,
        job_id: str,
        backend: B,
        job: JobRecord | None = None,
        *,
        result_type: type[R] | None = None,
    ):
        self.id = job_id
        self._backend = backend
        self._job = job
        self._result_type = result_type

    def __repr__(self) -> str:
        status = self._job.status.value if self._job else "?"
        return f"<{type(self).__name__} {self.id} {status}>"


class JobHandle(_JobHandleBase[JobBackend, R]):
    """``status()``, ``progress()``, ``wait()``, ``result()``, ``cancel()`` for one job."""

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
        with _JobWait(self.id, timeout, progress) as waiting:
            while not waiting.ended(job := self.refresh()):
                time.sleep(waiting.pause())
        return job

    def result(self, timeout: float | None = None) -> R:
        """The job's result once it completed; :class:`JobFailed` if it failed or was cancelled."""
        return _outcome(self.wait(timeout), self._result_type)

    def cancel(self) -> JobRecord:
        self._job = self._backend.cancel_job(self.id)
        return self._job

    def retry(self) -> JobRecord:
        self._job = self._backend.retry_job(self.id)
        return self._job

    def artifact(self, name: str) -> Any:
        """An artifact of the job: a numpy array for ``.npy``, bytes otherwise."""
        return decode_artifact(name, self._backend.job_artifact(self.id, name))


class AsyncJobHandle(_JobHandleBase[AsyncJobBackend, R]):
    """:class:`JobHandle` for :class:`~raypipe.AsyncClient`: the same methods, awaited."""

    async def refresh(self) -> JobRecord:
        """The job as the database has it now."""
        self._job = await self._backend.get_job(self.id)
        return self._job

    async def status(self) -> JobStatus:
        return (await self.refresh()).status

    async def progress(self) -> float:
        """Percent done (0–100)."""
        return (await self.refresh()).progress

    async def attempts(self) -> list[AttemptRecord]:
        return await self._backend.job_attempts(self.id)

    async def wait(self, timeout: float | None = None, progress: bool = False) -> JobRecord:
        """Until the job is terminal, following its event stream rather than polling;
        :class:`TimeoutError` after ``timeout`` s. ``progress=True`` shows a tqdm bar."""
        with _JobWait(self.id, timeout, progress) as waiting:
            try:
                return await asyncio.wait_for(self._follow(waiting), timeout)
            except asyncio.TimeoutError:
                raise waiting.timed_out() from None

    async def _follow(self, waiting: _JobWait) -> JobRecord:
        last_event_id = None
        # A stream read from the start may end at an earlier attempt's end (the job was
        # retried since): then the job is read again and the stream resumed.
        while not waiting.ended(job := await self.refresh()):
            try:
                async for event in self._backend.stream(self.id, last_event_id):
                    last_event_id = event["event_id"]
                    waiting.show(event["status"], event["progress"], event["message"])
            except (RateLimited, ServerError):
                # The API refused the stream: the key's or tenant's streams are all open
                # (429), or the replica's (503). This wait polls instead, as JobHandle.wait
                # does; the next round tries a stream again.
                await asyncio.sleep(waiting.pause())
        return job

    async def result(self, timeout: float | None = None) -> R:
        """The job's result once it completed; :class:`JobFailed` if it failed or was cancelled."""
        return _outcome(await self.wait(timeout), self._result_type)

    async def cancel(self) -> JobRecord:
        self._job = await self._backend.cancel_job(self.id)
        return self._job

    async def retry(self) -> JobRecord:
        self._job = await self._backend.retry_job(self.id)
        return self._job

    async def artifact(self, name: str) -> Any:
        """An artifact of the job: a numpy array for ``.npy``, bytes otherwise."""
        return decode_artifact(name, await self._backend.job_artifact(self.id, name))


def _outcome(job: JobRecord, result_type: type[R] | None) -> R:
    """A terminal job's result (a ``result_type`` model rebuilt from its JSON), or
    :class:`JobFailed` if it failed or was cancelled."""
    if job.status is JobStatus.COMPLETED:
        if isinstance(result_type, type) and issubclass(result_type, BaseModel):
            return cast(R, result_type.model_validate(job.result))
        return cast(R, job.result)
    reason = f": {job.error.type}: {job.error.message}" if job.error else ""
    raise JobFailed(f"job {job.id} {job.status.value}{reason}", job=job)


# -- batches ------------------------------------------------------------------------------


class _BatchHandleBase(Generic[B, R]):
    """What both batch handles hold: the batch's id, its backend, its last read, and what
    its jobs' results are read as (as :class:`JobHandle`'s)."""

    def __init__(
        self,
        batch_id: str,
        backend: B,
        batch: BatchRecord | None = None,
        *,
        result_type: type[R] | None = None,
    ):
        self.id = batch_id
        self._backend = backend
        self._batch = batch
        self._result_type = result_type

    def __repr__(self) -> str:
        batch = self._batch
        if batch is None:
            return f"<{type(self).__name__} {self.id}>"
        return f"<{type(self).__name__} {self.id} {batch.status.value} {batch.done}/{batch.total}>"


class BatchHandle(_BatchHandleBase[BatchBackend, R]):
    """``refresh()``, ``wait()``, ``jobs()``, ``cancel()``, ``retry_failed()`` for one batch."""

    def refresh(self) -> BatchRecord:
        """The batch with its counts as the database has them now."""
        self._batch = self._backend.batch_record(self.id)
        return self._batch

    def wait(self, timeout: float | None = None, progress: bool = False) -> BatchRecord:
        """Block until every job of the batch is terminal; :class:`TimeoutError` after
        ``timeout`` s. ``progress=True`` shows a tqdm bar of jobs done (notebook-aware)."""
        with _BatchWait(self.id, timeout, progress) as waiting:
            while not waiting.ended(batch := self.refresh()):
                time.sleep(waiting.pause())
        return batch

    def jobs(self, status: JobStatus | str | None = None) -> Iterator[JobRecord]:
        """The batch's jobs in submission order (optionally only those in ``status``)."""
        return self._backend.batch_jobs(self.id, JobStatus(status) if status else None)

    def results(self, timeout: float | None = None) -> list[R]:
        """Once the batch ended, each job's result in submission order; :class:`JobFailed`
        for the first job that did not complete."""
        self.wait(timeout)
        return [_outcome(job, self._result_type) for job in self.jobs()]

    def cancel(self) -> BatchRecord:
        self._batch = self._backend.cancel_batch(self.id)
        return self._batch

    def retry_failed(self) -> BatchRecord:
        """Queue the failed jobs again; the batch runs again."""
        self._batch = self._backend.retry_failed(self.id)
        return self._batch


class BatchLookups:
    """``get_batch`` and ``wait_batch`` of a blocking client, over its :class:`BatchBackend`
    methods (:class:`~raypipe.Client` and the in-cluster client share them)."""

    def get_batch(self: BatchBackend, batch_id: str) -> BatchHandle:
        return BatchHandle(batch_id, self, self.batch_record(batch_id))

    def wait_batch(
        self: BatchBackend, batch_id: str, timeout: float | None = None, progress: bool = False
    ) -> BatchRecord:
        """Block until every job of the batch is terminal (see :meth:`BatchHandle.wait`)."""
        return BatchHandle(batch_id, self).wait(timeout, progress)


class AsyncBatchHandle(_BatchHandleBase[AsyncBatchBackend, R]):
    """:class:`BatchHandle` for :class:`~raypipe.AsyncClient`: the same methods, awaited;
    ``jobs`` is an async iterator."""

    async def refresh(self) -> BatchRecord:
        """The batch with its counts as the database has them now."""
        self._batch = await self._backend.batch_record(self.id)
        return self._batch

    async def wait(self, timeout: float | None = None, progress: bool = False) -> BatchRecord:
        """Until every job of the batch is terminal; :class:`TimeoutError` after ``timeout`` s.
        ``progress=True`` shows a tqdm bar of jobs done."""
        with _BatchWait(self.id, timeout, progress) as waiting:
            while not waiting.ended(batch := await self.refresh()):
                await asyncio.sleep(waiting.pause())
        return batch

    def jobs(self, status: JobStatus | str | None = None) -> AsyncIterator[JobRecord]:
        """The batch's jobs in submission order (optionally only those in ``status``)."""
        return self._backend.batch_jobs(self.id, JobStatus(status) if status else None)

    async def results(self, timeout: float | None = None) -> list[R]:
        """Once the batch ended, each job's result in submission order; :class:`JobFailed`
        for the first job that did not complete."""
        await self.wait(timeout)
        return [_outcome(job, self._result_type) async for job in self.jobs()]

    async def cancel(self) -> BatchRecord:
        self._batch = await self._backend.cancel_batch(self.id)
        return self._batch

    async def retry_failed(self) -> BatchRecord:
        """Queue the failed jobs again; the batch runs again."""
        self._batch = await self._backend.retry_failed(self.id)
        return self._batch


@overload
def typed_job(handle: JobHandle[Any], result_type: type[R] | None) -> JobHandle[R]: ...
@overload
def typed_job(handle: AsyncJobHandle[Any], result_type: type[R] | None) -> AsyncJobHandle[R]: ...
def typed_job(
    handle: JobHandle[Any] | AsyncJobHandle[Any], result_type: type[R] | None
) -> JobHandle[R] | AsyncJobHandle[R]:
    """The same job, its result read as ``result_type`` (typed submission's handles)."""
    if isinstance(handle, AsyncJobHandle):
        return AsyncJobHandle(handle.id, handle._backend, handle._job, result_type=result_type)
    return JobHandle(handle.id, handle._backend, handle._job, result_type=result_type)


@overload
def typed_batch(handle: BatchHandle[Any], result_type: type[R] | None) -> BatchHandle[R]: ...
@overload
def typed_batch(
    handle: AsyncBatchHandle[Any], result_type: type[R] | None
) -> AsyncBatchHandle[R]: ...
def typed_batch(
    handle: BatchHandle[Any] | AsyncBatchHandle[Any], result_type: type[R] | None
) -> BatchHandle[R] | AsyncBatchHandle[R]:
    """The same batch, its jobs' results read as ``result_type``."""
    if isinstance(handle, AsyncBatchHandle):
        return AsyncBatchHandle(handle.id, handle._backend, handle._batch, result_type=result_type)
    return BatchHandle(handle.id, handle._backend, handle._batch, result_type=result_type)


# -- shown and read -----------------------------------------------------------------------


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
