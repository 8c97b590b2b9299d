"""Bad input over HTTP that a generator rarely produces, per database kind: each request
expects the one error format, no stack trace, and nothing written (the generated requests
are in ``test_openapi_fuzz.py``)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.helpers.serving import Api

#: 300 levels in about 1.5 KB: deeper than a payload may nest (it used to be a 500).
DEEP = json.loads('{"a":' * 300 + "1" + "}" * 300)

#: Every route that needs a key, with a method and a path that reach it.
AUTHENTICATED = [
    ("POST", "/v1/jobs"),
    ("POST", "/v1/jobs/bulk"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
    ("POST", "/v1/jobs/00000000-0000-0000-0000-000000000000/cancel"),
    ("POST", "/v1/jobs/00000000-0000-0000-0000-000000000000/retry"),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/events"),
    ("GET", "/v1/queues"),
    ("POST", "/v1/queues/default/pause"),
    ("POST", "/v1/queues/default/resume"),
    ("GET", "/v1/job-types"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches"),
    ("GET", "/v1/batches/00000000-0000-0000-0000-000000000000"),
    ("GET", "/v1/batches/00000000-0000-0000-0000-000000000000/jobs"),
    ("POST", "/v1/batches/00000000-0000-0000-0000-000000000000/cancel"),
    ("POST", "/v1/batches/00000000-0000-0000-0000-000000000000/retry-failed"),
    ("GET", "/v1/batches/00000000-0000-0000-0000-000000000000/events"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/webhooks/deliveries"),
    ("GET", "/v1/webhooks/deliveries/msg_00000000000000000000000000000000"),
    ("POST", "/v1/webhooks/deliveries/msg_00000000000000000000000000000000/replay"),
    ("GET", "/v1/webhooks/secret"),
    ("POST", "/v1/webhooks/secret/rotate"),
    ("POST", "/v1/schedules"),
    ("GET", "/v1/schedules"),
    ("GET", "/v1/schedules/00000000-0000-0000-0000-000000000000"),
    ("PATCH", "/v1/schedules/00000000-0000-0000-0000-000000000000"),
    ("DELETE", "/v1/schedules/00000000-0000-0000-0000-000000000000"),
    ("POST", "/v1/schedules/00000000-0000-0000-0000-000000000000/pause"),
    ("POST", "/v1/schedules/00000000-0000-0000-0000-000000000000/resume"),
]

#: Authorization headers that must not get in: none, empty, no secret, unknown secret,
#: another scheme, a bare secret.
BAD_AUTHORIZATIONS = [
    None,
    "",
    "Bearer",
    "Bearer rp_not-a-real-key",
    "Bearer rp_two words",
    "Basic dXNlcjpwYXNz",
    "rp_not-a-real-key",
]


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(api: Api) -> Iterator[httpx.Client]:
    with api.client(api.key("fuzz-admin", admin=True)) as client:
        yield client


@pytest.fixture
def tenant(api: Api) -> Iterator[httpx.Client]:
    """A client for a tenant of its own, so its job count starts at zero."""
    with api.client(api.key(f"bad-{uuid.uuid4().hex[:8]}")) as client:
        yield client


def count_jobs(client: httpx.Client) -> int:
    """How many jobs ``client`` sees, following every page."""
    total, cursor = 0, None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        response = client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        total += len(page["jobs"])
        cursor = page["next_cursor"]
        if not cursor:
            return total


def assert_error(
    response: httpx.Response,
    status: int | tuple[int, ...],
    code: str | None = None,
    field: list[str | int] | None = None,
) -> dict[str, Any]:
    """The one error format: ``{"error": {"code", "message", "details"}}``, no traceback;
    with ``field``, the message starts with its dotted path and a detail points at it."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    for leak in ("Traceback", 'File "', "sqlalchemy", "psycopg", "sqlite3"):
        assert leak not in response.text, response.text
    if code is not None:
        assert error["code"] == code, error
    if field is not None:
        assert error["message"].startswith(".".join(map(str, field)) + ":"), error
        assert any(d["loc"] == field for d in error["details"]), error
    return error


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/bulk"])
@pytest.mark.parametrize(
    "raw",
    [b'{"type": "noop"', b"not json", b'{"type": "noop",}', b"\xff\xfe{}", b'{"jobs": [}'],
    ids=["unclosed", "words", "trailing-comma", "not-utf8", "bad-array"],
)
def test_malformed_json_is_a_400(tenant: httpx.Client, path: str, raw: bytes) -> None:
    response = tenant.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")
    assert count_jobs(tenant) == 0


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/bulk"])
def test_a_body_over_the_limit_is_a_413(api: Api, tenant: httpx.Client, path: str) -> None:
    limit = api.settings.limits.max_body_bytes
    body = json.dumps({"type": "noop", "tags": ["x" * limit]}).encode()
    assert len(body) > limit
    response = tenant.post(path, content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    assert count_jobs(tenant) == 0


def test_a_chunked_body_over_the_limit_is_a_413(api: Api, tenant: httpx.Client) -> None:
    """Without a Content-Length the limit must still hold while the body is read."""
    limit = api.settings.limits.max_body_bytes
    body = json.dumps({"type": "noop", "tags": ["x" * limit]}).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1 << 16):
            yield body[start : start + (1 << 16)]

    response = tenant.post(
        "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    assert count_jobs(tenant) == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/jobs", {"type": 5}, ["type"]),
        ("/v1/jobs", {"type": "noop", "priority": "high"}, ["priority"]),
        ("/v1/jobs", {"type": "noop", "tags": "urgent"}, ["tags"]),
        ("/v1/jobs", {"type": "noop", "payload": []}, ["payload"]),
        ("/v1/jobs", {"type": "noop", "delay_s": "soon"}, ["delay_s"]),
        ("/v1/jobs", {"type": "noop", "run_at": "tomorrow"}, ["run_at"]),
        ("/v1/jobs", {"type": "noop", "max_attempts": 0}, ["max_attempts"]),
        ("/v1/jobs", {"type": "noop", "payload": {"x": 1}}, ["payload", "x"]),
        ("/v1/jobs", {"type": "no-such-type"}, ["type"]),
        ("/v1/jobs", {"type": "noop", "queue": "no-such-queue"}, ["queue"]),
        ("/v1/jobs", {"type": "noop", "surprise": True}, ["surprise"]),
        ("/v1/jobs/bulk", {"jobs": "noop"}, ["jobs"]),
        ("/v1/jobs/bulk", {"jobs": []}, ["jobs"]),
        (
            "/v1/jobs/bulk",
            {"jobs": [{"type": "noop"}, {"type": "noop", "priority": "high"}]},
            ["jobs", 1, "priority"],
        ),
        ("/v1/jobs", {"type": "noop", "timeout_s": 1e300}, ["timeout_s"]),
        ("/v1/jobs", {"type": "noop", "payload": DEEP}, ["payload"]),
        ("/v1/batches", {"jobs": [{"type": "noop", "payload": DEEP}]}, ["jobs", 0, "payload"]),
        (
            "/v1/schedules",
            {"name": "deep", "cron": "* * * * *", "job": {"type": "noop", "payload": DEEP}},
            ["job", "payload"],
        ),
        ("/v1/jobs", {"type": "noop", "webhook_url": "http://xn--/"}, ["webhook_url"]),
    ],
    ids=lambda v: json.dumps(v)[:80] if isinstance(v, dict) else None,
)
def test_wrong_types_are_a_422_naming_the_field(
    tenant: httpx.Client, path: str, body: dict[str, Any], field: list[str | int]
) -> None:
    assert_error(tenant.post(path, json=body), 422, "validation_error", field)
    assert count_jobs(tenant) == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "many"}, ["query", "limit"]),
        ({"limit": 0}, ["query", "limit"]),
        ({"status": "sleeping"}, ["query", "status"]),
        ({"created_after": "yesterday"}, ["query", "created_after"]),
        ({"created_after": "2024-01-01T00:00:00"}, ["created_after"]),
        ({"cursor": "not a cursor"}, ["cursor"]),
    ],
)
def test_bad_query_parameters_are_a_422_naming_the_field(
    tenant: httpx.Client, params: dict[str, Any], field: list[str]
) -> None:
    assert_error(tenant.get("/v1/jobs", params=params), 422, "validation_error", field)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"type": "noop", "timeout_s": 1e999}', ["timeout_s"]),
        (b'{"type": "noop", "timeout_s": Infinity}', ["timeout_s"]),
        (b'{"type": "noop", "delay_s": NaN}', ["delay_s"]),
        (b'{"type": "sleep", "payload": {"seconds": 1e999}}', ["payload", "seconds"]),
    ],
    ids=["overflow", "infinity", "nan", "payload-overflow"],
)
def test_a_number_json_cannot_carry_is_a_422(
    tenant: httpx.Client, raw: bytes, field: list[str]
) -> None:
    """``1e999`` is valid JSON that parses to infinity (``Infinity`` and ``NaN`` are not
    JSON at all): neither may become a job whose answer cannot show it."""
    response = tenant.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
    if response.status_code == 400:
        assert_error(response, 400, "invalid_json")
    else:
        assert_error(response, 422, "validation_error", field)
    assert count_jobs(tenant) == 0


def test_a_too_long_idempotency_key_is_a_422(tenant: httpx.Client) -> None:
    response = tenant.post(
        "/v1/jobs", json={"type": "noop"}, headers={"Idempotency-Key": "k" * 256}
    )
    assert_error(response, 422, "validation_error", ["header", "idempotency-key"])
    assert count_jobs(tenant) == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [(m, p) for m, p in AUTHENTICATED if "0000" in p] + [("GET", "/v1/jobs/not-a-job-id")],
)
def test_an_unknown_job_is_a_404(tenant: httpx.Client, method: str, path: str) -> None:
    body = {} if method == "PATCH" else None  # a valid (empty) change, for an unknown id
    assert_error(tenant.request(method, path, json=body), 404, "not_found")
    assert count_jobs(tenant) == 0


def test_another_tenants_job_is_a_404(api: Api, tenant: httpx.Client) -> None:
    with api.client(api.key(f"owner-{uuid.uuid4().hex[:8]}")) as owner:
        job = owner.post("/v1/jobs", json={"type": "noop", "delay_s": 3600}).json()
    for method, action in (("GET", ""), ("POST", "/cancel"), ("POST", "/retry")):
        assert_error(tenant.request(method, f"/v1/jobs/{job['id']}{action}"), 404, "not_found")


@pytest.mark.parametrize(("method", "path"), AUTHENTICATED)
def test_a_missing_or_invalid_key_is_a_401(
    api: Api, admin: httpx.Client, method: str, path: str
) -> None:
    before = count_jobs(admin)
    many = path.endswith(("/bulk", "/batches"))
    body = {"jobs": [{"type": "noop"}]} if many else {"type": "noop"}
    for authorization in BAD_AUTHORIZATIONS:
        headers = {"Authorization": authorization} if authorization is not None else {}
        with httpx.Client(base_url=api.url, headers=headers, timeout=30) as anonymous:
            response = anonymous.request(method, path, json=body if method == "POST" else None)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert count_jobs(admin) == before


def test_a_revoked_key_is_a_401(api: Api, tenant: httpx.Client) -> None:
    from raypipe.store import create_engine
    from raypipe.store.access import AccessStore

    engine = create_engine(api.settings.database_url)
    try:
        store = AccessStore(engine)
        secret, key = store.create_key(f"revoked-{uuid.uuid4().hex[:8]}")
        store.revoke_key(key.id)
    finally:
        engine.dispose()
    with api.client(secret) as client:
        assert_error(client.post("/v1/jobs", json={"type": "noop"}), 401, "unauthorized")


def test_an_idempotent_replay_is_a_documented_200(api: Api, tenant: httpx.Client) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = tenant.post("/v1/jobs", json={"type": "noop"}, headers=key)
    again = tenant.post("/v1/jobs", json={"type": "noop"}, headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert count_jobs(tenant) == 1
    conflict = tenant.post("/v1/jobs", json={"type": "noop", "priority": 7}, headers=key)
    assert_error(conflict, 409)
    documented = httpx.get(f"{api.url}/openapi.json").json()["paths"]["/v1/jobs"]["post"]
    assert {"200", "202", "409"} <= set(documented["responses"]), list(documented["responses"])


def read_stream(client: httpx.Client, job_id: str, last_event_id: str | None) -> list[str]:
    """The ``id:`` lines of an event stream read to its end; fails, instead of hanging,
    when the server keeps it open with nothing to send for 5 s."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    timeout = httpx.Timeout(30, read=5)
    try:
        with client.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
        ) as response:
            assert response.status_code in (200, 204), response.read()
            return [line[4:] for line in response.iter_lines() if line.startswith("id: ")]
    except httpx.ReadTimeout:
        pytest.fail(f"Last-Event-ID {last_event_id!r}: the stream of a finished job stayed open")
    except httpx.RemoteProtocolError as exc:
        pytest.fail(f"Last-Event-ID {last_event_id!r}: the stream broke off ({exc})")


@pytest.fixture
def finished(tenant: httpx.Client) -> tuple[str, list[str]]:
    """A completed job of ``tenant``'s and the event ids of its whole stream."""
    job = tenant.post("/v1/jobs", json={"type": "noop"}).json()
    wait_for(
        lambda: tenant.get(f"/v1/jobs/{job['id']}").json()["status"] == "completed",
        what="the noop job to complete",
    )
    ids = read_stream(tenant, job["id"], None)
    assert ids, "a finished job's stream replays its events"
    return job["id"], ids


def test_resuming_a_finished_jobs_stream_ends_at_once(
    tenant: httpx.Client, finished: tuple[str, list[str]]
) -> None:
    """An EventSource reconnects whenever a stream closes, sending the last id it saw:
    for a finished job the server must then end the stream (or answer 204), not hold it
    open forever."""
    job_id, ids = finished
    assert read_stream(tenant, job_id, ids[-2]) == ids[-1:]
    assert read_stream(tenant, job_id, ids[-1]) == []
    assert read_stream(tenant, job_id, str(int(ids[-1]) + 1000)) == []


@pytest.mark.parametrize("last", ["abc", "-1", "9" * 30, str(2**63)])
def test_an_odd_last_event_id_is_refused_or_harmless(
    tenant: httpx.Client, finished: tuple[str, list[str]], last: str
) -> None:
    """Not a whole number, or past what the database's integers hold: a 422, or a stream
    that ends normally, never one that breaks off with a server error."""
    job_id, ids = finished
    response = tenant.get(
        f"/v1/jobs/{job_id}/events",
        headers={"Last-Event-ID": last},
        timeout=httpx.Timeout(30, read=5),
    )
    if response.status_code != 200:
        assert_error(response, 422, "validation_error")
    else:
        assert read_stream(tenant, job_id, last) in ([], ids)


# -- text and dates the databases cannot store -----------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "noop", "tags": ["a\x00b"]}, ["tags", 0]),
        ({"type": "noop", "idempotency_key": "k\x00"}, ["idempotency_key"]),
        ({"type": "fail", "payload": {"message": "a\x00b"}}, ["payload", "message"]),
        ({"type": "noop\x00"}, ["type"]),
        ({"type": "noop", "queue": "default\x00"}, ["queue"]),
    ],
    ids=["tag", "idempotency-key", "payload", "type", "queue"],
)
def test_a_nul_character_is_refused_or_kept_never_a_500(
    tenant: httpx.Client, body: dict[str, Any], field: list[str | int]
) -> None:
    """PostgreSQL text and JSONB cannot hold U+0000: the API must say so (422) rather than
    fail, the same on every database; or store it faithfully."""
    response = tenant.post("/v1/jobs", json=body)
    if response.status_code == 202:
        stored = tenant.get(f"/v1/jobs/{response.json()['id']}").json()
        assert {k: stored[k] for k in body if k in stored} == {
            k: v for k, v in body.items() if k in stored
        }
        return
    assert_error(response, 422, "validation_error", field)
    assert count_jobs(tenant) == 0


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "/v1/jobs", {"tag": "\x00"}),
        ("GET", "/v1/jobs", {"type": "a\x00"}),
        ("GET", "/v1/jobs", {"queue": "\x00"}),
        ("GET", "/v1/jobs/a%00b", {}),
        ("GET", "/v1/jobs/a%00b", {"include": "attempts"}),
        ("POST", "/v1/jobs/a%00b/cancel", {}),
        ("POST", "/v1/jobs/a%00b/retry", {}),
        ("GET", "/v1/jobs/a%00b/events", {}),
    ],
)
def test_a_nul_character_in_the_url_is_never_a_500(
    tenant: httpx.Client, method: str, path: str, params: dict[str, str]
) -> None:
    response = tenant.request(method, path, params=params)
    if response.status_code != 200:
        assert_error(response, (404, 422))


@pytest.mark.parametrize(
    "params",
    [
        {"created_after": "9999-12-31T23:59:59-05:00"},
        {"created_before": "0001-01-01T00:00:00+05:00"},
        {"cursor": base64.urlsafe_b64encode(b"2024-01-01T00:00:00|x").decode()},
        {"cursor": base64.urlsafe_b64encode(b"9999-12-31T23:59:59-05:00|x").decode()},
        {"cursor": base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|a\x00").decode()},
    ],
    ids=["after-max", "before-min", "naive-cursor", "cursor-past-max", "nul-cursor"],
)
def test_out_of_range_dates_and_forged_cursors_are_never_a_500(
    tenant: httpx.Client, params: dict[str, str]
) -> None:
    response = tenant.get("/v1/jobs", params=params)
    if response.status_code != 200:
        error = assert_error(response, 422, "validation_error")
        assert next(iter(params)) in error["message"], error


def test_a_lone_surrogate_cannot_poison_a_tenants_jobs(tenant: httpx.Client) -> None:
    """JSON may escape half a UTF-16 pair (``"\\ud800"``), which no database can encode as
    UTF-8: refuse it (422), or store something the list can still return."""
    raw = b'{"type": "noop", "tags": ["\\ud800"]}'
    response = tenant.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
    if response.status_code != 202:
        assert_error(response, 422, "validation_error", ["tags", 0])
    listed = tenant.get("/v1/jobs")
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["jobs"]) == (1 if response.status_code == 202 else 0)


@pytest.mark.parametrize("name", ["nope", "q" * 5000, "x%00y", "..%2F..%2Fdefault"])
@pytest.mark.parametrize("action", ["pause", "resume"])
def test_pausing_a_queue_that_is_not_configured_is_a_404(
    admin: httpx.Client, name: str, action: str
) -> None:
    assert_error(admin.post(f"/v1/queues/{name}/{action}"), 404, "not_found")
    assert not any(q["paused"] for q in admin.get("/v1/queues").json())
