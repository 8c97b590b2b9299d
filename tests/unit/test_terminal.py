"""What `raypipe up` and `down` let through of the lines Ray streams to them: everything but
the INFO and DEBUG records of Serve and of raypipe's actors (those stay in Ray's logs)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from raypipe.runtime import terminal

# Lines as Serve's controller, proxy and replicas and the driver's ``ray.serve`` logger
# write them (Ray 2.60), shortened.
AT = "2026-12-07 12:17:17,343"
SERVE_INFO = [
    f"INFO {AT} proxy 192.0.2.2 -- Proxy starting on node 60b1 (HTTP port: 8000).",
    f"INFO {AT} proxy 192.0.2.2 -- Got updated endpoints: {{Deployment(name='raypipe-api')}}.",
    f"INFO {AT} controller 9882 -- Deploying new version of Deployment(name='raypipe-api').",
    f"INFO {AT} serve 9210 -- Application 'raypipe' is ready at http://127.0.0.1:8000/.",
    f"INFO {AT} raypipe_raypipe-api syenlix3 4f2a1b /health -- GET /health 200 1.2ms",
    f"DEBUG {AT} controller 9882 -- polling",
]
JSON_INFO = json.dumps({"asctime": AT, "levelname": "INFO", "message": "Context impl SQLiteImpl."})
KEPT = [
    f"WARNING {AT} controller 9882 -- Deployment 'raypipe-api' has 1 replica that has taken "
    "more than 30s to initialize.",
    f"ERROR {AT} proxy 192.0.2.2 -- Failed to start the HTTP server on port 8000.",
    json.dumps({"levelname": "WARNING", "message": "job x attempt 1 failed, retried"}),
    "Traceback (most recent call last):",
    "INFO something a processor printed",
    "{not json",
]


@pytest.mark.parametrize("line", [*SERVE_INFO, JSON_INFO])
def test_info_records_are_quiet(line: str) -> None:
    assert terminal.is_quiet_line(line)


@pytest.mark.parametrize("line", KEPT)
def test_warnings_errors_and_other_lines_are_kept(line: str) -> None:
    assert not terminal.is_quiet_line(line)


def test_the_printer_gets_the_kept_lines_only() -> None:
    printed: list[dict[str, Any]] = []
    printer = terminal.WithoutQuietLines(printed.append)
    printer({"pid": 1, "actor_name": "ProxyActor", "lines": SERVE_INFO})
    assert printed == []
    printer({"pid": 1, "actor_name": "ProxyActor", "lines": [*SERVE_INFO, *KEPT]})
    assert printed == [{"pid": 1, "actor_name": "ProxyActor", "lines": KEPT}]


def test_the_drivers_serve_logger_keeps_warnings_only() -> None:
    logger = logging.getLogger("ray.serve")
    filters = list(logger.filters)
    try:
        terminal.quiet()
        terminal.quiet()
        added = [f for f in logger.filters if f not in filters]
        assert len(added) == 1
        [quiet] = added

        def record(level: int) -> logging.LogRecord:
            return logger.makeRecord("ray.serve", level, __file__, 1, "m", (), None)

        assert not quiet.filter(record(logging.INFO))
        assert quiet.filter(record(logging.WARNING))
    finally:
        logger.filters[:] = filters
