"""JobContext: what a running processor sees."""

from __future__ import annotations

import math

import pytest

from raypipe.context import JobContext
from raypipe.jobs import ProgressState


class Recorder:
    def __init__(self) -> None:
        self.states: list[ProgressState] = []
        self.cancelled = False
        self.checks = 0

    def report(self, state: ProgressState) -> None:
        self.states.append(state)

    def is_cancelled(self) -> bool:
        self.checks += 1
        return self.cancelled


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def ctx(recorder: Recorder) -> JobContext:
    return JobContext(
        job_id="job-1",
        job_type="sleep",
        attempt=2,
        max_attempts=3,
        report=recorder.report,
        cancelled=recorder.is_cancelled,
    )


def test_identity(ctx: JobContext) -> None:
    assert (ctx.job_id, ctx.job_type, ctx.attempt, ctx.max_attempts) == ("job-1", "sleep", 2, 3)
    assert ctx.logger.name == "raypipe.job.sleep"


@pytest.mark.parametrize(("attempt", "last"), [(1, False), (2, False), (3, True), (4, True)])
def test_is_last_attempt(recorder: Recorder, attempt: int, last: bool) -> None:
    ctx = JobContext(
        job_id="j",
        job_type="t",
        attempt=attempt,
        max_attempts=3,
        report=recorder.report,
        cancelled=recorder.is_cancelled,
    )
    assert ctx.is_last_attempt is last


def test_progress_forwards_a_progress_state(ctx: JobContext, recorder: Recorder) -> None:
    ctx.progress(42.5, "working", stage="embed")
    assert recorder.states == [ProgressState("job-1", 2, 42.5, "working", "embed")]
    assert isinstance(recorder.states[0], ProgressState)


@pytest.mark.parametrize(
    ("given", "reported"),
    [
        (-5, 0.0),
        (0, 0.0),
        (50, 50.0),
        (100, 100.0),
        (100.1, 100.0),
        (1e9, 100.0),
        (math.inf, 100.0),
        (-math.inf, 0.0),
        (math.nan, 0.0),
    ],
)
def test_progress_is_clamped(
    ctx: JobContext, recorder: Recorder, given: float, reported: float
) -> None:
    ctx.progress(given)
    assert recorder.states[-1].progress == reported
    assert isinstance(recorder.states[-1].progress, float)


def test_progress_keeps_last_stage(ctx: JobContext, recorder: Recorder) -> None:
    ctx.progress(10)
    ctx.progress(20, stage="download")
    ctx.progress(30, "more")
    ctx.progress(40, stage="parse")
    ctx.progress(50)
    assert [s.stage for s in recorder.states] == [None, "download", "download", "parse", "parse"]


def test_progress_message_is_not_kept(ctx: JobContext, recorder: Recorder) -> None:
    ctx.progress(10, "first")
    ctx.progress(20)
    assert [s.message for s in recorder.states] == ["first", None]


def test_every_call_is_reported(ctx: JobContext, recorder: Recorder) -> None:
    for i in range(100):
        ctx.progress(i)
    assert [s.progress for s in recorder.states] == [float(i) for i in range(100)]


def test_is_cancelled_delegates(ctx: JobContext, recorder: Recorder) -> None:
    assert ctx.is_cancelled() is False
    recorder.cancelled = True
    assert ctx.is_cancelled() is True
    assert recorder.checks == 2
