"""Fair share over HTTP, on both databases: a tenant's flood does not hold back another
tenant's jobs; queues show each tenant's jobs and share; an admin sets weights."""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime

import httpx
import pytest

from raypipe.exceptions import Conflict
from raypipe.jobs import JobStatus
from raypipe.store import JobStore
from tests.conftest import DB_KINDS, wait_for
from tests.helpers.serving import LOOPBACK_WEBHOOKS, Api, module_api

api = module_api("fair", DB_KINDS, **LOOPBACK_WEBHOOKS)

#: One flood job's run: each `sleep` holds one of the test cluster's 2 CPUs this long.
JOB_S = 0.2


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def test_a_tenant_submitting_after_a_flood_starts_within_a_few_jobs(api: Api) -> None:
    flood, late = _tenant(), _tenant()
    sleep = {"type": "sleep", "payload": {"seconds": JOB_S, "steps": 1}}
    with api.client(api.key(flood)) as a, api.client(api.key(late)) as b:
        answer = a.post("/v1/jobs/bulk", json={"jobs": [sleep] * 300})
        assert answer.status_code == 202, answer.text
        flooded = [job["id"] for job in answer.json()["jobs"]]
        store = JobStore.from_url(api.settings.database_url)
        # The flood is running: its backlog is ~30 s of work on the test cluster's 2 CPUs.
        wait_for(lambda: store.count_by_status(flooded).get(JobStatus.COMPLETED, 0) >= 3)
        mine = [b.post("/v1/jobs", json=sleep).json() for _ in range(3)]
        done = [
            wait_for(lambda job=job: _ended(b, job["id"]), timeout=60, what="the late jobs")
            for job in mine
        ]
        waits = [
            (_when(job["started_at"]) - _when(sent["created_at"])).total_seconds()
            for job, sent in zip(done, mine, strict=True)
        ]
        assert all(job["status"] == "completed" for job in done)
        try:
            records = [store.get(job_id) for job_id in flooded]
            last = max(_when(job["started_at"]) for job in done)
            ahead = [r for r in records if r.started_at is not None and r.started_at < last]
            # First come, first served, all 300 would start first; here those already
            # admitted when the late ones came (one per CPU, and one prefetched), and a
            # few more while the late ones took their turns.
            assert len(ahead) < 100, (len(ahead), waits)
            assert max(waits) < 25 * JOB_S, waits
            for record in records:  # the rest, cancelled (those that end meanwhile refuse)
                if record.status is JobStatus.QUEUED:
                    with contextlib.suppress(Conflict):
                        store.request_cancel(record.id)
        finally:
            store.dispose()


def _ended(http: httpx.Client, job_id: str) -> dict[str, object] | None:
    job = http.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] in ("completed", "failed", "cancelled") else None


def test_queues_show_each_tenants_jobs_and_share_and_a_tenant_sees_its_own(api: Api) -> None:
    one, two = _tenant(), _tenant()
    held = {"type": "sleep", "payload": {"seconds": 30, "steps": 1}, "queue": "solo"}
    with (
        api.client(api.key("ops", admin=True)) as admin,
        api.client(api.key(one)) as first,
        api.client(api.key(two)) as second,
    ):
        assert admin.put(f"/v1/tenants/{two}", json={"weight": 3}).status_code == 200
        jobs = [first.post("/v1/jobs", json=held).json(), second.post("/v1/jobs", json=held).json()]
        try:

            def solo(http: httpx.Client) -> dict[str, object]:
                [queue] = [q for q in http.get("/v1/queues").json() if q["name"] == "solo"]
                return queue

            def both_there() -> list[dict[str, object]] | None:
                rows = solo(admin)["tenants"]
                mine = [row for row in rows if row["tenant"] in (one, two)]  # type: ignore[index]
                running = sum(row["running"] for row in mine)  # type: ignore[misc]
                return mine if len(mine) == 2 and running == 1 else None

            rows = wait_for(both_there, what="both tenants in the solo queue")
            assert {row["tenant"]: row["weight"] for row in rows} == {one: 1.0, two: 3.0}
            assert {row["tenant"]: row["share"] for row in rows} == {one: 0.25, two: 0.75}
            assert sorted(row["waiting"] + row["running"] for row in rows) == [1, 1]
            # A tenant's key sees its own row only.
            assert [row["tenant"] for row in solo(first)["tenants"]] == [one]
            assert [t["tenant"] for t in second.get("/v1/tenants").json()] == [two]
            everyone = {t["tenant"]: t for t in admin.get("/v1/tenants").json()}
            assert everyone[two]["weight"] == 3.0
        finally:
            for job in jobs:
                admin.post(f"/v1/jobs/{job['id']}/cancel")


@pytest.mark.parametrize(
    ("body", "status"),
    [({"weight": 0}, 422), ({"weight": -1}, 422), ({"weight": "x"}, 422), ({}, 422)],
)
def test_a_weight_is_checked_and_only_an_admin_sets_one(
    api: Api, body: dict[str, object], status: int
) -> None:
    with api.client(api.key("ops", admin=True)) as admin, api.client(api.key("t1")) as tenant:
        answer = admin.put("/v1/tenants/t1", json=body)
        assert answer.status_code == status
        assert "weight" in answer.text
        refused = tenant.put("/v1/tenants/t1", json={"weight": 5})
        assert refused.status_code == 403
        assert admin.put("/v1/tenants/not..valid", json={"weight": 2}).status_code == 422
