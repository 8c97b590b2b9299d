"""PostgreSQL stopped for 30 seconds under the API and running jobs, then started again.

While it is away, the API says so (503s, /health degraded) and the dispatcher keeps the
outcomes it cannot write; once it is back, everything recovers by itself and every job
ends exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.runtime.names import WEBHOOK_ACTOR
from raypipe.store.webhooks import DeliveryStatus, WebhookStore
from tests.conftest import make_settings, wait_for
from tests.faults.conftest import PrivatePostgres, actor_pid, process_alive, rescued_then_completed
from tests.helpers.serving import Api, serve_api
from tests.helpers.webhook_receiver import Answer, receiver
from tests.integration.conftest import dispatcher

OUTAGE_S = 30.0


@pytest.fixture
def settings(private_postgres: PrivatePostgres, tmp_path: Path) -> Settings:
    """Settings on this test's own PostgreSQL server (for the `api` and `raypipe` fixtures);
    webhooks may reach loopback (the tests' receiver)."""
    return make_settings(
        private_postgres.url,
        tmp_path / "data",
        webhook_allow_networks=["127.0.0.0/8"],
        webhook_poll_interval_s=0.1,
    )


@pytest.fixture
def api(settings: Settings, serve_port: int, tmp_path: Path) -> Iterator[Api]:
    yield from serve_api(settings, tmp_path, serve_port)


def _health(api: Api) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{api.url}/health", timeout=60)
    return answer.status_code, answer.json()


def _dispatcher_info(settings: Settings) -> dict[str, Any]:
    return ray.get(dispatcher(settings).info.remote(), timeout=60)


def _views(client: httpx.Client, ids: list[str]) -> list[dict[str, Any]]:
    return [client.get(f"/v1/jobs/{i}", params={"include": "attempts"}).json() for i in ids]


def test_a_database_outage_degrades_the_api_and_loses_no_outcome(
    api: Api, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    client = api.client(api.key("outage"))

    def submit(spec: dict[str, Any]) -> str:
        answer = client.post("/v1/jobs", json=spec)
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    # A gate that finishes while the database is away, with jobs queued behind it.
    gate = tmp_path / "gate"
    gate.mkdir()
    gate_id = submit({"type": "test.gate", "payload": {"folder": str(gate)}, "queue": "solo"})
    wait_for(lambda: (gate / "pid-1").exists(), what="the gate to start")
    queued = [submit({"type": "noop", "queue": "solo"}) for _ in range(3)]
    sleeper = submit({"type": "sleep", "payload": {"seconds": 2, "steps": 8}})
    wait_for(
        lambda: client.get(f"/v1/jobs/{sleeper}").json()["progress"] > 0,
        what="the sleep job to report progress",
    )
    owner = _dispatcher_info(api.settings)["owner"]

    private_postgres.stop()
    stopped = time.monotonic()

    status, body = _health(api)
    assert status == 503, body
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["status"] == "degraded"
    refused = client.post("/v1/jobs", json={"type": "noop"})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "database_unavailable"
    assert client.get(f"/v1/jobs/{gate_id}").status_code == 503
    # The dispatcher notices and reports it, and keeps running (no restart loop).
    wait_for(
        lambda: _health(api)[1]["checks"]["dispatcher"]["status"] == "degraded",
        timeout=OUTAGE_S / 2,
        what="/health to report the dispatcher's failing rounds",
    )
    (gate / "release").touch()
    wait_for(lambda: (gate / "stopped-1").exists(), what="the gate's task to finish")

    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    assert _dispatcher_info(api.settings)["owner"] == owner
    assert _health(api)[0] == 503
    restarted = datetime.now(timezone.utc)
    private_postgres.start()

    wait_for(lambda: _health(api)[0] == 200, timeout=60, what="/health to be ok again")
    ids = [gate_id, *queued, sleeper]
    jobs = wait_for(
        lambda: (
            (views := _views(client, ids))
            and all(v["status"] in ("completed", "failed", "cancelled") for v in views)
            and views
        ),
        timeout=120,
        what="every job to end",
    )
    for job in jobs:  # type: ignore[union-attr]
        assert job["status"] == "completed", job
        assert [a["status"] for a in job["attempts"]] == ["completed"], job
    # The gate's outcome waited in the dispatcher and was written after the restart.
    gate_job = jobs[0]  # type: ignore[index]
    assert datetime.fromisoformat(gate_job["finished_at"]) > restarted
    assert not (gate / "pid-2").exists()
    info = _dispatcher_info(api.settings)
    assert info["owner"] == owner
    assert info["counters"].get("rescued", 0) == 0
    # And submissions work again.
    after = submit({"type": "noop"})
    wait_for(
        lambda: client.get(f"/v1/jobs/{after}").json()["status"] == "completed",
        what="a job submitted after the outage to complete",
    )


def test_actors_restarted_while_the_database_is_down_come_back_by_themselves(
    raypipe: DirectClient, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    settings = raypipe.settings
    job = raypipe.submit("test.gate", {"folder": str(tmp_path), "release_on_attempt": 2})
    wait_for(lambda: (tmp_path / "pid-1").exists(), what="the gate to start")
    owner = _dispatcher_info(settings)["owner"]
    webhooks = ray.get_actor(WEBHOOK_ACTOR, namespace=settings.namespace)
    webhooks_pid = actor_pid(webhooks)

    private_postgres.stop()
    ray.kill(dispatcher(settings), no_restart=False)
    ray.kill(webhooks, no_restart=False)
    # Ray restarts both; each must start without the database, and say that it is away.
    info = wait_for(
        lambda: (info := _dispatcher_info(settings))["owner"] != owner and info,
        what="a new dispatcher",
    )
    wait_for(lambda: _dispatcher_info(settings)["last_error"], what="the dispatcher's report")
    wait_for(lambda: actor_pid(webhooks) != webhooks_pid, what="a new webhook sender")
    wait_for(
        lambda: ray.get(webhooks.stats.remote(), timeout=60)["last_error"],
        what="the webhook sender's report",
    )
    private_postgres.start()
    pid = int((tmp_path / "pid-1").read_text())
    wait_for(lambda: not process_alive(pid), what="the attempt to die with its dispatcher")

    # The killed incarnation's attempt is rescued and run again; nothing else is needed.
    rescued_then_completed(job)
    assert raypipe.submit("noop").result(timeout=60) == {}
    wait_for(lambda: _dispatcher_info(settings)["last_error"] is None, what="a clean round")
    assert _dispatcher_info(settings)["owner"] == info["owner"]  # type: ignore[index]
    wait_for(
        lambda: ray.get(webhooks.stats.remote(), timeout=60)["last_error"] is None,
        what="the webhook sender to recover",
    )


def test_a_webhook_answered_while_the_database_is_away_is_sent_once(
    raypipe: DirectClient, private_postgres: PrivatePostgres
) -> None:
    # The receiver answers 2 s after the POST arrives: by then the database is away, and
    # the sender cannot record the answer until it is back.
    with receiver([Answer(delay_s=2.0)]) as hooks:
        job = raypipe.submit("noop", webhook_url=hooks.url)
        hooks.wait_for(1, timeout=60)
        private_postgres.stop()
        time.sleep(4.0)
        private_postgres.start()
        store = WebhookStore(raypipe.store.engine)
        # Well within the claim's lease (webhook_timeout_s + 30 s): the answer is recorded
        # as soon as the database is back, not left to expire and sent again.
        wait_for(
            lambda: [d.status for d in store.list(job_id=job.id)] == [DeliveryStatus.DELIVERED],
            timeout=20,
            what="the delivery to be recorded as delivered",
        )
        [delivery] = store.list(job_id=job.id)
        assert delivery.attempts == 1
        assert [r.headers["webhook-id"] for r in hooks.requests] == [delivery.id]
