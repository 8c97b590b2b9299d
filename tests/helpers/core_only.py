"""Run by tests/acceptance/test_core_install.py with the Python of a virtualenv that holds
raypipe's core dependencies only: the queue runs, the API starts, and the built-ins
whose extras are missing are refused by name. Prints what it saw as JSON; it imports
nothing but raypipe and its core (no pytest there)."""

from __future__ import annotations

import importlib.util
import json

from fastapi.testclient import TestClient

import raypipe
from raypipe import registry
from raypipe.api.app import create_app
from raypipe.config import get_settings
from raypipe.exceptions import InvalidInput
from raypipe.store import create_engine, schema_version
from raypipe.store.access import AccessStore

WORKLOAD_PACKAGES = ("torch", "sentence_transformers", "trimesh", "matplotlib", "pypdf")


def main() -> None:
    settings = get_settings()
    engine = create_engine(settings.database_url)
    schema_version.upgrade(engine)
    secret, _ = AccessStore(engine).create_key("core")
    engine.dispose()
    client = raypipe.connect(settings)
    results = {
        "noop": client.submit("noop", {}).result(timeout=180),
        "sleep": client.submit("sleep", {"seconds": 0.1, "steps": 1}).result(timeout=180),
    }
    try:
        client.submit("embed.texts", {"texts": ["a"]})
        refused_here = ""
    except InvalidInput as exc:
        refused_here = exc.message
    with TestClient(create_app(settings)) as http:
        headers = {"Authorization": f"Bearer {secret}"}
        types = sorted(t["type"] for t in http.get("/v1/job-types", headers=headers).json())
        answer = http.post("/v1/jobs", json={"type": "mesh.from_image"}, headers=headers)
    print(
        json.dumps(
            {
                "installed": [n for n in WORKLOAD_PACKAGES if importlib.util.find_spec(n)],
                "results": results,
                "refused_here": refused_here,
                "types": types,
                "http_status": answer.status_code,
                "http_error": answer.json()["error"],
                "not_installed": registry.not_installed(),
            }
        )
    )


if __name__ == "__main__":
    main()
