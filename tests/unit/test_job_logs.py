"""Job logs in the worker: numbering, the per-attempt bound that keeps the tail, the
capture of ``ctx.logger`` with the job's ids, what an attempt's end does with its lines
(carried by its outcome, or written before it), and when following a log ends."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from raypipe import JobContext
from raypipe.config import Settings
from raypipe.job_logs import (
    CUT_MARK,
    JOB_LOGGER,
    MAX_LINE_CHARS,
    AttemptLog,
    AttemptTail,
    CaptureHandler,
    LogBuffer,
    LogFollower,
    LogLine,
    Trim,
    capture,
    line_size,
)
from raypipe.jobs import ProgressState
from raypipe.runtime import progress
from raypipe.runtime.progress import ProgressReporter

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def _buffer(max_bytes: int = 1024) -> tuple[LogBuffer, list[int]]:
    wakes: list[int] = []
    return LogBuffer(max_bytes, lambda: wakes.append(1)), wakes


def test_lines_are_numbered_per_attempt_and_wake_the_shipper() -> None:
    buffer, wakes = _buffer()
    buffer.add("a", 1, NOW, "INFO", "one")
    buffer.add("a", 1, NOW, "INFO", "two")
    buffer.add("a", 2, NOW, "INFO", "retry")
    buffer.add("b", 1, NOW, "ERROR", "other")
    lines, trims = buffer.take()
    assert [(ln.job_id, ln.attempt, ln.seq, ln.message) for ln in lines] == [
        ("a", 1, 1, "one"),
        ("a", 1, 2, "two"),
        ("a", 2, 1, "retry"),
        ("b", 1, 1, "other"),
    ]
    assert trims == [] and len(wakes) == 1  # the first line that found none waiting
    assert buffer.take() == ([], [])  # taken once
    buffer.add("a", 1, NOW, "INFO", "three")
    assert [ln.seq for ln in buffer.take()[0]] == [3] and len(wakes) == 2


def test_only_lines_logged_by_the_given_time_are_taken() -> None:
    now = [10.0]
    buffer = LogBuffer(1024, lambda: None, clock=lambda: now[0])
    buffer.add("a", 1, NOW, "INFO", "old")
    now[0] = 10.5
    buffer.add("a", 1, NOW, "INFO", "young")
    assert buffer.oldest() == 10.0
    assert [ln.message for ln in buffer.take(logged_by=10.2)[0]] == ["old"]
    assert buffer.oldest() == 10.5  # the young line waits: its attempt may carry it
    assert [ln.message for ln in buffer.end("a", 1).lines] == ["young"]
    assert buffer.oldest() is None


def test_the_bound_keeps_the_newest_lines_and_trims_the_shipped_ones() -> None:
    buffer, _ = _buffer(max_bytes=1024)
    for i in range(10):
        buffer.add("a", 1, NOW, "INFO", f"{i}" + "x" * 99)  # 100 bytes each
    shipped, trims = buffer.take()
    assert [ln.seq for ln in shipped] == list(range(1, 11)) and trims == []
    for i in range(10, 15):
        buffer.add("a", 1, NOW, "INFO", f"{i}" + "x" * 98)
    lines, trims = buffer.take()
    # 15 lines of ~100 bytes: the newest 10 fit in 1024 bytes; 1-5 are trimmed.
    assert [ln.seq for ln in lines] == [11, 12, 13, 14, 15]
    assert trims == [Trim("a", 1, 5)]


def test_lines_trimmed_before_they_were_shipped_are_not_shipped() -> None:
    buffer, _ = _buffer(max_bytes=1024)
    for _ in range(30):
        buffer.add("a", 1, NOW, "INFO", "y" * 100)
    lines, [trim] = buffer.take()
    assert trim.seq == 20 and [ln.seq for ln in lines] == list(range(21, 31))
    assert sum(line_size(ln.message) for ln in lines) <= 1024


def test_one_long_line_is_cut_to_fit() -> None:
    log = AttemptLog(max_bytes=1024 * 1024)
    seq, text = log.add("z" * (MAX_LINE_CHARS * 2))
    assert seq == 1 and len(text) == MAX_LINE_CHARS and text.endswith(CUT_MARK)
    small = AttemptLog(max_bytes=1024)
    _, text = small.add("é" * 5000)  # two bytes each
    assert line_size(text) <= 1024 and text.endswith(CUT_MARK)


def test_ended_attempts_are_forgotten() -> None:
    buffer, _ = _buffer()
    buffer.add("a", 1, NOW, "INFO", "one")
    buffer.take()
    buffer.end("a", 1)
    buffer.add("a", 1, NOW, "INFO", "again")
    assert [ln.seq for ln in buffer.take()[0]] == [1]


def test_an_ended_attempt_takes_its_unshipped_lines_and_leaves_the_others() -> None:
    buffer, _ = _buffer()
    buffer.add("a", 1, NOW, "INFO", "one")
    buffer.add("b", 1, NOW, "INFO", "other")
    buffer.add("a", 1, NOW, "INFO", "two")
    tail = buffer.end("a", 1)
    assert [(ln.seq, ln.message) for ln in tail.lines] == [(1, "one"), (2, "two")]
    assert (tail.trim, tail.shipped) == (None, False)  # nothing to wait for
    assert [(ln.job_id, ln.message) for ln in buffer.take()[0]] == [("b", "other")]
    assert buffer.end("c", 1) == AttemptTail()  # logged nothing: nothing at all


def test_an_attempt_that_shipped_lines_ends_with_the_rest_and_its_trim() -> None:
    buffer, _ = _buffer(max_bytes=1024)
    for _ in range(5):
        buffer.add("a", 1, NOW, "INFO", "y" * 100)
    shipped, _ = buffer.take()
    for _ in range(25):
        buffer.add("a", 1, NOW, "INFO", "z" * 100)
    tail = buffer.end("a", 1)
    # 30 lines of 100 bytes: the newest 10 fit; the 5 shipped are trimmed with 15 others.
    assert [ln.seq for ln in shipped] == [1, 2, 3, 4, 5]
    assert [ln.seq for ln in tail.lines] == list(range(21, 31))
    assert tail.trim == Trim("a", 1, 20) and tail.shipped
    assert buffer.take() == ([], [])


def test_ctx_logger_lines_are_captured_with_the_jobs_ids() -> None:
    buffer, _ = _buffer()
    capture(buffer, "INFO")
    try:
        ctx = JobContext(
            job_id="j1", job_type="test.x", settings=Settings(), attempt=2, tenant="t", queue="q"
        )
        ctx.logger.debug("below the level")
        ctx.logger.info("hello %s", "world")
        try:
            raise ValueError("boom")
        except ValueError:
            ctx.logger.exception("it failed")
        logging.getLogger("raypipe.job.test.x").warning("outside any attempt")
        lines, _ = buffer.take()
    finally:
        job_logger = logging.getLogger(JOB_LOGGER)
        for handler in [h for h in job_logger.handlers if isinstance(h, CaptureHandler)]:
            job_logger.removeHandler(handler)
        job_logger.setLevel(logging.NOTSET)
    assert [(ln.job_id, ln.attempt, ln.level) for ln in lines] == [
        ("j1", 2, "INFO"),
        ("j1", 2, "ERROR"),
    ]
    assert lines[0].message == "hello world"
    assert lines[1].message.startswith("it failed\nTraceback") and "ValueError: boom" in (
        lines[1].message
    )
    assert lines[0].to_dict() == {
        "seq": 1,
        "ts": lines[0].to_dict()["ts"],
        "level": "INFO",
        "message": "hello world",
        "attempt": 2,
    }


def _line(seq: int) -> LogLine:
    return LogLine("a", 1, seq, NOW, "INFO", str(seq))


def test_following_ends_once_the_attempt_is_over_and_a_settled_read_is_empty() -> None:
    follower = LogFollower(attempt=1, after=0, poll_s=0.25, settle_s=0.5)
    assert follower.step(1, False, [_line(1), _line(2)]) == 0.0 and follower.after == 2
    assert follower.step(1, False, []) == 0.25  # running, quiet
    assert follower.step(1, True, []) == 0.5  # ended: one more read after the flush
    assert follower.step(1, True, [_line(3)]) == 0.0 and follower.after == 3
    assert follower.step(1, True, []) is None


@pytest.mark.parametrize("job_attempt", [2, 3])
def test_a_retry_ends_following_the_attempt_before_it(job_attempt: int) -> None:
    follower = LogFollower(attempt=1, after=5, poll_s=0.25, settle_s=0.5)
    assert follower.step(job_attempt, False, []) == 0.5
    assert follower.step(job_attempt, False, []) is None


class FakeActor:
    """The progress actor as a reporter calls it: each ``method.remote(...)`` is recorded
    and answered with a made-up ref."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, method: str) -> Any:
        def remote(*args: Any) -> str:
            self.calls.append((method, args))
            return f"ref-{len(self.calls)}"

        return SimpleNamespace(remote=remote)


@pytest.fixture
def reporter(monkeypatch: pytest.MonkeyPatch) -> tuple[ProgressReporter, FakeActor, list[Any]]:
    """A reporter on a fake actor, without its shipping thread (tests ship by hand); the
    third item lists the refs it waited on."""
    actor, waited = FakeActor(), []
    reporter = ProgressReporter(actor, 60.0, 1024)  # type: ignore[arg-type]
    monkeypatch.setattr(reporter, "_start", lambda: None)

    def wait(refs: list[Any], **_: Any) -> tuple[list[Any], list[Any]]:
        waited.append(list(refs))
        return list(refs), []

    monkeypatch.setattr(progress.ray, "wait", wait)
    monkeypatch.setattr(progress.ray, "get", lambda ref, **_: True)
    return reporter, actor, waited


def test_lines_not_shipped_when_an_attempt_ends_travel_with_its_outcome(
    reporter: tuple[ProgressReporter, FakeActor, list[Any]],
) -> None:
    worker, actor, waited = reporter
    worker.logs.add("a", 1, NOW, "INFO", "one")
    worker.logs.add("a", 1, NOW, "WARNING", "two")
    worker.report(ProgressState("a", 1, 50.0, "half"))
    last, lines = worker.end("a", 1, completed=False)
    assert [ln.message for ln in lines] == ["one", "two"]
    # A failed attempt's progress is sent; its lines cost no call and no wait.
    assert [method for method, _ in actor.calls] == ["report"] and waited == []
    assert last == ProgressState("a", 1, 50.0, "half")


def test_an_attempt_that_shipped_lines_ends_once_the_actor_wrote_them(
    reporter: tuple[ProgressReporter, FakeActor, list[Any]],
) -> None:
    worker, actor, waited = reporter
    worker.logs.add("a", 1, NOW, "INFO", "one")
    worker.flush()
    worker.logs.add("a", 1, NOW, "INFO", "two")
    _, lines = worker.end("a", 1, completed=True)
    assert [ln.message for ln in lines] == ["two"]
    assert [method for method, _ in actor.calls] == ["log", "write_logs"]
    assert waited == [["ref-1"]]  # the call that shipped "one" was taken first
    assert actor.calls[1][1] == ((), [])


def test_an_interrupted_attempt_has_its_last_lines_written_before_it_ends(
    reporter: tuple[ProgressReporter, FakeActor, list[Any]],
) -> None:
    worker, actor, waited = reporter
    worker.logs.add("a", 1, NOW, "INFO", "one")
    assert worker.end("a", 1, completed=False, carried=False) == (None, ())
    [(method, (lines, trims))] = actor.calls
    assert method == "write_logs" and [ln.message for ln in lines] == ["one"] and trims == []
    assert waited == []
