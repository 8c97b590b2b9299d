"""Processors for the fault tests; Ray workers import them by module name."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, Field

from raypipe import JobContext, processor

#: The artifact test.marked writes: ``<job id> <attempt>``.
MARK = "attempt.txt"


class PacedPayload(BaseModel):
    folder: str
    steps: int = Field(ge=1)


@processor("test.paced_progress")
def paced_progress(payload: PacedPayload, ctx: JobContext) -> dict[str, int]:
    """Reports step ``i`` of ``steps`` once the file ``go-i`` exists: progress the test paces."""
    folder = Path(payload.folder)
    for step in range(1, payload.steps + 1):
        while not (folder / f"go-{step}").exists():
            time.sleep(0.02)
        ctx.progress(100.0 * step / payload.steps, f"step {step}/{payload.steps}")
    return {"steps": payload.steps}


class MarkedPayload(BaseModel):
    seconds: float = Field(default=0.2, ge=0, le=60)


@processor("test.marked", num_cpus=0.25)
def marked(payload: MarkedPayload, ctx: JobContext) -> dict[str, int]:
    """Writes ``attempt.txt`` naming its job and attempt, then sleeps: an attempt killed
    after the write leaves a stale file behind, which its job must never list."""
    ctx.write_artifact(MARK, f"{ctx.job_id} {ctx.attempt}")
    time.sleep(payload.seconds)
    return {"attempt": ctx.attempt}
