"""One exception hierarchy: the docstring of each class is its default message."""

from __future__ import annotations

from typing import Any


class RaypipeError(Exception):
    """raypipe failed."""

    code = "error"

    def __init__(self, message: str | None = None, *, details: list[dict[str, Any]] | None = None):
        self.message = message or (self.__doc__ or "").strip()
        self.details = details or []
        super().__init__(self.message)


class InvalidInput(RaypipeError):
    """The request is invalid."""

    code = "validation_error"


class NotFound(RaypipeError):
    """No such object."""

    code = "not_found"


class Conflict(RaypipeError):
    """The request conflicts with the current state."""

    code = "conflict"


class Unauthorized(RaypipeError):
    """A valid API key is required: send `Authorization: Bearer <key>`."""

    code = "unauthorized"


class Forbidden(RaypipeError):
    """This API key may not do that: it needs an admin key."""

    code = "forbidden"


class RateLimited(RaypipeError):
    """Too many requests: slow down and retry after the given delay."""

    code = "rate_limited"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PayloadTooLarge(RaypipeError):
    """The request body is larger than this server accepts."""

    code = "payload_too_large"


class OutboundRefused(RaypipeError):
    """raypipe does not request this URL: only http(s) to globally routable addresses,
    unless RAYPIPE_OUTBOUND_ALLOW_NETWORKS allows the network."""

    code = "outbound_refused"


class OutboundUnresolved(RaypipeError):
    """The URL's host name does not resolve (now)."""

    code = "outbound_unresolved"


class SchemaOutOfDate(RaypipeError):
    """The database schema is behind this version of raypipe: run `raypipe migrate`."""

    code = "schema_out_of_date"


class NotRunning(RaypipeError):
    """raypipe is not running here: start it with `raypipe up`."""

    code = "not_running"


class ServerError(RaypipeError):
    """The raypipe server failed to answer the request."""

    code = "server_error"


class Unreachable(RaypipeError):
    """The raypipe server could not be reached."""

    code = "unreachable"


class JobFailed(RaypipeError):
    """The job ended without a result."""

    code = "job_failed"

    def __init__(self, message: str | None = None, *, job: Any = None):
        super().__init__(message)
        self.job = job


class JobError(RaypipeError):
    """The job's processor raised an error."""

    code = "job_error"


class RetryableError(JobError):
    """A transient failure: the job is tried again after a backoff."""

    code = "retryable_error"

    def __init__(self, message: str | None = None, *, delay_s: float | None = None):
        super().__init__(message)
        self.delay_s = delay_s


class PermanentError(JobError):
    """The job cannot succeed (bad input, unsupported format): no more attempts."""

    code = "permanent_error"


class JobTimeout(JobError):
    """The attempt ran past its timeout and was stopped."""

    code = "timeout"
