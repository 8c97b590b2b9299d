"""Per-attempt logs: what a processor writes through ``ctx.logger``, numbered per attempt and
bounded to the newest ``log_max_bytes`` of it, collected in the worker for shipping.

The worker knows every line of its attempt, so it decides what the bound drops: the
oldest lines, as a ``trim`` (delete this attempt's lines up to ``seq``) sent with the new
ones. Lines are shipped soon after they are logged, so a worker that crashes has kept
what it logged before; the lines an attempt has not shipped when it ends are its
:class:`AttemptTail`, written with its outcome, so that its log is complete by the time
its end can be read.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from raypipe.jobs import iso

#: The logger whose children ``ctx.logger`` writes to (``raypipe.job.<type>``).
JOB_LOGGER = "raypipe.job"
#: The longest line kept; the rest of a longer message is cut off and marked.
MAX_LINE_CHARS = 16_384
CUT_MARK = " …[cut]"


@dataclass(frozen=True)
class LogLine:
    """One line an attempt logged."""

    job_id: str
    attempt: int
    seq: int
    ts: datetime
    level: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The line as the API shows it."""
        return {
            "seq": self.seq,
            "ts": iso(self.ts),
            "level": self.level,
            "message": self.message,
            "attempt": self.attempt,
        }


@dataclass(frozen=True)
class Trim:
    """Delete an attempt's lines up to ``seq``: they fell out of its bound."""

    job_id: str
    attempt: int
    seq: int


def job_fields(job_id: str, attempt: int, job_type: str, queue: str, tenant: str) -> dict[str, Any]:
    """The attributes a log record about a job carries (``extra=``), in every format: the
    JSON logs show them as fields. ``raypipe_job_id``, because Ray sets ``job_id`` on every
    record to its own job's id."""
    return {
        "raypipe_job_id": job_id,
        "attempt": attempt,
        "job_type": job_type,
        "queue": queue,
        "tenant": tenant,
    }


def line_size(message: str) -> int:
    return len(message.encode("utf-8", "replace"))


class AttemptLog:
    """One attempt's lines as its worker numbers them, and the newest of them the bound
    keeps (each line's seq and size)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.next_seq = 1
        self.kept: deque[tuple[int, int]] = deque()
        self.bytes = 0
        #: The newest seq the bound dropped (0: none).
        self.trimmed_to = 0
        #: Whether some of its lines were taken for shipping (they travel apart from its end).
        self.shipped = False

    def add(self, message: str) -> tuple[int, str]:
        """Number a new line (cut to fit the bound alone); returns its seq and text."""
        limit = min(MAX_LINE_CHARS, self.max_bytes // 4)  # UTF-8: at most 4 bytes a character
        if len(message) > limit:
            message = message[: limit - len(CUT_MARK)] + CUT_MARK
        seq, size = self.next_seq, line_size(message)
        self.next_seq += 1
        self.kept.append((seq, size))
        self.bytes += size
        while self.bytes > self.max_bytes and len(self.kept) > 1:
            dropped, dropped_size = self.kept.popleft()
            self.bytes -= dropped_size
            self.trimmed_to = dropped
        return seq, message


@dataclass(frozen=True)
class AttemptTail:
    """What an ended attempt's log leaves to its end: the lines not shipped yet (within its
    bound), its trim, and whether earlier lines were shipped (they must be written before
    its outcome is)."""

    lines: tuple[LogLine, ...] = ()
    trim: Trim | None = None
    shipped: bool = False


class LogBuffer:
    """The lines this worker process's attempts logged and not shipped yet, each with when
    it was logged (``clock``), and the trims their bounds made; ``wake`` is called when
    a line arrives and none was waiting."""

    def __init__(
        self,
        max_bytes: int,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_bytes = max_bytes
        self._wake = wake
        self._clock = clock
        self._lock = threading.Lock()
        self._attempts: dict[tuple[str, int], AttemptLog] = {}
        #: (when logged, line), oldest first.
        self._pending: list[tuple[float, LogLine]] = []

    def add(self, job_id: str, attempt: int, ts: datetime, level: str, message: str) -> None:
        with self._lock:
            log = self._attempts.get((job_id, attempt))
            if log is None:
                log = self._attempts[job_id, attempt] = AttemptLog(self.max_bytes)
            seq, text = log.add(message)
            first = not self._pending
            self._pending.append((self._clock(), LogLine(job_id, attempt, seq, ts, level, text)))
        if first:
            self._wake()

    def oldest(self) -> float | None:
        """When the oldest line waiting was logged (None: none waits)."""
        with self._lock:
            return self._pending[0][0] if self._pending else None

    def take(self, logged_by: float = math.inf) -> tuple[list[LogLine], list[Trim]]:
        """What to ship now: the pending lines logged by ``logged_by`` that the bounds still
        keep, and their attempts' trims (sent again each time: deleting what is already gone
        costs nothing). Younger lines wait: their attempt may end first and carry them."""
        with self._lock:
            count = bisect.bisect_right(self._pending, logged_by, key=lambda entry: entry[0])
            if not count:
                return [], []
            pending = [line for _, line in self._pending[:count]]
            del self._pending[:count]
            trims: dict[tuple[str, int], int] = {}
            for key in {(line.job_id, line.attempt) for line in pending}:
                log = self._attempts.get(key)
                if log is not None:
                    log.shipped = True
                    if log.trimmed_to:
                        trims[key] = log.trimmed_to
        lines = [line for line in pending if line.seq > trims.get((line.job_id, line.attempt), 0)]
        return lines, [Trim(job_id, attempt, seq) for (job_id, attempt), seq in trims.items()]

    def end(self, job_id: str, attempt: int) -> AttemptTail:
        """The attempt ended: take its lines not shipped yet (other attempts' stay) and
        forget its numbering."""
        key = (job_id, attempt)
        with self._lock:
            log = self._attempts.pop(key, None)
            if log is None:
                return AttemptTail()
            mine = [line for _, line in self._pending if (line.job_id, line.attempt) == key]
            if mine:
                self._pending = [
                    entry for entry in self._pending if (entry[1].job_id, entry[1].attempt) != key
                ]
        trim = Trim(job_id, attempt, log.trimmed_to) if log.trimmed_to else None
        lines = tuple(line for line in mine if line.seq > log.trimmed_to)
        return AttemptTail(lines, trim, log.shipped)


class CaptureHandler(logging.Handler):
    """Hands what ``ctx.logger`` logs to this process's :class:`LogBuffer`; records logged
    outside an attempt (no ``raypipe_job_id``) are left to the other handlers."""

    def __init__(self, buffer: LogBuffer):
        super().__init__(logging.DEBUG)
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        job_id = getattr(record, "raypipe_job_id", None)
        attempt = getattr(record, "attempt", None)
        if not isinstance(job_id, str) or not isinstance(attempt, int):
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            ts = datetime.fromtimestamp(record.created, UTC)
            self.buffer.add(job_id, attempt, ts, record.levelname, message)
        except Exception:  # a logging call never fails the job
            self.handleError(record)


def capture(buffer: LogBuffer, level: str) -> None:
    """Capture ``ctx.logger`` lines at ``level`` and above into ``buffer`` from now on
    (replacing an earlier capture of this process)."""
    logger = logging.getLogger(JOB_LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, CaptureHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(CaptureHandler(buffer))
    logger.setLevel(level)


class LogFollower:
    """What following an attempt's log shows next, read after read: each read's new lines,
    until the attempt is over (its job ended or moved to a later attempt) and a read one
    ``settle_s`` later brought nothing more (an attempt's log is complete when its end is
    recorded, but a crashed worker's last shipped lines may still be on their way). Used
    by the API's stream and the CLI on the database alike."""

    def __init__(self, attempt: int, after: int, poll_s: float, settle_s: float):
        self.attempt = attempt
        self.after = after
        self.poll_s = poll_s
        self.settle_s = settle_s
        self._settled = False

    def step(self, job_attempt: int, job_ended: bool, lines: list[LogLine]) -> float | None:
        """Take one read's ``lines`` (after :attr:`after`) with the job as read before
        them; returns the pause before the next read, or None when following is over."""
        if lines:
            self.after = lines[-1].seq
            return 0.0
        if job_attempt > self.attempt or job_ended:
            if self._settled:
                return None
            self._settled = True
            return self.settle_s
        return self.poll_s
