"""Per-attempt job logs on the 2-CPU test Ray, on both databases: what a processor logs
through ``ctx.logger`` is kept per attempt, through a worker's crash, within the bound, and
is all readable by the time the attempt's end is (tasks and pools, completed, failed and
retried attempts alike)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from raypipe.direct import DirectClient
from raypipe.jobs import JobStatus
from tests.conftest import read_at_end, wait_for

WAIT_S = 120
#: Jobs of each kind in a row: the race of an end and its last lines has several chances.
REPEATS = 3


def _messages(logs: dict[str, Any]) -> list[str]:
    return [line["message"] for line in logs["lines"]]


def _logs_at_end(client: DirectClient, job_id: str, **query: Any) -> dict[str, Any]:
    """The job's log, read the moment the job is first seen ended (no wait, no retry)."""
    return read_at_end(
        lambda: client.get_job(job_id).status.is_terminal,
        lambda: client.logs(job_id, **query),
        timeout=WAIT_S,
        what=f"job {job_id} to end",
    )


def test_lines_logged_before_a_crash_are_kept_and_the_retry_logs_apart(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    job = raypipe.submit(
        "test.chatty", {"lines": 3, "folder": str(tmp_path), "release_on_attempt": 2}
    )
    wait_for(lambda: len(raypipe.logs(job.id)["lines"]) == 3, what="the first lines")
    os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGKILL)
    # The latest attempt by default: its own lines, numbered afresh.
    latest = _logs_at_end(raypipe, job.id)
    assert job.result(timeout=WAIT_S) == {"lines": 3}

    first = raypipe.logs(job.id, attempt=1)
    assert _messages(first) == [f"attempt 1 line {i} " for i in range(3)]
    assert [line["seq"] for line in first["lines"]] == [1, 2, 3]
    assert {line["attempt"] for line in first["lines"]} == {1} and first["dropped"] == 0
    assert latest["attempt"] == 2
    assert _messages(latest) == [
        *(f"attempt 2 line {i} " for i in range(3)),
        "attempt 2 released",
    ]
    assert [line["level"] for line in latest["lines"]] == ["INFO"] * 3 + ["WARNING"]


#: Three lines 0.1 s apart from a pool actor's thread: the first shipped while it runs, the
#: last carried by its outcome.
PAUSED = {"lines": 3, "pause_s": 0.1}
LINES = [f"attempt 1 line {i} " for i in range(3)]
#: (type, payload, how it ends, what it logged): tasks and pool jobs, completed and failed.
ENDINGS = [
    # A task: lines shipped while it runs, the last one as it ends.
    ("sleep", {"seconds": 0.3, "steps": 3}, "completed", ["step 1/3", "step 2/3", "step 3/3"]),
    # A task: one line just before it raises, carried by its failed outcome.
    ("fail", {"error": "PermanentError"}, "failed", ["attempt 1 raises PermanentError on purpose"]),
    ("test.pool_chatty", PAUSED, "completed", LINES),
    ("test.pool_chatty", {**PAUSED, "fail": True}, "failed", [*LINES, "attempt 1 gives up"]),
]


def test_a_jobs_log_is_complete_when_its_end_can_be_read(raypipe: DirectClient) -> None:
    for job_type, payload, status, messages in ENDINGS:
        for _ in range(REPEATS):
            job = raypipe.submit(job_type, payload)
            logs = _logs_at_end(raypipe, job.id)
            assert (job_type, _messages(logs)) == (job_type, messages)
            assert raypipe.get_job(job.id).status.value == status


def test_a_retried_attempts_log_is_complete_when_the_retry_can_be_seen(
    raypipe: DirectClient,
) -> None:
    job = raypipe.submit("fail", {"error": "RetryableError", "succeed_on_attempt": 2})
    first = read_at_end(
        lambda: (record := raypipe.get_job(job.id)).error is not None or record.attempt > 1,
        lambda: raypipe.logs(job.id, attempt=1),
        timeout=WAIT_S,
    )
    assert _messages(first) == ["attempt 1 raises RetryableError on purpose"]
    assert job.result(timeout=WAIT_S) == {"attempt": 2}
    assert _messages(raypipe.logs(job.id)) == []  # the second attempt logged nothing


def test_the_log_keeps_its_newest_lines_within_the_bound(raypipe: DirectClient) -> None:
    # 120 lines of ~10 KB: about 1.2 MB, over the default bound of 1 MiB.
    job = raypipe.submit("test.chatty", {"lines": 120, "pad": 10_000})
    assert job.result(timeout=WAIT_S) == {"lines": 120}
    logs = _logs_at_end(raypipe, job.id)  # written with the trim that goes with it
    kept = [line["seq"] for line in logs["lines"]]
    assert logs["dropped"] > 0 and kept == list(range(logs["dropped"] + 1, 121))
    size = sum(len(line["message"].encode()) for line in logs["lines"])
    assert size <= raypipe.settings.logs.max_bytes
    assert size > raypipe.settings.logs.max_bytes - 11_000  # the tail is all that fits
    assert logs["lines"][-1]["message"].startswith("attempt 1 line 119 ")
    # Following an ended attempt reads what there is and stops.
    followed = list(raypipe.follow_logs(job.id))
    assert [line["seq"] for line in followed] == kept


@pytest.mark.parametrize("job_type", ["test.chatty", "test.pool_chatty"])
def test_a_cancelled_jobs_log_is_complete_when_its_end_can_be_read(
    raypipe: DirectClient, tmp_path: Path, job_type: str
) -> None:
    """An interrupted attempt has no outcome of its own to carry its last lines (here one
    logged as it stops): it has them written before it ends."""
    job = raypipe.submit(job_type, {"lines": 2, "folder": str(tmp_path)})
    wait_for((tmp_path / "pid-1").exists, timeout=WAIT_S, what="the job to wait")
    raypipe.cancel_job(job.id)
    logs = _logs_at_end(raypipe, job.id)
    assert raypipe.get_job(job.id).status is JobStatus.CANCELLED
    assert _messages(logs) == ["attempt 1 line 0 ", "attempt 1 line 1 ", "attempt 1 interrupted"]
