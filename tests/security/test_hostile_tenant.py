"""What a hostile tenant sends, over real HTTP on Serve (PostgreSQL, the stricter database).

The other hostile-input checks live beside what they guard, and run in their tiers:
- outbound fetches and webhooks (SSRF, redirects, size, total deadline):
  ``tests/unit/test_outbound.py``, over local HTTP;
- admin-only types through schedules, and a tenant's schedule cap:
  ``tests/integration/test_schedule_store.py``, ``tests/acceptance/test_schedules_http.py``;
- decoding bombs (a PDF's text and pages, an image's grid): ``tests/unit/test_documents.py``,
  ``tests/unit/test_mesh.py``;
- every path that makes jobs charged (schedule fires, follow-ups):
  ``tests/integration/test_schedule_store.py``, ``tests/acceptance/test_serve_ops.py``;
- fencing (two dispatchers on one database, a stale attempt's files):
  ``tests/integration/test_dispatch.py``, ``tests/unit/test_inputs.py``;
- tenant names and artifact folders: ``tests/unit/test_tenants.py``.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from tests.helpers.serving import Api, postgres_api  # noqa: F401  (`api` on PostgreSQL only)

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
