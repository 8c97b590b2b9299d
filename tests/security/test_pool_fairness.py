"""One tenant's large ``embed.texts`` against everyone's embeddings pool: real Ray, the real
model, one warm actor (so every job shares it).

Before (issue 33): a job of 100,000 texts sent all its chunks to the pool at once and held
it: another tenant's 1-text job sat at ``encode 0/1`` for minutes; after the large job
was recorded ``cancelled`` its queued chunks still ran (the small job still waited, the
actor at ~73 % CPU). Now a job has at most two chunks out per actor, jobs take turns at
the model a request at a time, and a cancelled job's chunks are withdrawn.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest
import ray

from raypipe.direct import DirectClient
from raypipe.exceptions import Conflict
from raypipe.handle import JobHandle
from raypipe.jobs import JobRecord, JobStatus
from tests.conftest import wait_for
from tests.integration.conftest import dispatcher, pool_actors, system_fixture

MODEL = "all-MiniLM-L6-v2"
#: Texts per chunk (one model batch): a chunk is about half a second of one core here.
CHUNK = 64
#: The large job: 32 chunks, tens of seconds of the actor's core when it runs to the end.
LARGE = 2000
#: What a loaded CI machine adds to a small job's time beyond the chunks it waits for.
SLACK_S = 3.0


system = system_fixture(
    "fairness",
    ["sqlite"],
    embedding_chunk_size=CHUNK,
    embedding_batch_size=CHUNK,
    pools={"embeddings": {"min_size": 1, "max_size": 1}, "test": {"max_size": 1}},
)


@pytest.fixture
def other(system: DirectClient) -> Iterator[DirectClient]:
    """Another tenant's client."""
    client = DirectClient(system.settings, tenant="other")
    yield client
    client.close()


def texts(tag: str, n: int) -> list[str]:
    """``n`` distinct short sentences (nothing deduplicated)."""
    return [f"{tag} sentence {i} about topic {i % 17} and item {i % 5}" for i in range(n)]


def finished(handle: JobHandle, timeout: float) -> JobRecord:
    """The job once terminal, read at most 0.2 s apart (a handle's wait backs off further)."""
    job = wait_for(
        lambda: (job := handle.refresh()).status.is_terminal and job, timeout, f"job {handle.id}"
    )
    assert isinstance(job, JobRecord)
    return job


def seconds(client: DirectClient, batch: list[str]) -> float:
    started = time.monotonic()
    job = finished(client.submit("embed.texts", {"texts": batch}), 180)
    assert job.status is JobStatus.COMPLETED, job.error
    return time.monotonic() - started


@dataclass(frozen=True)
class Timing:
    small_s: float  # a 1-text job on the idle pool, submission to completion
    chunk_s: float  # one chunk's encode


@pytest.fixture(scope="module")
def timing(system: DirectClient) -> Timing:
    seconds(system, texts("warm", CHUNK))  # the model loads
    small = min(seconds(system, texts(f"small {i}", 1)) for i in range(3))
    four = seconds(system, texts("four chunks", 4 * CHUNK))
    return Timing(small, max(0.05, (four - small) / 4))


def started_large(system: DirectClient) -> JobHandle:
    """The large job, once its chunks are flowing (one has finished)."""
    large = system.submit("embed.texts", {"texts": texts("large", LARGE)})
    wait_for(lambda: large.refresh().progress > 0, 120, "the large job's first chunk")
    return large


def served(actor: ray.actor.ActorHandle) -> int:
    """Texts the actor's model has encoded so far."""
    return int(ray.get(actor.info.remote())["models"][MODEL].get("texts", 0))


def test_a_small_job_is_served_while_a_large_one_runs(
    system: DirectClient, other: DirectClient, timing: Timing
) -> None:
    large = started_large(system)
    try:
        sent = time.monotonic()
        small = finished(other.submit("embed.texts", {"texts": ["one text of another"]}), 120)
        waited = time.monotonic() - sent
        assert small.status is JobStatus.COMPLETED, small.error
        assert large.refresh().status is JobStatus.PROCESSING
        # It waits for the chunk that runs, not for the large job's other 30.
        assert waited <= timing.small_s + 3 * timing.chunk_s + SLACK_S, (waited, timing)
    finally:
        with contextlib.suppress(Conflict):  # it may have ended (on old code, it did first)
            large.cancel()
        finished(large, 60)


def test_a_cancelled_job_stops_using_the_pool_within_the_grace(
    system: DirectClient, other: DirectClient, timing: Timing
) -> None:
    [actor] = pool_actors(system.settings, "embeddings")
    process = psutil.Process(ray.get(actor.info.remote())["pid"])
    info = ray.get(dispatcher(system.settings).info.remote())
    [name] = info["pools"]["embeddings"]["actors"]
    replaced = info["counters"].get("pool_replaced", 0)
    large = started_large(system)
    before = served(actor)
    cancelled = time.monotonic()
    large.cancel()
    small = other.submit("embed.texts", {"texts": ["next in line"]})
    assert finished(large, 60).status is JobStatus.CANCELLED
    job = finished(small, 120)
    assert job.status is JobStatus.COMPLETED, job.error
    # The next job did not wait for the cancelled one's queued chunks.
    assert time.monotonic() - cancelled <= timing.small_s + 3 * timing.chunk_s + SLACK_S

    # Past the grace (and the chunk that was running), nothing of it runs any more.
    grace = system.settings.engine.cancel_grace_s
    time.sleep(max(0.0, cancelled + grace + timing.chunk_s - time.monotonic()))
    texts_then, cpu_then, then = served(actor), process.cpu_times(), time.monotonic()
    time.sleep(max(1.5, 3 * timing.chunk_s))
    cpu_now = process.cpu_times()
    busy = (cpu_now.user + cpu_now.system - cpu_then.user - cpu_then.system) / (
        time.monotonic() - then
    )
    assert served(actor) == texts_then
    assert busy < 0.3, f"the pool's actor still uses {busy:.0%} of a core"
    # The chunks it had out when the cancel came at most (it comes within a dispatcher
    # round), and the small job's text.
    assert texts_then - before <= 4 * CHUNK + 1
    # The attempt ended by itself within the grace: the actor was not replaced.
    info = ray.get(dispatcher(system.settings).info.remote())
    assert info["pools"]["embeddings"]["actors"] == [name]
    assert info["counters"].get("pool_replaced", 0) == replaced
