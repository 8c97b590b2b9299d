"""How an attempt's end becomes an ``Outcome`` (``raypipe/runtime/outcomes.py``): a pure
mapping, tested without a dispatcher."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from ray.exceptions import RayTaskError, TaskCancelledError, WorkerCrashedError

from raypipe.job_logs import LogLine
from raypipe.jobs import AttemptStatus, ClaimedJob, ErrorInfo, JobStatus, Outcome
from raypipe.retry import ErrorKind, RetryPolicy
from raypipe.runtime import outcomes
from raypipe.runtime.executor import AttemptResult
from tests.unit.test_jobs import record

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
#: Retries after exactly 2 s, then 4 s: no jitter, so the run_at is known.
POLICY = RetryPolicy(max_attempts=3, base_s=2.0, jitter=0.0)


def _job(attempt: int = 1, max_attempts: int = 3) -> ClaimedJob:
    return ClaimedJob("j1", "sleep", "default", {}, attempt, max_attempts, timeout_s=10.0)


def _ended(
    job: ClaimedJob | None = None,
    stop: Outcome | None = None,
    result: AttemptResult | None = None,
    error: BaseException | None = None,
) -> Outcome:
    return outcomes.attempt_ended(job or _job(), stop, result, error, POLICY, NOW)


def test_a_result_completes_the_job_with_what_its_worker_reported() -> None:
    artifact = {"name": "mesh.glb", "size": 3}
    result = AttemptResult(True, {"n": 1}, message="done", stage="end", artifacts=(artifact,))
    outcome = _ended(result=result)
    assert (outcome.status, outcome.result, outcome.message) == (
        JobStatus.COMPLETED,
        {"n": 1},
        "done",
    )
    assert (outcome.stage, outcome.artifacts, outcome.final_attempt_status) == (
        "end",
        (artifact,),
        AttemptStatus.COMPLETED,
    )


def test_a_stop_wins_over_a_late_result_and_keeps_the_attempts_last_lines() -> None:
    line = LogLine("j1", 1, 0, NOW, "INFO", "late")
    stop = outcomes.cancelled("j1", 1)
    outcome = _ended(stop=stop, result=AttemptResult(True, {"n": 1}, logs=(line,)))
    assert (outcome.status, outcome.result, outcome.logs) == (JobStatus.CANCELLED, None, (line,))


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (TaskCancelledError(), "TaskCancelled"),
        (WorkerCrashedError(), "WorkerCrashedError"),
        (MemoryError("no room"), "MemoryError"),
    ],
)
def test_a_call_that_failed_is_a_system_failure_retried_later(
    error: BaseException, error_type: str
) -> None:
    outcome = _ended(error=error)
    assert outcome.status is JobStatus.QUEUED
    assert outcome.run_at == NOW + timedelta(seconds=2)
    assert outcome.error is not None and outcome.error.type == error_type


def test_a_ray_task_error_is_named_by_its_cause() -> None:
    try:
        raise ValueError("bad pixel")
    except ValueError as cause:
        error = RayTaskError("run_task", "Traceback ...\nValueError: bad pixel", cause)
    info = outcomes.system_error(error)
    assert info.type == "ValueError"
    assert "\n" not in info.message and len(info.message) <= 1000


def test_a_failure_on_the_last_attempt_fails_the_job() -> None:
    failure = AttemptResult(False, kind=ErrorKind.ERROR, error=ErrorInfo("ValueError", "x"))
    assert _ended(_job(attempt=2), result=failure).status is JobStatus.QUEUED
    outcome = _ended(_job(attempt=3), result=failure)
    assert (outcome.status, outcome.final_attempt_status) == (
        JobStatus.FAILED,
        AttemptStatus.FAILED,
    )


def test_a_permanent_error_is_not_retried_and_a_retry_keeps_the_delay_asked_for() -> None:
    permanent = AttemptResult(
        False, kind=ErrorKind.PERMANENT, error=ErrorInfo("PermanentError", "x")
    )
    assert _ended(result=permanent).status is JobStatus.FAILED
    retry = AttemptResult(
        False, kind=ErrorKind.RETRYABLE, error=ErrorInfo("RetryableError", "x"), delay_s=30.0
    )
    assert _ended(result=retry).run_at == NOW + timedelta(seconds=30)


def test_a_timeout_is_a_system_failure_whose_attempt_timed_out() -> None:
    outcome = outcomes.timed_out(_job(), POLICY, NOW)
    assert (outcome.status, outcome.final_attempt_status) == (
        JobStatus.QUEUED,
        AttemptStatus.TIMED_OUT,
    )
    assert outcome.error is not None and "timeout of 10s" in outcome.error.message


def test_a_drained_attempt_is_queued_at_once_and_not_counted() -> None:
    outcome = outcomes.drained(_job(attempt=3), NOW)
    assert (outcome.status, outcome.run_at, outcome.refund) == (JobStatus.QUEUED, NOW, True)
    assert outcome.final_attempt_status is AttemptStatus.CANCELLED


def test_a_lost_lease_fails_the_attempt_unless_a_cancel_was_asked() -> None:
    lost = record(status=JobStatus.PROCESSING, attempt=1, lease_owner="ns/d:1:abc")
    outcome = outcomes.lease_lost(lost, POLICY, NOW)
    assert (outcome.status, outcome.error and outcome.error.type) == (
        JobStatus.QUEUED,
        "LeaseExpired",
    )
    assert outcome.error is not None and "ns/d:1:abc" in outcome.error.message
    asked = record(status=JobStatus.PROCESSING, attempt=1, cancel_requested=True)
    assert outcomes.lease_lost(asked, POLICY, NOW).status is JobStatus.CANCELLED


def test_a_job_nothing_here_can_run_fails_for_good() -> None:
    outcome = outcomes.refused(_job(), "no processor registered for 'sleep'")
    assert (outcome.status, outcome.error) == (
        JobStatus.FAILED,
        ErrorInfo("PermanentError", "no processor registered for 'sleep'"),
    )
