"""raypipe: durable background jobs on a Ray cluster, recorded in a database."""

from raypipe.client import AsyncClient, Client
from raypipe.config import Settings, get_settings
from raypipe.context import JobContext
from raypipe.direct import DirectClient, connect
from raypipe.exceptions import JobFailed, PermanentError, RaypipeError, RetryableError
from raypipe.handle import JobHandle
from raypipe.jobs import JobStatus
from raypipe.registry import processor
from raypipe.retry import RetryPolicy

__all__ = [
    "AsyncClient",
    "Client",
    "DirectClient",
    "JobContext",
    "JobFailed",
    "JobHandle",
    "JobStatus",
    "PermanentError",
    "RaypipeError",
    "RetryPolicy",
    "RetryableError",
    "Settings",
    "connect",
    "get_settings",
    "processor",
]
