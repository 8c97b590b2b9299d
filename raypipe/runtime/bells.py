"""Bells: fire-and-forget wake-ups of raypipe's polling actors, so a submission or a cancel
is seen at once instead of at the actor's next poll."""

from __future__ import annotations

from typing import Any

import ray
from ray.actor import ActorHandle

from raypipe.config import Settings
from raypipe.runtime.names import DISPATCHER_ACTOR, find_actor


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


def wake_and_wait(settings: Settings, timeout_s: float = 5.0) -> bool:
    """Wake the dispatcher and wait until it heard: a short-lived process (a CLI command)
    may end before a fire-and-forget call leaves it. Whether a dispatcher runs (a busy one
    that has not answered within ``timeout_s`` runs, and polls anyway)."""
    dispatcher = find_actor(settings, DISPATCHER_ACTOR)
    if dispatcher is None:
        return False
    try:
        ray.get(dispatcher.wake.remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        return True
    except ray.exceptions.RayError:
        return False
    return True


def dispatcher_info(settings: Settings, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """What the dispatcher says of itself (``Dispatcher.info``), or None when none runs,
    Ray is not up here, or it does not answer within ``timeout_s`` (a page must not hang
    on a busy dispatcher)."""
    if not ray.is_initialized():
        return None
    dispatcher = find_actor(settings, DISPATCHER_ACTOR)
    if dispatcher is None:
        return None
    try:
        info: Any = ray.get(dispatcher.info.remote(), timeout=timeout_s)
    except ray.exceptions.RayError:
        return None
    return dict(info)
