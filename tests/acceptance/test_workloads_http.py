"""Artifacts, deletion, follow-ups and embeddings over real HTTP on Serve (API.md's flow)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from raypipe import Client, JobStatus
from tests.conftest import POSTGRES_ONLY, wait_for
from tests.helpers.serving import Api, module_api

WAIT_S = 120


#: PostgreSQL only: the workloads run on both databases in tests/integration, and over
#: HTTP on SQLite in the notebooks and CLI tests.
api = module_api("workloads", POSTGRES_ONLY)


@pytest.fixture
def client(api: Api) -> Iterator[Client]:
    with Client(api.url, api_key=api.key(f"t-{uuid.uuid4().hex[:10]}")) as client:
        yield client


def _echo(client: Client, artifacts: dict[str, str]):
    handle = client.submit("test.echo", {"artifacts": artifacts})
    job = handle.wait(timeout=WAIT_S)
    assert job.status is JobStatus.COMPLETED
    return handle, job


def test_artifacts_are_listed_and_served_with_their_content_type(api: Api, client: Client) -> None:
    handle, job = _echo(client, {"report.txt": "hello", "mesh.glb": "glTF"})
    view = client._http.get(f"/v1/jobs/{job.id}").json()
    assert sorted(view["artifacts"], key=lambda a: a["name"]) == [
        {
            "name": "mesh.glb",
            "size": 4,
            "content_type": "model/gltf-binary",
            "url": f"/v1/jobs/{job.id}/artifacts/mesh.glb",
        },
        {
            "name": "report.txt",
            "size": 5,
            "content_type": "text/plain",
            "url": f"/v1/jobs/{job.id}/artifacts/report.txt",
        },
    ]
    listed = {a["name"]: a for a in view["artifacts"]}
    response = client._http.get(listed["report.txt"]["url"])
    assert response.status_code == 200 and response.content == b"hello"
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["content-length"] == "5"
    glb = client._http.get(f"/v1/jobs/{job.id}/artifacts/mesh.glb")
    assert glb.headers["content-type"] == "model/gltf-binary"
    assert handle.artifact("report.txt") == b"hello"


@pytest.mark.parametrize(
    "name", ["..%2F..%2Fraypipe.db", "%2E%2E", ".env", "missing.txt", "report.txt%00.png"]
)
def test_no_path_reaches_beyond_the_listed_artifacts(api: Api, client: Client, name: str) -> None:
    _, job = _echo(client, {"report.txt": "hello"})
    response = client._http.get(f"/v1/jobs/{job.id}/artifacts/{name}")
    assert response.status_code == 404
    assert "error" in response.json()
    assert b"SQLite" not in response.content


def test_another_tenant_cannot_fetch_an_artifact_but_an_admin_can(api: Api, client: Client) -> None:
    _, job = _echo(client, {"secret.txt": "s3cret"})
    path = f"/v1/jobs/{job.id}/artifacts/secret.txt"
    stranger = api.client(api.key(f"t-{uuid.uuid4().hex[:10]}"))
    assert stranger.get(path).status_code == 404
    admin = api.client(api.key("ops", admin=True))
    assert admin.get(path).content == b"s3cret"


def test_deleting_a_job_deletes_its_rows_and_artifacts(api: Api, client: Client) -> None:
    _, job = _echo(client, {"a.txt": "a"})
    folder = Path(api.settings.artifacts_url) / job.tenant / job.id
    assert (folder / "1" / "a.txt").read_text() == "a"  # the attempt's own folder
    response = client._http.delete(f"/v1/jobs/{job.id}")
    assert response.status_code == 204 and response.content == b""
    assert client._http.get(f"/v1/jobs/{job.id}").status_code == 404
    assert client._http.get(f"/v1/jobs/{job.id}/artifacts/a.txt").status_code == 404
    assert not folder.exists()
    assert client._http.delete(f"/v1/jobs/{job.id}").status_code == 404


def test_a_queued_or_running_job_cannot_be_deleted(api: Api, client: Client) -> None:
    handle = client.submit("sleep", {"seconds": 30, "steps": 30})
    response = client._http.delete(f"/v1/jobs/{handle.id}")
    assert response.status_code == 409
    assert "cancel it before deleting" in response.json()["error"]["message"]
    handle.cancel()
    handle.wait(timeout=WAIT_S)
    client.delete_job(handle.id)


def test_then_submits_a_follow_up_when_the_condition_holds(client: Client) -> None:
    then = {"type": "noop", "when": {"field": "confidence", "gte": 0.8}}
    parent = client.submit("test.echo", {"result": {"confidence": 0.9}}, then=then)
    job = parent.wait(timeout=WAIT_S)
    assert job.then is not None and job.then["when"] == {"field": "confidence", "gte": 0.8}
    child = wait_for(
        lambda: next((j for j in client.list() if j.parent_id == job.id), None),
        what="the follow-up",
    )
    assert client.wait(child.id, timeout=WAIT_S).status is JobStatus.COMPLETED


def test_a_bad_then_is_a_422_naming_the_field(client: Client) -> None:
    response = client._http.post(
        "/v1/jobs",
        json={"type": "noop", "then": {"type": "sleep", "payload": {"seconds": "x"}}},
    )
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("then.payload.seconds:")


def test_embeddings_come_back_as_a_numpy_array(client: Client) -> None:
    texts = ["a cat on a mat", "a kitten on a rug", "stock prices fell"]
    job = client.submit("embed.texts", {"texts": texts})
    record = job.wait(timeout=300, progress=False)
    assert record.status is JobStatus.COMPLETED, record.error
    assert {"count", "dim", "model", "artifact"} <= set(record.result)
    assert record.result["count"] == 3 and record.result["artifact"] == "embeddings.npy"
    assert record.result["dim"] == 384 and record.result["model"] == "all-MiniLM-L6-v2"
    vectors = job.artifact("embeddings.npy")
    assert isinstance(vectors, np.ndarray) and vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]
    # One row per text, in input order.
    reversed_job = client.submit("embed.texts", {"texts": texts[::-1]})
    assert reversed_job.wait(timeout=300).status is JobStatus.COMPLETED
    np.testing.assert_allclose(reversed_job.artifact("embeddings.npy"), vectors[::-1], atol=1e-5)


def test_an_embedding_result_names_its_backend(client: Client) -> None:
    record = client.submit("embed.texts", {"texts": ["a"]}).wait(timeout=300)
    assert record.status is JobStatus.COMPLETED, record.error
    # The pool's model runs on sentence-transformers' default backend until another is set.
    assert record.result["backend"] == "torch"


def test_embedding_input_errors_are_422s(client: Client) -> None:
    for payload, field in [
        ({"texts": []}, "payload.texts"),
        ({"texts": ["ok", ""]}, "payload.texts"),
        ({"texts": ["ok", 7]}, "payload.texts.1"),
    ]:
        response = client._http.post("/v1/jobs", json={"type": "embed.texts", "payload": payload})
        assert response.status_code == 422, payload
        assert response.json()["error"]["message"].startswith(field + ":")
