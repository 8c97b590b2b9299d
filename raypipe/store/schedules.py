"""All SQL of cron schedules: managing them, syncing the configured ones, and firing.

An instant fires at most once: the transaction that inserts its job (idempotency key
``schedule:<id>:<instant>``) also moves ``next_fire_at`` past it, under a guard on the
value it read, with the due rows locked (``FOR UPDATE SKIP LOCKED``) on PostgreSQL and
the database locked (``BEGIN IMMEDIATE``) on SQLite. However many dispatchers race or
restart, a second look at the same instant finds it no longer due.
"""

from __future__ import annotations

import builtins
import logging
import uuid
from collections.abc import Sequence
from dataclasses import fields, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from raypipe import registry
from raypipe.config import (
    MAINTENANCE_SCHEDULES,
    Settings,
)
from raypipe.cron import (
    Schedule,
    SyncReport,
    check_schedule,
    configured_conflict,
    configured_row,
    due_fires,
    fire_spec,
    next_fire_of,
    pick,
)
from raypipe.exceptions import Conflict, InvalidInput, NotFound
from raypipe.jobs import utcnow
from raypipe.store import access
from raypipe.store.engine import read_only
from raypipe.store.jobs import Clock, JobStore
from raypipe.store.tables import UTCDateTime, schedules
from raypipe.submission import prepare
from raypipe.tenants import check_tenant

log = logging.getLogger(__name__)

#: pg_advisory_xact_lock key that serialises syncs of the configured schedules.
SYNC_LOCK_KEY = 0x7261797069706501
#: Due schedules handled per transaction; the rest are due still, found right after.
FIRE_BATCH = 200


class ScheduleStore:
    """Reads and writes schedules; fires the due ones into jobs."""

    def __init__(self, engine: Engine, clock: Clock = utcnow):
        self.engine = engine
        self.clock = clock
        self.dialect = engine.dialect.name
        self.jobs = JobStore(engine, clock)

    # -- management ---------------------------------------------------------------------

    def create(
        self,
        settings: Settings,
        *,
        tenant: str,
        name: str,
        cron: str,
        spec: dict[str, Any],
        timezone: str = "UTC",
        missed: str = "run_once",
        enabled: bool = True,
        source: str = "api",
        admin: bool,
    ) -> Schedule:
        """A new schedule, validated whole (a spec that could not be submitted is refused
        now, not at its first fire); a name the tenant uses already is a :class:`Conflict`.

        ``admin``: whether its maker may submit admin-only job types (fires later may).
        """
        now = self.clock()
        row = {
            "id": str(uuid.uuid4()),
            "tenant": check_tenant(tenant),
            "name": name,
            "cron": cron,
            "timezone": timezone,
            "spec": spec,
            "missed": missed,
            "enabled": enabled,
            "source": source,
            "last_fire_at": None,
            "last_job_id": None,
            "fires": 0,
            "created_at": now,
            "updated_at": now,
        }
        check_schedule(row, settings, now, admin)
        row["next_fire_at"] = next_fire_of(row, now)
        try:
            with self.engine.begin() as conn:
                self._check_quota(conn, tenant, settings.limits.max_schedules_per_tenant)
                conn.execute(schedules.insert(), row)
        except sa.exc.IntegrityError:
            raise Conflict(f"tenant {tenant!r} already has a schedule named {name!r}") from None
        return _schedule(row)

    @staticmethod
    def _check_quota(conn: Connection, tenant: str, most: int) -> None:
        """Each schedule can fire many jobs a round: a tenant's count of them is bounded
        (configured schedules are the operator's and do not count)."""
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(schedules)
            .where(schedules.c.tenant == tenant, schedules.c.source != "config")
        ).scalar_one()
        if count >= most:
            raise Conflict(
                f"tenant {tenant!r} has {count} schedules, the most allowed"
                " (RAYPIPE_MAX_SCHEDULES_PER_TENANT): delete one first"
            )

    def list(self, tenant: str | None = None) -> builtins.list[Schedule]:
        query = sa.select(schedules).order_by(schedules.c.tenant, schedules.c.name)
        if tenant is not None:
            query = query.where(schedules.c.tenant == tenant)
        with read_only(self.engine) as conn:
            return [_schedule(row._mapping) for row in conn.execute(query)]

    def get(self, schedule_id: str, tenant: str | None = None) -> Schedule:
        """The schedule, or :class:`NotFound` (also for another tenant's)."""
        with read_only(self.engine) as conn:
            return self._one(conn, schedule_id, tenant)

    def find(self, name_or_id: str, tenant: str | None = None) -> Schedule:
        """The schedule with this id, or else this name (for the CLI)."""
        query = sa.select(schedules).where(
            sa.or_(schedules.c.id == name_or_id, schedules.c.name == name_or_id)
        )
        if tenant is not None:
            query = query.where(schedules.c.tenant == tenant)
        with read_only(self.engine) as conn:
            return pick([_schedule(row._mapping) for row in conn.execute(query)], name_or_id)

    def update(
        self,
        schedule_id: str,
        tenant: str | None,
        settings: Settings,
        *,
        enabled: bool | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        spec: dict[str, Any] | None = None,
        missed: str | None = None,
        admin: bool,
    ) -> Schedule:
        """Change a schedule; None leaves a field as it is (``admin`` as in :meth:`create`).

        A configured schedule can only be paused and resumed here. A schedule enabled
        again, or given a new cron or time zone, counts from now: what it missed while
        paused is not fired.
        """
        now = self.clock()
        with self.engine.begin() as conn:
            current = self._one(conn, schedule_id, tenant, lock=True)
            edits: dict[str, Any] = {
                key: value
                for key, value in (
                    ("cron", cron),
                    ("timezone", timezone),
                    ("spec", spec),
                    ("missed", missed),
                )
                if value is not None and value != getattr(current, key)
            }
            if edits and current.source == "config":
                raise configured_conflict(current, "edited")
            changed = replace(
                current, **edits, enabled=current.enabled if enabled is None else enabled
            )
            # Resuming validates again (a processor may be gone); without admin rights,
            # no change at all to a schedule of a job type only admins may submit.
            if edits or (changed.enabled and not current.enabled) or not admin:
                check_schedule(vars(changed), settings, now, admin)
            if not changed.enabled:
                next_fire_at = None
            elif not current.enabled or {"cron", "timezone"} & edits.keys():
                next_fire_at = next_fire_of(vars(changed), now)
            else:
                next_fire_at = current.next_fire_at
            changed = replace(changed, next_fire_at=next_fire_at, updated_at=now)
            conn.execute(
                sa.update(schedules)
                .where(schedules.c.id == current.id)
                .values(
                    cron=changed.cron,
                    timezone=changed.timezone,
                    spec=changed.spec,
                    missed=changed.missed,
                    enabled=changed.enabled,
                    next_fire_at=changed.next_fire_at,
                    updated_at=now,
                )
            )
        return changed

    def delete(self, schedule_id: str, tenant: str | None = None) -> Schedule:
        """Remove an API-made schedule (its jobs stay); returns what was removed."""
        with self.engine.begin() as conn:
            current = self._one(conn, schedule_id, tenant, lock=True)
            if current.source == "config":
                raise configured_conflict(current, "deleted")
            conn.execute(sa.delete(schedules).where(schedules.c.id == current.id))
        return current

    # -- configuration --------------------------------------------------------------------

    def sync(self, settings: Settings) -> SyncReport:
        """Make the configured schedules (built-in maintenance, when on, then
        ``settings.schedules``, which may redefine them) what the database holds.

        Schedules made with the API are left alone. A configured schedule keeps its next
        fire time unless its cron or time zone changed. ``enabled = false`` in the
        configuration disables it; ``enabled = true`` leaves a pause made with the API or
        CLI in place (reported in ``paused``). Safe to run from several dispatchers at once.
        """
        now = self.clock()
        configured = {
            **(MAINTENANCE_SCHEDULES if settings.maintenance.schedules else {}),
            **settings.schedules,
        }
        report = SyncReport()
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SYNC_LOCK_KEY)))
            query = sa.select(schedules).where(
                sa.or_(schedules.c.source == "config", schedules.c.name.in_(list(configured)))
            )
            stored = {
                (row.tenant, row.name): _schedule(row._mapping) for row in conn.execute(query)
            }
            inserts: builtins.list[dict[str, Any]] = []
            for name, config in configured.items():
                current = stored.pop((config.tenant, name), None)
                try:
                    row = configured_row(current, name, config, settings, now, report)
                except InvalidInput as exc:
                    report.problems.extend(
                        f"{'.'.join(map(str, ['schedules', name, *d['loc']]))}: {d['msg']}"
                        for d in exc.details
                    )
                    continue
                if row is None:
                    continue
                if current is None:
                    inserts.append(row)
                    report.created.append(name)
                else:
                    conn.execute(
                        sa.update(schedules)
                        .where(schedules.c.id == current.id)
                        .values({k: v for k, v in row.items() if k != "id"})
                    )
                    report.updated.append(name)
            if inserts:
                conn.execute(schedules.insert(), inserts)
            gone = [s for s in stored.values() if s.source == "config"]
            if gone:
                conn.execute(sa.delete(schedules).where(schedules.c.id.in_([s.id for s in gone])))
                report.deleted.extend(s.name for s in gone)
        return report

    # -- firing -----------------------------------------------------------------------------

    def fire_due(self, settings: Settings, limit: int = FIRE_BATCH) -> builtins.list[str]:
        """Submit the jobs of every schedule due now; returns their ids.

        One transaction inserts the jobs and moves each schedule past what it fired
        (its missed-fire policy decides what that is). A schedule whose cron or job spec
        no longer validates (a processor was removed, say) is disabled and logged, and
        the others fire as usual; resuming it validates it again.
        """
        now = self.clock()
        due_at = self.next_fire_at()
        if due_at is None or due_at > now:
            return []  # the common case costs one read, not a write lock
        registry.load(settings.processor_modules)
        query = (
            sa.select(schedules)
            .where(schedules.c.enabled.is_(True), schedules.c.next_fire_at <= now)
            .order_by(schedules.c.next_fire_at)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            due = [_schedule(row._mapping) for row in conn.execute(query)]
            moves: builtins.list[dict[str, Any]] = []
            job_rows: builtins.list[dict[str, Any]] = []
            # Each schedule that fires: its instants, where it moves to, their rows.
            fired: builtins.list[
                tuple[Schedule, builtins.list[datetime], datetime, builtins.list[dict[str, Any]]]
            ] = []
            for schedule in due:
                assert schedule.next_fire_at is not None  # the query reads due ones only
                try:
                    instants, following = due_fires(
                        schedule.cron,
                        schedule.timezone,
                        schedule.next_fire_at,
                        now,
                        schedule.missed,
                    )
                    specs = [
                        fire_spec(schedule.spec, schedule.id, schedule.name, instant)
                        for instant in instants
                    ]
                    rows = prepare(specs, settings, now, schedule.tenant) if specs else []
                    rows = _within_limit(conn, schedule, rows, settings, now)
                except InvalidInput as exc:
                    log.warning(
                        "schedule %r of tenant %r (%s) is disabled: %s",
                        schedule.name,
                        schedule.tenant,
                        schedule.id,
                        exc.message,
                    )
                    moves.append(_moved(schedule, None, enabled=False))
                    continue
                job_rows.extend(rows)
                fired.append((schedule, instants, following, rows))
            # A fire whose unique slot a job holds makes none: not counted, not a last job.
            made = {row["id"] for row in self.jobs.add(conn, job_rows, now)} if job_rows else set()
            for schedule, instants, following, rows in fired:
                written = [row for row in rows if row["id"] in made]
                moves.append(_moved(schedule, following, instants, written))
            if moves:
                self._advance(conn, moves, now)
        return [row["id"] for row in job_rows if row["id"] in made]

    def _advance(
        self, conn: Connection, moves: builtins.list[dict[str, Any]], now: datetime
    ) -> None:
        """Move each schedule past what it fired, guarded on the due time it was read with:
        if any moved meanwhile, the whole transaction (jobs included) rolls back."""
        statement = (
            sa.update(schedules)
            .where(
                schedules.c.id == sa.bindparam("b_id"),
                schedules.c.next_fire_at == sa.bindparam("b_due"),
            )
            .values(
                next_fire_at=sa.bindparam("b_next", type_=UTCDateTime()),
                enabled=sa.bindparam("b_enabled"),
                last_fire_at=sa.func.coalesce(
                    sa.bindparam("b_last_fire", type_=UTCDateTime()), schedules.c.last_fire_at
                ),
                last_job_id=sa.func.coalesce(sa.bindparam("b_last_job"), schedules.c.last_job_id),
                fires=schedules.c.fires + sa.bindparam("b_count"),
                updated_at=now,
            )
        )
        moved = conn.execute(statement, moves).rowcount
        if moved != len(moves):
            raise Conflict("schedules moved while firing; nothing fired, the next round retries")

    def next_fire_at(self) -> datetime | None:
        """When the earliest enabled schedule is due (for the dispatcher's sleep)."""
        query = sa.select(sa.func.min(schedules.c.next_fire_at)).where(
            schedules.c.enabled.is_(True)
        )
        with read_only(self.engine) as conn:
            return conn.execute(query).scalar()

    # -- helpers -----------------------------------------------------------------------------

    def _one(
        self, conn: Connection, schedule_id: str, tenant: str | None, lock: bool = False
    ) -> Schedule:
        missing = NotFound(f"schedule {schedule_id[:40]!r} not found")
        if len(schedule_id) > 36 or "\x00" in schedule_id:
            raise missing
        query = sa.select(schedules).where(schedules.c.id == schedule_id)
        if tenant is not None:
            query = query.where(schedules.c.tenant == tenant)
        if lock and self.dialect == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise missing
        return _schedule(row._mapping)


def _within_limit(
    conn: Connection,
    schedule: Schedule,
    rows: list[dict[str, Any]],
    settings: Settings,
    now: datetime,
) -> list[dict[str, Any]]:
    """The rows of a tenant's schedule that its submit rate limit still allows (the latest
    instants), charged as a submission over HTTP is; what is over the limit is not fired,
    and the schedule moves past it. Schedules from the configuration are the operator's."""
    limit = settings.limits.rate_limits.get("submit")
    if limit is None or schedule.source != "api" or not rows:
        return rows
    count, _ = access.hit(conn, schedule.tenant, "submit", len(rows), limit.window_s, now)
    allowed = max(0, limit.limit - (count - len(rows)))
    if allowed < len(rows):
        log.warning(
            "schedule %r of tenant %r (%s): %d of %d jobs not fired, over the tenant's submit"
            " rate limit (%d per %ds)",
            schedule.name,
            schedule.tenant,
            schedule.id,
            len(rows) - allowed,
            len(rows),
            limit.limit,
            limit.window_s,
        )
    return rows[len(rows) - allowed :]


def _moved(
    schedule: Schedule,
    following: datetime | None,
    instants: Sequence[datetime] = (),
    rows: Sequence[dict[str, Any]] = (),
    enabled: bool = True,
) -> dict[str, Any]:
    """Bind parameters of the guarded UPDATE that moves ``schedule`` past a fire."""
    return {
        "b_id": schedule.id,
        "b_due": schedule.next_fire_at,
        "b_next": following,
        "b_enabled": enabled,
        "b_last_fire": instants[-1] if instants else None,
        "b_last_job": rows[-1]["id"] if rows else None,
        "b_count": len(rows),
    }


#: The schedule fields read as their column holds them: all but ``enabled`` (an integer on
#: SQLite).
_AS_STORED = [f.name for f in fields(Schedule) if f.name != "enabled"]


def _schedule(row: Any) -> Schedule:
    stored = {name: row[name] for name in _AS_STORED}
    return Schedule(**stored, enabled=bool(row["enabled"]))
