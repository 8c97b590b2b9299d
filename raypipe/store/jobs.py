"""Jobs as their users see them: submit, read, list, count, cancel, retry, delete.

The dispatcher's side of the same rows (claims, starts, outcomes, leases) is
:mod:`raypipe.store.dispatch`; the state moves both use are :mod:`raypipe.store.transitions`.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Callable, Iterable
from datetime import datetime
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine, Row

from raypipe import tracing
from raypipe.exceptions import Conflict, NotFound
from raypipe.jobs import (
    AttemptRecord,
    AttemptStatus,
    ErrorInfo,
    JobRecord,
    JobStatus,
    utcnow,
)
from raypipe.lifecycle import UNFINISHED_STATUSES, WAITING_PREFIX, Change
from raypipe.store import completion, idempotency, transitions, unique
from raypipe.store.engine import create_engine, read_only
from raypipe.store.tables import (
    HELD,
    UTCDateTime,
    attempts,
    job_events,
    job_payloads,
    jobs,
    webhook_deliveries,
)
from raypipe.store.transitions import status_event

Clock = Callable[[], datetime]
#: Counts work (the number of jobs) against a limit inside the transaction that does it;
#: raising rolls the work back.
Charge = Callable[[Connection, int], None]


#: The figures of a queue with no queued or running job.
QUIET: dict[str, Any] = {"depth": 0, "running": 0, "oldest_waiting_s": None}


class JobStore:
    """Reads and writes jobs and attempts (SQL lives in `raypipe.store` only)."""

    def __init__(self, engine: Engine, clock: Clock = utcnow):
        self.engine = engine
        self.clock = clock
        self.dialect = engine.dialect.name

    @classmethod
    def from_url(cls, url: str, clock: Clock = utcnow, wait_for_flush: bool = True) -> JobStore:
        return cls(create_engine(url, wait_for_flush=wait_for_flush), clock)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- submission ---------------------------------------------------------------

    def insert(
        self, rows: list[dict[str, Any]], made: Made | None = None
    ) -> list[tuple[JobRecord, Replay | None]]:
        """Insert job rows (one transaction); returns each job, and why it is not new
        (None: it is).

        A row whose (tenant, idempotency key) exists already returns the existing job
        when its request hash matches, and raises :class:`Conflict` (writing nothing)
        when it does not. A row whose unique slot a job holds (:mod:`raypipe.store.unique`)
        returns that job, given the row's payload and ``run_at`` when the row asks to
        replace it and it is still queued and unheld. Both hold under concurrent
        duplicate submissions, and between rows of one call: a later row returns an
        earlier one.

        ``made`` is told, inside the transaction, the positions of the rows that made a
        job; it may refuse (a tenant's rate limit), which undoes everything.
        """
        now = self.clock()
        _queued(rows, now)
        job_rows = [_columns(row) for row in rows]
        with self.engine.begin() as conn:
            if unique.keyed(rows):
                holders = unique.insert(conn, job_rows, select_jobs)
            else:
                conn.execute(jobs.insert(), job_rows)
                holders = unique.Holders()
            answers = [_answer(row, holders) for row in rows]
            made_at = [i for i, (_, why) in enumerate(answers) if why is None]
            _write_submitted(conn, [rows[i] for i in made_at], now)
            duplicates = [
                (row, job)
                for row, (job, why) in zip(rows, answers, strict=True)
                if why is Replay.UNIQUE
            ]
            for row, job in duplicates:
                unique.replace(conn, job.id, row, now)
            # Read again: replaced, or made by an earlier row of this call (its payload
            # was not written when its slot was read).
            fresh = self._read(conn, {job.id for _, job in duplicates})
            if made is not None:
                made(conn, made_at)
        return [(fresh.get(job.id, job), why) for job, why in answers]

    @staticmethod
    def add(conn: Connection, rows: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        """Insert prepared job rows, queued, with their payloads and first events, inside
        ``conn``'s transaction (for writes that submit jobs as part of something larger:
        batches, schedules' fires, follow-ups); returns the rows written.

        :meth:`insert` writes them the same way, but a row here whose unique slot (or
        idempotency key) is taken makes no job and is not returned (a schedule's fire
        while its last job waits)."""
        _queued(rows, now)
        job_rows = [_columns(row) for row in rows]
        if unique.keyed(rows):
            holders = unique.insert(conn, job_rows, select_jobs)
            rows = [row for row in rows if holders.wrote(row)]
        else:
            conn.execute(jobs.insert(), job_rows)
        _write_submitted(conn, rows, now)
        return rows

    def _read(self, conn: Connection, ids: Iterable[str]) -> dict[str, JobRecord]:
        """The jobs ``ids`` as ``conn`` sees them now."""
        listed = sorted(ids)
        if not listed:
            return {}
        query = select_jobs().where(jobs.c.id.in_(listed))
        return {row.id: job_from_mapping(row._mapping) for row in conn.execute(query)}

    # -- reads --------------------------------------------------------------------

    def get(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """The job, or :class:`NotFound` (also for another tenant's job)."""
        check_id(job_id)
        query = select_jobs().where(jobs.c.id == job_id)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        with read_only(self.engine) as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return job_from_mapping(row._mapping)

    def list(
        self,
        *,
        tenant: str | None = None,
        status: JobStatus | None = None,
        type: str | None = None,
        queue: str | None = None,
        tag: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        ids: Iterable[str] | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> builtins.list[JobRecord]:
        """Jobs matching every filter given, newest first; ``before`` is the (created_at, id)
        of the last job of the previous page (keyset pagination)."""
        query = select_jobs().order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        for column, value in (
            (jobs.c.tenant, tenant),
            (jobs.c.status, status),
            (jobs.c.type, type),
            (jobs.c.queue, queue),
        ):
            if value is not None:
                query = query.where(column == value)
        if tag is not None:
            query = query.where(self._has_tag(tag))
        if created_after is not None:
            query = query.where(jobs.c.created_at >= created_after)
        if created_before is not None:
            query = query.where(jobs.c.created_at < created_before)
        if ids is not None:
            query = query.where(jobs.c.id.in_(list(ids)))
        if before is not None:
            at, last_id = before
            query = query.where(
                sa.or_(
                    jobs.c.created_at < at,
                    sa.and_(jobs.c.created_at == at, jobs.c.id < last_id),
                )
            )
        with read_only(self.engine) as conn:
            return [job_from_mapping(row._mapping) for row in conn.execute(query)]

    def _has_tag(self, tag: str) -> sa.ColumnElement[bool]:
        if self.dialect == "postgresql":
            return sa.type_coerce(jobs.c.tags, postgresql.JSONB).contains([tag])
        each = sa.func.json_each(jobs.c.tags).table_valued("value")
        return sa.exists(sa.select(1).select_from(each).where(each.c.value == tag))

    def queue_stats(self, tenant: str | None = None) -> dict[str, dict[str, Any]]:
        """Per queue: queued depth (held jobs not started yet included), running count, the
        oldest runnable job's wait, and how many queued jobs wait for what (``waiting``);
        of ``tenant``'s jobs only, when given."""
        now = self.clock()
        waiting = sa.case(
            (
                sa.and_(
                    jobs.c.status == JobStatus.QUEUED,
                    jobs.c.message.startswith(WAITING_PREFIX),
                ),
                jobs.c.message,
            )
        ).label("waiting")
        query = (
            sa.select(
                jobs.c.queue,
                jobs.c.status,
                waiting,
                sa.func.count(),
                sa.func.min(sa.case((jobs.c.run_at <= now, jobs.c.run_at))),
            )
            .where(jobs.c.status.in_(sorted(UNFINISHED_STATUSES)))
            .group_by(jobs.c.queue, jobs.c.status, waiting)
        )
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        stats: dict[str, dict[str, Any]] = {}
        with read_only(self.engine) as conn:
            for queue, status, why, count, oldest in conn.execute(query):
                entry = stats.setdefault(queue, {**QUIET, "waiting": {}})
                if JobStatus(status) is JobStatus.PROCESSING:
                    entry["running"] += count
                    continue
                entry["depth"] += count
                if why is not None:
                    entry["waiting"][why] = count
                if oldest is not None:
                    oldest = UTCDateTime().process_result_value(oldest, self.engine.dialect)
                    assert oldest is not None
                    waited = round((now - oldest).total_seconds(), 3)
                    entry["oldest_waiting_s"] = max(entry["oldest_waiting_s"] or 0.0, waited)
        return stats

    def count_stuck(self) -> int:
        """Held jobs whose lease expired: their dispatcher is gone, no one rescued them yet."""
        query = (
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(HELD, jobs.c.lease_expires_at < self.clock())
        )
        with read_only(self.engine) as conn:
            return conn.execute(query).scalar_one()

    def attempts(self, job_id: str) -> builtins.list[AttemptRecord]:
        query = sa.select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.attempt)
        with read_only(self.engine) as conn:
            return [_attempt_from_row(row) for row in conn.execute(query)]

    def count_by_status(self, ids: Iterable[str] | None = None) -> dict[JobStatus, int]:
        query = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        if ids is not None:
            query = query.where(jobs.c.id.in_(list(ids)))
        with read_only(self.engine) as conn:
            return {JobStatus(status): count for status, count in conn.execute(query)}

    def count_unfinished(self, queue: str | None = None) -> int:
        """How many jobs are queued or processing (served by the claim index), in ``queue``
        or in all (a bench waits for its own queue: a schedule may fire a job elsewhere)."""
        query = sa.select(sa.func.count()).where(jobs.c.status.in_(sorted(UNFINISHED_STATUSES)))
        if queue is not None:
            query = query.where(jobs.c.queue == queue)
        with read_only(self.engine) as conn:
            return conn.execute(query).scalar_one()

    def events(
        self, job_id: str, after: int = 0, limit: int = 500
    ) -> builtins.list[dict[str, Any]]:
        """A job's events after event id ``after``, oldest first."""
        query = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.id > after)
            .order_by(job_events.c.id)
            .limit(limit)
        )
        with read_only(self.engine) as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # -- the user's writes -----------------------------------------------------------

    def request_cancel(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """Cancel a queued job no dispatcher holds now; flag a held or running one for its
        dispatcher to stop (it may be starting already)."""
        now = self.clock()
        with self.engine.begin() as conn:
            job = self._locked(conn, job_id, tenant)
            if job.status.is_terminal:
                raise Conflict(
                    f"job {job_id} is {job.status.value}: only queued or processing jobs"
                    " can be cancelled"
                )
            where = jobs.c.id == job_id
            if transitions.cancel_unheld(conn, where, now):
                completion.settle(conn, [job.batch_id], now, self.add)
            else:
                transitions.ask_to_stop(conn, where, now)
        return self.get(job_id)

    def retry(
        self, job_id: str, tenant: str | None = None, charge: Charge | None = None
    ) -> JobRecord:
        """Queue a failed or cancelled job again, allowing it one more attempt.

        ``charge`` is called with the transaction and 1 once the job is queued: it may
        refuse (a tenant's rate limit), which undoes the retry.
        """
        now = self.clock()
        with self.engine.begin() as conn:
            job = self._locked(conn, job_id, tenant)
            if job.status not in Change.RETRY.sources:
                raise Conflict(
                    f"job {job_id} is {job.status.value}: only failed or cancelled jobs"
                    " can be retried"
                )
            transitions.requeue(
                conn,
                sa.and_(jobs.c.id == job_id, jobs.c.status == job.status),
                now,
                max(job.max_attempts, job.attempt + 1),
            )
            if charge is not None:
                charge(conn, 1)
        return self.get(job_id)

    def delete(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """Remove a finished job with its attempts and events; returns what was removed.

        A job still queued or running is a :class:`Conflict` (cancel it first).
        """
        with self.engine.begin() as conn:
            job = self._locked(conn, job_id, tenant)
            if not job.status.is_terminal:
                raise Conflict(f"job {job_id} is {job.status.value}: cancel it before deleting it")
            # Its deliveries carry its result in their bodies: they go with it (the sender's
            # writes to a delivery deleted under it match no row).
            conn.execute(sa.delete(webhook_deliveries).where(webhook_deliveries.c.job_id == job_id))
            conn.execute(sa.delete(jobs).where(jobs.c.id == job_id))
        return job

    def _locked(self, conn: Connection, job_id: str, tenant: str | None) -> JobRecord:
        check_id(job_id)
        query = select_jobs().where(jobs.c.id == job_id)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        if self.dialect == "postgresql":
            query = query.with_for_update(of=jobs)
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return job_from_mapping(row._mapping)


def select_jobs() -> sa.Select[Any]:
    """Whole job rows, each with its payload (read with :func:`job_from_mapping`)."""
    return sa.select(jobs, job_payloads.c.payload).join_from(
        jobs, job_payloads, job_payloads.c.job_id == jobs.c.id, isouter=True
    )


class Replay(Enum):
    """Why a submission returned a job made earlier instead of a new one."""

    #: The same request came again under its idempotency key.
    IDEMPOTENT = "idempotent"
    #: A job of the same tenant, type and unique key is in its window.
    UNIQUE = "unique"


#: Told the positions of the submitted rows that made jobs, inside their transaction.
Made = Callable[[Connection, list[int]], None]


def _answer(row: dict[str, Any], holders: unique.Holders) -> tuple[JobRecord, Replay | None]:
    """The job a submitted row stands for: the one an earlier request made under its
    idempotency key, the one holding its unique slot, or itself (new)."""
    first = idempotency.earlier(row, holders.keys, "job")
    if first is not None:
        return job_from_mapping(first._mapping), Replay.IDEMPOTENT
    holder = holders.holder(row)
    if holder is not None:
        return job_from_mapping(holder._mapping), Replay.UNIQUE
    return job_from_mapping({**_JOB_DEFAULTS, **row}), None


#: Fields of a submitted row that are not columns of ``jobs``.
_NOT_COLUMNS = frozenset({"payload", unique.ON_DUPLICATE})


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    """A submitted row's ``jobs`` columns (its payload goes to ``job_payloads``)."""
    return {name: value for name, value in row.items() if name not in _NOT_COLUMNS}


def _queued(rows: list[dict[str, Any]], now: datetime) -> None:
    """Fill in what a submitted row starts with: queued, runnable from now unless it says."""
    for row in rows:
        row.setdefault("created_at", now)
        row.setdefault("run_at", now)
        row.update(status=JobStatus.QUEUED, updated_at=now)


def _write_submitted(conn: Connection, rows: list[dict[str, Any]], now: datetime) -> None:
    """The payloads and first status events of job rows just inserted."""
    if not rows:
        return
    conn.execute(
        job_payloads.insert(), [{"job_id": row["id"], "payload": row["payload"]} for row in rows]
    )
    conn.execute(
        job_events.insert(), [status_event(row["id"], JobStatus.QUEUED, 0, now) for row in rows]
    )


def check_id(job_id: str) -> None:
    """Ids are UUID strings: anything a database could choke on (NUL, oversize) is unknown."""
    if len(job_id) > 36 or "\x00" in job_id:
        raise NotFound(f"job {job_id[:40]!r} not found")


def _initial(column: sa.Column[Any]) -> Any:
    """What a new row holds in ``column`` when its insert leaves it out: the column's
    server default, or NULL."""
    default = column.server_default
    if not isinstance(default, sa.DefaultClause):
        return None
    if isinstance(default.arg, str):
        return column.type.python_type(default.arg)
    if isinstance(default.arg, sa.True_ | sa.False_):
        return isinstance(default.arg, sa.True_)
    raise TypeError(f"no Python value for the server default of jobs.{column.name}")


#: What an inserted row holds in the columns its insert may leave out (a new job's record
#: is built from its row and these, without reading it back).
_JOB_DEFAULTS: dict[str, Any] = {
    column.name: _initial(column)
    for column in jobs.columns
    if column.nullable or column.server_default is not None
}

#: The record fields read otherwise than as their column of the same name holds them.
_FROM_ROW: dict[str, Callable[[Any], Any]] = {
    "status": lambda row: JobStatus(row["status"]),
    "progress": lambda row: float(row["progress"]),
    "tags": lambda row: list(row["tags"] or []),
    "cancel_requested": lambda row: bool(row["cancel_requested"]),
    "artifacts": lambda row: list(row["artifacts"] or []),
    "error": lambda row: (
        ErrorInfo(row["error_type"], row["error_message"] or "", row["error_traceback"])
        if row["error_type"]
        else None
    ),
    "trace_id": lambda row: tracing.trace_id(row["trace_parent"]),
}
#: The record fields read as their column holds them (``payload`` from :func:`select_jobs`).
_AS_STORED = [f.name for f in dataclasses.fields(JobRecord) if f.name not in _FROM_ROW]


def job_from_mapping(row: Any) -> JobRecord:
    """The record of a job row (with its payload, as :func:`select_jobs` reads it)."""
    values = {name: row[name] for name in _AS_STORED}
    for name, read in _FROM_ROW.items():
        values[name] = read(row)
    return JobRecord(**values)


def _attempt_from_row(row: Row[Any]) -> AttemptRecord:
    error = (
        ErrorInfo(row.error_type, row.error_message or "", row.error_traceback)
        if row.error_type
        else None
    )
    return AttemptRecord(
        job_id=row.job_id,
        attempt=row.attempt,
        status=AttemptStatus(row.status),
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=error,
        lease_owner=row.lease_owner,
    )
