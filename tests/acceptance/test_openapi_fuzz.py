"""The HTTP API against its own OpenAPI document, on a real Serve.

Schemathesis generates requests for every documented operation (the event stream is
left out: it stays open until its job ends) and sends them with a valid key: no answer
may be a 5xx, and answers must use the documented status codes, content types and
schemas. On PostgreSQL, the stricter database (NUL bytes, integer and date ranges); the
bad input a generator rarely produces, SQLite's own troubles included, is in
``test_bad_input_http.py`` on both databases. Last, on every route that turns a spec
into a row, what a hostile tenant sends: a payload nested past the limit, internal and
malformed URLs as webhooks and as inputs to fetch, a body past the size limit.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serving import Api, postgres_api  # noqa: F401  (`api` on PostgreSQL only)

#: Generated requests per operation in the fuzzing phase (the examples and coverage
#: phases add their own, fewer); keeps the module well under two minutes.
MAX_EXAMPLES = 25
SEED = 20240601
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# -- fuzzing ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_schema(api: Api) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": api.url,
            "headers": {"Authorization": f"Bearer {api.key('fuzz')}"},
            "request-timeout": 30,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
        }
    )
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json", config=config, timeout=30)


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=r"/events$")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_and_never_fails(case: schemathesis.Case) -> None:
    _submittable(case.body)
    case.call_and_validate(checks=CHECKS)


# -- hostile bodies ---------------------------------------------------------------------

#: URLs a hostile tenant names: internal targets, numeric and mapped forms, bad IDNA.
HOSTILE_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://100.100.100.200/",
    "http://2130706433/",
    "http://[::ffff:127.0.0.1]:8000/",
    "http://[2002:a9fe:a9fe::1]/",
    "http://xn--/",
    "file:///etc/passwd",
    "http://user:secret@example.com/",
]


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


#: One minimal body per route that turns a spec into a row, with the spec in its place.
ROUTES = {
    "/v1/jobs": lambda spec: spec,
    "/v1/jobs/bulk": lambda spec: {"jobs": [spec, {"type": "noop"}]},
    "/v1/batches": lambda spec: {"jobs": [{"type": "noop"}, spec]},
    "/v1/schedules": lambda spec: {
        "name": f"hostile-{uuid.uuid4().hex[:8]}",
        "cron": "0 3 * * *",
        "job": spec,
    },
}

#: Specs a hostile tenant sends: nesting past the limit, every hostile URL as a webhook and
#: as an input to fetch, and a body past the size limit.
HOSTILE_SPECS = {
    "nested payload": {"type": "noop", "payload": _nested(200)},
    **{f"webhook {url}": {"type": "noop", "webhook_url": url} for url in HOSTILE_URLS},
    **{
        f"image_url {url}": {"type": "mesh.from_image", "payload": {"image_url": url}}
        for url in HOSTILE_URLS
    },
    "oversized body": {"type": "noop", "payload": {"x": "x" * (11 * 2**20)}},
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_hostile_specs_are_refused_or_taken_never_a_server_error(api: Api, route: str) -> None:
    client = api.client(api.key("hostile"))
    answers = {}
    for name, spec in HOSTILE_SPECS.items():
        response = client.post(route, json=ROUTES[route](copy.deepcopy(spec)))
        answers[name] = response.status_code
        assert response.status_code < 500, (name, response.status_code, response.text[:500])
    # What needs no DNS is refused at once, naming the field; the rest fails when fetched.
    assert answers["nested payload"] == 422
    assert answers["oversized body"] == 413
    for url in ("http://169.254.169.254/latest/meta-data/", "http://xn--/", "file:///etc/passwd"):
        assert answers[f"webhook {url}"] == 422
        assert answers[f"image_url {url}"] == 422


def _submittable(body: Any) -> None:
    """Point generated job specs at a registered job type, so submissions get past it.

    A random ``type`` is never registered, which would stop every submission at the type
    check and leave the other fields untested. Only types the schema allows are rewritten:
    the coverage phase's deliberately invalid ones stay invalid.
    """
    specs = body.get("jobs") if isinstance(body, dict) and "jobs" in body else [body]
    for spec in specs if isinstance(specs, list) else ():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(kind, str) and 1 <= len(kind) <= 200:
            spec["type"] = "noop"
            if isinstance(spec.get("payload"), dict):
                spec["payload"] = {}
            if isinstance(spec.get("queue"), str):
                spec["queue"] = "default"
