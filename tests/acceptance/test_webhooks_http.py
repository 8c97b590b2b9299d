"""Signed webhooks end to end: jobs and batches with a ``webhook_url`` reach a local
receiver through the real sender actor, verify with the tenant's secret, and every
delivery attempt is listed and can be replayed over HTTP."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

import raypipe
from raypipe.webhooks import WebhookVerificationError, verify
from tests.conftest import wait_for
from tests.helpers.serving import Api, postgres_api  # noqa: F401  (`api` on PostgreSQL only)
from tests.helpers.webhook_receiver import receiver


@pytest.fixture
def tenant(api: Api) -> tuple[raypipe.Client, httpx.Client]:
    key = api.key(f"w-{uuid.uuid4().hex[:8]}")
    with raypipe.Client(api.url, api_key=key) as client, api.client(key) as http:
        yield client, http


def _delivered(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    found = http.get("/v1/webhooks/deliveries", params=params).json()["deliveries"]
    return found if found and all(d["status"] in ("delivered", "failed") for d in found) else []


def test_a_job_webhook_is_signed_delivered_and_listed(
    tenant: tuple[raypipe.Client, httpx.Client],
) -> None:
    client, http = tenant
    secret = http.get("/v1/webhooks/secret").json()["secret"]
    assert secret.startswith("whsec_")
    assert http.get("/v1/webhooks/secret").json()["secret"] == secret  # stable
    with receiver() as hook:
        job = client.submit("test.echo", {"result": {"answer": 42}}, webhook_url=hook.url)
        job.wait(timeout=60)
        [request] = hook.wait_for(1)
        event = verify(request.body, request.headers, secret)
        assert event["type"] == "job.completed"
        assert event["data"]["id"] == job.id and event["data"]["result"] == {"answer": 42}
        assert request.headers["webhook-id"].startswith("msg_")
        with pytest.raises(WebhookVerificationError):
            verify(request.body.replace(b"42", b"43"), request.headers, secret)
        [listed] = wait_for(lambda: _delivered(http, job_id=job.id), what="the delivery")
    assert listed["status"] == "delivered" and listed["event"] == "job.completed"
    assert listed["id"] == request.headers["webhook-id"]
    assert [a["status_code"] for a in listed["attempt_log"]] == [200]
    rotated = http.post("/v1/webhooks/secret/rotate").json()["secret"]
    assert rotated != secret and http.get("/v1/webhooks/secret").json()["secret"] == rotated


def test_a_failed_delivery_is_retried_then_replayed(
    api: Api, tenant: tuple[raypipe.Client, httpx.Client]
) -> None:
    client, http = tenant
    with receiver(script=[500, 500, 503]) as hook:  # 3 tries allowed here: all fail
        job = client.submit("noop", {}, webhook_url=hook.url)
        job.wait(timeout=60)
        [failed] = wait_for(lambda: _delivered(http, job_id=job.id), what="the delivery")
        assert failed["status"] == "failed" and failed["attempts"] == 3
        assert [a["status_code"] for a in failed["attempt_log"]] == [500, 500, 503]
        with api.client(api.key("intruder")) as intruder:
            stranger = intruder.post(f"/v1/webhooks/deliveries/{failed['id']}/replay")
            assert stranger.status_code == 404
        replayed = http.post(f"/v1/webhooks/deliveries/{failed['id']}/replay")
        assert replayed.status_code == 202
        requests = hook.wait_for(4)
    assert len({r.headers["webhook-id"] for r in requests}) == 1  # one message, four tries
    done = wait_for(
        lambda: http.get(f"/v1/webhooks/deliveries/{failed['id']}").json()["status"] == "delivered",
        what="the replay to be delivered",
    )
    assert done


def test_a_batch_webhook_fires_once(tenant: tuple[raypipe.Client, httpx.Client]) -> None:
    client, http = tenant
    secret = http.get("/v1/webhooks/secret").json()["secret"]
    with receiver() as hook:
        batch = client.submit_batch([("noop", {})] * 20, webhook_url=hook.url)
        batch.wait(timeout=120)
        [request] = hook.wait_for(1)
        event = verify(request.body, request.headers, secret)
        wait_for(lambda: _delivered(http, batch_id=batch.id), what="the batch delivery")
        assert len(hook.requests) == 1
    assert event["type"] == "batch.completed"
    assert event["data"]["counts"]["completed"] == 20 and event["data"]["status"] == "completed"


def test_webhook_destinations_are_checked_at_submission(
    tenant: tuple[raypipe.Client, httpx.Client],
) -> None:
    _client, http = tenant
    for url, why in (
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.1.2.3/hook", "private"),
        ("ftp://example.com/hook", "http"),
        ("http://user:pw@example.com/hook", "credentials"),
    ):
        refused = http.post("/v1/jobs", json={"type": "noop", "webhook_url": url})
        assert refused.status_code == 422, url
        body = refused.json()["error"]
        assert body["details"][0]["loc"] == ["webhook_url"] and why in body["message"]
    assert http.get("/v1/webhooks/deliveries").json()["deliveries"] == []
    bad_cursor = http.get("/v1/webhooks/deliveries", params={"cursor": "nope"})
    assert bad_cursor.status_code == 422
    assert json.loads(bad_cursor.text)["error"]["details"][0]["loc"] == ["cursor"]
