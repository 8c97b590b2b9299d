"""The run table: every attempt this dispatcher has handed to the cluster, each in a named
state, until its end is recorded.

A run moves ``claimed → started → stopping → forced → ended`` (see :data:`MOVES`); a
move outside that table raises. A stop (cancel, timeout, drain) may come before the
worker began: such a run is ``stopping`` without having started, and is forced only once
it starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from raypipe.jobs import ClaimedJob, Outcome
from raypipe.runtime.executor import AttemptResult, Finished, Started
from raypipe.runtime.pools import Member, Pool


class RunState(Enum):
    #: Handed to the cluster; its worker has not said it began.
    CLAIMED = "claimed"
    #: Its worker began: the job is ``processing`` and its timeout counts from here.
    STARTED = "started"
    #: Asked to stop (cancelled, timed out, drained); ended by force after the grace.
    STOPPING = "stopping"
    #: Its task was killed or its actor replaced; its end is awaited.
    FORCED = "forced"
    #: Its end was heard; recorded at the next round, then dropped from the table.
    ENDED = "ended"


#: The legal moves of a run.
MOVES: dict[RunState, frozenset[RunState]] = {
    RunState.CLAIMED: frozenset({RunState.STARTED, RunState.STOPPING, RunState.ENDED}),
    RunState.STARTED: frozenset({RunState.STOPPING, RunState.ENDED}),
    RunState.STOPPING: frozenset({RunState.FORCED, RunState.ENDED}),
    RunState.FORCED: frozenset({RunState.ENDED}),
    RunState.ENDED: frozenset(),
}


@dataclass(eq=False)
class Call:
    """One stream of attempt events: a task (one job) or a pool call (a bundle)."""

    job_ids: list[str]
    pool: Pool | None = None
    member: Member | None = None
    #: What the cluster returned for it (what a cancellation names).
    handle: Any = None
    #: Jobs of a pool call whose actor slot is still taken (freed as each one ends).
    holding: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.holding = set(self.job_ids) if self.member is not None else set()

    def release(self, job_ids: Sequence[str]) -> None:
        """Free the actor slots of these jobs of the call (each once)."""
        if self.pool is not None and self.member is not None:
            ended = self.holding.intersection(job_ids)
            if ended:
                self.holding -= ended
                self.pool.release(self.member, len(ended))


@dataclass(eq=False)
class Run:
    """One attempt in flight."""

    job: ClaimedJob
    call: Call
    #: What the job itself holds while in flight (a task's resources; nothing on a pool).
    held: dict[str, float]
    #: Pools it calls into (their actors must stay while it runs).
    uses: tuple[str, ...]
    claimed_at: float
    state: RunState = RunState.CLAIMED
    #: When its worker began (it may begin while already stopping).
    started_at: float | None = None
    ended_at: float | None = None
    result: AttemptResult | None = None
    error: BaseException | None = None
    #: How a stop ended it: wins over a late result.
    stop: Outcome | None = None
    #: While stopping: when it is ended by force.
    force_at: float = 0.0

    @property
    def deadline(self) -> float | None:
        """When it times out: ``timeout_s`` from its start."""
        return None if self.started_at is None else self.started_at + self.job.timeout_s

    @property
    def duration_s(self) -> float:
        """How long it ran here (0 when it never began)."""
        if self.started_at is None:
            return 0.0
        return (self.ended_at or self.started_at) - self.started_at

    def move(self, to: RunState) -> None:
        if to not in MOVES[self.state]:
            raise ValueError(
                f"run of job {self.job.id}: no move from {self.state.value} to {to.value}"
            )
        self.state = to


class RunTable:
    """The runs in flight by job id, and the starts and ends not recorded yet."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._starts: list[Started] = []
        self._ended: list[str] = []

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(self._runs.values())

    def snapshot(self) -> list[Run]:
        """The runs, copied in one step (for readers on another thread)."""
        return list(self._runs.values())

    def job_ids(self) -> list[str]:
        return list(self._runs)

    def get(self, job_id: str) -> Run | None:
        return self._runs.get(job_id)

    def add(
        self,
        jobs: list[ClaimedJob],
        call: Call,
        held: dict[str, float],
        uses: tuple[str, ...],
        now: float,
    ) -> None:
        for job in jobs:
            self._runs[job.id] = Run(job, call, held, uses, claimed_at=now)

    def _current(self, job_id: str, attempt: int) -> Run | None:
        run = self._runs.get(job_id)
        if run is None or run.job.attempt != attempt or run.state is RunState.ENDED:
            return None
        return run

    def started(self, event: Started, now: float) -> None:
        """Its worker began (a report for another attempt, or an ended run, is stale)."""
        run = self._current(event.job_id, event.attempt)
        if run is None:
            return
        run.started_at = now
        if run.state is RunState.CLAIMED:
            run.move(RunState.STARTED)
        self._starts.append(event)

    def finished(self, event: Finished, now: float) -> None:
        """Its worker handed back how it ended."""
        run = self._current(event.job_id, event.attempt)
        if run is not None:
            run.result = event.result
            self._end(run, now)
            run.call.release([event.job_id])

    def call_ended(self, call: Call, error: BaseException | None, now: float) -> None:
        """A call's stream ended: every job of it not ended yet ended with ``error``."""
        for job_id in call.job_ids:
            run = self._runs.get(job_id)
            if run is not None and run.call is call and run.state is not RunState.ENDED:
                run.error = error or RuntimeError("the attempt ended without an outcome")
                self._end(run, now)
        call.release(call.job_ids)

    def _end(self, run: Run, now: float) -> None:
        run.move(RunState.ENDED)
        run.ended_at = now
        self._ended.append(run.job.id)

    def stopping(self, run: Run, outcome: Outcome, force_at: float) -> None:
        run.move(RunState.STOPPING)
        run.stop = outcome
        run.force_at = force_at

    def forced(self, run: Run) -> None:
        run.move(RunState.FORCED)

    def in_flight(self) -> list[Run]:
        """The runs whose end has not been heard."""
        return [run for run in self._runs.values() if run.state is not RunState.ENDED]

    def has_reports(self) -> bool:
        """Whether starts or ends wait to be recorded."""
        return bool(self._starts or self._ended)

    def reports(self) -> tuple[list[Started], list[Run]]:
        """The starts and the ended runs not recorded yet (a start first: a job may begin
        and end between two rounds)."""
        return list(self._starts), [self._runs[job_id] for job_id in self._ended]

    def recorded(self, ended: Sequence[Run]) -> None:
        """The reports taken are in the database: the ended runs leave the table."""
        self._starts = []
        for run in ended:
            del self._runs[run.job.id]
        self._ended = []
