"""A job's life, declared once: its statuses, the moves between them, and the store's
guarded state changes. No Ray, no SQL.

In the database a job's state is its ``status`` and whether a dispatcher holds it (its
lease): a claimed job stays ``queued``, held, until its worker reports the start. Each
:class:`Change` names the statuses it applies to, the hold it needs and the statuses it
may write; the store builds every guarded ``UPDATE``'s ``WHERE`` from it, and checks the
status it writes against :data:`MOVES` before any SQL runs (:class:`IllegalMove`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from types import MappingProxyType

from raypipe.exceptions import RaypipeError


class JobStatus(str, Enum):
    """Where a job is in its life; the values are what the API shows."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
#: Not ended: waiting to run (a claimed job too, until it starts) or running.
UNFINISHED_STATUSES = frozenset(JobStatus) - TERMINAL_STATUSES

#: How a queued job's message begins when the dispatcher says what it waits for ("waiting
#: for 1 CPU"), so that the queue's figures count those apart from a job's own messages.
WAITING_PREFIX = "waiting for"

_QUEUED, _PROCESSING = JobStatus.QUEUED, JobStatus.PROCESSING
_COMPLETED, _FAILED, _CANCELLED = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED

#: The statuses each status may move to. A queued job may end before its start is heard
#: of (a bundle's tiny job, a cancel) or be retried before it started (queued again); a
#: retry sends a failed or cancelled job back to the queue; a completed job stays so.
MOVES: Mapping[JobStatus, frozenset[JobStatus]] = MappingProxyType(
    {
        _QUEUED: frozenset({_QUEUED, _PROCESSING, _COMPLETED, _FAILED, _CANCELLED}),
        _PROCESSING: frozenset({_QUEUED, _COMPLETED, _FAILED, _CANCELLED}),
        _COMPLETED: frozenset(),
        _FAILED: frozenset({_QUEUED}),
        _CANCELLED: frozenset({_QUEUED}),
    }
)


class IllegalMove(RaypipeError):
    """A job cannot move between these statuses."""


class Hold(Enum):
    """Which jobs a change applies to by their lease: held by a dispatcher (claimed, not
    ended), held by none, or either."""

    HELD = "held"
    UNHELD = "unheld"
    EITHER = "either"


class Change(Enum):
    """The store's guarded state changes of a job row, each written by one function.

    A change applies to jobs in ``sources`` with its ``hold``, and writes one of
    ``targets``; a change without targets keeps the job's status.
    """

    #: A dispatcher takes a runnable job under its lease, with a new attempt.
    CLAIM = ("claim", {_QUEUED}, Hold.UNHELD, ())
    #: The dispatcher hears that the job's worker began.
    START = ("start", {_QUEUED}, Hold.HELD, {_PROCESSING})
    #: An attempt ended: the job is queued again (a retry) or ends.
    END = ("end", {_QUEUED, _PROCESSING}, Hold.HELD, {_QUEUED, _COMPLETED, _FAILED, _CANCELLED})
    #: A user cancels a job no dispatcher holds.
    CANCEL = ("cancel", {_QUEUED}, Hold.UNHELD, {_CANCELLED})
    #: A user asks a held job's dispatcher to stop it (the dispatcher records the end).
    ASK_TO_STOP = ("ask to stop", {_QUEUED, _PROCESSING}, Hold.HELD, ())
    #: A user queues a failed or cancelled job again.
    RETRY = ("retry", {_FAILED, _CANCELLED}, Hold.EITHER, {_QUEUED})
    #: A dispatcher extends the leases of the jobs it holds.
    RENEW_LEASE = ("renew lease", {_QUEUED, _PROCESSING}, Hold.HELD, ())
    #: The progress actor writes a running attempt's progress.
    PROGRESS = ("progress", {_PROCESSING}, Hold.EITHER, ())
    #: The dispatcher says why a job it cannot admit yet waits.
    SET_WAITING = ("set waiting", {_QUEUED}, Hold.UNHELD, ())

    sources: frozenset[JobStatus]
    hold: Hold
    targets: frozenset[JobStatus]

    def __new__(
        cls, name: str, sources: Iterable[JobStatus], hold: Hold, targets: Iterable[JobStatus]
    ) -> Change:
        change = object.__new__(cls)
        change._value_ = name
        change.sources = frozenset(sources)
        change.hold = hold
        change.targets = frozenset(targets)
        return change

    def to(self, target: JobStatus, source: JobStatus | None = None) -> JobStatus:
        """``target``, if this change may write it (from ``source``, where known): else
        :class:`IllegalMove`, raised before any SQL runs."""
        if target not in self.targets:
            writes = ", ".join(sorted(s.value for s in self.targets))
            does = f"it writes {writes}" if writes else "it keeps the job's status"
            raise IllegalMove(f"{self.value} cannot move a job to {target.value}: {does}")
        if source is not None:
            check_move(source, target, self)
        return target


def check_move(source: JobStatus, target: JobStatus, change: Change | None = None) -> None:
    """Raise :class:`IllegalMove` unless :data:`MOVES` lets a job go from ``source`` to
    ``target`` (by ``change``, when given: its guard must take ``source`` too)."""
    legal = target in MOVES[source] and (change is None or source in change.sources)
    if not legal:
        by = f" by {change.value}" if change is not None else ""
        raise IllegalMove(f"a job cannot move from {source.value} to {target.value}{by}")
