"""Concurrency keys and run limits over HTTP, on both databases and real Ray: jobs with one
``concurrency_key`` never overlap while jobs with different keys do, and a run limit of 5
starts per 2 s holds across the cluster without failing a job."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

from raypipe.store import create_engine
from raypipe.store.tables import run_starts
from tests.conftest import DB_KINDS, wait_for
from tests.helpers.serving import Api, module_api

api = module_api("flow", DB_KINDS)

#: Each `sleep`'s run: long enough that two jobs started together overlap.
JOB_S = 0.3


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _all_ended(http: httpx.Client, ids: list[str]) -> list[dict[str, object]] | None:
    jobs = [http.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
    ended = all(job["status"] in ("completed", "failed", "cancelled") for job in jobs)
    return jobs if ended else None


def _run(http: httpx.Client, specs: list[dict[str, object]]) -> list[dict[str, object]]:
    answer = http.post("/v1/jobs/bulk", json={"jobs": specs})
    assert answer.status_code == 202, answer.text
    ids = [job["id"] for job in answer.json()["jobs"]]
    jobs = wait_for(lambda: _all_ended(http, ids), timeout=60, what="the jobs")
    assert [job["status"] for job in jobs] == ["completed"] * len(ids), jobs
    return jobs


def _spans(jobs: list[dict[str, object]]) -> list[tuple[datetime, datetime]]:
    return sorted((_when(str(j["started_at"])), _when(str(j["finished_at"]))) for j in jobs)


def test_jobs_with_one_concurrency_key_never_overlap_and_other_keys_do(
    api: Api, tmp_path: Path
) -> None:
    key = f"user-{uuid.uuid4().hex[:8]}"
    sleep = {"type": "sleep", "payload": {"seconds": JOB_S, "steps": 1}}
    with api.client(api.key("flow")) as http:
        spans = _spans(_run(http, [{**sleep, "concurrency_key": key}] * 4))
        for (_, ended), (started, _) in itertools.pairwise(spans):
            assert ended <= started, spans  # one at a time
        # Keys from the payload (test.keyed): each job waits to meet the other.
        meet = {"folder": str(tmp_path), "meet": 2}
        specs = [{"type": "test.keyed", "payload": {"key": f"{key}-{i}", **meet}} for i in (0, 1)]
        assert [job["result"] for job in _run(http, specs)] == [{"met": 2}] * 2


def test_a_run_limit_of_five_per_two_seconds_holds_and_fails_nothing(api: Api) -> None:
    with api.client(api.key("flow")) as http:
        jobs = _run(http, [{"type": "test.limited", "payload": {}}] * 12)
    engine = create_engine(api.settings.database_url)
    try:
        with engine.connect() as conn:
            query = sa.select(run_starts.c.started_at).where(run_starts.c.key == "test.limited")
            claims = sorted(conn.execute(query).scalars())
    finally:
        engine.dispose()
    window = timedelta(seconds=2)
    assert claims  # the last window's (older starts are pruned at the claim)
    for at in claims:  # the starts the claim counted: never more than 5 in a window
        assert sum(at <= t < at + window for t in claims) <= 5, claims
    # A start is counted when its job is claimed; its worker begins a moment later, and on
    # a loaded machine jobs claimed in one window may begin in the next: the per-window
    # bound is on the claims (above). As users see them, the twelve began over three
    # windows at least, and none failed (in _run).
    started = sorted(_when(str(job["started_at"])) for job in jobs)
    assert started[-1] - started[0] >= 2 * window - timedelta(seconds=0.3)
