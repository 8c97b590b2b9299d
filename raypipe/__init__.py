"""raypipe: durable background jobs on a Ray cluster, recorded in a database."""

from raypipe.client import AsyncClient, Client
from raypipe.config import Settings, get_settings
from raypipe.context import JobContext
from raypipe.direct import DirectClient, connect
from raypipe.exceptions import JobFailed, PermanentError, RaypipeError, RetryableError
from raypipe.handle import JobHandle
from raypipe.jobs import JobStatus
from raypipe.log_format import escape_unhandled_records
from raypipe.registry import processor
from raypipe.retry import RetryPolicy

# In every process that imports raypipe: its records that nothing else logs are escaped.
escape_unhandled_records()

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
