"""An actor of a pool: runs attempts beside what it keeps warm, and streams how they go."""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from raypipe import registry
from raypipe.config import Settings
from raypipe.jobs import ClaimedJob, ErrorInfo, utcnow
from raypipe.retry import ErrorKind
from raypipe.runtime.embedder import ModelHost
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
    """Runs the attempts the dispatcher sends, ``concurrency`` calls at once, each call a
    bundle of jobs run one after another; every call streams its jobs' starts and ends.

    An async actor: stop requests, embedding calls (of its own jobs, spread over the pool,
    and of other jobs) and new calls are taken while attempts run on worker threads.
    """

    def __init__(self, settings: Settings, pool: str):
        registry.load(settings.processor_modules)
        config = settings.pools[pool]
        self.settings = settings
        self.pool = pool
        self.host = ModelHost(settings)
        self._threads = ThreadPoolExecutor(config.concurrency, thread_name_prefix=f"pool-{pool}")
        self._slots = asyncio.Semaphore(config.concurrency)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._stopped: set[str] = set()
        self.attempts = 0

    async def run(self, jobs: list[ClaimedJob], pools: PoolHandles) -> AsyncIterator[list[Event]]:
        """Run ``jobs`` in order; yields their events, a batch at most every ``FLUSH_S``.

        ``pools`` has the actors of this pool and of the pools its jobs use, as now.
        """
        loop = self._loop = asyncio.get_running_loop()
        local = self._embed_here if self.pool == EMBEDDINGS_POOL else None
        runner = RayRunner(self.settings, pools, local)
        async with self._slots:
            events: list[Event] = []
            due = time.monotonic()
            for job in jobs:
                if job.id in self._stopped:
                    self._stopped.discard(job.id)
                    events.append(Finished(job.id, job.attempt, INTERRUPTED))
                    continue
                events.append(Started(job.id, job.attempt, utcnow()))
                if time.monotonic() >= due:  # the last send is old: say so at once
                    yield events
                    events, due = [], time.monotonic() + FLUSH_S
                result = await loop.run_in_executor(self._threads, self._attempt, job, runner)
                events.append(Finished(job.id, job.attempt, result))
                if time.monotonic() >= due:
                    yield events
                    events, due = [], time.monotonic() + FLUSH_S
            if events:
                yield events

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
        self, texts: list[str], model: str | None, normalize: bool
    ) -> tuple[np.ndarray, str]:
        """A chunk of some job's texts (this pool's jobs spread theirs over its actors)."""
        return await self.host.embed(texts, model, normalize)

    def _embed_here(self, texts: list[str], model: str, normalize: bool) -> tuple[np.ndarray, str]:
        """From an attempt's thread: this actor's models, on its event loop."""
        assert self._loop is not None  # set by run(), which runs every attempt
        call = self.host.embed(texts, model, normalize)
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    async def info(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "running": len(self._running),
            "attempts": self.attempts,
            "models": self.host.info(),
        }
