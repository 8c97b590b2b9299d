"""JobContext: what a running processor sees."""

from __future__ import annotations

import logging
import math
import uuid
from pathlib import Path

import pytest

from raypipe.config import Settings, get_settings
from raypipe.context import JobContext
from raypipe.exceptions import InvalidInput, PermanentError
from raypipe.job_logs import JOB_LOGGER
from raypipe.jobs import ProgressState
from raypipe.processors.basic import SleepPayload, sleep


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
def settings(tmp_path: Path) -> Settings:
    return get_settings(data_dir=tmp_path)


@pytest.fixture
def ctx(recorder: Recorder, settings: Settings) -> JobContext:
    return JobContext(
        job_id="job-1",
        job_type="sleep",
        settings=settings,
        attempt=2,
        max_attempts=3,
        report=recorder.report,
        cancelled=recorder.is_cancelled,
    )


def test_identity(ctx: JobContext) -> None:
    assert (ctx.job_id, ctx.job_type, ctx.attempt, ctx.max_attempts) == ("job-1", "sleep", 2, 3)
    assert ctx.logger.name == "raypipe.job.sleep"


@pytest.mark.parametrize(("attempt", "last"), [(1, False), (2, False), (3, True), (4, True)])
def test_is_last_attempt(recorder: Recorder, settings: Settings, attempt: int, last: bool) -> None:
    ctx = JobContext(
        job_id="j",
        job_type="t",
        settings=settings,
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


# -- artifacts ------------------------------------------------------------------------


def test_artifacts_are_written_listed_and_read_back(settings: Settings) -> None:
    ctx = JobContext.local("t", settings)
    info = ctx.write_artifact("mesh.glb", b"\x00glb")
    text = ctx.write_artifact("notes.txt", "héllo")
    assert (info.size, info.content_type) == (4, "model/gltf-binary")
    assert text.size == len("héllo".encode())
    assert set(ctx.artifacts) == {"mesh.glb", "notes.txt"}
    assert ctx.read_artifact("mesh.glb") == b"\x00glb"
    assert ctx.read_artifact(f"{ctx.job_id}/notes.txt") == "héllo".encode()
    # In the attempt's own folder: a stale attempt cannot replace a newer one's files.
    on_disk = Path(settings.artifacts_url) / "default" / ctx.job_id / str(ctx.attempt) / "mesh.glb"
    assert on_disk.read_bytes() == b"\x00glb"


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "..", ".hidden", "", "a" * 201, "x\\y", "naïve.txt", "a b"]
)
def test_unsafe_artifact_names_are_refused(settings: Settings, name: str) -> None:
    with pytest.raises(InvalidInput, match="artifact name"):
        JobContext.local("t", settings).write_artifact(name, b"x")


def test_another_tenants_artifact_cannot_be_read(settings: Settings) -> None:
    owner = JobContext.local("t", settings, tenant="acme")
    owner.write_artifact("secret.txt", b"s3cret")
    intruder = JobContext.local("t", settings, tenant="other")
    with pytest.raises(PermanentError, match=r"no artifact 'secret\.txt'"):
        intruder.read_artifact(f"{owner.job_id}/secret.txt")
    assert (
        JobContext.local("t", settings, tenant="acme").read_artifact(f"{owner.job_id}/secret.txt")
        == b"s3cret"
    )


def test_missing_artifact_is_a_permanent_error(settings: Settings) -> None:
    with pytest.raises(PermanentError, match=r"no artifact 'nope\.npy'"):
        JobContext.local("t", settings).read_artifact(f"{uuid.uuid4()}/nope.npy")


# -- local fan-out ----------------------------------------------------------------------


def test_local_parallel_keeps_order_and_reports_each(settings: Settings) -> None:
    done: list[tuple[int, int]] = []
    results = JobContext.local("t", settings).parallel(
        [lambda i=i: i * i for i in range(5)], on_done=lambda i, r: done.append((i, r))
    )
    assert results == [0, 1, 4, 9, 16]
    assert done == [(i, i * i) for i in range(5)]


def test_sleep_logs_each_step_through_the_jobs_logger(
    ctx: JobContext, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=JOB_LOGGER):
        assert sleep(SleepPayload(seconds=0.03, steps=3), ctx) == {"slept": 0.03}
    steps = [r for r in caplog.records if r.name == "raypipe.job.sleep"]
    assert [r.getMessage() for r in steps] == ["step 1/3", "step 2/3", "step 3/3"]
    assert {(r.levelname, getattr(r, "raypipe_job_id", None)) for r in steps} == {("INFO", "job-1")}
    assert [s.message for s in recorder.states] == ["step 1/3", "step 2/3", "step 3/3"]
