"""``API.md``'s examples over real HTTP on one `raypipe up` deployment with the embedded
defaults (SQLite; the progress actor's default timings, so that what is written late is
late as it would be for a user): the job spec as written, the job's shape on every route, each
built-in type's inputs and results, a job's log being complete the moment its end is
read, and a key made by the CLI. The sections of later issues (flow control, checkpoints,
open batches) are not here.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from raypipe.config import get_settings
from tests.conftest import read_at_end, wait_for
from tests.helpers.commands import Raypipe, running_head
from tests.helpers.fake_ai import FakeAI
from tests.helpers.inputs import DOCUMENT, png
from tests.helpers.serving import Api

WAIT_S = 300
#: Jobs of each kind in a row, each followed alone: over HTTP, the window in which a job
#: shows ended and its last lines are not written yet was a few milliseconds (before they
#: were written with the outcome, about one job in twenty fell in it here), so the race
#: gets several chances; ``tests/integration/test_job_logs.py`` reads the database
#: directly, where the window shows nearly every time.
SLEEPS = 6
FAILS = 20  # 0.2 s each
#: The fields of a job, "as every route returns it".
JOB_FIELDS = {
    "id", "type", "queue", "priority", "status", "progress", "message", "stage", "attempt",
    "max_attempts", "tenant", "tags", "batch_id", "payload", "result", "error", "created_at",
    "run_at", "started_at", "finished_at", "artifacts", "links",
}  # fmt: skip
TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`raypipe up` for the module, on the defaults a user gets (SQLite in its data folder,
    the progress actor's timings), with two settings a user would add for two of the tests:
    an AI service to call, and a queue whose priority is not 0."""
    root = tmp_path_factory.mktemp("contract")
    with FakeAI() as fake:
        head = running_head(
            root,
            RAYPIPE_QUEUES=json.dumps({"urgent": {"concurrency": 4, "priority": 7}}),
            RAYPIPE_AI_BASE_URL=fake.url + "/v1",
        )
        cli = next(head)
        try:
            settings = get_settings(data_dir=cli.data_dir)
            yield Api(f"http://127.0.0.1:{cli.env['RAYPIPE_API_PORT']}", settings, root)
        finally:
            head.close()  # raypipe down


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with api.client(api.key(f"c-{uuid.uuid4().hex[:8]}")) as client:
        yield client


def _submit(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    return response.json()


def _job(http: httpx.Client, job_id: str, **params: str) -> dict[str, Any]:
    response = http.get(f"/v1/jobs/{job_id}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _ended(http: httpx.Client, job_id: str) -> dict[str, Any]:
    return wait_for(  # type: ignore[return-value]
        lambda: (job := _job(http, job_id))["status"] in TERMINAL and job,
        timeout=WAIT_S,
        what=f"job {job_id} to end",
    )


def _logs_at_end(http: httpx.Client, job_id: str, **params: int) -> tuple[str, dict[str, Any]]:
    """The job's status as first seen terminal, and its log read at once after (no wait,
    no second read): what a client that follows the status sees."""
    seen: dict[str, Any] = {}

    def ended() -> bool:
        seen.update(_job(http, job_id))
        return seen["status"] in TERMINAL

    logs = read_at_end(
        ended, lambda: http.get(f"/v1/jobs/{job_id}/logs", params=params), timeout=WAIT_S
    )
    assert logs.status_code == 200, logs.text
    return seen["status"], logs.json()


def _messages(logs: dict[str, Any]) -> list[str]:
    return [line["message"] for line in logs["lines"]]


# -- a job's log is complete when its end can be read -----------------------------------------


def test_a_sleep_jobs_steps_are_all_in_its_log_when_it_is_first_seen_completed(
    http: httpx.Client,
) -> None:
    for _ in range(SLEEPS):
        job = _submit(http, {"type": "sleep", "payload": {"seconds": 0.3, "steps": 3}})
        status, logs = _logs_at_end(http, job["id"])
        assert status == "completed"
        assert _messages(logs) == ["step 1/3", "step 2/3", "step 3/3"]
        assert logs["attempt"] == 1 and logs["dropped"] == 0
        for line in logs["lines"]:
            assert {"ts", "level", "message", "attempt"} <= set(line)
            assert line["level"] == "INFO" and line["attempt"] == 1 and line["ts"].endswith("Z")


def test_a_failed_jobs_lines_are_in_its_log_when_it_is_first_seen_failed(
    http: httpx.Client,
) -> None:
    for _ in range(FAILS):
        job = _submit(http, {"type": "fail", "payload": {"error": "PermanentError"}})
        status, logs = _logs_at_end(http, job["id"])
        assert status == "failed"
        assert _messages(logs) == ["attempt 1 raises PermanentError on purpose"]
        assert logs["lines"][0]["level"] == "WARNING"


def test_the_log_of_each_attempt_is_read_with_attempt_n_and_the_latest_by_default(
    http: httpx.Client,
) -> None:
    job = _submit(http, {"type": "fail", "payload": {"error": "ValueError"}, "max_attempts": 2})
    status, latest = _logs_at_end(http, job["id"])
    assert status == "failed" and latest["attempt"] == 2
    assert _messages(latest) == ["attempt 2 raises ValueError on purpose"]
    first = http.get(f"/v1/jobs/{job['id']}/logs", params={"attempt": 1}).json()
    assert _messages(first) == ["attempt 1 raises ValueError on purpose"]
    beyond = http.get(f"/v1/jobs/{job['id']}/logs", params={"attempt": 3})
    assert beyond.status_code == 404 and beyond.json()["error"]["code"] == "not_found"


# -- submitting --------------------------------------------------------------------------


def test_the_documented_job_spec_is_accepted_as_written(api: Api, http: httpx.Client) -> None:
    spec = {
        "type": "embed.texts", "payload": {"texts": ["a", "b"]},
        "queue": "embeddings", "priority": 5, "delay_s": 0, "run_at": None,
        "max_attempts": 3, "timeout_s": 600, "tags": ["nightly"],
        "webhook_url": None, "then": None,
    }  # fmt: skip
    admin = api.client(api.key("ops", admin=True))
    # Paused, its queue keeps the job as submitted (and spares this module a model).
    assert admin.post("/v1/queues/embeddings/pause").status_code == 200
    try:
        job = _submit(http, spec)
        shown = _job(http, job["id"])
        _has_the_documented_shape(shown)
        for field in ("type", "payload", "queue", "priority", "max_attempts", "tags"):
            assert shown[field] == spec[field], field
        assert shown["status"] == "queued" and shown["created_at"] == shown["run_at"]
        assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        assert _ended(http, job["id"])["status"] == "cancelled"
    finally:
        admin.post("/v1/queues/embeddings/resume")


def test_only_type_and_payload_are_required_and_priority_defaults_to_the_queues(
    http: httpx.Client,
) -> None:
    bare = _submit(http, {"type": "noop", "payload": {}})
    assert (bare["queue"], bare["priority"], bare["tags"]) == ("default", 0, [])
    urgent = _submit(http, {"type": "noop", "payload": {}, "queue": "urgent"})
    assert urgent["priority"] == 7  # the queue's
    chosen = _submit(http, {"type": "noop", "payload": {}, "queue": "urgent", "priority": 2})
    assert chosen["priority"] == 2
    for job in (bare, urgent, chosen):
        assert _ended(http, job["id"])["result"] == {}


# -- a job, as every route returns it --------------------------------------------------------


def _has_the_documented_shape(job: dict[str, Any]) -> None:
    assert set(job) >= JOB_FIELDS, JOB_FIELDS - set(job)
    assert job["links"] == {
        "self": f"/v1/jobs/{job['id']}",
        "events": f"/v1/jobs/{job['id']}/events",
    }
    for field in ("created_at", "run_at", "started_at", "finished_at"):
        assert job[field] is None or job[field].endswith("Z"), (field, job[field])


def test_every_route_returns_a_job_in_the_documented_shape(http: httpx.Client) -> None:
    submitted = _submit(http, {"type": "sleep", "payload": {"seconds": 60, "steps": 600}})
    _has_the_documented_shape(submitted)
    assert submitted["status"] == "queued" and submitted["started_at"] is None
    job_id = submitted["id"]
    # `processing` means started: started_at is set, and progress comes with its step.
    running = wait_for(lambda: (job := _job(http, job_id))["progress"] > 0 and job, what="progress")
    assert running["status"] == "processing" and running["started_at"] is not None  # type: ignore[index]
    assert running["stage"] == "sleep" and running["message"].startswith("step ")  # type: ignore[index]
    _has_the_documented_shape(running)  # type: ignore[arg-type]
    [listed] = [j for j in http.get("/v1/jobs").json()["jobs"] if j["id"] == job_id]
    _has_the_documented_shape(listed)
    cancel = http.post(f"/v1/jobs/{job_id}/cancel")
    assert cancel.status_code == 200
    _has_the_documented_shape(cancel.json())
    cancelled = _ended(http, job_id)
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    retry = http.post(f"/v1/jobs/{job_id}/retry")
    assert retry.status_code == 200 and retry.json()["status"] == "queued"
    _has_the_documented_shape(retry.json())
    http.post(f"/v1/jobs/{job_id}/cancel")


def test_a_failed_jobs_error_and_attempts_are_shown_as_documented(http: httpx.Client) -> None:
    job = _submit(http, {"type": "fail", "payload": {"error": "PermanentError"}})
    failed = _ended(http, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == {"type": "PermanentError", "message": "failed on purpose"}
    detailed = _job(http, job["id"], include="attempts")
    _has_the_documented_shape(detailed)
    [attempt] = detailed["attempts"]
    assert {"attempt", "status", "started_at", "finished_at", "error"} <= set(attempt)
    assert (attempt["attempt"], attempt["status"]) == (1, "failed")
    assert attempt["error"]["type"] == "PermanentError"
    assert "attempts" not in _job(http, job["id"]) or _job(http, job["id"])["attempts"] is None


# -- the built-in job types ------------------------------------------------------------------


def test_mesh_from_image_takes_base64_or_another_jobs_artifact(http: httpx.Client) -> None:
    image = base64.b64encode(png(8, 6)).decode()
    first = _submit(
        http,
        {
            "type": "mesh.from_image",
            "payload": {"image_b64": image, "detail_factor": 1.0, "height_scale": 1.0,
                        "smoothing": 0, "formats": ["glb"]},
        },
    )  # fmt: skip
    made = _ended(http, first["id"])
    assert made["status"] == "completed", made["error"]
    result = made["result"]
    assert {"vertices", "triangles", "bounds", "artifacts"} <= set(result)
    assert (result["vertices"], result["triangles"]) == (48, 70)  # 8×6 at detail_factor 1
    assert result["artifacts"] == ["mesh.glb", "thumbnail.png"]
    listed = {a["name"]: a for a in made["artifacts"]}
    assert listed["mesh.glb"]["size"] > 0
    assert listed["mesh.glb"]["url"] == f"/v1/jobs/{first['id']}/artifacts/mesh.glb"
    # The 256×256 thumbnail as input, at a quarter of its size each way: 64×64 vertices.
    second = _submit(
        http,
        {
            "type": "mesh.from_image",
            "payload": {"image_artifact": f"{first['id']}/thumbnail.png", "detail_factor": 0.25},
        },
    )
    again = _ended(http, second["id"])
    assert again["status"] == "completed", again["error"]
    assert again["result"]["vertices"] == 64 * 64


def test_document_process_takes_a_base64_file(http: httpx.Client) -> None:
    job = _submit(
        http,
        {
            "type": "document.process",
            "payload": {
                "document_b64": base64.b64encode(DOCUMENT.encode()).decode(),
                "filename": "notes.txt", "chunk_size": 800, "chunk_overlap": 100,
                "keywords": 5, "summary_sentences": 2,
            },
        },
    )  # fmt: skip
    done = _ended(http, job["id"])
    assert done["status"] == "completed", done["error"]
    result = done["result"]
    assert {"chars", "chunks", "keywords", "summary", "stages", "artifacts"} <= set(result)
    assert result["chars"] == len(DOCUMENT) and result["chunks"] == 1
    assert 1 <= len(result["keywords"]) <= 5 and result["summary"]
    assert {"extract", "chunk", "embed", "keywords", "summary"} <= set(result["stages"])


def test_ai_complete_answers_through_the_configured_service(http: httpx.Client) -> None:
    job = _submit(
        http,
        {"type": "ai.complete", "payload": {"messages": [{"role": "user", "content": "Hi"}],
                                            "model": "m1"}},
    )  # fmt: skip
    done = _ended(http, job["id"])
    assert done["status"] == "completed", done["error"]
    assert {"text", "model", "usage"} <= set(done["result"])
    assert done["result"]["model"] == "m1" and isinstance(done["result"]["usage"], dict)


# -- the CLI beside the deployment ------------------------------------------------------------


def test_a_key_made_by_the_cli_opens_its_tenants_jobs_over_http(api: Api, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYPIPE_")}
    env.update(RAYPIPE_DATABASE_URL=api.settings.database_url, RAYPIPE_DATA_DIR=str(tmp_path))
    cli = Raypipe(env, tmp_path, port=0, data_dir=tmp_path)
    tenant = f"k-{uuid.uuid4().hex[:8]}"
    made = cli.ok("keys", "create", "--tenant", tenant)
    key = made.stdout.strip()
    assert key.startswith("rp_") and tenant in made.stderr
    with api.client(key) as http:
        job = _submit(http, {"type": "noop", "payload": {}})
        assert job["tenant"] == tenant
        assert _ended(http, job["id"])["status"] == "completed"
    stats = cli.ok("stats", "--json").json()
    assert isinstance(stats, dict) and stats["jobs"]["completed"] >= 1, stats
