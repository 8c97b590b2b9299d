"""Built-in maintenance: prune old finished jobs, sweep orphaned artifacts, report stuck jobs.

Plain functions over an engine and the artifact store, so the scheduled job types
(``raypipe/processors/maintenance.py``) and the CLI run the same code; ``now`` is passed
in, so what counts as old is decided by the caller's clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from raypipe.artifact_folders import job_folder, job_folders, measure, remove
from raypipe.artifacts import ArtifactStore
from raypipe.config import Settings
from raypipe.jobs import iso
from raypipe.lifecycle import TERMINAL_STATUSES
from raypipe.store.engine import read_only
from raypipe.store.tables import (
    HELD,
    PROCESSING_ONLY,
    QUEUED_ONLY,
    UTCDateTime,
    attempts,
    batches,
    job_events,
    jobs,
    webhook_deliveries,
)

#: Examples listed per category of stuck jobs (the count covers them all).
STUCK_EXAMPLES = 20
#: Artifact folders looked up in the database per query by the orphan sweep.
ORPHAN_CHUNK = 500

T = TypeVar("T")


@dataclass(frozen=True)
class PruneReport:
    """What pruning removed (or, in a dry run, would remove)."""

    cutoff: datetime
    dry_run: bool
    jobs: int = 0
    attempts: int = 0
    events: int = 0
    #: Webhook deliveries of the pruned jobs and batches, each with its recorded tries.
    deliveries: int = 0
    batches: int = 0
    artifact_folders: int = 0
    artifact_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cutoff": iso(self.cutoff)}


@dataclass(frozen=True)
class OrphanReport:
    """Artifact folders whose job is gone: how many were looked at, removed, or spared."""

    dry_run: bool
    scanned: int = 0
    removed: int = 0
    removed_bytes: int = 0
    #: Orphans modified within ``orphan_grace_s`` (or at an unknown time): left for later.
    spared: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StuckJob:
    id: str
    type: str
    queue: str
    tenant: str
    #: When the job became stuck: its lease expiry, its start, or when it became runnable.
    since: datetime

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "since": iso(self.since)}


@dataclass(frozen=True)
class StuckJobs:
    """One category of stuck jobs: how many, and the oldest few."""

    count: int = 0
    examples: tuple[StuckJob, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "examples": [job.to_dict() for job in self.examples]}


@dataclass(frozen=True)
class StuckReport:
    """Jobs that should be moving and are not. The categories do not overlap."""

    checked_at: datetime
    #: Held (claimed, started or not), but the lease ran out: no dispatcher looks after
    #: them any more.
    lease_expired: StuckJobs
    #: Processing under a live lease, past their timeout plus a lease period: the
    #: dispatcher renews the lease but fails to stop them.
    overrunning: StuckJobs
    #: Queued and runnable for longer than ``stuck_after_s``: nothing claims them, or
    #: what claimed them (under a live lease) never starts them.
    waiting: StuckJobs

    @property
    def total(self) -> int:
        return self.lease_expired.count + self.overrunning.count + self.waiting.count

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked_at": iso(self.checked_at),
            "total": self.total,
            "lease_expired": self.lease_expired.to_dict(),
            "overrunning": self.overrunning.to_dict(),
            "waiting": self.waiting.to_dict(),
        }


# -- pruning -------------------------------------------------------------------------------


def prune(
    engine: Engine,
    artifacts: ArtifactStore,
    settings: Settings,
    now: datetime,
    older_than_days: float | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
) -> PruneReport:
    """Delete jobs that finished (completed, failed, cancelled) before the retention
    cutoff, with their attempts, events, webhook deliveries and artifact files; then the
    finished batches left without jobs.

    Works in chunks of ``batch_size`` jobs, one transaction each, so a large backlog
    never holds locks for long and an interrupted run keeps what it did. A batch and its
    jobs age together, by the batch's finish time: a job of a batch still running or
    finished after the cutoff stays, so the batch's counts stay whole.
    """
    days = settings.maintenance.retention_days if older_than_days is None else older_than_days
    cutoff = now - timedelta(days=days)
    counts: Counter[str] = Counter()
    _prune_jobs(engine, artifacts, cutoff, dry_run, batch_size, counts)
    _prune_batches(engine, cutoff, dry_run, batch_size, counts)
    return PruneReport(cutoff=cutoff, dry_run=dry_run, **counts)


def _prune_jobs(
    engine: Engine,
    artifacts: ArtifactStore,
    cutoff: datetime,
    dry_run: bool,
    batch_size: int,
    counts: Counter[str],
) -> None:
    def delete(conn: Connection, ids: list[str]) -> None:
        counts["attempts"] += _count(conn, attempts, attempts.c.job_id.in_(ids))
        counts["events"] += _count(conn, job_events, job_events.c.job_id.in_(ids))
        where = webhook_deliveries.c.job_id.in_(ids)
        counts["deliveries"] += _delete(conn, webhook_deliveries, where, dry_run)
        counts["jobs"] += _delete(conn, jobs, jobs.c.id.in_(ids), dry_run)

    query = sa.select(jobs.c.id, jobs.c.tenant, jobs.c.finished_at).where(_prunable(cutoff))
    for rows in _pages(engine, jobs, query, dry_run, batch_size, delete):
        # Files go after the commit: a crash in between leaves orphan files, which the
        # orphan sweep removes, never a job whose files are missing.
        folders = [f for row in rows if (f := job_folder(artifacts, row.tenant, row.id))]
        if not dry_run:
            remove(artifacts, folders)
        counts["artifact_folders"] += len(folders)
        counts["artifact_bytes"] += sum(folder.size for folder in folders)


def _prune_batches(
    engine: Engine, cutoff: datetime, dry_run: bool, batch_size: int, counts: Counter[str]
) -> None:
    def delete(conn: Connection, ids: list[str]) -> None:
        where = webhook_deliveries.c.batch_id.in_(ids)
        counts["deliveries"] += _delete(conn, webhook_deliveries, where, dry_run)
        counts["batches"] += _delete(conn, batches, batches.c.id.in_(ids), dry_run)

    left = sa.select(1).where(jobs.c.batch_id == batches.c.id)
    if dry_run:  # nothing was deleted: count the batches whose jobs would all have gone
        left = left.where(~_finished_before(cutoff))
    query = sa.select(batches.c.id, batches.c.finished_at).where(
        batches.c.finished_at < cutoff, ~sa.exists(left)
    )
    for _rows in _pages(engine, batches, query, dry_run, batch_size, delete):
        pass  # each page was deleted in a transaction of its own


def _pages(
    engine: Engine,
    table: sa.Table,
    query: sa.Select[Any],
    dry_run: bool,
    batch_size: int,
    delete: Callable[[Connection, list[str]], None],
) -> Iterator[Sequence[sa.Row[Any]]]:
    """``query``'s rows of ``table``, oldest finished first, ``batch_size`` at a time: each
    page's ids go to ``delete`` in a transaction of their own, and its rows are yielded
    once that has committed."""
    query = query.order_by(table.c.finished_at, table.c.id).limit(batch_size)
    if not dry_run and engine.dialect.name == "postgresql":
        # Lock what is deleted (a concurrent retry waits); skip what someone else holds.
        query = query.with_for_update(of=table, skip_locked=True)
    after: tuple[datetime, str] | None = None
    while True:
        with _transaction(engine, dry_run) as conn:
            page = query if after is None else query.where(_after(table, after))
            rows = conn.execute(page).all()
            if not rows:
                return
            delete(conn, [row.id for row in rows])
        yield rows
        after = (rows[-1].finished_at, rows[-1].id)


def _finished_before(cutoff: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(jobs.c.status.in_(sorted(TERMINAL_STATUSES)), jobs.c.finished_at < cutoff)


def _prunable(cutoff: datetime) -> sa.ColumnElement[bool]:
    """Finished before the cutoff, and not part of a batch that is not (a job without a
    batch row, which has no foreign key, counts as on its own)."""
    owner = batches.alias("owner")
    kept_batch = sa.select(1).where(
        owner.c.id == jobs.c.batch_id,
        sa.or_(owner.c.finished_at.is_(None), owner.c.finished_at >= cutoff),
    )
    return sa.and_(_finished_before(cutoff), ~sa.exists(kept_batch))


def _after(table: sa.Table, last: tuple[datetime, str]) -> sa.ColumnElement[bool]:
    """Rows after ``last`` in (finished_at, id) order: a dry run deletes nothing, so each
    page starts where the previous one ended."""
    at, last_id = last
    return sa.or_(
        table.c.finished_at > at, sa.and_(table.c.finished_at == at, table.c.id > last_id)
    )


def _count(conn: Connection, table: sa.Table, where: sa.ColumnElement[bool]) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one()


def _delete(conn: Connection, table: sa.Table, where: sa.ColumnElement[bool], dry_run: bool) -> int:
    if dry_run:
        return _count(conn, table, where)
    return conn.execute(sa.delete(table).where(where)).rowcount


@contextmanager
def _transaction(engine: Engine, dry_run: bool) -> Iterator[Connection]:
    """A write transaction, or for a dry run a read-only one (SQLite then takes no write
    lock)."""
    if dry_run:
        with read_only(engine) as conn:
            yield conn
    else:
        with engine.begin() as conn:
            yield conn


# -- orphaned artifacts -----------------------------------------------------------------


def orphans(
    engine: Engine,
    artifacts: ArtifactStore,
    settings: Settings,
    now: datetime,
    dry_run: bool = False,
) -> OrphanReport:
    """Remove artifact folders whose job row is gone (a crash between a job's deletion
    and its files', or files written outside any job), once nothing in them changed for
    ``orphan_grace_s``. A folder under another tenant than its job's is an orphan too:
    nothing can ever serve it."""
    modified_before = now - timedelta(seconds=settings.maintenance.orphan_grace_s)
    counts: Counter[str] = Counter()
    for chunk in _chunks(job_folders(artifacts), ORPHAN_CHUNK):
        query = sa.select(jobs.c.tenant, jobs.c.id).where(
            jobs.c.id.in_([job_id for _, job_id, _ in chunk])
        )
        with read_only(engine) as conn:
            known = set(conn.execute(query).tuples())
        found = [measure(artifacts, *where) for where in chunk if where[:2] not in known]
        old = [f for f in found if f.modified is not None and f.modified < modified_before]
        if not dry_run:
            remove(artifacts, old)
        counts["scanned"] += len(chunk)
        counts["removed"] += len(old)
        counts["removed_bytes"] += sum(folder.size for folder in old)
        counts["spared"] += len(found) - len(old)
    return OrphanReport(dry_run=dry_run, **counts)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


# -- stuck jobs ---------------------------------------------------------------------------


def stuck(engine: Engine, settings: Settings, now: datetime) -> StuckReport:
    """Find jobs that should be moving and are not (read-only): three queries, each over
    the queued, the held or the processing jobs only (the claim and lease partial indexes)."""
    lease_alive = sa.or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at >= now)
    waited = now - timedelta(seconds=settings.maintenance.stuck_after_s)
    with read_only(engine) as conn:
        return StuckReport(
            checked_at=now,
            lease_expired=_sample(
                conn, jobs.c.lease_expires_at, HELD, jobs.c.lease_expires_at < now
            ),
            overrunning=_sample(
                conn,
                jobs.c.started_at,
                PROCESSING_ONLY,
                lease_alive,
                _overdue(engine.dialect.name, now, settings.engine.lease_ttl_s),
            ),
            waiting=_sample(conn, jobs.c.run_at, QUEUED_ONLY, lease_alive, jobs.c.run_at <= waited),
        )


def _sample(
    conn: Connection, since: sa.Column[Any], *where: sa.ColumnElement[bool] | sa.TextClause
) -> StuckJobs:
    """The count of jobs matching ``where`` and the longest stuck of them, in one query."""
    query = (
        sa.select(
            jobs.c.id,
            jobs.c.type,
            jobs.c.queue,
            jobs.c.tenant,
            since.label("since"),
            sa.func.count().over().label("total"),
        )
        .where(*where)
        .order_by(since, jobs.c.id)
        .limit(STUCK_EXAMPLES)
    )
    rows = conn.execute(query).all()
    examples = tuple(StuckJob(r.id, r.type, r.queue, r.tenant, r.since) for r in rows)
    return StuckJobs(rows[0].total if rows else 0, examples)


def _overdue(dialect: str, now: datetime, grace_s: float) -> sa.ColumnElement[bool]:
    """``started_at + timeout_s + grace_s < now``, in each database's date arithmetic."""
    allowed_s = jobs.c.timeout_s + grace_s
    if dialect == "postgresql":
        second = sa.literal_column("interval '1 second'", sa.Interval)
        return jobs.c.started_at + allowed_s * second < now
    day_s = 86_400.0
    started = sa.func.julianday(jobs.c.started_at)
    return started + allowed_s / day_s < sa.func.julianday(sa.literal(now, UTCDateTime))
