"""Serve-level behaviour: rate limits shared by replicas, and work that outlives a redeploy."""

from __future__ import annotations

import pytest
from ray import serve

from raypipe.api.deployment import APP_NAME, build
from tests.conftest import wait_for
from tests.helpers.serving import Api, module_api, submit_limit

LIMIT = 6
pytestmark = pytest.mark.postgres


#: Two replicas sharing PostgreSQL, with a small submission limit.
api = module_api("limited", "postgres", rate_limits=submit_limit(LIMIT), api_replicas=2)


def test_the_submission_limit_holds_across_replicas(api: Api) -> None:
    client = api.client(api.key("limited"))
    statuses = [client.post("/v1/jobs", json={"type": "noop"}).status_code for _ in range(LIMIT)]
    assert statuses == [202] * LIMIT
    refused = client.post("/v1/jobs", json={"type": "noop"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    bulk = client.post("/v1/jobs/bulk", json={"jobs": [{"type": "noop"}] * 2})
    assert bulk.status_code == 429
    assert len(client.get("/v1/jobs").json()["jobs"]) == LIMIT
    # Another tenant has its own window.
    other = api.client(api.key("unlimited"))
    assert other.post("/v1/jobs", json={"type": "noop"}).status_code == 202


def test_a_submission_is_charged_for_the_follow_ups_it_may_make(api: Api) -> None:
    client = api.client(api.key("chains"))
    then = None
    for _ in range(LIMIT - 1):  # a chain of five follow-ups: six jobs in all
        then = {"type": "noop", "then": then}
    chained = {"type": "noop", "run_at": "2100-01-01T00:00:00Z", "then": then}
    assert client.post("/v1/jobs", json=chained).status_code == 202
    refused = client.post("/v1/jobs", json={"type": "noop"})
    assert refused.status_code == 429, refused.text
    # A batch's own follow-up counts too: five jobs and it use the six.
    batches = api.client(api.key("batches"))
    batch = {"jobs": [{"type": "noop"}] * (LIMIT - 1), "then": {"type": "noop"}}
    assert batches.post("/v1/batches", json=batch).status_code == 202
    assert batches.post("/v1/batches", json={"jobs": [{"type": "noop"}]}).status_code == 429


def test_jobs_finish_when_the_api_is_redeployed_under_them(api: Api) -> None:
    client = api.client(api.key("redeploy"))
    ids = [
        client.post(
            "/v1/jobs", json={"type": "sleep", "payload": {"seconds": 3, "steps": 6}}
        ).json()["id"]
        for _ in range(2)
    ]
    # Started, both (on a loaded machine one may end before the other starts: then it is
    # the other that runs under the redeploy).
    wait_for(
        lambda: all(
            client.get(f"/v1/jobs/{i}").json()["status"] in ("processing", "completed") for i in ids
        ),
        what="both jobs to start",
    )
    settings = api.settings.model_copy(update={"api_replicas": 1})
    serve.run(build(settings), name=APP_NAME, route_prefix="/")
    wait_for(
        lambda: all(client.get(f"/v1/jobs/{i}").json()["status"] == "completed" for i in ids),
        timeout=90,
        what="both jobs to complete",
    )
    for job_id in ids:
        attempts = client.get(f"/v1/jobs/{job_id}", params={"include": "attempts"}).json()
        assert [a["status"] for a in attempts["attempts"]] == ["completed"]
