"""Faults: raypipe's actors, its database or Ray itself die under running jobs.

Each test breaks only what it owns: a private PostgreSQL server (never the machine's
shared one), a separate Ray head, or actors in its own namespace.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from raypipe.handle import JobHandle
from raypipe.jobs import AttemptStatus, JobStatus
from tests.conftest import IN_CI, free_port, process_alive
from tests.helpers import postgres
from tests.helpers.kills import actor_pid
from tests.helpers.postgres import PrivatePostgres, why_unavailable
from tests.integration.conftest import raypipe

__all__ = [
    "PrivatePostgres",
    "actor_pid",
    "private_postgres",
    "process_alive",
    "raypipe",
    "rescued_then_completed",
]


def rescued_then_completed(job: JobHandle) -> None:
    """Assert the job's first attempt expired with its lease and the second completed."""
    final = job.wait(60)
    assert final.status is JobStatus.COMPLETED
    first, second = job.attempts()
    assert first.status is AttemptStatus.FAILED
    assert first.error is not None and first.error.type == "LeaseExpired"
    assert second.status is AttemptStatus.COMPLETED


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A migrated PostgreSQL server of this test's own on a free port, removed afterwards.

    Missing binaries skip the test on a laptop and fail it in CI.
    """
    reason = why_unavailable()
    if reason is not None:
        if IN_CI:
            pytest.fail(reason + " (CI requires it)")
        pytest.skip(reason)
    with postgres.private_postgres(free_port()) as server:
        yield server
