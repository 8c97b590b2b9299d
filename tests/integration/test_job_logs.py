"""Per-attempt job logs on the 2-CPU test Ray, on both databases: what a processor logs
through ``ctx.logger`` is kept per attempt, through a worker's crash, within the bound."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from raypipe.direct import DirectClient
from raypipe.jobs import JobStatus
from tests.conftest import wait_for

WAIT_S = 120


def _messages(logs: dict[str, Any]) -> list[str]:
    return [line["message"] for line in logs["lines"]]


def _logs_of(client: DirectClient, job_id: str, last_seq: int, **query: Any) -> dict[str, Any]:
    """The job's log once its line ``last_seq`` is written: an ended attempt's last lines
    reach the database within a flush interval after its outcome."""

    def written() -> dict[str, Any] | None:
        logs = client.logs(job_id, **query)
        return logs if logs["lines"] and logs["lines"][-1]["seq"] == last_seq else None

    return wait_for(written, what=f"line {last_seq} of the log")  # type: ignore[return-value]


def test_lines_logged_before_a_crash_are_kept_and_the_retry_logs_apart(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    job = raypipe.submit(
        "test.chatty", {"lines": 3, "folder": str(tmp_path), "release_on_attempt": 2}
    )
    wait_for(lambda: len(raypipe.logs(job.id)["lines"]) == 3, what="the first lines")
    os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGKILL)
    assert job.result(timeout=WAIT_S) == {"lines": 3}

    first = _logs_of(raypipe, job.id, 3, attempt=1)
    assert _messages(first) == [f"attempt 1 line {i} " for i in range(3)]
    assert [line["seq"] for line in first["lines"]] == [1, 2, 3]
    assert {line["attempt"] for line in first["lines"]} == {1} and first["dropped"] == 0
    # The latest attempt by default: its own lines, numbered afresh.
    latest = _logs_of(raypipe, job.id, 4)
    assert latest["attempt"] == 2
    assert _messages(latest) == [
        *(f"attempt 2 line {i} " for i in range(3)),
        "attempt 2 released",
    ]
    assert [line["level"] for line in latest["lines"]] == ["INFO"] * 3 + ["WARNING"]


def test_a_failed_pool_job_keeps_what_it_logged(raypipe: DirectClient) -> None:
    job = raypipe.submit("test.pool_chatty", {"lines": 2, "fail": True})
    assert job.wait(timeout=WAIT_S).status is JobStatus.FAILED
    logs = _logs_of(raypipe, job.id, 3)
    assert _messages(logs) == ["attempt 1 line 0 ", "attempt 1 line 1 ", "attempt 1 gives up"]
    assert logs["lines"][-1]["level"] == "ERROR"


def test_the_log_keeps_its_newest_lines_within_the_bound(raypipe: DirectClient) -> None:
    # 120 lines of ~10 KB: about 1.2 MB, over the default bound of 1 MiB.
    job = raypipe.submit("test.chatty", {"lines": 120, "pad": 10_000})
    assert job.result(timeout=WAIT_S) == {"lines": 120}
    logs = _logs_of(raypipe, job.id, 120)  # written with the trim that goes with it
    kept = [line["seq"] for line in logs["lines"]]
    assert logs["dropped"] > 0 and kept == list(range(logs["dropped"] + 1, 121))
    size = sum(len(line["message"].encode()) for line in logs["lines"])
    assert size <= raypipe.settings.log_max_bytes
    assert size > raypipe.settings.log_max_bytes - 11_000  # the tail is all that fits
    assert logs["lines"][-1]["message"].startswith("attempt 1 line 119 ")
    # Following an ended attempt reads what there is and stops.
    followed = list(raypipe.follow_logs(job.id))
    assert [line["seq"] for line in followed] == kept
