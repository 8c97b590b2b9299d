"""What a running attempt sees of raypipe: progress reporting, cancellation, its own identity."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from raypipe.jobs import ProgressState

Report = Callable[[ProgressState], None]


class JobContext:
    """Handed to a processor with its payload.

    ``progress()`` never waits on anything: it stores the latest value, and the
    process ships the newest state of each job at a fixed interval, so calling it in
    a tight loop costs next to nothing.
    """

    def __init__(
        self,
        *,
        job_id: str,
        job_type: str,
        attempt: int,
        max_attempts: int,
        report: Report,
        cancelled: Callable[[], bool],
    ):
        self.job_id = job_id
        self.job_type = job_type
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.logger = logging.getLogger(f"raypipe.job.{job_type}")
        self._report = report
        self._cancelled = cancelled
        self._stage: str | None = None

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    def progress(
        self, percent: float, message: str | None = None, stage: str | None = None
    ) -> None:
        """Report progress (0–100, clamped), an optional short message and stage."""
        if stage is not None:
            self._stage = stage
        value = 0.0 if math.isnan(percent) else min(100.0, max(0.0, float(percent)))
        self._report(ProgressState(self.job_id, self.attempt, value, message, self._stage))

    def is_cancelled(self) -> bool:
        """Whether cancellation was asked for; long loops can stop early by checking it."""
        return self._cancelled()
