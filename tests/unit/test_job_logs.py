"""Job logs in the worker: numbering, the per-attempt bound that keeps the tail, the
capture of ``ctx.logger`` with the job's ids, and when following a log ends."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from raypipe import JobContext
from raypipe.config import Settings
from raypipe.job_logs import (
    CUT_MARK,
    JOB_LOGGER,
    MAX_LINE_CHARS,
    AttemptLog,
    CaptureHandler,
    LogBuffer,
    LogFollower,
    LogLine,
    Trim,
    capture,
    line_size,
)

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
    assert trims == [] and len(wakes) == 4
    assert buffer.take() == ([], [])  # taken once
    buffer.add("a", 1, NOW, "INFO", "three")
    assert [ln.seq for ln in buffer.take()[0]] == [3]


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
