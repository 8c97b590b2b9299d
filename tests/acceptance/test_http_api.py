"""The HTTP API over real HTTP on Ray Serve: submit, follow, isolate tenants, resist bad input."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import ray

from raypipe.runtime.names import DISPATCHER_ACTOR
from tests.conftest import wait_for
from tests.helpers.serving import Api


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _events(client: httpx.Client, job_id: str, last_event_id: str | None = None) -> list[dict]:
    """Read an event stream to its end; each event is its fields plus its data."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in response.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif line.startswith("id: "):
                current["event_id"] = line[4:]
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current.update(json.loads(line[6:]))
    return events


def test_submit_stream_and_poll_agree(api: Api) -> None:
    client = api.client(api.key(_tenant()))
    response = client.post(
        "/v1/jobs", json={"type": "sleep", "payload": {"seconds": 1.5, "steps": 6}}
    )
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["links"]["events"] == f"/v1/jobs/{job['id']}/events"
    events = _events(client, job["id"])
    statuses = [e["status"] for e in events if e["event"] == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "completed"
    assert "processing" in statuses
    progress = [e["progress"] for e in events if e["event"] == "progress"]
    assert progress == sorted(progress) and progress, events
    ids = [int(e["event_id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    final = client.get(f"/v1/jobs/{job['id']}", params={"include": "attempts"}).json()
    assert final["status"] == "completed" and final["result"] == {"slept": 1.5}
    assert final["progress"] == 100.0 and final["message"] == "step 6/6"
    assert [a["status"] for a in final["attempts"]] == ["completed"]


def test_events_resume_after_last_event_id(api: Api) -> None:
    client = api.client(api.key(_tenant()))
    job = client.post(
        "/v1/jobs", json={"type": "sleep", "payload": {"seconds": 1, "steps": 4}}
    ).json()
    everything = _events(client, job["id"])
    middle = everything[len(everything) // 2]
    resumed = _events(client, job["id"], last_event_id=middle["event_id"])
    assert resumed == everything[len(everything) // 2 + 1 :]
    assert resumed[-1]["status"] == "completed"


def test_a_tenant_never_sees_another_tenants_jobs(api: Api) -> None:
    owner, other = api.client(api.key(_tenant())), api.client(api.key(_tenant()))
    admin = api.client(api.key("ops", admin=True))
    job = owner.post("/v1/jobs", json={"type": "sleep", "payload": {"seconds": 30}, "tags": ["x"]})
    job_id = job.json()["id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("POST", f"/v1/jobs/{job_id}/retry"),
    ):
        response = other.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert job_id not in [j["id"] for j in other.get("/v1/jobs").json()["jobs"]]
    assert job_id in [j["id"] for j in owner.get("/v1/jobs", params={"tag": "x"}).json()["jobs"]]
    assert admin.get(f"/v1/jobs/{job_id}").status_code == 200
    assert owner.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    done = wait_for(lambda: owner.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled")
    assert done


def test_requests_without_a_valid_key_are_refused(api: Api) -> None:
    for key in (None, "rp_not-a-key"):
        response = api.client(key).get("/v1/jobs")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


def test_concurrent_duplicates_with_one_idempotency_key_make_one_job(api: Api) -> None:
    client = api.client(api.key(_tenant()))
    body = {"type": "sleep", "payload": {"seconds": 0.1}}

    def submit(_: int) -> tuple[int, str]:
        response = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same"})
        return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(submit, range(40)))
    assert len({job_id for _, job_id in answers}) == 1
    assert sorted({status for status, _ in answers}) in ([200, 202], [202])
    assert [status for status, _ in answers].count(202) == 1
    conflict = client.post(
        "/v1/jobs", json={**body, "payload": {"seconds": 0.2}}, headers={"Idempotency-Key": "same"}
    )
    assert conflict.status_code == 409
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1


def test_bulk_is_all_or_nothing_with_errors_per_item(api: Api) -> None:
    client = api.client(api.key(_tenant()))
    bad = client.post(
        "/v1/jobs/bulk",
        json={
            "jobs": [
                {"type": "noop"},
                {"type": "sleep", "payload": {"seconds": -1}},
                {"type": "nope"},
            ]
        },
    )
    assert bad.status_code == 422
    locs = [d["loc"] for d in bad.json()["error"]["details"]]
    assert ["jobs", 1, "payload", "seconds"] in locs and ["jobs", 2, "type"] in locs
    assert client.get("/v1/jobs").json()["jobs"] == []
    good = client.post("/v1/jobs/bulk", json={"jobs": [{"type": "noop"}] * 25})
    assert good.status_code == 202 and good.json()["count"] == 25
    pages, cursor = [], None
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        pages.append(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    seen = [job["id"] for page in pages for job in page]
    assert sorted(seen) == sorted(j["id"] for j in good.json()["jobs"])


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"type": "nope", "payload": {}}, 422, "type"),
        ({"type": "sleep", "payload": {"seconds": "long"}}, 422, "payload.seconds"),
        ({"type": "noop", "priority": -3}, 422, "priority"),
        ({"type": "noop", "queue": "nowhere"}, 422, "queue"),
        ({"payload": {}}, 422, "type"),
        ({"type": "noop", "surprise": 1}, 422, "surprise"),
    ],
)
def test_bad_submissions_get_a_clear_error_and_write_nothing(
    api: Api, body: dict, status: int, field: str
) -> None:
    client = api.client(api.key(_tenant()))
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"].startswith(field + ":"), error
    assert "Traceback" not in response.text
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_unknown_type_error_lists_the_known_types(api: Api) -> None:
    client = api.client(api.key(_tenant()))
    message = client.post("/v1/jobs", json={"type": "embed.nothing"}).json()["error"]["message"]
    assert "noop" in message and "sleep" in message


def test_cancelling_a_finished_job_is_a_conflict(api: Api) -> None:
    client = api.client(api.key(_tenant()))
    job = client.post("/v1/jobs", json={"type": "noop"}).json()
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "completed")
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


def test_a_failed_job_can_be_retried_and_keeps_its_attempts(api: Api) -> None:
    client = api.client(api.key(_tenant()))
    job = client.post(
        "/v1/jobs", json={"type": "fail", "payload": {"error": "PermanentError"}}
    ).json()
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "failed")
    retried = client.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "failed")
    attempts = client.get(f"/v1/jobs/{job['id']}", params={"include": "attempts"}).json()[
        "attempts"
    ]
    assert [a["attempt"] for a in attempts] == [1, 2]
    # Replayed from the start, the stream runs through the first failure to the last.
    statuses = [e["status"] for e in _events(client, job["id"]) if e["event"] == "status"]
    assert statuses.count("failed") == 2 and statuses[-1] == "failed"
    bad = client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "soon"})
    assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["error"]["message"]


def test_queues_job_types_and_health(api: Api) -> None:
    client = api.client(api.key(_tenant()))
    queues = {q["name"]: q for q in client.get("/v1/queues").json()}
    assert queues["solo"]["concurrency"] == 1
    assert {"depth", "running", "oldest_waiting_s"} <= set(queues["default"])
    types = {t["type"]: t for t in client.get("/v1/job-types").json()}
    assert types["sleep"]["payload_schema"]["properties"]["seconds"]["type"] == "number"
    health = httpx.get(f"{api.url}/health")
    assert health.status_code == 200, health.text
    assert {name: c["status"] for name, c in health.json()["checks"].items()} == {
        "database": "ok",
        "stuck_jobs": "ok",
        "dispatcher": "ok",
        "progress": "ok",
        "webhooks": "ok",
        "capacity": "ok",
    }
    assert httpx.get(f"{api.url}/docs").status_code == 200


def test_a_paused_queue_accepts_jobs_starts_none_across_a_restart_and_resumes(
    api: Api,
) -> None:
    admin = api.client(api.key("ops", admin=True))
    tenant = api.client(api.key(_tenant()))
    refused = tenant.post("/v1/queues/solo/pause")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert admin.post("/v1/queues/nope/pause").status_code == 404
    paused = admin.post("/v1/queues/solo/pause")
    try:
        assert paused.status_code == 200 and paused.json()["paused"] is True
        held = tenant.post("/v1/jobs", json={"type": "noop", "queue": "solo"})
        assert held.status_code == 202
        queues = {q["name"]: q for q in tenant.get("/v1/queues").json()}
        assert queues["solo"]["paused"] and queues["solo"]["depth"] == 1
        assert not queues["default"]["paused"]

        def runs_elsewhere() -> None:
            """A job of another queue, submitted after, completes: the dispatcher claimed
            since, and passed the paused queue by."""
            other = tenant.post("/v1/jobs", json={"type": "noop", "payload": {}}).json()
            wait_for(
                lambda: tenant.get(f"/v1/jobs/{other['id']}").json()["status"] == "completed",
                what="a job of an unpaused queue to complete",
            )
            job = tenant.get(f"/v1/jobs/{held.json()['id']}").json()
            assert (job["status"], job["attempt"]) == ("queued", 0)

        runs_elsewhere()
        # The pause is a row: a dispatcher that restarts keeps it.
        dispatcher = ray.get_actor(DISPATCHER_ACTOR, namespace=api.settings.namespace)
        ray.kill(dispatcher, no_restart=False)
        runs_elsewhere()
        resumed = admin.post("/v1/queues/solo/resume")
        assert resumed.status_code == 200 and resumed.json()["paused"] is False
        wait_for(
            lambda: tenant.get(f"/v1/jobs/{held.json()['id']}").json()["status"] == "completed",
            what="the resumed queue's job to complete",
        )
    finally:
        admin.post("/v1/queues/solo/resume")


def test_a_job_type_that_can_never_fit_is_named_by_health_and_waits_queued(api: Api) -> None:
    client = api.client(api.key(_tenant()))
    huge = client.post("/v1/jobs", json={"type": "test.huge", "payload": {}}).json()

    def named() -> dict | None:
        check = httpx.get(f"{api.url}/health").json()["checks"]["capacity"]
        return check if check["status"] == "degraded" else None

    check = wait_for(named, what="/health to name the job type")
    assert "test.huge (waiting for 64 CPU; the cluster has 2 CPU in all)" in check["detail"]
    job = client.get(f"/v1/jobs/{huge['id']}").json()
    assert (job["status"], job["message"]) == (
        "queued",
        "waiting for 64 CPU; the cluster has 2 CPU in all",
    )
    queues = {q["name"]: q for q in client.get("/v1/queues").json()}
    assert queues["default"]["waiting"]["waiting for 64 CPU; the cluster has 2 CPU in all"] >= 1
    client.post(f"/v1/jobs/{huge['id']}/cancel")
    wait_for(lambda: named() is None, what="/health to be ok again")
