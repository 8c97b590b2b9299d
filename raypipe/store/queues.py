"""Queues' pauses: a paused queue accepts submissions and claims nothing; its running jobs
finish. A pause is a row, so it outlives restarts of the dispatcher, Ray and the API."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from raypipe.config import Settings
from raypipe.exceptions import NotFound
from raypipe.jobs import iso, utcnow
from raypipe.store.engine import read_only
from raypipe.store.jobs import QUIET, Clock
from raypipe.store.tables import queue_pauses


class QueueStore:
    """Pauses and resumes the configured queues."""

    def __init__(self, engine: Engine, clock: Clock = utcnow):
        self.engine = engine
        self.clock = clock

    def pause(self, settings: Settings, name: str) -> datetime:
        """Pause ``name`` (again: it stays paused since the first time); when it was paused."""
        _check_configured(settings, name)
        with self.engine.begin() as conn:
            since = paused(conn).get(name)
            if since is None:
                since = self.clock()
                conn.execute(queue_pauses.insert(), {"queue": name, "paused_at": since})
        return since

    def resume(self, settings: Settings, name: str) -> None:
        """Let ``name`` claim again (a queue that is not paused stays as it is)."""
        _check_configured(settings, name)
        with self.engine.begin() as conn:
            conn.execute(sa.delete(queue_pauses).where(queue_pauses.c.queue == name))

    def paused(self) -> dict[str, datetime]:
        """Each paused queue, with when it was paused."""
        with read_only(self.engine) as conn:
            return paused(conn)

    def overview(
        self, settings: Settings, stats: dict[str, dict[str, Any]], names: Iterable[str]
    ) -> list[dict[str, Any]]:
        """Each named queue as ``GET /v1/queues`` shows it, by name: its settings, whether it
        is paused, and its figures from ``stats`` (``JobStore.queue_stats``)."""
        pauses = self.paused()
        return [
            {
                "name": name,
                "concurrency": settings.queues[name].concurrency,
                "priority": settings.queues[name].priority,
                "paused": name in pauses,
                "paused_at": iso(pauses.get(name)),
                "admin_only": settings.queues[name].admin_only,
                **QUIET,
                **stats.get(name, {}),
            }
            for name in sorted(names)
        ]


def paused(conn: Connection) -> dict[str, datetime]:
    """The paused queues inside ``conn``'s transaction (a claim reads them in its own)."""
    return {row.queue: row.paused_at for row in conn.execute(sa.select(queue_pauses))}


def _check_configured(settings: Settings, name: str) -> None:
    if name not in settings.queues:
        known = ", ".join(sorted(settings.queues))
        raise NotFound(f"no queue {name[:200]!r}: the configured queues are {known}")
