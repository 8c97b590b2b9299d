"""Connecting to Ray and starting raypipe's detached actors."""

from __future__ import annotations

import logging
from typing import Any

import ray

from raypipe.config import Settings
from raypipe.exceptions import InvalidInput, NotRunning
from raypipe.runtime import head, pools
from raypipe.runtime.dispatcher import Dispatcher
from raypipe.runtime.names import DISPATCHER_ACTOR, PROGRESS_ACTOR, WEBHOOK_ACTOR
from raypipe.runtime.progress import ProgressActor
from raypipe.runtime.webhook_sender import WebhookSender

ActorHandle = Any


def init_ray(settings: Settings, *, start_local: bool = False) -> None:
    """Connect this process to the running Ray cluster, or start one in-process if allowed."""
    if ray.is_initialized():
        return
    if not head.ray_running(settings):
        if not start_local:
            raise NotRunning(
                f"no Ray cluster at {settings.ray_address!r}: start one with `raypipe up`"
            )
        _start_in_process(settings)
        return
    head.use_local_ray_token()
    try:
        ray.init(
            address=settings.ray_address,
            namespace=settings.namespace,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except ConnectionError as exc:
        raise NotRunning(f"could not join Ray at {settings.ray_address!r}: {exc}") from exc


def _start_in_process(settings: Settings) -> None:
    """A Ray of this process's own, which ends with it (notebooks without `raypipe up`)."""
    ray.init(
        address="local",
        namespace=settings.namespace,
        num_cpus=settings.ray_num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=False,
    )


def start_actors(settings: Settings) -> tuple[ActorHandle, ActorHandle]:
    """Create (or find) the progress actor, the dispatcher and the webhook sender, and wait
    until all answer; returns the dispatcher and the progress actor. Refuses pool settings
    the cluster cannot hold."""
    problems = pools.unsatisfiable(settings, ray.cluster_resources())
    if problems:
        raise InvalidInput("; ".join(problems))
    common = {
        "namespace": settings.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "num_cpus": 0,
    }
    progress = (
        ray.remote(ProgressActor)
        .options(name=PROGRESS_ACTOR, max_task_retries=-1, **common)
        .remote(settings)
    )
    dispatcher = (
        ray.remote(Dispatcher)
        .options(name=DISPATCHER_ACTOR, max_task_retries=-1, **common)
        .remote(settings)
    )
    webhooks = (
        ray.remote(WebhookSender)
        .options(name=WEBHOOK_ACTOR, max_task_retries=-1, **common)
        .remote(settings)
    )
    ray.get(
        [progress.stats.remote(), dispatcher.info.remote(), webhooks.stats.remote()], timeout=120
    )
    return dispatcher, progress


def find_actor(settings: Settings, name: str) -> ActorHandle | None:
    try:
        return ray.get_actor(name, namespace=settings.namespace)
    except ValueError:
        return None


def stop_actors(settings: Settings) -> list[str]:
    """Kill raypipe's actors for good (the pools' actors end with the dispatcher that owns
    them); running attempts are rescued when it comes back."""
    stopped = []
    for name in (DISPATCHER_ACTOR, PROGRESS_ACTOR, WEBHOOK_ACTOR):
        actor = find_actor(settings, name)
        if actor is not None:
            ray.kill(actor, no_restart=True)
            stopped.append(name)
    return stopped


class ActorBell:
    """Wakes one of raypipe's polling actors, fire-and-forget; a no-op without Ray (the
    actor polls anyway). Keeps the actor's handle, and looks it up again after a failed call."""

    def __init__(self, settings: Settings, name: str):
        self._settings = settings
        self._name = name
        self._actor: ActorHandle | None = None

    def ring(self) -> None:
        if not ray.is_initialized():
            return
        if self._actor is None:
            self._actor = find_actor(self._settings, self._name)
        if self._actor is not None:
            try:
                self._actor.wake.remote()
            except ray.exceptions.RayError:
                self._actor = None


class DispatcherBell(ActorBell):
    """Wakes the dispatcher (on every submission and cancel)."""

    def __init__(self, settings: Settings):
        super().__init__(settings, DISPATCHER_ACTOR)
