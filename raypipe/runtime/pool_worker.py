"""An actor of a pool: runs attempts beside what it keeps warm, and streams how they go."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raypipe import registry
from raypipe.config import Settings
from raypipe.embedding.models import Embeddings
from raypipe.jobs import ClaimedJob, ErrorInfo, utcnow
from raypipe.retry import ErrorKind
from raypipe.runtime.embedder import WAKE_S, ModelHost
from raypipe.runtime.executor import AttemptResult, Event, Finished, Started, run_attempt
from raypipe.runtime.fanout import EMBEDDINGS_POOL, PoolHandles, RayRunner

#: How long a bundle's events may wait before they are sent (one message per flush).
FLUSH_S = 0.02

#: The result of an attempt that was interrupted (the dispatcher's own outcome wins).
INTERRUPTED = AttemptResult(
    ok=False,
    kind=ErrorKind.SYSTEM,
    error=ErrorInfo("Interrupted", "the attempt was stopped by the dispatcher"),
)


class PoolWorker:
    """Runs the attempts the dispatcher sends, ``concurrency`` jobs at once across its calls
    (each call a bundle of jobs); every call streams its jobs' starts and ends.

    An async actor: stop requests, embedding calls (of its own jobs, spread over the pool,
    and of other jobs) and new calls are taken while attempts run on worker threads.
    """

    def __init__(self, settings: Settings, pool: str):
        registry.load(settings.processor_modules)
        config = settings.pools[pool]
        self.settings = settings
        self.pool = pool
        self.host = ModelHost(settings.embeddings)
        self._threads = ThreadPoolExecutor(config.concurrency, thread_name_prefix=f"pool-{pool}")
        self._slots = asyncio.Semaphore(config.concurrency)
        self._concurrency = config.concurrency
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._stopped: set[str] = set()
        #: Calls taken and attempts run: jobs per call is what bundling saves per job.
        self.calls = 0
        self.attempts = 0

    async def run(self, jobs: list[ClaimedJob], pools: PoolHandles) -> AsyncIterator[list[Event]]:
        """Run ``jobs`` in order, as many at once as the actor has room for (on a model pool,
        their texts are merged into model calls); yields their events, a batch at most
        every ``FLUSH_S``.

        ``pools`` has the actors of this pool and of the pools its jobs use, as now.
        """
        self.calls += 1
        loop = self._loop = asyncio.get_running_loop()
        local = self._embed_here if self.pool == EMBEDDINGS_POOL else None
        runner = RayRunner(self.settings.embeddings, pools, local)
        waiting = deque(jobs)
        events: list[Event] = []
        news = asyncio.Event()

        async def lane() -> None:
            """Takes the call's next job whenever the actor has a slot for it."""
            while waiting:
                job = waiting.popleft()
                async with self._slots:
                    if job.id in self._stopped:
                        self._stopped.discard(job.id)
                        events.append(Finished(job.id, job.attempt, INTERRUPTED))
                        news.set()
                        continue
                    events.append(Started(job.id, job.attempt, utcnow()))
                    news.set()
                    result = await loop.run_in_executor(self._threads, self._attempt, job, runner)
                    events.append(Finished(job.id, job.attempt, result))
                    news.set()

        lanes = [loop.create_task(lane()) for _ in range(min(self._concurrency, len(jobs)))]
        for task in lanes:
            task.add_done_callback(lambda _: news.set())
        sent = 0.0
        try:
            while True:
                done = all(task.done() for task in lanes)
                now = time.monotonic()
                if events and (done or now >= sent + FLUSH_S):
                    batch, events[:] = events[:], []
                    sent = now
                    yield batch
                    continue
                if done:
                    break
                news.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(news.wait(), sent + FLUSH_S - now if events else None)
            for task in lanes:
                task.result()  # a lane that failed ends the call: its jobs' outcomes say so
        finally:
            for task in lanes:
                task.cancel()

    def _attempt(self, job: ClaimedJob, runner: RayRunner) -> AttemptResult:
        try:
            with self._lock:
                self._running[job.id] = threading.get_ident()
            try:
                return run_attempt(self.settings, job, runner, self._stopped.__contains__)
            finally:
                with self._lock:
                    self._running.pop(job.id, None)
        except KeyboardInterrupt:
            return INTERRUPTED
        finally:
            self.attempts += 1
            self._stopped.discard(job.id)

    async def stop(self, job_ids: list[str]) -> None:
        """Interrupt these jobs as Ray interrupts a task (``KeyboardInterrupt`` in their code),
        and skip those not begun. Code that ignores it is ended by killing this actor."""
        self._stopped.update(job_ids)
        with self._lock:
            for job_id in job_ids:
                ident = self._running.get(job_id)
                if ident is not None:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt)
                    )

    async def embed(
        self, texts: list[str], model: str | None, normalize: bool, key: Hashable = None
    ) -> Embeddings:
        """A chunk of some job's texts (this pool's jobs spread theirs over its actors);
        ``key`` is the same for a job's chunks, which take turns with other jobs'. A call
        cancelled by its job (``ray.cancel``) is dropped from the model's queue."""
        return await self.host.embed(texts, model, normalize, key)

    def _embed_here(self, texts: list[str], model: str, normalize: bool) -> Embeddings:
        """From an attempt's thread: this actor's models, on its event loop. Interrupted
        (a cancel), it withdraws its request."""
        assert self._loop is not None  # set by run(), which runs every attempt
        call = asyncio.run_coroutine_threadsafe(
            self.host.embed(texts, model, normalize), self._loop
        )
        try:
            while True:
                # Not a wait without end: an interrupt reaches this thread between two.
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    return call.result(WAKE_S)
        except BaseException:
            call.cancel()
            raise

    async def info(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "pid": os.getpid(),
            "running": len(self._running),
            "calls": self.calls,
            "attempts": self.attempts,
            "models": self.host.info(),
        }
