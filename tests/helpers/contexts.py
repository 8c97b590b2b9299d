"""Job contexts for calling a processor directly, in this process, in unit tests."""

from __future__ import annotations

from raypipe.config import Settings
from raypipe.context import JobContext
from raypipe.jobs import ProgressState


def reporting(
    job_type: str, settings: Settings, job_id: str = "00000000-0000-4000-8000-000000000001"
) -> tuple[JobContext, list[ProgressState]]:
    """A context for one job of ``job_type`` and the list its progress reports go to."""
    states: list[ProgressState] = []
    ctx = JobContext(job_id=job_id, job_type=job_type, settings=settings, report=states.append)
    return ctx, states
