"""Logs are safe: text that tenants wrote cannot forge a line of raypipe's text logs.

A raypipe process on Ray in text mode (``RAYPIPE_LOG_FORMAT=text``, the default) has no
handler on its root logger, so its records go to Python's handler of last resort: the
bare message on stderr, which Ray keeps in ``logs/worker-*.err``. Before, a job's error
message or a processor's log line holding CR, LF or ANSI escapes was written there as it
was: ``…failed: boom`` then a line of the tenant's choosing. The child process here is
such a process: it imports raypipe and logs what its dispatcher and a processor log.
"""

from __future__ import annotations

import logging
import subprocess
import sys

from raypipe.log_format import TextFormatter, escape_controls

#: A message a tenant chose: a forged line after a CRLF, a terminal escape, a lone CR.
HOSTILE = "boom\r\n2026-01-01 00:00:00 WARNING all jobs deleted by admin \x1b[2J\x1b[31mred\rover"

#: What a Ray worker of raypipe does with the message: the dispatcher's line for a failed
#: attempt (its format), and a processor's ``ctx.logger`` line.
CHILD = f"""
import logging
from raypipe.config import get_settings
from raypipe.context import JobContext

hostile = {HOSTILE!r}
logging.getLogger("raypipe.runtime.dispatcher").warning(
    "job %s attempt %d %s, %s: %s: %s", "j-1", 1, "failed", "failed", "ValueError", hostile
)
JobContext.local("sleep", get_settings()).logger.warning("processing %s", hostile)
try:
    raise ValueError(hostile)
except ValueError:
    logging.getLogger("raypipe.api.errors").exception("unexpected error")
"""


def test_text_logs_escape_what_tenants_wrote() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, timeout=120, check=True
    )
    lines = done.stderr.decode().split("\n")
    assert b"\x1b" not in done.stderr and b"\r" not in done.stderr
    escaped = escape_controls(HOSTILE)
    assert lines[0] == f"job j-1 attempt 1 failed, failed: ValueError: {escaped}"
    assert lines[1] == f"processing {escaped}"
    assert lines[2] == "unexpected error"
    # A traceback keeps its lines, each indented: none can pass for a record of its own.
    assert lines[3] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in lines[3:] if line)
    assert lines[-4:] == [
        "  ValueError: boom",
        "  2026-01-01 00:00:00 WARNING all jobs deleted by admin \\x1b[2J\\x1b[31mred",
        "  over",
        "",
    ]


def test_records_others_handle_are_left_to_them() -> None:
    # JSON logs (Ray's formatter, on a root handler) quote control characters themselves.
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("raypipe.tests.json")
    logger.addHandler(handler)
    try:
        logger.warning("a\nb")
    finally:
        logger.removeHandler(handler)
    assert seen == ["a\nb"]


def test_the_formatter_escapes_fields_of_its_format() -> None:
    record = logging.LogRecord("raypipe.x", logging.WARNING, "f.py", 1, "%s", ("m\n",), None)
    record.job_type = "t\x1b[0m"
    formatted = TextFormatter("%(levelname)s %(job_type)s %(message)s").format(record)
    assert formatted == "WARNING t\\x1b[0m m\\n"
