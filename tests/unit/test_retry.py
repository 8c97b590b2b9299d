"""Retry decisions: backoff, classification, decide and failure outcomes."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from raypipe.exceptions import JobError, PermanentError, RetryableError
from raypipe.jobs import AttemptStatus, ErrorInfo, JobStatus
from raypipe.retry import (
    ErrorKind,
    RetryDecision,
    RetryPolicy,
    backoff,
    classify,
    decide,
    failure_outcome,
    parse_retry_after,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
ERROR = ErrorInfo("RuntimeError", "boom", "Traceback ...")


def exact(**kwargs: object) -> RetryPolicy:
    """A policy without jitter, so delays are exact."""
    return RetryPolicy(jitter=0.0, **kwargs)  # type: ignore[arg-type]


# -- RetryPolicy ------------------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_s, policy.factor, policy.cap_s) == (3, 2.0, 2.0, 600.0)
    assert policy.jitter == 0.1
    assert policy.permanent == ()


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_policy_rejects_max_attempts_below_one(max_attempts: int) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=max_attempts)


@pytest.mark.parametrize("jitter", [-0.01, 1.0, 1.5])
def test_policy_rejects_jitter_outside_unit_interval(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=jitter)


def test_policy_accepts_boundary_values() -> None:
    assert RetryPolicy(max_attempts=1, jitter=0.0).max_attempts == 1
    assert RetryPolicy(jitter=0.99).jitter == 0.99


# -- backoff ----------------------------------------------------------------------------


def test_backoff_grows_by_factor() -> None:
    policy = exact(base_s=1.5, factor=3.0, cap_s=10_000)
    assert [backoff(policy, n) for n in (1, 2, 3, 4)] == [1.5, 4.5, 13.5, 40.5]


def test_backoff_attempt_zero_or_negative_uses_base() -> None:
    policy = exact(base_s=2.0, factor=2.0)
    assert backoff(policy, 0) == 2.0
    assert backoff(policy, -3) == 2.0


def test_backoff_is_capped() -> None:
    policy = exact(base_s=1.0, factor=2.0, cap_s=10.0)
    assert [backoff(policy, n) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]


def test_backoff_stays_capped_for_very_late_attempts() -> None:
    # A "keep trying" policy (RetryPolicy(max_attempts=5000), or a large
    # RAYPIPE_DEFAULT_MAX_ATTEMPTS) reaches attempts where factor ** attempt no longer fits
    # in a float; the delay must still be the cap, not an OverflowError in the dispatcher.
    policy = exact(base_s=1.0, factor=2.0, cap_s=60.0)
    assert backoff(policy, 1100) == 60.0


def test_backoff_zero_base_is_zero_even_with_jitter() -> None:
    policy = RetryPolicy(base_s=0.0, jitter=0.5)
    assert backoff(policy, 3, random.Random(1)) == 0.0


def test_backoff_jitter_stays_within_bounds_and_varies() -> None:
    policy = RetryPolicy(base_s=10.0, factor=2.0, cap_s=1_000.0, jitter=0.2)
    rng = random.Random(1234)
    delays = [backoff(policy, 2, rng) for _ in range(500)]  # raw delay 20s
    assert all(16.0 <= d <= 24.0 for d in delays)
    assert min(delays) < 17.0 and max(delays) > 23.0  # the spread is really used
    assert len(set(delays)) > 400


def test_backoff_jitter_is_reproducible_with_seeded_rng() -> None:
    policy = RetryPolicy(base_s=5.0, jitter=0.3)
    first = [backoff(policy, n, random.Random(7)) for n in range(1, 5)]
    second = [backoff(policy, n, random.Random(7)) for n in range(1, 5)]
    assert first == second


def test_backoff_jitter_never_exceeds_cap() -> None:
    policy = RetryPolicy(base_s=100.0, factor=2.0, cap_s=100.0, jitter=0.5)
    rng = random.Random(99)
    delays = [backoff(policy, 3, rng) for _ in range(300)]
    assert all(50.0 <= d <= 100.0 for d in delays)
    assert min(delays) < 60.0


# -- classify ---------------------------------------------------------------------------


class BadFormat(PermanentError):
    """A processor's own permanent error."""


class Throttled(RetryableError):
    """A processor's own retryable error."""


class Unsupported(Exception):
    pass


class SubUnsupported(Unsupported):
    pass


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (PermanentError("no"), ErrorKind.PERMANENT),
        (BadFormat("bad"), ErrorKind.PERMANENT),
        (RetryableError("later"), ErrorKind.RETRYABLE),
        (Throttled("slow down"), ErrorKind.RETRYABLE),
        (RuntimeError("boom"), ErrorKind.ERROR),
        (ValueError("bad value"), ErrorKind.ERROR),
        (JobError("generic"), ErrorKind.ERROR),
        (Unsupported("x"), ErrorKind.ERROR),
    ],
)
def test_classify_default_policy(exc: BaseException, kind: ErrorKind) -> None:
    assert classify(exc, RetryPolicy()) is kind


def test_classify_policy_permanent_types_and_subclasses() -> None:
    policy = RetryPolicy(permanent=(Unsupported, KeyError))
    assert classify(Unsupported("x"), policy) is ErrorKind.PERMANENT
    assert classify(SubUnsupported("x"), policy) is ErrorKind.PERMANENT
    assert classify(KeyError("k"), policy) is ErrorKind.PERMANENT
    assert classify(ValueError("v"), policy) is ErrorKind.ERROR


def test_classify_policy_permanent_wins_over_retryable() -> None:
    policy = RetryPolicy(permanent=(Throttled,))
    assert classify(Throttled("x"), policy) is ErrorKind.PERMANENT
    assert classify(RetryableError("x"), policy) is ErrorKind.RETRYABLE


# -- decide -----------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 5])
def test_decide_permanent_is_never_retried(attempt: int) -> None:
    policy = exact(max_attempts=10)
    decision = decide(policy, ErrorKind.PERMANENT, attempt)
    assert decision == RetryDecision(retry=False)
    assert decision.delay_s == 0.0


@pytest.mark.parametrize("kind", [ErrorKind.ERROR, ErrorKind.SYSTEM, ErrorKind.RETRYABLE])
def test_decide_retries_with_backoff_until_attempts_run_out(kind: ErrorKind) -> None:
    policy = exact(max_attempts=3, base_s=1.0, factor=4.0)
    assert decide(policy, kind, 1) == RetryDecision(retry=True, delay_s=1.0)
    assert decide(policy, kind, 2) == RetryDecision(retry=True, delay_s=4.0)
    assert decide(policy, kind, 3) == RetryDecision(retry=False)
    assert decide(policy, kind, 4) == RetryDecision(retry=False)


def test_decide_single_attempt_policy_never_retries() -> None:
    assert decide(exact(max_attempts=1), ErrorKind.ERROR, 1).retry is False


def test_decide_job_max_attempts_overrides_policy() -> None:
    policy = exact(max_attempts=2, base_s=1.0)
    # The job allows more attempts than its processor's policy ...
    assert decide(policy, ErrorKind.ERROR, 2, max_attempts=5).retry is True
    assert decide(policy, ErrorKind.ERROR, 4, max_attempts=5).retry is True
    assert decide(policy, ErrorKind.ERROR, 5, max_attempts=5).retry is False
    # ... or fewer.
    policy = exact(max_attempts=10)
    assert decide(policy, ErrorKind.ERROR, 1, max_attempts=1).retry is False
    assert decide(policy, ErrorKind.SYSTEM, 2, max_attempts=2).retry is False


def test_decide_retryable_honours_requested_delay() -> None:
    policy = exact(max_attempts=5, base_s=1.0, cap_s=600.0)
    assert decide(policy, ErrorKind.RETRYABLE, 1, requested_delay_s=42.5) == RetryDecision(
        retry=True, delay_s=42.5
    )


def test_decide_retryable_requested_delay_is_capped_and_not_negative() -> None:
    policy = exact(max_attempts=5, cap_s=30.0)
    assert decide(policy, ErrorKind.RETRYABLE, 1, requested_delay_s=3_600).delay_s == 30.0
    assert decide(policy, ErrorKind.RETRYABLE, 1, requested_delay_s=-5).delay_s == 0.0
    assert decide(policy, ErrorKind.RETRYABLE, 1, requested_delay_s=0).delay_s == 0.0


def test_decide_requested_delay_does_not_beat_exhausted_attempts() -> None:
    policy = exact(max_attempts=2)
    assert decide(policy, ErrorKind.RETRYABLE, 2, requested_delay_s=5).retry is False


def test_decide_requested_delay_only_applies_to_retryable() -> None:
    policy = exact(max_attempts=5, base_s=3.0)
    assert decide(policy, ErrorKind.ERROR, 1, requested_delay_s=99).delay_s == 3.0
    assert decide(policy, ErrorKind.SYSTEM, 1, requested_delay_s=99).delay_s == 3.0


def test_decide_uses_given_rng_for_jitter() -> None:
    policy = RetryPolicy(max_attempts=5, base_s=10.0, jitter=0.5)
    a = decide(policy, ErrorKind.ERROR, 1, rng=random.Random(3))
    b = decide(policy, ErrorKind.ERROR, 1, rng=random.Random(3))
    assert a == b
    assert a.retry and 5.0 <= a.delay_s <= 15.0


# -- failure_outcome --------------------------------------------------------------------


def test_failure_outcome_requeues_with_backoff() -> None:
    policy = exact(max_attempts=3, base_s=2.0, factor=3.0)
    outcome = failure_outcome("job-1", 2, 3, policy, ErrorKind.ERROR, ERROR, NOW)
    assert outcome.job_id == "job-1"
    assert outcome.attempt == 2
    assert outcome.status is JobStatus.QUEUED
    assert outcome.run_at == NOW + timedelta(seconds=6.0)
    assert outcome.error is ERROR
    assert outcome.result is None
    assert outcome.attempt_status is None
    assert outcome.final_attempt_status is AttemptStatus.FAILED


def test_failure_outcome_uses_requested_delay() -> None:
    policy = exact(max_attempts=3, cap_s=600.0)
    outcome = failure_outcome(
        "j", 1, 3, policy, ErrorKind.RETRYABLE, ERROR, NOW, requested_delay_s=90
    )
    assert outcome.status is JobStatus.QUEUED
    assert outcome.run_at == NOW + timedelta(seconds=90)


def test_failure_outcome_fails_when_attempts_exhausted() -> None:
    outcome = failure_outcome("j", 3, 3, exact(max_attempts=3), ErrorKind.ERROR, ERROR, NOW)
    assert outcome.status is JobStatus.FAILED
    assert outcome.run_at is None
    assert outcome.error is ERROR


def test_failure_outcome_fails_on_permanent_error_at_first_attempt() -> None:
    outcome = failure_outcome("j", 1, 5, exact(max_attempts=5), ErrorKind.PERMANENT, ERROR, NOW)
    assert outcome.status is JobStatus.FAILED
    assert outcome.run_at is None


def test_failure_outcome_job_max_attempts_wins_over_policy() -> None:
    policy = exact(max_attempts=10)
    outcome = failure_outcome("j", 2, 2, policy, ErrorKind.ERROR, ERROR, NOW)
    assert outcome.status is JobStatus.FAILED
    outcome = failure_outcome("j", 2, 3, exact(max_attempts=1), ErrorKind.ERROR, ERROR, NOW)
    assert outcome.status is JobStatus.QUEUED


@pytest.mark.parametrize(("attempt", "status"), [(1, JobStatus.QUEUED), (2, JobStatus.FAILED)])
def test_failure_outcome_passes_attempt_status_through(attempt: int, status: JobStatus) -> None:
    outcome = failure_outcome(
        "j",
        attempt,
        2,
        exact(max_attempts=2),
        ErrorKind.SYSTEM,
        ERROR,
        NOW,
        attempt_status=AttemptStatus.TIMED_OUT,
    )
    assert outcome.status is status
    assert outcome.attempt_status is AttemptStatus.TIMED_OUT
    assert outcome.final_attempt_status is AttemptStatus.TIMED_OUT


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), (None, None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds
