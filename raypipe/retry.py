"""Retry decisions as pure functions of (policy, error, attempt)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from raypipe.exceptions import PermanentError, RetryableError
from raypipe.jobs import AttemptStatus, ErrorInfo, JobStatus, Outcome


@dataclass(frozen=True)
class RetryPolicy:
    """How a processor's failed attempts are retried.

    ``max_attempts`` counts every execution, the first included. Delays grow as
    ``base_s * factor ** (attempt - 1)``, capped at ``cap_s``, then spread by
    ``±jitter`` (a fraction) so that jobs failing together do not retry together.
    ``permanent`` lists exception types that are never retried, besides
    :class:`~raypipe.exceptions.PermanentError`.
    """

    max_attempts: int = 3
    base_s: float = 2.0
    factor: float = 2.0
    cap_s: float = 600.0
    jitter: float = 0.1
    permanent: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")


class ErrorKind(str, Enum):
    """How a failure bears on retrying."""

    PERMANENT = "permanent"  # the job cannot succeed: never retried
    RETRYABLE = "retryable"  # the processor asked for another attempt
    ERROR = "error"  # any other exception from the processor
    SYSTEM = "system"  # worker crash, node death, out of memory, timeout, lost lease


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0


def classify(exc: BaseException, policy: RetryPolicy) -> ErrorKind:
    """The kind of an exception raised by a processor."""
    if isinstance(exc, (PermanentError, policy.permanent)):
        return ErrorKind.PERMANENT
    if isinstance(exc, RetryableError):
        return ErrorKind.RETRYABLE
    return ErrorKind.ERROR


def backoff(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """The delay before the attempt after ``attempt`` (1-based)."""
    try:
        raw = min(policy.cap_s, policy.base_s * policy.factor ** max(attempt - 1, 0))
    except OverflowError:
        raw = policy.cap_s
    if policy.jitter and raw:
        spread = raw * policy.jitter
        raw += (rng or random).uniform(-spread, spread)
    return max(0.0, min(raw, policy.cap_s))


def decide(
    policy: RetryPolicy,
    kind: ErrorKind,
    attempt: int,
    max_attempts: int | None = None,
    requested_delay_s: float | None = None,
    rng: random.Random | None = None,
) -> RetryDecision:
    """Whether a failed attempt is retried, and after how long.

    ``max_attempts`` is the job's own limit when it overrides the policy's;
    ``requested_delay_s`` is the delay a :class:`RetryableError` asked for.
    """
    limit = max_attempts if max_attempts is not None else policy.max_attempts
    if kind is ErrorKind.PERMANENT or attempt >= limit:
        return RetryDecision(retry=False)
    if kind is ErrorKind.RETRYABLE and requested_delay_s is not None:
        return RetryDecision(retry=True, delay_s=max(0.0, min(requested_delay_s, policy.cap_s)))
    return RetryDecision(retry=True, delay_s=backoff(policy, attempt, rng))


def failure_outcome(
    job_id: str,
    attempt: int,
    max_attempts: int,
    policy: RetryPolicy,
    kind: ErrorKind,
    error: ErrorInfo,
    now: datetime,
    requested_delay_s: float | None = None,
    attempt_status: AttemptStatus | None = None,
) -> Outcome:
    """The outcome of a failed attempt: back to ``queued`` at a later ``run_at``, or ``failed``."""
    decision = decide(policy, kind, attempt, max_attempts, requested_delay_s)
    if decision.retry:
        return Outcome(
            job_id,
            attempt,
            JobStatus.QUEUED,
            error=error,
            run_at=now + timedelta(seconds=decision.delay_s),
            attempt_status=attempt_status,
        )
    return Outcome(job_id, attempt, JobStatus.FAILED, error=error, attempt_status=attempt_status)


#: HTTP statuses worth another attempt later (remote services, input URLs); any other
#: 4xx/5xx will not get better by waiting.
RETRYABLE_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the delta form; dates are rare enough to ignore)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
