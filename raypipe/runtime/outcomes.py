"""How an attempt ended, as an :class:`~raypipe.jobs.Outcome`: a pure mapping from what
happened (a result, an error, a stop, a lost lease) and the job's retry policy."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from ray.exceptions import RayError, TaskCancelledError

from raypipe import exceptions
from raypipe.jobs import (
    CANCELLED_ON_REQUEST,
    AttemptStatus,
    ClaimedJob,
    ErrorInfo,
    JobRecord,
    JobStatus,
    Outcome,
)
from raypipe.retry import ErrorKind, RetryPolicy, failure_outcome
from raypipe.runtime.executor import AttemptResult


def attempt_ended(
    job: ClaimedJob,
    stop: Outcome | None,
    result: AttemptResult | None,
    error: BaseException | None,
    policy: RetryPolicy,
    now: datetime,
) -> Outcome:
    """An attempt's end: what stopped it (a cancel or timeout wins over a late result),
    else the error that ended its call, else the result its worker handed back; with the
    log lines the attempt had not shipped."""
    if stop is not None:
        outcome = stop
    elif isinstance(error, TaskCancelledError):
        cancelled = ErrorInfo("TaskCancelled", "the Ray task was cancelled outside raypipe")
        outcome = failed(job, policy, now, ErrorKind.SYSTEM, cancelled)
    elif isinstance(error, RayError):
        outcome = failed(job, policy, now, ErrorKind.SYSTEM, system_error(error))
    elif error is not None:
        info = ErrorInfo(type(error).__name__, str(error)[:1000])
        outcome = failed(job, policy, now, ErrorKind.SYSTEM, info)
    else:
        assert result is not None
        if result.ok:
            outcome = Outcome(
                job.id,
                job.attempt,
                JobStatus.COMPLETED,
                result=result.result,
                message=result.message,
                stage=result.stage,
                artifacts=result.artifacts,
            )
        else:
            assert result.kind is not None and result.error is not None
            delay = result.delay_s
            outcome = failed(job, policy, now, result.kind, result.error, requested_delay_s=delay)
    if result is None or not result.logs:
        return outcome
    return dataclasses.replace(outcome, logs=result.logs)


#: A job as it is when one of its attempts fails: claimed here, or read back from its row.
Attempt = ClaimedJob | JobRecord


def failed(
    job: Attempt, policy: RetryPolicy, now: datetime, kind: ErrorKind, error: ErrorInfo, **how: Any
) -> Outcome:
    """A failed attempt: retried later or failed for good, as ``policy`` decides (``how``:
    the delay the attempt asked for, the status its attempt row takes)."""
    return failure_outcome(job.id, job.attempt, job.max_attempts, policy, kind, error, now, **how)


def cancelled(job_id: str, attempt: int) -> Outcome:
    """Cancelled on request."""
    return Outcome(job_id, attempt, JobStatus.CANCELLED, error=CANCELLED_ON_REQUEST)


def timed_out(job: ClaimedJob, policy: RetryPolicy, now: datetime) -> Outcome:
    """Ran past its timeout (counted from its start): a system failure."""
    error = ErrorInfo(
        "JobTimeout",
        f"attempt {job.attempt} ran past its timeout of {job.timeout_s:g}s and was stopped",
    )
    return failed(job, policy, now, ErrorKind.SYSTEM, error, attempt_status=AttemptStatus.TIMED_OUT)


def drained(job: ClaimedJob, now: datetime) -> Outcome:
    """Stopped by a drain: queued again at once, the attempt not counted."""
    error = ErrorInfo(
        "Drained",
        f"attempt {job.attempt} was stopped by a drain (raypipe down)"
        " and queued again; it does not count against max_attempts",
    )
    return Outcome(
        job.id,
        job.attempt,
        JobStatus.QUEUED,
        error=error,
        run_at=now,
        attempt_status=AttemptStatus.CANCELLED,
        refund=True,
    )


def lease_lost(job: JobRecord, policy: RetryPolicy, now: datetime) -> Outcome:
    """Its dispatcher stopped renewing its lease: cancelled if that was asked, else a
    system failure."""
    if job.cancel_requested:
        return cancelled(job.id, job.attempt)
    error = ErrorInfo(
        "LeaseExpired",
        f"attempt {job.attempt} was lost: its dispatcher"
        f" ({job.lease_owner}) stopped renewing its lease",
    )
    return failed(job, policy, now, ErrorKind.SYSTEM, error)


def refused(job: ClaimedJob, message: str) -> Outcome:
    """Claimed but not runnable here (no processor, no pool): failed for good."""
    return Outcome(
        job.id, job.attempt, JobStatus.FAILED, error=ErrorInfo("PermanentError", message)
    )


def system_error(exc: RayError) -> ErrorInfo:
    """A short, readable record of why Ray could not finish the attempt."""
    text = exceptions.reason(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    cause = getattr(exc, "cause", None)
    name = type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__
    return ErrorInfo(name, message[:1000])
