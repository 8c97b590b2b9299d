"""What one tenant's key may ask of everyone's capacity, over real HTTP on Serve
(PostgreSQL): operator lanes and priorities, retries, and batches sent twice.

Before (issue 33): a tenant key's ``{"type": "sleep", "queue": "maintenance", "priority":
1000000}`` was taken, held the maintenance queue (concurrency 1) so that the admin's
``maintenance.stuck`` waited, and tenants' jobs at priority 1,000,000 kept another tenant's
jobs queued; with submissions over the rate limit (429), ``retry-failed`` and a job's
``retry`` still made attempts (125 of them); and 20 identical ``POST /v1/batches`` with one
``Idempotency-Key`` made 20 batches.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.helpers.serving import Api, module_api, submit_limit
from tests.security.test_hostile_tenant import ROUTES

#: Jobs (submitted or retried) a tenant may start per window here.
LIMIT = 6
#: The top priority, which only admin keys may give (tenants: 0..100 by default).
TOP = 1_000_000

pytestmark = pytest.mark.postgres


api = module_api("limited", "postgres", rate_limits=submit_limit(LIMIT))


def _tenant(api: Api, name: str) -> httpx.Client:
    """A client of a new tenant: its own rate-limit window."""
    return api.client(api.key(f"{name}-{uuid.uuid4().hex[:8]}"))


#: What the report's tenant sent, and the same with only the priority beyond a tenant's.
LANE = {"type": "sleep", "payload": {"seconds": 900}, "queue": "maintenance", "priority": TOP}
HIGH = {"type": "sleep", "payload": {"seconds": 900}, "priority": TOP}


def test_a_tenant_cannot_take_the_maintenance_lane_nor_the_top_priority(api: Api) -> None:
    for route, body in ROUTES.items():
        for spec, status, field in ((LANE, 403, "queue"), (HIGH, 422, "priority")):
            for sent in (spec, {"type": "noop", "then": spec}):
                answer = _tenant(api, "lanes").post(route, json=body(dict(sent)))
                assert answer.status_code == status, (route, sent, answer.text)
                error = answer.json()["error"]
                assert error["details"][0]["loc"][-1] == field, (route, error)
                assert ("maintenance" if field == "queue" else "between 0 and 100") in (
                    error["message"]
                )
    admin = api.client(api.key("ops", admin=True))
    queues = {q["name"]: q for q in admin.get("/v1/queues").json()}
    assert queues["maintenance"]["admin_only"] and not queues["default"]["admin_only"]
    # The lane stays the operator's: the admin's maintenance job runs at once, and an admin
    # key may give any priority.
    stuck = admin.post("/v1/jobs", json={"type": "maintenance.stuck"}).json()["id"]
    wait_for(
        lambda: admin.get(f"/v1/jobs/{stuck}").json()["status"] == "completed",
        timeout=120,
        what="the admin's maintenance.stuck to complete",
    )
    top = admin.post("/v1/jobs", json={"type": "noop", "priority": TOP})
    assert top.status_code == 202 and top.json()["priority"] == TOP


def _failed(client: httpx.Client, batch_id: str, count: int) -> None:
    wait_for(
        lambda: client.get(f"/v1/batches/{batch_id}").json()["counts"]["failed"] == count,
        timeout=120,
        what=f"{count} failed jobs in batch {batch_id}",
    )


def test_retries_are_charged_to_the_submit_rate_limit(api: Api) -> None:
    client = _tenant(api, "retries")
    failing = {"type": "fail", "payload": {"error": "PermanentError"}, "max_attempts": 1}
    batch = client.post("/v1/batches", json={"jobs": [failing, failing]}).json()  # 2 of 6
    first = batch["job_ids"][0]
    _failed(client, batch["id"], 2)
    assert client.post(f"/v1/jobs/{first}/retry").status_code == 200  # 3 of 6
    _failed(client, batch["id"], 2)
    again = client.post(f"/v1/batches/{batch['id']}/retry-failed")  # 5 of 6
    assert again.status_code == 200 and again.json()["retried"] == 2, again.text
    _failed(client, batch["id"], 2)
    # Two more attempts would pass the limit: refused, and nothing is queued.
    refused = client.post(f"/v1/batches/{batch['id']}/retry-failed")
    _assert_limited(refused)
    assert client.get(f"/v1/batches/{batch['id']}").json()["counts"]["failed"] == 2
    # Retries and submissions share the window: the last job allowed, then no retry.
    assert client.post("/v1/jobs", json={"type": "noop"}).status_code == 202  # 6 of 6
    _assert_limited(client.post(f"/v1/jobs/{first}/retry"))
    assert client.get(f"/v1/jobs/{first}").json()["status"] == "failed"
    attempts = client.get(f"/v1/jobs/{first}?include=attempts").json()["attempts"]
    assert len(attempts) == 3


def _assert_limited(answer: httpx.Response) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(answer.headers["Retry-After"]) <= 3600


def test_a_batch_sent_again_with_its_idempotency_key_is_the_first_batch(api: Api) -> None:
    client = _tenant(api, "replays")
    body: dict[str, Any] = {"jobs": [{"type": "noop"}], "tags": ["nightly"]}
    key = {"Idempotency-Key": f"nightly-{uuid.uuid4()}"}
    answers = [client.post("/v1/batches", json=body, headers=key) for _ in range(LIMIT - 1)]
    assert [a.status_code for a in answers] == [202] + [200] * (LIMIT - 2), answers[-1].text
    assert all(a.headers.get("Idempotent-Replayed") == "true" for a in answers[1:])
    assert len({a.json()["id"] for a in answers}) == 1
    assert len({tuple(a.json()["job_ids"]) for a in answers}) == 1
    assert len(client.get("/v1/batches").json()["batches"]) == 1
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1
    # The same key for another batch is a conflict, as for a job, and writes nothing.
    other = client.post("/v1/batches", json={**body, "tags": ["other"]}, headers=key)
    assert other.status_code == 409, other.text
    assert answers[0].json()["id"] in other.json()["error"]["message"]
    assert len(client.get("/v1/batches").json()["batches"]) == 1
