"""Processors for tests, benchmarks and smoke checks: noop, sleep, fail."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from raypipe.context import JobContext
from raypipe.exceptions import PermanentError, RetryableError
from raypipe.registry import processor


class NoopPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


@processor("noop", pool="workers")
def noop(payload: NoopPayload, ctx: JobContext) -> dict[str, object]:
    """Does nothing: measures raypipe's own overhead (bundled on the ``workers`` pool)."""
    return {}


class SleepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(default=2.0, ge=0, le=86_400)
    steps: int = Field(default=10, ge=1, le=100_000)


@processor("sleep", num_cpus=1)
def sleep(payload: SleepPayload, ctx: JobContext) -> dict[str, float]:
    """Sleeps in steps, reporting progress and logging ``step i/n`` after each: a stand-in
    for long work, and the simplest job whose log and progress a client can follow."""
    step = payload.seconds / payload.steps
    for done in range(1, payload.steps + 1):
        if ctx.is_cancelled():
            break
        time.sleep(step)
        message = f"step {done}/{payload.steps}"
        ctx.progress(100.0 * done / payload.steps, message, stage="sleep")
        ctx.logger.info(message)
    return {"slept": payload.seconds}


ERRORS: dict[str, type[Exception]] = {
    "PermanentError": PermanentError,
    "RetryableError": RetryableError,
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
}


class FailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: Literal["PermanentError", "RetryableError", "ValueError", "RuntimeError"] = (
        "RuntimeError"
    )
    message: str = "failed on purpose"
    succeed_on_attempt: int | None = Field(
        default=None, ge=1, description="from this attempt on, succeed instead"
    )


@processor("fail", num_cpus=1)
def fail(payload: FailPayload, ctx: JobContext) -> dict[str, int]:
    """Raises the named error class, to exercise retries and permanent failures."""
    if payload.succeed_on_attempt is not None and ctx.attempt >= payload.succeed_on_attempt:
        return {"attempt": ctx.attempt}
    ctx.logger.warning("attempt %d raises %s on purpose", ctx.attempt, payload.error)
    raise ERRORS[payload.error](payload.message)
