"""Unique jobs and debounce over HTTP, on both databases: a duplicate answers 200 with
`Unique-Replayed: true` and the job in its window; concurrent duplicates make one job;
`on_duplicate: replace` moves the queued job's run_at and payload; a started job lets its
key go."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from raypipe import Client
from raypipe.jobs import UniqueWhile
from tests.conftest import DB_KINDS, wait_for
from tests.helpers.processors import repeat
from tests.helpers.serving import Api, module_api, submit_limit

#: Jobs a tenant may make an hour: fewer than one test's duplicates, which are free.
LIMIT = 30

api = module_api("unique", DB_KINDS, rate_limits=submit_limit(LIMIT))

#: API.md's example.
EXAMPLE = {
    "type": "sleep",
    "payload": {"seconds": 1},
    "unique_key": "refresh-doc-7",
    "unique_while": "queued",
    "on_duplicate": "skip",
}
#: Never runs while a test looks at it.
LATER = {"type": "sleep", "payload": {"seconds": 1}, "delay_s": 3600}


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with api.client(api.key(f"u-{uuid.uuid4().hex[:8]}")) as client:
        yield client


def _when(job: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(job["run_at"].replace("Z", "+00:00"))


def test_a_duplicate_answers_200_with_the_job_in_its_window(api: Api, http: httpx.Client) -> None:
    with api.client(api.key("ops", admin=True)) as admin:
        # Paused, the queue keeps the first job queued whatever the machine's pace.
        assert admin.post("/v1/queues/default/pause").status_code == 200
        try:
            first = http.post("/v1/jobs", json=EXAMPLE)
            again = http.post("/v1/jobs", json=EXAMPLE)
        finally:
            admin.post("/v1/queues/default/resume")
    assert first.status_code == 202, first.text
    assert "Unique-Replayed" not in first.headers
    assert again.status_code == 200, again.text
    assert again.headers["Unique-Replayed"] == "true"
    assert "Idempotent-Replayed" not in again.headers
    job = again.json()
    assert job["id"] == first.json()["id"]
    assert again.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert (job["unique_key"], job["unique_while"]) == ("refresh-doc-7", "queued")


def test_duplicates_are_not_charged_to_the_rate_limit(http: httpx.Client) -> None:
    spec = {**LATER, "unique_key": "free"}
    answers = [http.post("/v1/jobs", json=spec) for _ in range(LIMIT + 5)]
    assert [a.status_code for a in answers] == [202] + [200] * (LIMIT + 4)
    assert len({a.json()["id"] for a in answers}) == 1
    made = [http.post("/v1/jobs", json=LATER).status_code for _ in range(LIMIT)]
    assert made == [202] * (LIMIT - 1) + [429]


def test_twenty_concurrent_submissions_make_one_job(http: httpx.Client) -> None:
    spec = {**LATER, "unique_key": "race"}
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: http.post("/v1/jobs", json=spec), range(20)))
    assert sorted(a.status_code for a in answers) == [200] * 19 + [202]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(http.get("/v1/jobs").json()["jobs"]) == 1


def test_replace_debounces_the_queued_job(http: httpx.Client) -> None:
    first = http.post("/v1/jobs", json={**LATER, "unique_key": "doc", "delay_s": 60}).json()
    before = datetime.now(timezone.utc)
    replaced = http.post(
        "/v1/jobs",
        json={
            "type": "sleep",
            "payload": {"seconds": 2},
            "unique_key": "doc",
            "on_duplicate": "replace",
            "delay_s": 600,
        },
    )
    assert replaced.status_code == 200 and replaced.headers["Unique-Replayed"] == "true"
    job = http.get(f"/v1/jobs/{first['id']}").json()
    assert replaced.json()["id"] == first["id"]
    assert job["payload"] == replaced.json()["payload"] == {"seconds": 2}
    assert _when(job) >= before + timedelta(seconds=599) > _when(first) + timedelta(seconds=500)


def test_a_started_job_lets_its_key_go(http: httpx.Client) -> None:
    spec = {"type": "sleep", "payload": {"seconds": 2}, "unique_key": "run-once"}
    first = http.post("/v1/jobs", json=spec).json()
    wait_for(
        lambda: http.get(f"/v1/jobs/{first['id']}").json()["started_at"],
        timeout=120,
        what="the first job to start",
    )
    second = http.post("/v1/jobs", json=spec)
    assert second.status_code == 202 and second.json()["id"] != first["id"]


def test_an_idempotency_key_sent_with_a_duplicate_is_not_recorded(http: httpx.Client) -> None:
    """A request answered by its unique key made no job, and its key stands for none: sent
    again while the job holding the unique key waits, it gets that job as a duplicate."""
    spec = {**LATER, "unique_key": "keyed"}
    answers = [
        http.post("/v1/jobs", json=spec, headers={"Idempotency-Key": key})
        for key in ("first", "second", "second", "first")
    ]
    assert [a.status_code for a in answers] == [202, 200, 200, 200]
    assert len({a.json()["id"] for a in answers}) == 1
    assert [a.headers.get("Unique-Replayed") for a in answers] == [None, "true", "true", None]
    assert answers[3].headers["Idempotent-Replayed"] == "true"


def test_duplicates_in_a_bulk_submission_are_listed(http: httpx.Client) -> None:
    held = http.post("/v1/jobs", json={**LATER, "unique_key": "a"}).json()
    body = {"jobs": [{**LATER, "unique_key": key} for key in ("a", "b", "b")] + [LATER]}
    bulk = http.post("/v1/jobs/bulk", json=body)
    assert bulk.status_code == 202, bulk.text
    assert bulk.headers["Unique-Replayed"] == "0,2"
    ids = [job["id"] for job in bulk.json()["jobs"]]
    assert ids[0] == held["id"] and ids[1] == ids[2] and len(set(ids)) == 3


def test_unique_options_need_a_key_and_a_batch_takes_none(http: httpx.Client) -> None:
    refused = http.post("/v1/jobs", json={"type": "noop", "on_duplicate": "replace"})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert "on_duplicate needs a unique_key" in error["message"]
    assert error["details"][0]["loc"] == ["on_duplicate"]
    alone = http.post("/v1/jobs", json={"type": "noop", "unique_while": "running"}).json()
    assert [d["loc"] for d in alone["error"]["details"]] == [["unique_while"]]
    bulk = http.post("/v1/jobs/bulk", json={"jobs": [LATER, {**LATER, "unique_while": "queued"}]})
    assert bulk.json()["error"]["details"][0]["loc"] == ["jobs", 1, "unique_while"]
    batch = http.post("/v1/batches", json={"jobs": [{"type": "noop", "unique_key": "k"}]})
    assert batch.status_code == 422
    assert batch.json()["error"]["details"][0]["loc"] == ["jobs", 0, "unique_key"]
    assert http.get("/v1/jobs").json()["jobs"] == []


def test_the_clients_send_the_unique_and_concurrency_options(api: Api) -> None:
    with Client(api.url, api_key=api.key(f"c-{uuid.uuid4().hex[:8]}")) as client:
        first = repeat.submit(
            {"text": "a"},
            client=client,
            delay_s=3600,
            unique_key="word",
            unique_while=UniqueWhile.RUNNING,
        )
        again = repeat.submit(
            text="b", client=client, delay_s=3600, unique_key="word", on_duplicate="replace"
        )
        keyed = client.submit("sleep", {"seconds": 1}, delay_s=3600, concurrency_key="user-42")
        assert again.id == first.id
        job = first.refresh()
        assert (job.unique_key, job.unique_while, job.payload["text"]) == ("word", "running", "b")
        assert keyed.refresh().concurrency_key == "user-42"
