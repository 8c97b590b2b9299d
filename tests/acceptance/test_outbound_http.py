"""Each purpose's allow-list over HTTP, on a deployment with the embedded defaults (SQLite)
and one list opened to loopback: input fetches (``document_url``, ``image_url``), whose
answers the tenant reads back, and webhooks. Opening one never opens the other.

A URL naming an address is judged at submission (a 422); one naming a host is judged when
it is requested (a failed job, a failed delivery). Both name the setting to use.
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

import raypipe
from raypipe.outbound import Purpose
from tests.conftest import wait_for
from tests.helpers.inputs import DOCUMENT, png
from tests.helpers.local_http import serving
from tests.helpers.serving import Api, deploy_api
from tests.helpers.webhook_receiver import receiver

WAIT_S = 300
LOOPBACK = ["127.0.0.0/8"]
FILES = {"/notes.txt": (DOCUMENT.encode(), "text/plain"), "/relief.png": (png(8, 6), "image/png")}


class Files(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body, kind = FILES[self.path]
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module", params=list(Purpose), ids=lambda p: f"only-{p.value}")
def deployment(
    request: pytest.FixtureRequest, serve_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Api, Purpose]]:
    """The API with only ``RAYPIPE_<purpose>_ALLOW_NETWORKS=["127.0.0.0/8"]`` set."""
    opened: Purpose = request.param
    yield from (
        (api, opened)
        for api in deploy_api(
            request,
            "sqlite",
            tmp_path_factory.mktemp("outbound"),
            serve_port,
            **{f"{opened.value}_allow_networks": LOOPBACK},
        )
    )


@pytest.fixture(scope="module")
def loopback_name() -> tuple[str, str]:
    """This machine's name and its one address, when that is a loopback one (127.0.0.1, or
    Debian's 127.0.1.1): a URL naming it passes the checks at submission (a name needs DNS)
    and is judged when requested."""
    name = socket.gethostname()
    try:
        found = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError:
        found = set()
    loopback = [a for a in found if ipaddress.ip_address(a).is_loopback and "." in a]
    if len(found) != 1 or not loopback or name.lower().split(".")[-1] == "localhost":
        pytest.skip(f"this machine's name {name!r} does not resolve to one loopback address")
    return name, loopback[0]


@pytest.fixture
def tenant(deployment: tuple[Api, Purpose]) -> Iterator[tuple[raypipe.Client, httpx.Client]]:
    api, _ = deployment
    key = api.key(f"o-{uuid.uuid4().hex[:8]}")
    with raypipe.Client(api.url, api_key=key) as client, api.client(key) as http:
        yield client, http


def _refused_at_submission(response: httpx.Response, loc: list[str], setting: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["details"][0]["loc"] == loc
    assert "not globally routable (loopback)" in error["message"]
    assert error["message"].endswith(f"allow it with {setting}"), error


def test_a_loopback_input_url_is_fetched_only_when_input_fetches_are_opened(
    deployment: tuple[Api, Purpose], tenant: tuple[raypipe.Client, httpx.Client]
) -> None:
    _, opened = deployment
    client, http = tenant
    with serving(Files) as server:
        for job_type, field, payload in (
            ("document.process", "document_url", {"filename": "notes.txt"}),
            ("mesh.from_image", "image_url", {"detail_factor": 1.0}),
        ):
            url = f"{server}/{'notes.txt' if field == 'document_url' else 'relief.png'}"
            body = {"type": job_type, "payload": {field: url, **payload}}
            response = http.post("/v1/jobs", json=body)
            if opened is not Purpose.FETCH:
                _refused_at_submission(response, ["payload", field], Purpose.FETCH.setting)
                continue
            assert response.status_code == 202, response.text
            job = client.wait(response.json()["id"], timeout=WAIT_S)
            assert job.status.value == "completed", job.error
            if job_type == "document.process":
                assert job.result["chars"] == len(DOCUMENT) and job.result["summary"]
            else:
                assert job.result["vertices"] == 48  # an 8×6 image at detail_factor 1
                assert {"mesh.glb", "thumbnail.png"} <= set(job.result["artifacts"])


def test_a_loopback_input_url_by_name_fails_the_job_naming_the_fetch_setting(
    deployment: tuple[Api, Purpose],
    tenant: tuple[raypipe.Client, httpx.Client],
    loopback_name: tuple[str, str],
) -> None:
    _, opened = deployment
    client, _ = tenant
    name, address = loopback_name
    with serving(Files, host=address) as server:
        url = server.replace(address, name) + "/notes.txt"
        job = client.submit("document.process", {"document_url": url}).wait(timeout=WAIT_S)
    if opened is Purpose.FETCH:
        assert job.status.value == "completed", job.error
        return
    assert job.status.value == "failed" and job.attempt == 1  # permanent: no retry
    assert job.error is not None and job.error.type == "PermanentError"
    assert job.error.message == (  # a document's errors start with their stage
        f"extract: payload.document_url: {url}: {name} resolves to {address}, which is not"
        f" globally routable (loopback); allow it with {Purpose.FETCH.setting}"
    )


def _deliveries(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """The job's deliveries once each is settled (delivered or failed)."""
    found = http.get("/v1/webhooks/deliveries", params={"job_id": job_id}).json()["deliveries"]
    return found if found and all(d["status"] in ("delivered", "failed") for d in found) else []


def test_a_loopback_webhook_is_delivered_only_when_webhooks_are_opened(
    deployment: tuple[Api, Purpose], tenant: tuple[raypipe.Client, httpx.Client]
) -> None:
    _, opened = deployment
    _, http = tenant
    with receiver() as hook:
        response = http.post("/v1/jobs", json={"type": "noop", "webhook_url": hook.url})
        if opened is not Purpose.WEBHOOK:
            _refused_at_submission(response, ["webhook_url"], Purpose.WEBHOOK.setting)
            return
        assert response.status_code == 202, response.text
        [request] = hook.wait_for(1, timeout=WAIT_S)
    assert request.headers["webhook-id"].startswith("msg_")
    [delivery] = wait_for(lambda: _deliveries(http, response.json()["id"]), what="the delivery")
    assert delivery["status"] == "delivered"


def test_a_loopback_webhook_by_name_is_refused_naming_the_webhook_setting(
    deployment: tuple[Api, Purpose],
    tenant: tuple[raypipe.Client, httpx.Client],
    loopback_name: tuple[str, str],
) -> None:
    _, opened = deployment
    client, http = tenant
    name, address = loopback_name
    with receiver(host=address) as hook:
        url = hook.url.replace(address, name)
        job = client.submit("noop", {}, webhook_url=url)
        [delivery] = wait_for(lambda: _deliveries(http, job.id), what="the delivery")
        if opened is Purpose.WEBHOOK:
            assert delivery["status"] == "delivered" and len(hook.requests) == 1
            return
        assert hook.requests == []  # refused before connecting
    assert delivery["status"] == "failed" and delivery["attempts"] == 1  # at once
    assert delivery["last_error"] == (
        f"refused: {name} resolves to {address}, which is not globally routable (loopback);"
        f" allow it with {Purpose.WEBHOOK.setting}"
    )
