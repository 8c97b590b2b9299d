"""Batches and statistics over real HTTP, through the Python client and raw requests."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

import raypipe
from raypipe.batches import BatchStatus
from raypipe.exceptions import Conflict, InvalidInput, NotFound
from raypipe.store import create_engine
from raypipe.store.stats import StatsStore
from tests.helpers.serving import Api, postgres_api  # noqa: F401  (`api` on PostgreSQL only)


@pytest.fixture
def client(api: Api) -> Any:
    with raypipe.Client(api.url, api_key=api.key(f"b-{uuid.uuid4().hex[:8]}")) as client:
        yield client


def test_a_batch_runs_and_is_followed_over_http(client: raypipe.Client) -> None:
    specs = [("test.echo", {"result": {"i": i}}) for i in range(25)]
    specs += [("fail", {"error": "PermanentError"})]
    batch = client.submit_batch(iter(specs), tags=["http"])
    final = batch.wait(timeout=120, progress=True)
    assert final.status is BatchStatus.COMPLETED_WITH_FAILURES
    assert final.counts == {
        "queued": 0,
        "processing": 0,
        "completed": 25,
        "failed": 1,
        "cancelled": 0,
    }
    assert final.progress == 100.0 and final.eta_s == 0.0 and final.tags == ["http"]
    jobs = list(batch.jobs())  # pages of 1000: one page here
    assert [job.batch_index for job in jobs] == list(range(26))
    assert [job.result for job in jobs[:25]] == [{"i": i} for i in range(25)]
    assert jobs[-1].status.value == "failed" and jobs[-1].batch_id == batch.id
    assert client.wait_batch(batch.id).status is BatchStatus.COMPLETED_WITH_FAILURES


def test_batch_routes_answer_as_documented(api: Api) -> None:
    with api.client(api.key(f"r-{uuid.uuid4().hex[:8]}")) as http:
        body = {"jobs": [{"type": "sleep", "payload": {"seconds": 60}, "queue": "solo"}] * 3}
        created = http.post("/v1/batches", json=body)
        assert created.status_code == 202, created.text
        batch = created.json()
        assert created.headers["location"] == f"/v1/batches/{batch['id']}"
        assert batch["status"] == "running" and batch["total"] == 3 and batch["outcome"] is None
        assert len(batch["job_ids"]) == 3
        page = http.get(f"/v1/batches/{batch['id']}/jobs", params={"limit": 2}).json()
        assert [j["id"] for j in page["jobs"]] == batch["job_ids"][:2]
        rest = http.get(
            f"/v1/batches/{batch['id']}/jobs", params={"limit": 2, "cursor": page["next_cursor"]}
        ).json()
        assert [j["id"] for j in rest["jobs"]] == batch["job_ids"][2:]
        assert rest["next_cursor"] is None
        listed = http.get("/v1/batches").json()["batches"]
        assert [b["id"] for b in listed] == [batch["id"]]
        cancelled = http.post(f"/v1/batches/{batch['id']}/cancel").json()
        assert cancelled["cancel_requested"] is True
        with http.stream("GET", f"/v1/batches/{batch['id']}/events") as stream:
            events = _events(stream)
        assert events[-1][0] == "status" and events[-1][1]["status"] == "cancelled"
        again = http.post(f"/v1/batches/{batch['id']}/cancel")
        assert again.status_code == 409
        retried = http.post(f"/v1/batches/{batch['id']}/retry-failed").json()
        assert retried["retried"] == 0 and retried["status"] == "cancelled"


def test_bad_batches_are_refused_with_located_errors(api: Api) -> None:
    with api.client(api.key(f"v-{uuid.uuid4().hex[:8]}")) as http:
        bad = http.post("/v1/batches", json={"jobs": [{"type": "noop"}, {"type": "nope"}]})
        assert bad.status_code == 422
        assert bad.json()["error"]["details"][0]["loc"][:3] == ["jobs", 1, "type"]
        empty = http.post("/v1/batches", json={"jobs": []})
        assert empty.status_code == 422
        private = http.post(
            "/v1/batches",
            json={"jobs": [{"type": "noop"}], "webhook_url": "http://169.254.169.254/latest"},
        )
        assert private.status_code == 422
        assert private.json()["error"]["details"][0]["loc"] == ["webhook_url"]
        assert "link-local" in private.json()["error"]["message"]
        assert http.get("/v1/jobs").json()["jobs"] == []  # nothing was written


def test_another_tenants_batch_is_a_404(api: Api, client: raypipe.Client) -> None:
    batch = client.submit_batch([("noop", {})])
    with raypipe.Client(api.url, api_key=api.key("someone-else")) as other:
        with pytest.raises(NotFound):
            other.get_batch(batch.id)
        with pytest.raises(NotFound):
            other.cancel_batch(batch.id)
    batch.wait(timeout=60)
    with pytest.raises(Conflict):
        batch.cancel()
    with pytest.raises(InvalidInput):
        client.submit_batch([("noop", {"unexpected": 1})])


def test_stats_over_http_match_the_store_and_respect_tenants(api: Api) -> None:
    tenant = f"s-{uuid.uuid4().hex[:8]}"
    with raypipe.Client(api.url, api_key=api.key(tenant)) as client:
        batch = client.submit_batch(
            [("test.echo", {})] * 4 + [("fail", {"error": "PermanentError"})]
        )
        batch.wait(timeout=120)
    with api.client(api.key(tenant)) as http, api.client(api.key("root", admin=True)) as admin:
        mine = http.get("/v1/stats").json()
        assert mine["filters"]["tenant"] == tenant
        assert mine["jobs"]["completed"] == 4 and mine["jobs"]["failed"] == 1
        assert mine["success_rate"] == pytest.approx(0.8)
        assert mine["errors"] == [{"type": "PermanentError", "count": 1}]
        engine = create_engine(api.settings.database_url)
        try:
            direct = StatsStore(engine).compute(tenant=tenant).to_dict()
        finally:
            engine.dispose()
        assert direct["jobs"] == mine["jobs"] and direct["errors"] == mine["errors"]
        other = http.get("/v1/stats", params={"tenant": "root"})
        assert other.status_code == 422
        assert other.json()["error"]["details"][0]["loc"] == ["tenant"]
        naive = http.get("/v1/stats", params={"since": "2026-01-01T00:00:00"})
        assert naive.status_code == 422 and "since" in naive.json()["error"]["message"]
        seen = admin.get("/v1/stats", params={"tenant": tenant}).json()
        assert seen["jobs"] == mine["jobs"]


def _events(stream: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events, kind = [], "message"
    for line in stream.iter_lines():
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: ") :])))
    return events


def test_maintenance_jobs_need_an_admin_key(api: Api) -> None:
    spec = {"type": "maintenance.stuck", "payload": {}}
    with api.client(api.key(f"m-{uuid.uuid4().hex[:8]}")) as http:
        for path, body in (("/v1/jobs", spec), ("/v1/batches", {"jobs": [spec]})):
            refused = http.post(path, json=body)
            assert refused.status_code == 422, refused.text
            assert "only admin API keys" in refused.json()["error"]["message"]
        follow_up = http.post("/v1/jobs", json={"type": "noop", "then": spec})
        assert follow_up.status_code == 422
        assert follow_up.json()["error"]["details"][0]["loc"] == ["then", "type"]
    with raypipe.Client(api.url, api_key=api.key("ops", admin=True)) as admin:
        report = admin.submit("maintenance.stuck", {}).result(timeout=120)
    assert set(report) >= {"lease_expired", "overrunning", "waiting"}
