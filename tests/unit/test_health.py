"""/health answers anyone: it says what is degraded, never the internals of why."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from raypipe.api import create_app
from raypipe.config import get_settings

#: A real PostgreSQL URL on a port nothing listens on: connecting fails with a message
#: that names the host, the port and the role.
UNREACHABLE = "postgresql+psycopg://secret_role@127.0.0.1:9/test"


def test_a_failing_database_is_named_without_its_host_port_or_role(tmp_path: Path) -> None:
    settings = get_settings(database_url=UNREACHABLE, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        answer = client.get("/health")
    assert answer.status_code == 503
    database = answer.json()["checks"]["database"]
    assert database["status"] == "degraded"
    assert database["detail"] == "unreachable or failing (OperationalError)"
    for internal in ("127.0.0.1", "port", "secret_role"):
        assert internal not in answer.text
