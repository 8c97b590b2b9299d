"""All SQL that reads and writes jobs. Every status change is a guarded UPDATE."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, Row

from raypipe.exceptions import Conflict, NotFound
from raypipe.jobs import (
    AttemptRecord,
    AttemptStatus,
    ClaimedJob,
    ErrorInfo,
    JobRecord,
    JobStatus,
    Outcome,
    utcnow,
)
from raypipe.store import completion, transitions
from raypipe.store.engine import READ_ONLY, create_engine
from raypipe.store.tables import (
    HELD,
    UNHELD_QUEUED,
    UTCDateTime,
    attempts,
    job_events,
    job_payloads,
    jobs,
    webhook_deliveries,
)
from raypipe.store.transitions import chunks, status_event

#: pg_advisory_xact_lock key that serialises claims, so queue limits hold across dispatchers.
CLAIM_LOCK_KEY = 0x7261797069706500
#: How :meth:`JobStore.set_waiting` messages begin, so :meth:`JobStore.queue_stats` can
#: count them apart from a job's own messages.
WAITING_PREFIX = "waiting for"

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Candidate:
    """A runnable job offered to the dispatcher's claim policy."""

    id: str
    type: str
    queue: str
    priority: int
    created_at: datetime
    attempt: int
    max_attempts: int
    timeout_s: float
    tenant: str
    run_at: datetime


ChooseClaims = Callable[[Sequence[Candidate], dict[str, int]], list[Candidate]]


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

    def insert(self, rows: list[dict[str, Any]]) -> list[tuple[JobRecord, bool]]:
        """Insert job rows (one transaction); returns each job and whether it is new.

        A row whose (tenant, idempotency key) exists already returns the existing job
        when its request hash matches, and raises :class:`Conflict` (writing nothing)
        when it does not, including under concurrent duplicate submissions.
        """
        now = self.clock()
        for row in rows:
            row.setdefault("created_at", now)
            row["updated_at"] = now
            row.setdefault("run_at", now)
            row["status"] = JobStatus.QUEUED
        keyed = [row for row in rows if row.get("idempotency_key")]
        job_rows = [_without_payload(row) for row in rows]
        with self.engine.begin() as conn:
            if keyed:
                conn.execute(self._insert_ignoring_duplicates(), job_rows)
                existing = self._by_idempotency_key(conn, keyed)
            else:
                conn.execute(jobs.insert(), job_rows)
                existing = {}
            out: list[tuple[JobRecord, bool]] = []
            for row in rows:
                key = (row["tenant"], row.get("idempotency_key"))
                found = existing.get(key)
                if found is None or found.id == row["id"]:
                    out.append((job_from_mapping({**_JOB_DEFAULTS, **row}), True))
                elif found.request_hash != row["request_hash"]:
                    raise Conflict(
                        f"idempotency key {row['idempotency_key']!r} was used for a different"
                        f" request (job {found.id})"
                    )
                else:
                    out.append((job_from_mapping(found._mapping), False))
            created = [job for job, new in out if new]
            if created:
                _insert_payloads(conn, {job.id: job.payload for job in created})
                conn.execute(
                    job_events.insert(),
                    [status_event(job.id, job.status, 0, now) for job in created],
                )
        return out

    def _insert_ignoring_duplicates(self) -> sa.Insert:
        if self.dialect == "postgresql":
            return postgresql.insert(jobs).on_conflict_do_nothing(
                index_elements=["tenant", "idempotency_key"]
            )
        return sqlite.insert(jobs).on_conflict_do_nothing(
            index_elements=["tenant", "idempotency_key"]
        )

    @staticmethod
    def _by_idempotency_key(
        conn: Connection, rows: list[dict[str, Any]]
    ) -> dict[tuple[str, str], Row[Any]]:
        found: dict[tuple[str, str], Row[Any]] = {}
        by_tenant: dict[str, set[str]] = {}
        for row in rows:
            by_tenant.setdefault(row["tenant"], set()).add(row["idempotency_key"])
        for tenant, keys in by_tenant.items():
            query = select_jobs().where(
                jobs.c.tenant == tenant, jobs.c.idempotency_key.in_(sorted(keys))
            )
            for existing in conn.execute(query):
                found[(existing.tenant, existing.idempotency_key)] = existing
        return found

    # -- reads --------------------------------------------------------------------

    def get(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """The job, or :class:`NotFound` (also for another tenant's job)."""
        check_id(job_id)
        query = select_jobs().where(jobs.c.id == job_id)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        with self._read() as conn:
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
    ) -> list[JobRecord]:
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
        with self._read() as conn:
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
            .where(jobs.c.status.in_([JobStatus.QUEUED, JobStatus.PROCESSING]))
            .group_by(jobs.c.queue, jobs.c.status, waiting)
        )
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        stats: dict[str, dict[str, Any]] = {}
        with self._read() as conn:
            for queue, status, why, count, oldest in conn.execute(query):
                entry = stats.setdefault(
                    queue, {"depth": 0, "running": 0, "oldest_waiting_s": None, "waiting": {}}
                )
                if JobStatus(status) is JobStatus.PROCESSING:
                    entry["running"] += count
                    continue
                entry["depth"] += count
                if why is not None:
                    entry["waiting"][why] = count
                if oldest is not None:
                    oldest = jobs.c.run_at.type.process_result_value(oldest, self.engine.dialect)
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
        with self._read() as conn:
            return conn.execute(query).scalar_one()

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        query = sa.select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.attempt)
        with self._read() as conn:
            return [_attempt_from_row(row) for row in conn.execute(query)]

    def count_by_status(self, ids: Iterable[str] | None = None) -> dict[JobStatus, int]:
        query = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        if ids is not None:
            query = query.where(jobs.c.id.in_(list(ids)))
        with self._read() as conn:
            return {JobStatus(status): count for status, count in conn.execute(query)}

    def count_unfinished(self, queue: str | None = None) -> int:
        """How many jobs are queued or processing (served by the claim index), in ``queue``
        or in all (a bench waits for its own queue: a schedule may fire a job elsewhere)."""
        query = sa.select(sa.func.count()).where(
            jobs.c.status.in_([JobStatus.QUEUED, JobStatus.PROCESSING])
        )
        if queue is not None:
            query = query.where(jobs.c.queue == queue)
        with self._read() as conn:
            return conn.execute(query).scalar_one()

    def running_by_queue(self) -> dict[str, int]:
        with self._read() as conn:
            return self._running_by_queue(conn)

    @staticmethod
    def _running_by_queue(conn: Connection) -> dict[str, int]:
        """Held jobs per queue: a claimed job takes its queue's slot before it starts."""
        query = sa.select(jobs.c.queue, sa.func.count()).where(HELD).group_by(jobs.c.queue)
        return {queue: count for queue, count in conn.execute(query)}

    def next_run_at(self) -> datetime | None:
        """When the earliest unclaimed job becomes runnable (for the dispatcher's sleep)."""
        query = sa.select(jobs.c.run_at).where(UNHELD_QUEUED).order_by(jobs.c.run_at).limit(1)
        with self._read() as conn:
            return conn.execute(query).scalar()

    # -- the dispatcher's writes ----------------------------------------------------

    def claim(
        self,
        owner: str,
        lease_ttl_s: float,
        queue_limits: dict[str, int],
        choose: ChooseClaims,
        limit: int,
    ) -> list[ClaimedJob]:
        """Hold runnable jobs under ``owner``'s lease, each with a new attempt; they stay
        ``queued`` until :meth:`start` hears that their worker began.

        Candidates come highest priority first, then oldest, from queues with free
        slots (held jobs take slots); ``choose`` picks among them (resources, free slots).
        """
        now = self.clock()
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
            running = self._running_by_queue(conn)
            free = {q: n - running.get(q, 0) for q, n in queue_limits.items()}
            candidates = sorted(
                (
                    candidate
                    for queue, slots in free.items()
                    if slots > 0
                    for candidate in self._candidates(conn, queue, now, min(slots, limit))
                ),
                key=lambda c: (-c.priority, c.created_at, c.id),
            )
            chosen = choose(candidates, free)
            if not chosen:
                return []
            expires = now + timedelta(seconds=lease_ttl_s)
            # Payloads are read for the chosen rows only (a candidate's may be megabytes).
            taken: set[str] = set()
            payloads: dict[str, Any] = {}
            for chunk in chunks([c.id for c in chosen]):
                ids = (
                    conn.execute(
                        sa.update(jobs)
                        .where(jobs.c.id.in_(chunk), UNHELD_QUEUED)
                        .values(
                            attempt=jobs.c.attempt + 1,
                            started_at=None,
                            updated_at=now,
                            lease_owner=owner,
                            lease_expires_at=expires,
                            progress=0.0,
                            message=None,
                            stage=None,
                        )
                        .returning(jobs.c.id)
                    )
                    .scalars()
                    .all()
                )
                taken.update(ids)
                query = sa.select(job_payloads.c.job_id, job_payloads.c.payload).where(
                    job_payloads.c.job_id.in_(ids)
                )
                payloads.update((row.job_id, row.payload) for row in conn.execute(query))
        return [
            ClaimedJob(
                id=c.id,
                type=c.type,
                queue=c.queue,
                payload=payloads.get(c.id, {}),
                attempt=c.attempt + 1,
                max_attempts=c.max_attempts,
                timeout_s=c.timeout_s,
                tenant=c.tenant,
            )
            for c in chosen
            if c.id in taken
        ]

    def _candidates(
        self, conn: Connection, queue: str, now: datetime, limit: int
    ) -> list[Candidate]:
        """Runnable jobs of one queue in claim order; one query per queue so that the
        claim index serves the ORDER BY instead of a sort of every queued row."""
        query = (
            sa.select(*(jobs.c[name] for name in Candidate.__dataclass_fields__))
            .where(UNHELD_QUEUED, jobs.c.queue == queue, jobs.c.run_at <= now)
            .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return [Candidate(*row) for row in conn.execute(query)]

    def start(self, owner: str, starts: Sequence[transitions.Start]) -> int:
        """Move held jobs whose worker reported (id, attempt, when) it began to ``processing``.

        Only ``owner``'s still-queued hold of that attempt moves, so a late or repeated
        report (the attempt ended, was rescued or retried) changes nothing; one status
        event per job that moved. Returns how many moved.
        """
        return self.advance(owner, starts, ())[0]

    def record(self, outcomes: Sequence[Outcome]) -> int:
        """Record how attempts ended; stale outcomes (wrong attempt, or the job no longer
        held: requeued or ended) change nothing. An attempt that ends before its start
        was reported is recorded all the same.

        In the same transaction: follow-up jobs, webhook deliveries, and the end of
        batches whose last job this was. Returns how many jobs changed.
        """
        return self.advance("", (), outcomes)[1]

    def advance(
        self, owner: str, starts: Sequence[transitions.Start], outcomes: Sequence[Outcome]
    ) -> tuple[int, int]:
        """:meth:`start`, then :meth:`record`, in one transaction: what readers see moves
        from one round's state to the next (never a started job beside the one it
        replaced still running). Returns (jobs started, jobs ended)."""
        if not starts and not outcomes:
            return 0, 0
        with self.engine.begin() as conn:
            return transitions.advance(conn, owner, starts, outcomes, self.clock(), self.add)

    def add(self, conn: Connection, rows: list[dict[str, Any]], now: datetime) -> None:
        """Insert prepared job rows, queued, with their first events, inside ``conn``'s
        transaction (for writes that submit jobs as part of something larger)."""
        for row in rows:
            row.update(status=JobStatus.QUEUED, updated_at=now)
        conn.execute(jobs.insert(), [_without_payload(row) for row in rows])
        _insert_payloads(conn, {row["id"]: row["payload"] for row in rows})
        conn.execute(
            job_events.insert(), [status_event(row["id"], JobStatus.QUEUED, 0, now) for row in rows]
        )

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

    def renew_leases(
        self, owner: str, lease_ttl_s: float, job_ids: Iterable[str] | None = None
    ) -> int:
        """Extend ``owner``'s leases; with ``job_ids``, only those jobs' leases.

        A dispatcher names the jobs it runs: a row it holds without knowing (a claim whose
        answer was lost with its connection) then expires and is rescued, not kept forever.
        """
        now = self.clock()
        renew = (
            sa.update(jobs)
            .where(HELD, jobs.c.lease_owner == owner)
            .values(lease_expires_at=now + timedelta(seconds=lease_ttl_s))
        )
        with self.engine.begin() as conn:
            if job_ids is None:
                return conn.execute(renew).rowcount
            return sum(
                conn.execute(renew.where(jobs.c.id.in_(chunk))).rowcount
                for chunk in chunks(list(job_ids))
            )

    def lost_jobs(
        self,
        *,
        expired: bool = True,
        owner_prefix: str | None = None,
        exclude_owner: str | None = None,
        limit: int = 500,
    ) -> list[JobRecord]:
        """Held jobs (started or not) whose lease expired, or held by an earlier dispatcher
        incarnation."""
        query = select_jobs().where(HELD).limit(limit)
        if expired:
            query = query.where(jobs.c.lease_expires_at < self.clock())
        if owner_prefix is not None:
            query = query.where(jobs.c.lease_owner.startswith(owner_prefix, autoescape=True))
        if exclude_owner is not None:
            query = query.where(jobs.c.lease_owner != exclude_owner)
        with self._read() as conn:
            return [job_from_mapping(row._mapping) for row in conn.execute(query)]

    def cancel_requests(self, owner: str) -> list[tuple[str, int]]:
        """(job id, attempt) of jobs ``owner`` holds whose cancellation was asked for."""
        query = sa.select(jobs.c.id, jobs.c.attempt).where(
            HELD,
            jobs.c.cancel_requested.is_(True),
            jobs.c.lease_owner == owner,
        )
        with self._read() as conn:
            return [(row.id, row.attempt) for row in conn.execute(query)]

    def write_progress(self, updates: Sequence[dict[str, Any]]) -> int:
        """Write running attempts' latest progress (id, attempt, progress, message, stage),
        each with a progress event; reports for attempts no longer running change nothing."""
        if not updates:
            return 0
        now = self.clock()
        params = [
            {
                "b_id": u["id"],
                "b_attempt": u["attempt"],
                "b_progress": u["progress"],
                "b_message": u["message"],
                "b_stage": u["stage"],
            }
            for u in updates
        ]
        guard = (
            jobs.c.id == sa.bindparam("b_id"),
            jobs.c.attempt == sa.bindparam("b_attempt"),
            jobs.c.status == JobStatus.PROCESSING,
        )
        with self.engine.begin() as conn:
            written = conn.execute(
                sa.update(jobs)
                .where(*guard)
                .values(
                    progress=sa.bindparam("b_progress"),
                    message=sa.bindparam("b_message"),
                    stage=sa.bindparam("b_stage"),
                ),
                params,
            ).rowcount
            conn.execute(
                job_events.insert().from_select(
                    [
                        "job_id",
                        "kind",
                        "status",
                        "attempt",
                        "progress",
                        "message",
                        "stage",
                        "created_at",
                    ],
                    sa.select(
                        jobs.c.id,
                        sa.literal("progress"),
                        sa.literal(JobStatus.PROCESSING.value),
                        jobs.c.attempt,
                        jobs.c.progress,
                        jobs.c.message,
                        jobs.c.stage,
                        sa.literal(now, UTCDateTime),
                    ).where(*guard),
                ),
                params,
            )
        return written

    def set_waiting(self, messages: Mapping[str, str | None]) -> int:
        """Say why unclaimed queued jobs wait (id to message, None clears): the dispatcher
        cannot admit them yet. Held or started jobs keep theirs. Returns rows changed."""
        if not messages:
            return 0
        # Nearly all say the same ("waiting for 1 CPU"): one IN-list UPDATE per message.
        by_message: dict[str | None, list[str]] = {}
        for job_id, text in messages.items():
            by_message.setdefault(text, []).append(job_id)
        changed = 0
        with self.engine.begin() as conn:
            for text, ids in by_message.items():
                for chunk in chunks(ids):
                    statement = (
                        sa.update(jobs)
                        .where(
                            jobs.c.id.in_(chunk),
                            UNHELD_QUEUED,
                            jobs.c.message.is_distinct_from(text),
                        )
                        .values(message=text)
                    )
                    changed += conn.execute(statement).rowcount
        return changed

    def events(self, job_id: str, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        """A job's events after event id ``after``, oldest first."""
        query = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.id > after)
            .order_by(job_events.c.id)
            .limit(limit)
        )
        with self._read() as conn:
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

    def retry(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """Queue a failed or cancelled job again, allowing it one more attempt."""
        now = self.clock()
        with self.engine.begin() as conn:
            job = self._locked(conn, job_id, tenant)
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
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
        return self.get(job_id)

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

    def _read(self) -> Connection:
        return self.engine.connect().execution_options(**READ_ONLY)


def select_jobs() -> sa.Select[Any]:
    """Whole job rows, each with its payload (read with :func:`job_from_mapping`)."""
    return sa.select(jobs, job_payloads.c.payload).join_from(
        jobs, job_payloads, job_payloads.c.job_id == jobs.c.id, isouter=True
    )


def _without_payload(row: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in row.items() if name != "payload"}


def _insert_payloads(conn: Connection, payloads: dict[str, Any]) -> None:
    conn.execute(
        job_payloads.insert(),
        [{"job_id": job_id, "payload": payload} for job_id, payload in payloads.items()],
    )


def check_id(job_id: str) -> None:
    """Ids are UUID strings: anything a database could choke on (NUL, oversize) is unknown."""
    if len(job_id) > 36 or "\x00" in job_id:
        raise NotFound(f"job {job_id[:40]!r} not found")


_JOB_DEFAULTS: dict[str, Any] = {
    "progress": 0.0,
    "message": None,
    "stage": None,
    "result": None,
    "error_type": None,
    "error_message": None,
    "error_traceback": None,
    "attempt": 0,
    "cancel_requested": False,
    "lease_owner": None,
    "lease_expires_at": None,
    "started_at": None,
    "finished_at": None,
    "artifacts": None,
    "then": None,
    "parent_id": None,
    "batch_id": None,
    "batch_index": None,
    "webhook_url": None,
}


def job_from_mapping(row: Any) -> JobRecord:
    error = (
        ErrorInfo(row["error_type"], row["error_message"] or "", row["error_traceback"])
        if row["error_type"]
        else None
    )
    return JobRecord(
        id=row["id"],
        tenant=row["tenant"],
        type=row["type"],
        queue=row["queue"],
        priority=row["priority"],
        status=JobStatus(row["status"]),
        payload=row["payload"],
        progress=float(row["progress"]),
        message=row["message"],
        stage=row["stage"],
        result=row["result"],
        error=error,
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"],
        tags=list(row["tags"] or []),
        idempotency_key=row["idempotency_key"],
        cancel_requested=bool(row["cancel_requested"]),
        created_at=row["created_at"],
        run_at=row["run_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        artifacts=list(row["artifacts"] or []),
        parent_id=row["parent_id"],
        then=row["then"],
        batch_id=row["batch_id"],
        batch_index=row["batch_index"],
        webhook_url=row["webhook_url"],
    )


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
