"""Processors used only by the tests; Ray workers import them by module name."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from raypipe import JobContext, processor


class GatePayload(BaseModel):
    folder: str
    release_on_attempt: int | None = Field(default=None, ge=1)


@processor("test.gate")
def gate(payload: GatePayload, ctx: JobContext) -> dict[str, int]:
    """Writes its pid, then waits for a release file: a job the test controls.

    From ``release_on_attempt`` on it does not wait. Leaves a ``stopped`` marker
    however it ends, so a test can see that an interrupted attempt really stopped.
    """
    folder = Path(payload.folder)
    (folder / f"pid-{ctx.attempt}").write_text(str(os.getpid()))
    try:
        after = payload.release_on_attempt
        released = after is not None and ctx.attempt >= after
        while not released and not (folder / "release").exists():
            time.sleep(0.02)
    finally:
        (folder / f"stopped-{ctx.attempt}").write_text("1")
    return {"attempt": ctx.attempt, "pid": os.getpid()}


class SpinPayload(BaseModel):
    calls: int = Field(default=100_000, ge=1)


@processor("test.spin_progress")
def spin_progress(payload: SpinPayload, ctx: JobContext) -> dict[str, int]:
    """Reports progress on every iteration of a tight loop."""
    for i in range(payload.calls):
        ctx.progress(100.0 * (i + 1) / payload.calls, f"{i + 1}/{payload.calls}")
    return {"calls": payload.calls}
