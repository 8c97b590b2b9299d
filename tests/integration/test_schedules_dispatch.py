"""Schedules under the real dispatcher: configuration synced at start, a due instant fired
once, and not again after the dispatcher restarts."""

from __future__ import annotations

from datetime import timedelta

import ray
import sqlalchemy as sa

from raypipe.config import ScheduleConfig
from raypipe.direct import DirectClient
from raypipe.jobs import JobStatus, utcnow
from raypipe.runtime import actors
from raypipe.store.schedules import ScheduleStore
from raypipe.store.tables import schedules
from tests.conftest import wait_for
from tests.integration.conftest import dispatcher


def test_a_due_schedule_fires_once_across_a_restart(raypipe: DirectClient) -> None:
    store = ScheduleStore(raypipe.store.engine)
    # Daily at this very minute: make today's instant, just past, the next one due.
    due = utcnow().replace(second=0, microsecond=0)
    made = store.create(
        raypipe.settings,
        tenant="default",
        name="daily",
        cron=f"{due.minute} {due.hour} * * *",
        spec={"type": "test.echo", "payload": {"result": {"scheduled": True}}},
        admin=False,
    )
    assert made.next_fire_at == due + timedelta(days=1)
    with raypipe.store.engine.begin() as conn:
        conn.execute(sa.update(schedules).where(schedules.c.id == made.id).values(next_fire_at=due))
    raypipe.wake()

    def fired() -> list:
        return raypipe.store.list(tag="schedule:daily", limit=10)

    [job] = wait_for(fired, what="the schedule to fire")
    assert raypipe.get(job.id).result(timeout=60) == {"scheduled": True}
    assert job.idempotency_key == f"schedule:{made.id}:{due.isoformat().replace('+00:00', 'Z')}"
    ray.kill(dispatcher(raypipe.settings), no_restart=False)
    wait_for(
        lambda: (
            ray.get(dispatcher(raypipe.settings).info.remote())["counters"].get("rounds", 0) > 3
        ),
        what="the restarted dispatcher to run",
    )
    later = store.get(made.id)
    assert later.fires == 1 and later.next_fire_at == due + timedelta(days=1)
    assert [j.id for j in fired() if j.status is JobStatus.COMPLETED] == [job.id]


def test_configured_schedules_are_synced_when_the_dispatcher_starts(
    raypipe: DirectClient,
) -> None:
    settings = raypipe.settings.model_copy(
        update={
            "maintenance_schedules": True,
            "schedules": {
                "nightly": ScheduleConfig(
                    cron="0 2 * * *", timezone="Europe/Paris", job={"type": "noop"}
                )
            },
        }
    )
    actors.stop_actors(raypipe.settings)
    actors.start_actors(settings)
    store = ScheduleStore(raypipe.store.engine)
    names = wait_for(
        lambda: (
            {s.name for s in store.list()} >= {"nightly", "maintenance.prune"}
            and {s.name: s for s in store.list()}
        ),
        what="the configuration to be synced",
    )
    nightly = names["nightly"]
    assert nightly.source == "config" and nightly.timezone == "Europe/Paris"
    assert nightly.next_fire_at is not None and nightly.next_fire_at > utcnow()
    assert {"maintenance.orphans", "maintenance.stuck"} <= set(names)
