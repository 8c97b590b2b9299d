"""The cluster port: everything the dispatcher asks of Ray, as one protocol, and its clock.

:class:`raypipe.runtime.ray_cluster.RayCluster` implements it on Ray;
``tests/helpers/fake_cluster.py`` implements it in memory, so that a dispatcher round is
a unit test on a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from raypipe.jobs import ClaimedJob, utcnow
from raypipe.registry import ProcessorSpec
from raypipe.runtime.executor import Event
from raypipe.runtime.fanout import PoolHandles

#: Called with each list of events an attempt stream yields.
OnEvents = Callable[[list[Event]], None]
#: Called once when a stream ends: with the error that ended it (None when it ran out), and
#: whether that error says its actor is gone.
OnCallEnd = Callable[[BaseException | None, bool], None]


@dataclass(frozen=True)
class Launch:
    """One call to make: its attempts (one for a task, a bundle for a pool actor), the
    pools they may call into, and where its events go."""

    jobs: list[ClaimedJob]
    pools: PoolHandles
    on_events: OnEvents
    on_end: OnCallEnd


class Clock(Protocol):
    """Time as the dispatcher reads it: ``monotonic`` for intervals, ``wall`` for rows."""

    def monotonic(self) -> float: ...

    def wall(self) -> datetime: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return utcnow()


class Cluster(Protocol):
    """What the dispatcher asks of the cluster that runs its jobs.

    A call (a task, or a pool actor's call) is an opaque handle; its events come back
    through the ``on_events`` and ``on_end`` callbacks given when it was made, on the
    dispatcher's own thread.
    """

    def resources(self) -> dict[str, float]:
        """The cluster's total resources (its capacity)."""
        ...

    def run_task(self, spec: ProcessorSpec, launch: Launch) -> Any:
        """Start one attempt as a task of its own; returns the call."""
        ...

    def call_actor(self, actor: Any, launch: Launch) -> Any:
        """Run a bundle of attempts on a pool actor; returns the call."""
        ...

    def cancel_task(self, call: Any, force: bool) -> None:
        """Interrupt a task's attempt, or (``force``) kill its worker."""
        ...

    def stop_on_actor(self, actor: Any, job_ids: list[str]) -> None:
        """Ask a pool actor to stop these attempts (or drop them before they begin)."""
        ...

    def start_actor(self, pool: str, name: str, options: dict[str, Any]) -> Any:
        """Start an actor of ``pool`` named ``name`` with these Ray options; its handle."""
        ...

    def kill_actor(self, actor: Any) -> None:
        """End an actor; its running calls end with an actor error."""
        ...

    def request_resources(self, bundles: list[dict[str, float]]) -> None:
        """Tell the autoscaler what waits (replacing what was asked before)."""
        ...

    def attempts_ended(self, ends: list[tuple[str, int, str]]) -> None:
        """Tell the progress actor of recorded ends: (job id, attempt, status)."""
        ...

    def attempts_cancelled(self, job_ids: list[str]) -> None:
        """Tell the progress actor which running attempts were cancelled."""
        ...
