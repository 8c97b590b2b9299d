"""What a command joined to Ray (`raypipe up`, `down`) prints: its own lines, and the
warnings and errors of what it starts, not the INFO lines of Serve and raypipe's actors.

Two sources put such lines on the command's terminal; both also write them to the
session's log files (``logs/serve/``, ``logs/worker-*``), which is where they stay:

- Ray streams to the driver what the processes of its job write to stderr
  (``log_to_driver``), and the job of `up` creates Serve's controller, which creates the
  proxy and the replicas: they log INFO there in Serve's format (``INFO 2026-… proxy
  10.0.0.1 -- Got updated endpoints: …``). With ``RAYPIPE_LOG_FORMAT=json`` raypipe's
  actors, also of that job, log INFO there as JSON records.
- ``import ray.serve`` gives the driver's ``ray.serve`` logger a stderr handler at INFO
  ("Started Serve…", "Application 'raypipe' is ready at…", "Deleting app…").

Only those INFO and DEBUG records are dropped: a streamed line in any other shape (a
warning, an error, a traceback, a ``print``) still reaches the terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

#: Serve's format on stderr: ``LEVEL date time component component-id [request] -- msg``.
_SERVE_RECORD = re.compile(
    r"^(?P<level>[A-Z]+) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \S+ \S+ (\S+ )*?-- "
)
_QUIET_LEVELS = frozenset({"DEBUG", "INFO"})
#: The name under which Ray's driver prints the lines its job's processes stream.
_PRINTER = "ray_print_logs"


def quiet() -> None:
    """Keep the INFO lines of Serve and raypipe's actors off this process's terminal.

    Call it once joined to Ray (the stream filter replaces Ray's printer for this
    connection); it may be called before or after ``ray.serve`` is imported."""
    serve_logger = logging.getLogger("ray.serve")
    if not any(isinstance(f, _WarningsOnly) for f in serve_logger.filters):
        # A filter, not a level: ``import ray.serve`` sets the logger's level to INFO.
        serve_logger.addFilter(_WarningsOnly())
    _filter_streamed_lines()


def is_quiet_line(line: str) -> bool:
    """Whether a streamed line is an INFO or DEBUG record of Serve's or of Ray's JSON
    logging (raypipe's actors with ``RAYPIPE_LOG_FORMAT=json``)."""
    found = _SERVE_RECORD.match(line)
    if found:
        return found["level"] in _QUIET_LEVELS
    if line.startswith("{") and '"levelname"' in line:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            return isinstance(record, dict) and record.get("levelname") in _QUIET_LEVELS
    return False


class _WarningsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


class WithoutQuietLines:
    """Ray's printer of streamed lines, minus :func:`is_quiet_line`'s."""

    def __init__(self, printer: Callable[[dict[str, Any]], None]):
        self.printer = printer

    def __call__(self, data: dict[str, Any]) -> None:
        lines = [line for line in data.get("lines", []) if not is_quiet_line(line)]
        if lines:
            self.printer({**data, "lines": lines})


def _filter_streamed_lines() -> None:
    """Wrap the handler through which Ray's driver prints its job's streamed lines."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as streams
    except ImportError:  # Ray's private API moved: its lines stay as they are
        return
    with getattr(streams, "_lock", contextlib.nullcontext()):
        # Same name, so that ray.shutdown() removes it as it removes Ray's own printer.
        streams.handlers = [
            (name, handler)
            if name != _PRINTER or isinstance(handler, WithoutQuietLines)
            else (name, WithoutQuietLines(handler))
            for name, handler in streams.handlers
        ]
