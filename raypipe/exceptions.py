"""One exception hierarchy: the docstring of each class is its default message."""

from __future__ import annotations

import re
from typing import Any

#: An object's default repr, which some libraries put in their messages.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def reason(exc: BaseException) -> str:
    """A library's error message as a user may read it: without the default reprs of
    objects (Pillow's ``cannot identify image file <_io.BytesIO object at 0x7f…>``), which
    say nothing to them and show the process's memory addresses."""
    return _OBJECT_REPR.sub("", str(exc))


class RaypipeError(Exception):
    """raypipe failed."""

    code = "error"

    def __init__(self, message: str | None = None, *, details: list[dict[str, Any]] | None = None):
        self.message = message or (self.__doc__ or "").strip()
        self.details = details or []
        super().__init__(self.message)


#: Most problems an :class:`InvalidInput` lists: one request can hold millions (a payload of
#: half a million unknown keys), and listing them all costs the API seconds and megabytes.
MAX_DETAILS = 50


class InvalidInput(RaypipeError):
    """The request is invalid."""

    code = "validation_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: list[dict[str, Any]] | None = None,
        more: int = 0,
    ):
        """``details`` past :data:`MAX_DETAILS` are dropped and counted in :attr:`more`, with
        ``more`` (problems the caller found and did not list)."""
        details = details or []
        super().__init__(message, details=details[:MAX_DETAILS])
        self.more = more + max(0, len(details) - MAX_DETAILS)


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
    unless the setting of the request's purpose allows the network
    (RAYPIPE_FETCH_ALLOW_NETWORKS for job input URLs, RAYPIPE_WEBHOOK_ALLOW_NETWORKS for
    webhooks)."""

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
