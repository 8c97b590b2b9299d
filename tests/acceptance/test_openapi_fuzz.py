"""The HTTP API against its own OpenAPI document, on a real Serve.

Schemathesis generates requests for every documented operation (the event stream is
left out: it stays open until its job ends) and sends them with a valid key: no answer
may be a 5xx, and answers must use the documented status codes, content types and
schemas. On PostgreSQL, the stricter database (NUL bytes, integer and date ranges); the
bad input a generator rarely produces, SQLite's own troubles included, is in
``test_bad_input_http.py`` on both databases; what a hostile tenant sends on purpose, in
``tests/security``.
"""

from __future__ import annotations

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

from tests.helpers.serving import Api, postgres_api  # noqa: F401  (`api` on PostgreSQL only)

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
