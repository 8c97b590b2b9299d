"""An in-memory cluster and a clock that only moves when told: the dispatcher's port to Ray
(:class:`raypipe.runtime.cluster.Cluster`) without Ray, so that its rounds are unit tests.

Nothing runs by itself: a test says when an attempt starts (:meth:`FakeCluster.start`),
ends (:meth:`FakeCluster.finish`) or crashes (:meth:`FakeCluster.crash`), and reads what
the dispatcher asked (launches, cancellations, kills, autoscaler requests).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ray.exceptions import RayActorError

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.jobs import ClaimedJob, JobRecord, utcnow
from raypipe.registry import ProcessorSpec
from raypipe.runtime.cluster import Launch, OnCallEnd, OnEvents
from raypipe.runtime.controller import Controller
from raypipe.runtime.executor import AttemptResult, Finished, Started
from raypipe.store import DispatchStore, JobStore


class FakeClock:
    """Monotonic and wall time that move together, by :meth:`advance` only."""

    def __init__(self, wall: datetime):
        self._monotonic = 1000.0
        self._wall = wall

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> datetime:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._wall += timedelta(seconds=seconds)


@dataclass(eq=False)
class FakeActor:
    pool: str
    name: str
    options: dict[str, Any]
    alive: bool = True
    #: Job ids the dispatcher asked it to stop.
    stop_requests: list[str] = field(default_factory=list)


@dataclass(eq=False)
class FakeCall:
    """A task (``actor`` None) or a pool call, and what became of it."""

    jobs: list[ClaimedJob]
    on_events: OnEvents
    on_end: OnCallEnd
    actor: FakeActor | None = None
    #: ``force`` of each cancellation asked (tasks only).
    cancels: list[bool] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    over: bool = False

    def job(self, job_id: str) -> ClaimedJob:
        return next(job for job in self.jobs if job.id == job_id)

    def end(self, error: BaseException | None = None, actor_lost: bool = False) -> None:
        if not self.over:
            self.over = True
            self.on_end(error, actor_lost)


class FakeCluster:
    """:class:`raypipe.runtime.cluster.Cluster` in memory."""

    def __init__(self, clock: FakeClock, capacity: dict[str, float]):
        self.clock = clock
        self.capacity = dict(capacity)
        self.calls: list[FakeCall] = []
        self.actors: list[FakeActor] = []
        #: Every autoscaler request, in order.
        self.requests: list[list[dict[str, float]]] = []
        self.ended: list[tuple[str, int, str]] = []
        self.cancelled: list[str] = []

    # -- the port ------------------------------------------------------------------

    def resources(self) -> dict[str, float]:
        return dict(self.capacity)

    def run_task(self, spec: ProcessorSpec, launch: Launch) -> Any:
        return self.call_actor(None, launch)

    def call_actor(self, actor: FakeActor | None, launch: Launch) -> Any:
        call = FakeCall(list(launch.jobs), launch.on_events, launch.on_end, actor)
        self.calls.append(call)
        return call

    def cancel_task(self, call: Any, force: bool) -> None:
        call.cancels.append(force)
        if force:  # the worker is killed: its stream ends with an error
            call.end(RuntimeError("the worker was killed"))

    def stop_on_actor(self, actor: Any, job_ids: list[str]) -> None:
        actor.stop_requests.extend(job_ids)

    def start_actor(self, pool: str, name: str, options: dict[str, Any]) -> Any:
        actor = FakeActor(pool, name, options)
        self.actors.append(actor)
        return actor

    def kill_actor(self, actor: Any) -> None:
        actor.alive = False
        for call in self.calls:
            if call.actor is actor:
                call.end(RayActorError(), actor_lost=True)

    def request_resources(self, bundles: list[dict[str, float]]) -> None:
        self.requests.append(bundles)

    def attempts_ended(self, ends: list[tuple[str, int, str]]) -> None:
        self.ended.extend(ends)

    def attempts_cancelled(self, job_ids: list[str]) -> None:
        self.cancelled.extend(job_ids)

    # -- what a test does ------------------------------------------------------------

    def call_of(self, job_id: str) -> FakeCall:
        """The latest call that holds this job."""
        return next(call for call in reversed(self.calls) if any(j.id == job_id for j in call.jobs))

    def launched(self) -> list[str]:
        """Job ids in the order they were handed to the cluster."""
        return [job.id for call in self.calls for job in call.jobs]

    def live_actors(self, pool: str) -> list[FakeActor]:
        return [actor for actor in self.actors if actor.pool == pool and actor.alive]

    def start(self, *job_ids: str) -> None:
        """These attempts' workers began."""
        for job_id in job_ids:
            call = self.call_of(job_id)
            job = call.job(job_id)
            call.on_events([Started(job.id, job.attempt, self.clock.wall())])

    def finish(self, job_id: str, result: AttemptResult | None = None) -> None:
        """The attempt ended (done, by default); its call ends with its last job."""
        call = self.call_of(job_id)
        job = call.job(job_id)
        call.on_events([Finished(job.id, job.attempt, result or AttemptResult(ok=True))])
        call.finished.add(job_id)
        if call.finished >= {j.id for j in call.jobs}:
            call.end()

    def crash(self, job_id: str, error: BaseException) -> None:
        """The call holding this job failed with ``error``."""
        self.call_of(job_id).end(error)


class Rig:
    """A dispatcher's controller on a fake cluster and clock, over a real database: the
    client submits and cancels, :meth:`round` runs one dispatcher round."""

    OWNER_PREFIX = "test/raypipe-dispatcher:actor:"

    def __init__(self, settings: Settings, capacity: dict[str, float]):
        self.settings = settings
        # Ahead of the client's real clock: what it submits is due at once.
        self.clock = FakeClock(utcnow() + timedelta(days=1))
        self.cluster = FakeCluster(self.clock, capacity)
        self.client = DirectClient(settings)
        jobs = JobStore.from_url(settings.database_url, clock=self.clock.wall, wait_for_flush=False)
        self.store = DispatchStore(jobs)
        self.controller = Controller(
            settings,
            self.store,
            self.cluster,
            self.clock,
            owner=self.OWNER_PREFIX + "now",
            owner_prefix=self.OWNER_PREFIX,
        )

    @property
    def counters(self) -> Counter[str]:
        return self.controller.counters

    def submit(self, job_type: str, payload: dict[str, Any] | None = None, **options: Any) -> str:
        return self.client.submit(job_type, payload or {}, **options).id

    def gates(self, count: int, **options: Any) -> list[str]:
        """Jobs of ``test.gate`` (a task of 1 CPU)."""
        return [self.submit("test.gate", {"folder": "-"}, **options) for _ in range(count)]

    def job(self, job_id: str) -> JobRecord:
        return self.client.get_job(job_id)

    def round(self, after_s: float = 0.0) -> bool:
        """One dispatcher round, ``after_s`` seconds after the last."""
        self.clock.advance(after_s)
        return self.controller.step()

    def close(self) -> None:
        self.client.close()
        self.store.jobs.dispose()
