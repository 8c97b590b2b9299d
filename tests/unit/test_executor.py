"""The worker process: its one-time settling after its first attempt, and the log lines an
attempt's result carries."""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raypipe import job_logs
from raypipe.config import Settings, get_settings
from raypipe.jobs import ClaimedJob
from raypipe.retry import ErrorKind
from raypipe.runtime import executor, progress
from raypipe.runtime.executor import AttemptResult
from raypipe.runtime.fanout import RayRunner
from raypipe.runtime.progress import ProgressReporter


@pytest.fixture
def fresh_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(executor, "_settled", False)
    yield
    gc.unfreeze()  # this test process is not a worker: its objects stay collectable


def test_a_worker_freezes_what_it_imported_once_after_its_first_attempt(
    fresh_worker: None,
) -> None:
    executor._settle()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    made_since = [[] for _ in range(1000)]  # tracked objects a second freeze would take
    executor._settle()  # later attempts leave the collector as it is
    # Not more (the lists above would be frozen); perhaps fewer: other threads of this
    # process (Ray's, earlier tests') may free frozen objects meanwhile.
    assert gc.get_freeze_count() <= frozen
    assert made_since


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """A worker process's reporter and log capture, without a progress actor (a call to it
    would fail), whose shipping thread never ships: every line is left to the end."""
    settings = get_settings(data_dir=tmp_path / "data", namespace=f"u-{uuid.uuid4().hex[:8]}")
    reporter = ProgressReporter(None, 60.0, settings.logs.max_bytes)  # type: ignore[arg-type]
    monkeypatch.setitem(executor._reporters, settings.namespace, reporter)
    monkeypatch.setattr(executor, "_settled", True)
    monkeypatch.setattr(progress, "SEND_GAP_S", 3600.0)
    job_logs.capture(reporter.logs, "INFO")
    yield settings
    logger = logging.getLogger(job_logs.JOB_LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, job_logs.CaptureHandler)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def _attempt(settings: Settings, job_type: str, payload: dict[str, Any]) -> AttemptResult:
    job = ClaimedJob(str(uuid.uuid4()), job_type, "default", payload, 1, 3, 60.0)
    return executor.run_attempt(settings, job, RayRunner(settings.embeddings, {}))


def test_the_lines_an_attempt_did_not_ship_travel_in_its_result(worker: Settings) -> None:
    done = _attempt(worker, "sleep", {"seconds": 0, "steps": 2})
    assert done.ok and [line.message for line in done.logs] == ["step 1/2", "step 2/2"]
    failed = _attempt(worker, "fail", {"error": "PermanentError"})
    assert not failed.ok and failed.kind is ErrorKind.PERMANENT
    assert [(line.level, line.message, line.seq) for line in failed.logs] == [
        ("WARNING", "attempt 1 raises PermanentError on purpose", 1)
    ]
    assert _attempt(worker, "noop", {}).logs == ()


def test_a_processors_error_is_recorded_without_object_reprs(worker: Settings) -> None:
    # A library's message naming an object by its default repr shows the worker's memory
    # addresses and tells the user nothing (Pillow: "cannot identify image file
    # <_io.BytesIO object at 0x7f…>").
    failed = _attempt(
        worker,
        "fail",
        {"error": "ValueError", "message": "cannot read <_io.BytesIO object at 0x7f3a1c>"},
    )
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("ValueError", "cannot read")
