"""The dispatcher actor: admits jobs from the database, runs them as Ray tasks or on pools
of warm actors, and records how they start and end.

This module is the actor and its loop only; each decision lives in a part of its own,
driven by :class:`raypipe.runtime.controller.Controller`: the run table (``runs.py``),
the claim pass (``claim_pass.py``), launching (``launcher.py``), pools
(``pool_manager.py``), stops and timeouts (``stopping.py``), leases (``leases.py``),
schedules (``schedules.py``), recording (``recording.py``) and outcomes
(``outcomes.py``). Ray is reached through the cluster port (``ray_cluster.py``).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import ray

from raypipe.config import Settings
from raypipe.runtime.cluster import SystemClock
from raypipe.runtime.context import log
from raypipe.runtime.controller import Controller
from raypipe.runtime.names import DISPATCHER_ACTOR
from raypipe.runtime.ray_cluster import RayCluster
from raypipe.store import DispatchStore, JobStore, schema_version

#: Longest pause after a failing round (database down, say) before trying again.
MAX_ERROR_BACKOFF_S = 10.0
#: How long a drain waits beyond its grace and the cancel grace for the last outcomes.
DRAIN_MARGIN_S = 30.0


class Dispatcher:
    """Runs inside a named, detached Ray actor that Ray restarts when it dies.

    Its loop lives on a thread of its own (started in ``__init__``, so a restarted
    actor resumes by itself), with one asyncio event loop that wakes on task
    completions, on ``wake()`` calls and on deadlines. Database work is batched:
    one transaction records every attempt that ended since the last round, one
    claims the next jobs.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        # Its own identity: this actor's id (kept when Ray restarts it), then the incarnation.
        # Another dispatcher on the same database, under the same namespace or not, has
        # another actor id, so the start-up sweep of earlier incarnations' leases never
        # takes its live leases.
        actor_id = ray.get_runtime_context().get_actor_id() or "driver"
        owner_prefix = f"{settings.namespace[:100]}/{DISPATCHER_ACTOR}:{actor_id}:"
        self.owner = owner_prefix + uuid.uuid4().hex[:12]
        clock = SystemClock()
        jobs = JobStore.from_url(settings.database_url, clock=clock.wall, wait_for_flush=False)
        self.store = DispatchStore(jobs)
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        cluster = RayCluster(settings, self._loop, self._wake.set)
        self.controller = Controller(settings, self.store, cluster, clock, self.owner, owner_prefix)
        self._last_round = time.monotonic()
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="raypipe-dispatch")
        self._thread.start()

    # -- actor methods -------------------------------------------------------------

    def wake(self) -> None:
        """Look for new work and cancellations now (called on every submission and cancel)."""
        self._loop.call_soon_threadsafe(self._poke)

    def drain(self, grace_s: float) -> dict[str, int]:
        """Stop claiming; let running attempts end within ``grace_s``, then stop the rest
        and queue them again, not counted against their ``max_attempts``. Returns once
        every outcome is recorded (or the wait gives up): how many ran when it began, and
        how many are still running. For a planned stop: ``raypipe down`` then ends the
        actor; one that is not stopped keeps draining (claiming nothing)."""
        runs = self.controller.runs
        running = len(runs)
        self._loop.call_soon_threadsafe(self._begin_drain, grace_s)
        self.controller.drained.wait(grace_s + self.settings.engine.cancel_grace_s + DRAIN_MARGIN_S)
        return {"running_at_start": running, "still_running": len(runs)}

    def info(self) -> dict[str, Any]:
        # Called on the actor's thread while the loop's thread changes what it reads: every
        # collection is copied first (a copy is one step under the GIL, a loop is not).
        controller = self.controller
        return {
            "owner": self.owner,
            "alive": self._thread.is_alive(),
            **controller.info(),
            "seconds_since_round": round(time.monotonic() - self._last_round, 3),
            "last_error": self._last_error,
            "draining": controller.drain_until is not None,
            "counters": dict(controller.counters),
        }

    # -- the loop --------------------------------------------------------------------

    def _poke(self) -> None:
        self.controller.poke()
        self._wake.set()

    def _begin_drain(self, grace_s: float) -> None:
        self.controller.begin_drain(grace_s)
        self._wake.set()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        controller = self.controller
        failures = 0
        schema_checked = False
        while True:
            try:
                if not schema_checked:
                    # Here, not in __init__: Ray does not restart an actor whose constructor
                    # raised, so a restart while the database is away would end it for good.
                    schema_version.check(self.store.engine)
                    schema_checked = True
                began = time.monotonic()
                more = controller.step()
                controller.counters["rounds"] += 1
                controller.counters["round_ms"] += int((time.monotonic() - began) * 1000)
                failures, self._last_error = 0, None
            except Exception as exc:  # the database or Ray is away: degrade, retry, lose nothing
                failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("dispatcher round failed (%d in a row)", failures)
                await asyncio.sleep(min(MAX_ERROR_BACKOFF_S, 0.2 * 2**failures))
                continue
            self._last_round = time.monotonic()
            if not more:
                await self._sleep()
            # While work is in flight, rounds begin at most every dispatch_interval_s, so that
            # each records and claims a batch: per-round costs (locks, commits) are then shared
            # by many jobs. A round that took longer has batched enough: the next begins now.
            spacing = self.settings.engine.dispatch_interval_s if len(controller.runs) else 0.0
            await asyncio.sleep(max(0.0, began + spacing - time.monotonic()))

    async def _sleep(self) -> None:
        timeout = self.controller.wait_s()
        if timeout > 0:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                self.controller.poke()  # the polling fallback also looks for cancellations
        else:
            await asyncio.sleep(0)  # let completion callbacks in before the next round
        self._wake.clear()
