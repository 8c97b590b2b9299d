"""Stage bookkeeping for a job made of several steps: each stage's status, start, duration
and error, for the job's result, and errors that say which stage they came from.

Each stage runs within a CPU-time budget (``RAYPIPE_MAX_DOCUMENT_STAGE_CPU_S``) wherever it
runs, here or in a Ray task: work a document's size or shape makes too long fails the job
with a permanent error naming the setting, rather than being tried again until the job's
timeout and attempts run out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from raypipe.cpu_budget import cpu_budget
from raypipe.exceptions import PermanentError, RetryableError, reason

T = TypeVar("T")
#: The setting a stage's CPU budget comes from, named when a stage runs out of it.
STAGE_CPU_SETTING = "RAYPIPE_MAX_DOCUMENT_STAGE_CPU_S"


@dataclass(frozen=True)
class StageOutcome:
    """What a stage run elsewhere (a Ray task) hands back: its value or error, and when."""

    started_at: str
    duration_s: float
    value: Any = None
    error: Exception | None = None


def budgeted(cpu_s: float | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` within a stage's CPU budget of ``cpu_s`` seconds (``None``: none), on
    whichever thread calls it: how a stage sent to a Ray task keeps its budget there."""
    with cpu_budget(cpu_s, STAGE_CPU_SETTING):
        return fn(*args)


def run_timed(fn: Callable[..., Any], *args: Any, cpu_s: float | None = None) -> StageOutcome:
    """Call ``fn(*args)`` within ``cpu_s`` of CPU time (see :func:`budgeted`) and time it,
    returning its error instead of raising it, so one failing branch of a fan-out does
    not hide how its sibling went."""
    started_at = _now()
    began = time.perf_counter()
    try:
        value = budgeted(cpu_s, fn, *args)
    except Exception as exc:
        return StageOutcome(started_at, time.perf_counter() - began, error=exc)
    return StageOutcome(started_at, time.perf_counter() - began, value=value)


def in_stage(name: str, exc: Exception) -> Exception:
    """``exc`` with the stage named in its message: a prefixed copy of a PermanentError or
    RetryableError (the message is what the job shows); any other error as it is, since
    its type drives retries and its constructor may take more than a message."""
    prefix = f"{name}: "
    if isinstance(exc, PermanentError) and not exc.message.startswith(prefix):
        return PermanentError(prefix + exc.message, details=exc.details)
    if isinstance(exc, RetryableError) and not exc.message.startswith(prefix):
        return RetryableError(prefix + exc.message, delay_s=exc.delay_s)
    return exc


class StageLog:
    """Records stages as they run; :meth:`as_dict` is the ``stages`` field of a result.
    ``cpu_s``: each stage's CPU budget on the thread that runs its block."""

    def __init__(self, names: Sequence[str], cpu_s: float | None = None):
        self.names = tuple(names)
        self.cpu_s = cpu_s
        self.records: dict[str, dict[str, Any]] = {}

    @contextmanager
    def run(self, name: str, budgeted: bool = True) -> Iterator[None]:
        """Time the block as stage ``name``, within the CPU budget unless not ``budgeted``
        (a stage whose work is bounded elsewhere); an error is recorded, then re-raised
        with the stage named (see :func:`in_stage`)."""
        started_at = _now()
        began = time.perf_counter()
        try:
            with cpu_budget(self.cpu_s if budgeted else None, STAGE_CPU_SETTING):
                yield
        except Exception as exc:
            self.record(name, StageOutcome(started_at, time.perf_counter() - began, error=exc))
            named = in_stage(name, exc)
            if named is exc:
                raise
            raise named from exc
        self.record(name, StageOutcome(started_at, time.perf_counter() - began))

    def collect(self, outcomes: Mapping[str, StageOutcome]) -> dict[str, Any]:
        """Record stages that ran elsewhere; their values by name, or the first error
        (in ``outcomes`` order) re-raised with its stage named once all are recorded."""
        for name, outcome in outcomes.items():
            self.record(name, outcome)
        for name, outcome in outcomes.items():
            if outcome.error is not None:
                named = in_stage(name, outcome.error)
                if named is outcome.error:
                    raise named
                raise named from outcome.error
        return {name: outcome.value for name, outcome in outcomes.items()}

    def record(self, name: str, outcome: StageOutcome) -> None:
        error = outcome.error
        self.records[name] = {
            "status": "failed" if error is not None else "completed",
            "started_at": outcome.started_at,
            "duration_s": round(outcome.duration_s, 6),
            "error": None if error is None else f"{type(error).__name__}: {reason(error)}",
        }

    def skip_remaining(self) -> None:
        """Mark every stage that has not run as skipped (the job stopped early)."""
        for name in self.names:
            self.records.setdefault(
                name, {"status": "skipped", "started_at": None, "duration_s": 0.0, "error": None}
            )

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The records in stage order."""
        return {name: dict(self.records[name]) for name in self.names if name in self.records}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
