"""Errors are bounded and have one shape, whatever a tenant sends: at most 50 ``details``
with the count of the rest, little work to find them, ``invalid_json`` for any body that
is not JSON, and no object reprs in a message. The API runs in process, on SQLite: what
is tested is the answer, not the deployment.

Before: 500,000 unknown payload keys answered a 34 MB 422 after 5.8 s (every key a
detail); a body of 100,000 ``[`` or a gzip body answered 400 ``http_error``; an
unreadable image failed its job with ``<_io.BytesIO object at 0x7f…>`` in the message.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from raypipe.api import create_app
from raypipe.config import get_settings
from raypipe.exceptions import MAX_DETAILS, PermanentError
from raypipe.store import create_engine
from raypipe.store.access import AccessStore
from tests.conftest import fresh_database

#: Half a million keys that no model has, as the report sent them.
MANY = 500_000
#: CPU seconds (the whole process: the app runs in a thread of it) one hostile request may
#: cost; it cost more than 5 before, on a quiet machine.
CPU_S = 3.0


@pytest.fixture(scope="module")
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("api")
    with fresh_database(request, "sqlite", folder) as url:
        engine = create_engine(url)
        key = AccessStore(engine).create_key("hostile")[0]
        engine.dispose()
        settings = get_settings(database_url=url, data_dir=folder / "data")
        with TestClient(create_app(settings)) as client:
            client.headers["Authorization"] = f"Bearer {key}"
            yield client


def post(client: TestClient, path: str, body: bytes, **headers: str) -> tuple[dict, float]:
    """The error a request answers, and the CPU time its answer took."""
    began = time.process_time()
    answer = client.post(
        path, content=body, headers={"Content-Type": "application/json", **headers}
    )
    spent = time.process_time() - began
    assert answer.status_code in (400, 422), answer.text[:300]
    assert len(answer.content) < 20_000  # was 34 MB
    return answer.json()["error"], spent


def unknown_keys(count: int) -> dict[str, int]:
    return {f"k{i}": 1 for i in range(count)}


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/jobs", {"type": "noop", "payload": unknown_keys(MANY)}, "payload.k0"),
        ("/v1/jobs/bulk", {"jobs": [{"type": "noop", "payload": unknown_keys(MANY)}]}, "jobs"),
        (
            "/v1/batches",
            {"jobs": [{"type": "noop"}, {"type": "noop", "payload": unknown_keys(MANY)}]},
            "jobs.1.payload.k0",
        ),
    ],
    ids=["job", "bulk", "batch"],
)
def test_half_a_million_bad_payload_keys_list_50_and_count_the_rest(
    client: TestClient, path: str, body: dict, where: str
) -> None:
    error, spent = post(client, path, json.dumps(body).encode())
    assert error["code"] == "validation_error"
    assert len(error["details"]) == MAX_DETAILS
    assert error["more"] == MANY - MAX_DETAILS
    assert error["message"].startswith(where)
    assert error["message"].endswith(f"(and {MANY - 1} more)")
    assert spent < CPU_S, f"{spent:.1f} s of CPU"


def test_half_a_million_unknown_body_keys_are_one_problem(client: TestClient) -> None:
    body = {"type": "noop", **unknown_keys(MANY)}
    error, spent = post(client, "/v1/jobs", json.dumps(body).encode())
    assert error["code"] == "validation_error"
    assert len(error["details"]) == 1
    assert "500,000 unknown fields ('k0', 'k1', 'k2', …)" in error["message"]
    assert spent < CPU_S, f"{spent:.1f} s of CPU"


def test_many_invalid_jobs_of_a_bulk_request_list_50(client: TestClient) -> None:
    jobs = [{"type": "noop", "payload": {"a": 1, "b": 2}} for _ in range(1_000)]
    error, _ = post(client, "/v1/jobs/bulk", json.dumps({"jobs": jobs}).encode())
    assert [d["loc"] for d in error["details"][:3]] == [
        ["jobs", 0, "payload", "a"],
        ["jobs", 0, "payload", "b"],
        ["jobs", 1, "payload", "a"],
    ]
    assert (len(error["details"]), error["more"]) == (MAX_DETAILS, 2_000 - MAX_DETAILS)


def test_a_few_problems_are_all_listed_without_more(client: TestClient) -> None:
    error, _ = post(client, "/v1/jobs", b'{"type": "noop", "payload": {"a": 1}}')
    assert error == {
        "code": "validation_error",
        "message": "payload.a: Extra inputs are not permitted",
        "details": [{"loc": ["payload", "a"], "msg": "Extra inputs are not permitted"}],
    }


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"[" * 100_000, {}, "nested too deeply"),
        (gzip.compress(b'{"type": "noop"}'), {}, "not UTF-8 text"),
        (
            gzip.compress(b'{"type": "noop"}'),
            {"Content-Encoding": "gzip"},
            "Content-Encoding is not supported",
        ),
        (b'{"type": "\xff"}', {}, "not UTF-8 text"),
        (b'{"type": "noop"', {}, "Expecting"),
    ],
    ids=["deep", "gzip", "gzip-declared", "latin-1", "truncated"],
)
def test_a_body_that_is_not_json_answers_invalid_json(
    client: TestClient, body: bytes, headers: dict[str, str], reason: str
) -> None:
    error, _ = post(client, "/v1/jobs", body, **headers)
    assert error["code"] == "invalid_json"
    assert error["message"].startswith("body: not valid JSON (")
    assert reason in error["message"]


def test_an_unreadable_image_is_named_without_an_object_repr() -> None:
    from raypipe.mesh.heightmap import decode

    with pytest.raises(PermanentError) as failed:
        decode(b"GIF89a but not really an image", max_pixels=1_000_000)
    assert failed.value.message.startswith("payload.image: not a readable image (")
    assert " object at 0x" not in failed.value.message


def test_a_path_that_is_no_route_is_named_in_the_error(client: TestClient) -> None:
    # Before: {"message": "Not Found"}, which the CLI printed as "raypipe: Not Found" for
    # `raypipe artifact ID ../x` as if the job were missing.
    answer = client.get("/v1/jobs/abc/nothing-here")
    assert answer.status_code == 404
    assert answer.json()["error"] == {
        "code": "not_found",
        "message": "no such route: GET /v1/jobs/abc/nothing-here (see /docs for the API's routes)",
        "details": [],
    }
    answer = client.put("/v1/jobs")
    assert (answer.status_code, answer.json()["error"]["message"]) == (
        405,
        "method not allowed: PUT /v1/jobs",
    )


def test_the_client_refuses_an_artifact_name_that_would_change_the_path() -> None:
    from raypipe.client import Client
    from raypipe.exceptions import InvalidInput

    # No server at this address: the name is refused before any request is made.
    with (
        Client("http://127.0.0.1:9", retries=0) as api,
        pytest.raises(InvalidInput, match=r"^artifact name '\.\./x': use letters"),
    ):
        api.job_artifact("00000000-0000-0000-0000-000000000000", "../x")
