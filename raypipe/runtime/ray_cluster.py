"""The cluster port on Ray: tasks, pool actors, cancellations, the autoscaler and the
progress actor, with each call's events consumed on the dispatcher's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import ray
from ray.autoscaler.sdk import request_resources
from ray.exceptions import RayActorError

from raypipe.config import Settings
from raypipe.registry import ProcessorSpec
from raypipe.runtime.cluster import Launch
from raypipe.runtime.executor import run_task
from raypipe.runtime.names import PROGRESS_ACTOR
from raypipe.runtime.pool_worker import PoolWorker


class RayCluster:
    """:class:`raypipe.runtime.cluster.Cluster` on the Ray this process is connected to.

    ``loop`` is the dispatcher's event loop (where streams are consumed and callbacks
    run); ``notify`` is called after each batch of events, to wake the dispatcher."""

    def __init__(
        self, settings: Settings, loop: asyncio.AbstractEventLoop, notify: Callable[[], None]
    ):
        self.settings = settings
        self._settings_ref = ray.put(settings)
        self._loop = loop
        self._notify = notify
        self._remotes: dict[str, Any] = {}
        self._consumers: set[asyncio.Task[None]] = set()
        self._progress: ray.actor.ActorHandle | None = None

    def resources(self) -> dict[str, float]:
        return {key: float(amount) for key, amount in ray.cluster_resources().items()}

    def run_task(self, spec: ProcessorSpec, launch: Launch) -> Any:
        remote = self._remotes.get(spec.type)
        if remote is None:
            # raypipe owns retries (with backoff); Ray's own would double them.
            remote = ray.remote(run_task).options(max_retries=0, **spec.ray_options())
            self._remotes[spec.type] = remote
        [job] = launch.jobs
        return self._consume(remote.remote(self._settings_ref, job, launch.pools), launch)

    def call_actor(self, actor: Any, launch: Launch) -> Any:
        return self._consume(actor.run.remote(launch.jobs, launch.pools), launch)

    def cancel_task(self, call: Any, force: bool) -> None:
        ray.cancel(call, force=force)

    def stop_on_actor(self, actor: Any, job_ids: list[str]) -> None:
        actor.stop.remote(job_ids)

    def start_actor(self, pool: str, name: str, options: dict[str, Any]) -> Any:
        return ray.remote(PoolWorker).options(name=name, **options).remote(self._settings_ref, pool)

    def kill_actor(self, actor: Any) -> None:
        ray.kill(actor, no_restart=True)

    def request_resources(self, bundles: list[dict[str, float]]) -> None:
        request_resources(bundles=bundles)

    def attempts_ended(self, ends: list[tuple[str, int, str]]) -> None:
        progress = self._progress_actor()
        if progress is not None:
            progress.finished.remote(ends)

    def attempts_cancelled(self, job_ids: list[str]) -> None:
        progress = self._progress_actor()
        if progress is not None:
            progress.cancel.remote(job_ids)

    def _progress_actor(self) -> ray.actor.ActorHandle | None:
        if self._progress is None:
            try:
                self._progress = ray.get_actor(PROGRESS_ACTOR, namespace=self.settings.namespace)
            except ValueError:
                return None
        return self._progress

    def _consume(self, stream: Any, launch: Launch) -> Any:
        consumer = self._loop.create_task(self._events(stream, launch))
        self._consumers.add(consumer)
        consumer.add_done_callback(self._consumers.discard)
        return stream

    async def _events(self, stream: Any, launch: Launch) -> None:
        """Take a call's events as they come, then say how it ended."""
        error: BaseException | None = None
        try:
            async for ref in stream:
                launch.on_events(await ref)
                self._notify()
        except Exception as exc:  # the task or actor failed: its jobs' outcomes say how
            error = exc
        launch.on_end(error, isinstance(error, RayActorError))
        self._notify()
