"""Bells: fire-and-forget wake-ups of raypipe's polling actors, so a submission or a cancel
is seen at once instead of at the actor's next poll."""

from __future__ import annotations

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
