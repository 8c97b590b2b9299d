"""Names of raypipe's detached actors, and finding one by name in the settings' namespace."""

from __future__ import annotations

import ray
from ray.actor import ActorHandle

from raypipe.config import Settings

DISPATCHER_ACTOR = "raypipe-dispatcher"
PROGRESS_ACTOR = "raypipe-progress"
WEBHOOK_ACTOR = "raypipe-webhooks"


def find_actor(settings: Settings, name: str) -> ActorHandle | None:
    """The running actor called ``name``, or None."""
    try:
        return ray.get_actor(name, namespace=settings.namespace)
    except ValueError:
        return None
