"""Text log lines that user-supplied text cannot forge.

raypipe's log lines carry what tenants wrote: an error's message (``job … attempt 1
failed: ValueError: <message>``), a processor's log lines, job types and tags. Written as
they are, a CR or LF in them starts what looks like a line of its own, and an ANSI escape
restyles or rewrites the reader's terminal. With ``RAYPIPE_LOG_FORMAT=json`` Ray's JSON
formatter quotes them; in text, raypipe's processes leave their records to Python's
handler of last resort (nothing configures their root logger), which writes the bare
message to stderr, whence Ray keeps it in ``logs/worker-*.err`` and streams it to the
terminal of ``raypipe up``.

:func:`escape_unhandled_records` (called when raypipe is imported) puts a handler in its
place that writes raypipe's records through :class:`TextFormatter`, which escapes control
characters; other loggers' records go to the handler it replaced, unchanged.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType

#: Control characters (C0 but tab, DEL, C1) and Unicode's line and paragraph separators:
#: what ends a line or drives a terminal. Each becomes its Python escape.
_ESCAPES = {
    code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if code != 0x09
} | {0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}
#: Put before each line of a traceback: no line but a record's first starts at column 0.
CONTINUATION = "  "

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters written as escapes (``\\n``, ``\\x1b``)."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose records cannot break or forge lines: the formatted
    message (and any field the format names) is escaped onto one line; a traceback keeps
    its own lines, each escaped and indented by :data:`CONTINUATION`."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: ExcInfo | tuple[None, None, None]) -> str:
        return _continuation(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _continuation(super().formatStack(stack_info))


def _continuation(block: str) -> str:
    return "\n".join(CONTINUATION + escape_controls(line) for line in block.splitlines())


class _LastResort(logging.Handler):
    """Python's handler of last resort (records that no handler took, WARNING and up, to
    the current stderr) with raypipe's records written through :class:`TextFormatter`."""

    def __init__(self, previous: logging.Handler | None):
        super().__init__(logging.WARNING)
        self.previous = previous
        self.setFormatter(TextFormatter())

    def handle(self, record: logging.LogRecord) -> bool:
        if record.name == "raypipe" or record.name.startswith("raypipe."):
            return bool(super().handle(record))
        return bool(self.previous.handle(record)) if self.previous is not None else False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def escape_unhandled_records() -> None:
    """Write raypipe's records that no handler takes through :class:`TextFormatter`
    (see the module's docstring); idempotent."""
    if not isinstance(logging.lastResort, _LastResort):
        logging.lastResort = _LastResort(logging.lastResort)
