"""Processors used only by the tests; Ray workers import them by module name."""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from raypipe import JobContext, outbound, processor
from raypipe.exceptions import PermanentError


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


class EchoPayload(BaseModel):
    result: dict[str, Any] = Field(default_factory=dict)
    artifacts: dict[str, str] = Field(default_factory=dict)
    parent: dict[str, Any] | None = None


@processor("test.echo", num_cpus=0.5)
def echo(payload: EchoPayload, ctx: JobContext) -> dict[str, Any]:
    """Writes the given artifacts and returns the given result (plus what a parent passed)."""
    for name, text in payload.artifacts.items():
        ctx.write_artifact(name, text)
    return {**payload.result, **({"parent": payload.parent} if payload.parent else {})}


class FanoutPayload(BaseModel):
    numbers: list[int]
    fail_on: int | None = None


def _square(number: int, fail_on: int | None) -> dict[str, int]:
    if number == fail_on:
        raise PermanentError(f"refusing {number}")
    return {"square": number * number, "pid": os.getpid()}


@processor("test.fanout", num_cpus=0.5)
def fanout(payload: FanoutPayload, ctx: JobContext) -> dict[str, Any]:
    """Squares numbers in parallel Ray tasks, reporting each as it finishes."""
    done: list[int] = []
    results = ctx.parallel(
        [partial(_square, n, payload.fail_on) for n in payload.numbers],
        num_cpus=0.5,
        on_done=lambda index, _result: done.append(index),
    )
    return {
        "squares": [r["square"] for r in results],
        "reported": sorted(done),
        "pids": sorted({r["pid"] for r in results}),
    }


# The tests' own pool (``pools.test`` in tests/conftest.py): two jobs at once on one actor.
pool_gate = processor("test.pool_gate", payload=GatePayload, pool="test")(gate)


@processor("test.stubborn", payload=GatePayload, pool="test")
def stubborn(payload: GatePayload, ctx: JobContext) -> dict[str, int]:
    """Like test.gate on the test pool, but ignores interruptions: only killing its actor
    stops it."""
    folder = Path(payload.folder)
    (folder / f"pid-{ctx.attempt}").write_text(str(os.getpid()))
    while True:
        try:  # the interruption may land on any line of the wait, not only in sleep
            while not (folder / "release").exists():
                time.sleep(0.02)
            return {"attempt": ctx.attempt}
        except KeyboardInterrupt:
            (folder / f"ignored-{ctx.attempt}").write_text("1")


class NothingPayload(BaseModel):
    pass


@processor("test.huge", payload=NothingPayload, num_cpus=64)
def huge(payload: NothingPayload, ctx: JobContext) -> dict[str, int]:
    """Declares more CPUs than any test cluster has."""
    return {}


@processor("test.tpu", payload=NothingPayload, resources={"tpu": 1})
def tpu(payload: NothingPayload, ctx: JobContext) -> dict[str, int]:
    """Declares a resource no test node has."""
    return {}


class Word(BaseModel):
    text: str = Field(min_length=1, max_length=100)
    times: int = Field(default=1, ge=1, le=10)


class Repeated(BaseModel):
    text: str
    length: int


@processor("test.repeat", num_cpus=0.5)
def repeat(payload: Word, ctx: JobContext) -> Repeated:
    """Repeats a word: a typed processor whose result is a pydantic model."""
    text = payload.text * payload.times
    return Repeated(text=text, length=len(text))


class ChattyPayload(BaseModel):
    lines: int = Field(default=3, ge=0, le=10_000)
    pad: int = Field(default=0, ge=0, le=100_000)
    folder: str | None = None
    release_on_attempt: int | None = Field(default=None, ge=1)
    fail: bool = False
    pause_s: float = Field(default=0.0, ge=0, le=60)


@processor("test.chatty", payload=ChattyPayload)
def chatty(payload: ChattyPayload, ctx: JobContext) -> dict[str, int]:
    """Logs ``lines`` lines through ``ctx.logger`` (each padded with ``pad`` x's, each after
    ``pause_s``); given a folder, then writes its pid and waits like test.gate for a release
    file (logging once released, or once interrupted); fails permanently if asked."""
    for i in range(payload.lines):
        time.sleep(payload.pause_s)
        ctx.logger.info("attempt %d line %d %s", ctx.attempt, i, "x" * payload.pad)
    if payload.folder is not None:
        folder = Path(payload.folder)
        (folder / f"pid-{ctx.attempt}").write_text(str(os.getpid()))
        after = payload.release_on_attempt
        released = after is not None and ctx.attempt >= after
        try:
            while not released and not (folder / "release").exists():
                time.sleep(0.02)
        except KeyboardInterrupt:  # stopped: a last line as it goes, for no outcome to carry
            ctx.logger.warning("attempt %d interrupted", ctx.attempt)
            raise
        ctx.logger.warning("attempt %d released", ctx.attempt)
    if payload.fail:
        ctx.logger.error("attempt %d gives up", ctx.attempt)
        raise PermanentError("asked to fail")
    return {"lines": payload.lines}


# The same on the tests' pool: its lines come from a pool actor's thread.
pool_chatty = processor("test.pool_chatty", payload=ChattyPayload, pool="test")(chatty)


class FetchPayload(BaseModel):
    url: str


@processor("test.traced", payload=FetchPayload)
def traced(payload: FetchPayload, ctx: JobContext) -> dict[str, int]:
    """Does its work in a span of its own and fetches ``url`` through the outbound guard
    inside it: with traces on, both belong to the job's trace."""
    from opentelemetry import trace

    with trace.get_tracer("tests").start_as_current_span("the processor's work"):
        fetched = outbound.fetch(payload.url, ctx.settings, "url")
    return {"bytes": len(fetched)}


class KeyedPayload(BaseModel):
    key: str = Field(min_length=1)
    folder: str | None = None
    meet: int = Field(default=1, ge=1, le=10)


@processor("test.keyed", payload=KeyedPayload, num_cpus=0.25, concurrency_key=lambda p: p.key)
def keyed(payload: KeyedPayload, ctx: JobContext) -> dict[str, int]:
    """A job whose concurrency key comes from its payload (a quarter of a CPU). Given a
    folder, it leaves a mark there and waits (30 s at most) for ``meet`` marks: jobs that
    see each other's marks ran at the same time, however slowly their workers started."""
    if payload.folder is None:
        return {"met": 1}
    folder = Path(payload.folder)
    (folder / ctx.job_id).write_text(payload.key)
    deadline = time.monotonic() + 30.0
    while len(list(folder.iterdir())) < payload.meet and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"met": len(list(folder.iterdir()))}


# The same with a key limit of its own: two of one key at once.
keyed_pairs = processor(
    "test.keyed_pairs", payload=KeyedPayload, concurrency_key=lambda p: p.key, key_limit=2
)(keyed)

#: test.limited's run limit: five starts per two seconds, across the cluster.
LIMITED = {"key": "test.limited", "limit": 5, "window_s": 2.0}


@processor("test.limited", payload=NothingPayload, num_cpus=0.1, run_limit=LIMITED)
def limited(payload: NothingPayload, ctx: JobContext) -> dict[str, int]:
    """A quick job under a run limit."""
    return {}
