"""The store's guards (:func:`raypipe.store.tables.guard`) on real SQLite and PostgreSQL:
each change of :mod:`raypipe.lifecycle` takes exactly the rows of its statuses and hold,
and a move outside the table changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from raypipe.jobs import Outcome
from raypipe.lifecycle import Change, Hold, IllegalMove, JobStatus
from raypipe.store import DispatchStore, JobStore, create_engine
from raypipe.store.tables import guard, jobs

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
#: One job of each status, held by a dispatcher and not.
ROWS = {
    f"{status.value}-{'held' if held else 'free'}": (status, held)
    for status in JobStatus
    for held in (True, False)
}


def _row(job_id: str, status: JobStatus, held: bool) -> dict[str, object]:
    return {
        "id": job_id,
        "tenant": "default",
        "type": "noop",
        "queue": "default",
        "priority": 0,
        "status": status,
        "tags": [],
        "max_attempts": 3,
        "timeout_s": 60.0,
        "request_hash": "",
        "attempt": 1,
        "lease_owner": "owner" if held else None,
        "created_at": NOW,
        "run_at": NOW,
        "updated_at": NOW,
    }


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(jobs.insert(), [_row(i, *kept) for i, kept in ROWS.items()])
    yield engine
    engine.dispose()


def test_each_change_takes_the_rows_of_its_statuses_and_hold(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        for change in Change:
            taken = set(conn.execute(sa.select(jobs.c.id).where(guard(change))).scalars())
            expected = {
                job_id
                for job_id, (status, held) in ROWS.items()
                if status in change.sources
                and (change.hold is Hold.EITHER or held is (change.hold is Hold.HELD))
            }
            assert taken == expected, change


def test_an_end_outside_the_table_changes_nothing(engine: sa.Engine) -> None:
    dispatch = DispatchStore(JobStore(engine))
    with pytest.raises(IllegalMove):
        dispatch.record([Outcome("queued-held", 1, JobStatus.PROCESSING)])
    assert dispatch.jobs.get("queued-held").status is JobStatus.QUEUED
    # The same job ends by a legal move.
    assert dispatch.record([Outcome("queued-held", 1, JobStatus.FAILED)]) == 1
    assert dispatch.jobs.get("queued-held").status is JobStatus.FAILED
