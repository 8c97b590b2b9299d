"""Processors for the fault tests; Ray workers import them by module name."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, Field

from raypipe import JobContext, processor


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
