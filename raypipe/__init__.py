"""raypipe: durable background jobs on a Ray cluster, recorded in a database.

The public names below are imported on first use (PEP 562), not with the package: every
process Ray starts for raypipe (the dispatcher, the progress actor, the webhook sender,
each task worker and pool actor) imports ``raypipe`` first, and none of them needs the
HTTP client or the in-cluster client. Importing all of them made each such process start
about half a second later, and a dispatcher's start-up starts three.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from raypipe.log_format import escape_unhandled_records

if TYPE_CHECKING:
    from raypipe.client import AsyncClient, Client
    from raypipe.config import Settings, get_settings
    from raypipe.context import JobContext
    from raypipe.direct import DirectClient, connect
    from raypipe.exceptions import JobFailed, PermanentError, RaypipeError, RetryableError
    from raypipe.handle import JobHandle
    from raypipe.jobs import JobStatus
    from raypipe.registry import processor
    from raypipe.retry import RetryPolicy

# In every process that imports raypipe: its records that nothing else logs are escaped.
escape_unhandled_records()

#: Each public name, by the module that defines it.
_PUBLIC = {
    "AsyncClient": "raypipe.client",
    "Client": "raypipe.client",
    "DirectClient": "raypipe.direct",
    "JobContext": "raypipe.context",
    "JobFailed": "raypipe.exceptions",
    "JobHandle": "raypipe.handle",
    "JobStatus": "raypipe.jobs",
    "PermanentError": "raypipe.exceptions",
    "RaypipeError": "raypipe.exceptions",
    "RetryPolicy": "raypipe.retry",
    "RetryableError": "raypipe.exceptions",
    "Settings": "raypipe.config",
    "connect": "raypipe.direct",
    "get_settings": "raypipe.config",
    "processor": "raypipe.registry",
}

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


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'raypipe' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
