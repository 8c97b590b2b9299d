"""A job's life (:mod:`raypipe.lifecycle`): the table of legal moves, the store's guarded
changes that follow it (their SQL guards derive from it), and the error a move outside
it raises before any SQL runs. The guards' truth on real databases is in
``tests/integration/test_lifecycle_guards.py``."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from raypipe.jobs import Outcome
from raypipe.lifecycle import (
    MOVES,
    TERMINAL_STATUSES,
    UNFINISHED_STATUSES,
    Change,
    Hold,
    IllegalMove,
    JobStatus,
    check_move,
)
from raypipe.store import transitions
from raypipe.store.tables import guard

PAIRS = [(source, target) for source in JobStatus for target in JobStatus]
LEGAL = [(source, target) for source, target in PAIRS if target in MOVES[source]]
ILLEGAL = [(source, target) for source, target in PAIRS if target not in MOVES[source]]
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def named(pair: tuple[JobStatus, JobStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_the_table_holds_the_documented_life() -> None:
    """queued → processing → completed | failed | cancelled; a retry sends a job back to
    queued; a completed job stays so."""
    assert set(MOVES) == set(JobStatus)
    assert JobStatus.PROCESSING in MOVES[JobStatus.QUEUED]
    assert MOVES[JobStatus.PROCESSING] >= TERMINAL_STATUSES
    assert MOVES[JobStatus.COMPLETED] == frozenset()
    assert all(MOVES[status] <= {JobStatus.QUEUED} for status in TERMINAL_STATUSES)
    assert {JobStatus.QUEUED, JobStatus.PROCESSING} == UNFINISHED_STATUSES


@pytest.mark.parametrize("change", list(Change), ids=lambda change: change.name)
def test_every_change_moves_only_as_the_table_allows(change: Change) -> None:
    assert change.sources, "a change applies to some status"
    for source in change.sources:
        assert change.targets <= MOVES[source], (source, change.targets - MOVES[source])


@pytest.mark.parametrize("change", list(Change), ids=lambda change: change.name)
@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "pg"])
def test_each_guard_names_its_change_statuses_and_hold(change: Change, dialect: Any) -> None:
    sql = str(guard(change).compile(dialect=dialect))
    assert set(re.findall(r"'(\w+)'", sql)) == {status.value for status in change.sources}
    assert ("lease_owner IS NOT NULL" in sql) is (change.hold is Hold.HELD)
    assert ("lease_owner IS NULL" in sql) is (change.hold is Hold.UNHELD)


@pytest.mark.parametrize("move", LEGAL, ids=named)
def test_each_legal_move_has_a_change_whose_guard_takes_it(
    move: tuple[JobStatus, JobStatus],
) -> None:
    source, target = move
    check_move(source, target)
    changes = [c for c in Change if source in c.sources and target in c.targets]
    assert changes, f"no change of the store moves a job from {source.value} to {target.value}"
    for change in changes:
        assert change.to(target, source) is target
        assert f"'{source.value}'" in str(guard(change).compile(dialect=sqlite.dialect()))


@pytest.mark.parametrize("move", ILLEGAL, ids=named)
def test_a_move_outside_the_table_is_illegal(move: tuple[JobStatus, JobStatus]) -> None:
    source, target = move
    with pytest.raises(IllegalMove, match=f"from {source.value} to {target.value}"):
        check_move(source, target)
    for change in Change:
        with pytest.raises(IllegalMove):
            change.to(target, source)


def test_a_change_refuses_a_status_it_does_not_write() -> None:
    with pytest.raises(IllegalMove, match="start cannot move a job to failed: it writes pro"):
        Change.START.to(JobStatus.FAILED)
    with pytest.raises(IllegalMove, match="claim cannot move a job to queued: it keeps the job's"):
        Change.CLAIM.to(JobStatus.QUEUED)
    with pytest.raises(IllegalMove, match="from processing to queued by retry"):
        Change.RETRY.to(JobStatus.QUEUED, JobStatus.PROCESSING)


class NoSQL:
    """A connection that fails the test if anything is asked of it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store used its connection ({name}) before refusing")


def no_jobs(*_: object) -> None:
    raise AssertionError("nothing is submitted")


def test_an_end_outside_the_table_is_refused_before_any_sql() -> None:
    outcomes = [Outcome("j1", 1, JobStatus.COMPLETED), Outcome("j2", 1, JobStatus.PROCESSING)]
    with pytest.raises(IllegalMove, match="end cannot move a job to processing"):
        transitions.advance(NoSQL(), None, outcomes, NOW, no_jobs)  # type: ignore[arg-type]


def test_a_finish_or_a_requeue_writes_only_a_status_its_change_allows() -> None:
    assert transitions.finish_values(Outcome("j", 1, JobStatus.FAILED), NOW)["status"] is (
        JobStatus.FAILED
    )
    with pytest.raises(IllegalMove):
        transitions.finish_values(Outcome("j", 1, JobStatus.PROCESSING), NOW)
    assert transitions.requeued(NOW, 2)["status"] is JobStatus.QUEUED
