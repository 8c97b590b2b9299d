"""The dispatcher's side of the jobs table: claims, starts and outcomes, leases, cancel
requests and waiting messages; and the progress actor's writes. Each status change is a
guarded UPDATE (:mod:`raypipe.store.transitions`), so a stale or repeated report changes
nothing.

The users' side of the same rows is :class:`raypipe.store.jobs.JobStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from raypipe.flow_control import FlowControl, KeyPair
from raypipe.jobs import ClaimedJob, JobRecord, Outcome
from raypipe.lifecycle import Change, JobStatus
from raypipe.store import flow_control, queues, transitions
from raypipe.store.engine import read_only
from raypipe.store.jobs import JobStore, job_from_mapping, select_jobs
from raypipe.store.tables import HELD, UTCDateTime, guard, job_events, job_payloads, jobs
from raypipe.store.transitions import chunks

#: pg_advisory_xact_lock key that serialises claims, so queue limits hold across dispatchers.
CLAIM_LOCK_KEY = 0x7261797069706500


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
    trace_parent: str | None
    concurrency_key: str | None = None
    run_key: str | None = None


ChooseClaims = Callable[[Sequence[Candidate], dict[str, int]], list[Candidate]]
#: Tenants with jobs waiting in a queue, the most deserving first (fair share).
RankTenants = Callable[[list[str]], list[str]]
#: Rows read per pass when several tenants wait, in multiples of the pass's limit.
FAIR_READ = 2
#: The most tenants a pass reads (the most deserving): a pass reads one index range per
#: tenant; those left out are read by the next passes, as the first ones' usage grows.
FAIR_TENANTS = 32
#: How long the list of a queue's waiting tenants is reused: finding them costs one index
#: probe per tenant, and a tenant that starts waiting is seen this much later at most.
TENANTS_REUSED_S = 1.0


#: A candidate's columns, in :class:`Candidate`'s order.
CANDIDATE_COLUMNS = tuple(jobs.c[name] for name in Candidate.__dataclass_fields__)


def _held_back(flow: FlowControl | None, queue: str) -> tuple[sa.ColumnElement[bool], ...]:
    """What keeps the jobs of saturated keys out of ``queue``'s candidate read: (tenant,
    key) pairs at the queue's key limit (but for types whose own limit is larger), and
    full or paused run keys. A job without a key (NULL, which NOT IN never lets
    through) is always read."""
    state = flow.state if flow is not None else None
    if flow is None or state is None:
        return ()
    clauses = []
    key, key_pair = jobs.c.concurrency_key, sa.tuple_(jobs.c.tenant, jobs.c.concurrency_key)
    saturated = {
        (tenant, name): allowed
        for (tenant, q, name), allowed in state.saturated(flow.limits).items()
        if q == queue
    }
    pairs = [pair for pair, allowed in saturated.items() if not allowed]
    if pairs:
        clauses.append(sa.or_(key.is_(None), key_pair.not_in(pairs)))
    for (tenant, name), allowed in saturated.items():
        if allowed:  # rare: a type with a larger key limit of its own may still start
            clauses.append(
                sa.or_(
                    key.is_(None),
                    key_pair != (tenant, name),
                    jobs.c.type.in_(sorted(allowed)),
                )
            )
    full = sorted(state.full_run_keys(flow.limits))
    if full:
        clauses.append(sa.or_(jobs.c.run_key.is_(None), jobs.c.run_key.not_in(full)))
    return tuple(clauses)


def _claim_order(query: sa.Select[Any]) -> sa.Select[Any]:
    """Highest priority first, then oldest (the claim index's order)."""
    return query.order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)


class DispatchStore:
    """What the dispatcher and the progress actor read and write, on a job store's engine
    and clock."""

    def __init__(self, jobs: JobStore):
        self.jobs = jobs
        #: Queue -> its waiting tenants, and when they were found (by the store's clock).
        self._tenants: dict[str, tuple[list[str], datetime]] = {}

    @property
    def engine(self) -> Engine:
        return self.jobs.engine

    @property
    def dialect(self) -> str:
        return self.jobs.dialect

    def clock(self) -> datetime:
        """Now, by the job store's clock (tests set theirs)."""
        return self.jobs.clock()

    @classmethod
    def from_url(cls, url: str, wait_for_flush: bool = True) -> DispatchStore:
        return cls(JobStore.from_url(url, wait_for_flush=wait_for_flush))

    def running_by_queue(self) -> dict[str, int]:
        with read_only(self.engine) as conn:
            return self._held(conn)[0]

    @staticmethod
    def _held(conn: Connection) -> tuple[dict[str, int], dict[KeyPair, int]]:
        """Held jobs per queue (a claimed job takes its queue's slot before it starts) and
        per (tenant, queue, concurrency key): one grouped query over the few held rows."""
        key = jobs.c.concurrency_key
        query = (
            sa.select(jobs.c.queue, jobs.c.tenant, key, sa.func.count())
            .where(HELD)
            .group_by(jobs.c.queue, jobs.c.tenant, key)
        )
        by_queue: dict[str, int] = {}
        by_key: dict[KeyPair, int] = {}
        for queue, tenant, concurrency_key, count in conn.execute(query):
            by_queue[queue] = by_queue.get(queue, 0) + count
            if concurrency_key is not None:
                by_key[(tenant, queue, concurrency_key)] = count
        return by_queue, by_key

    def claim(
        self,
        owner: str,
        lease_ttl_s: float,
        queue_limits: dict[str, int],
        choose: ChooseClaims,
        limit: int,
        rank: RankTenants | None = None,
        flow: FlowControl | None = None,
    ) -> list[ClaimedJob]:
        """Hold runnable jobs under ``owner``'s lease, each with a new attempt; they stay
        ``queued`` until :meth:`start` hears that their worker began.

        Candidates come highest priority first, then oldest, from queues that are not
        paused and have free slots (held jobs take slots); ``choose`` picks among them
        (resources, free slots). With ``rank`` (fair share), a queue where several tenants
        wait is read tenant by tenant, the most deserving first: a flood of one tenant
        never hides another's jobs from the pass.

        With ``flow``, what is held per concurrency key and started per run key is read
        into ``flow.state`` first (for ``choose`` to admit by), the jobs of saturated
        keys are not read (a flood of one key never hides another's), and each job taken
        with a run key writes its start.
        """
        now = self.clock()
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
            running, held = self._held(conn)
            stopped = queues.paused(conn)
            free = {q: n - running.get(q, 0) for q, n in queue_limits.items() if q not in stopped}
            if flow is not None:
                flow.state = flow_control.read(conn, flow.limits, held, now)
            candidates = sorted(
                (
                    candidate
                    for queue, slots in free.items()
                    if slots > 0
                    for candidate in self._candidates(
                        conn, queue, now, min(slots, limit), rank, _held_back(flow, queue)
                    )
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
                        .where(jobs.c.id.in_(chunk), guard(Change.CLAIM))
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
            if flow is not None:
                self._count_starts(conn, flow, [c for c in chosen if c.id in taken], now)
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
                trace_parent=c.trace_parent,
            )
            for c in chosen
            if c.id in taken
        ]

    def _candidates(
        self,
        conn: Connection,
        queue: str,
        now: datetime,
        limit: int,
        rank: RankTenants | None,
        held_back: tuple[sa.ColumnElement[bool], ...] = (),
    ) -> list[Candidate]:
        """Runnable jobs of one queue in claim order, less those ``held_back``; one query
        per queue so that the claim index serves the ORDER BY instead of a sort of every
        queued row.

        With ``rank`` and several tenants waiting behind a full read: the first ``limit``
        tenants it ranks, each read to its share of ``FAIR_READ`` × ``limit`` rows (and
        to ``limit`` at most), one index range each. A read that is not full saw every
        runnable job, of every tenant: no more is needed."""
        runnable = (guard(Change.CLAIM), jobs.c.queue == queue, jobs.c.run_at <= now)
        readable = (*runnable, *held_back)
        query = _claim_order(sa.select(*CANDIDATE_COLUMNS).where(*readable)).limit(limit)
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        read = [Candidate(*row) for row in conn.execute(query)]
        if rank is None or len(read) < limit:
            return read
        tenants = self._tenants_of(conn, queue, runnable, now)
        if len(tenants) <= 1:
            return read
        first = rank(tenants)[: min(limit, FAIR_TENANTS)]
        each = min(limit, -(-FAIR_READ * limit // len(first)))
        # No FOR UPDATE here (PostgreSQL refuses it on a UNION): claims are serialised by
        # CLAIM_LOCK_KEY, and the guarded UPDATE takes only rows still unheld and queued.
        parts = [
            _claim_order(
                sa.select(*CANDIDATE_COLUMNS).where(*readable, jobs.c.tenant == tenant)
            ).limit(each)
            for tenant in first
        ]
        union = sa.union_all(*(sa.select(part.subquery()) for part in parts))
        return [Candidate(*row) for row in conn.execute(union)]

    @staticmethod
    def _count_starts(
        conn: Connection, flow: FlowControl, taken: Sequence[Candidate], now: datetime
    ) -> None:
        """Write a start for each job taken with a run key; once a window, forget the
        starts no window counts any more."""
        flow_control.record_starts(conn, [c.run_key for c in taken if c.run_key], now)
        if flow.prune_due(now):
            flow_control.prune(conn, flow.limits, now)

    def _tenants_of(
        self, conn: Connection, queue: str, runnable: tuple[Any, ...], now: datetime
    ) -> list[str]:
        """The queue's waiting tenants, found again once ``TENANTS_REUSED_S`` has passed
        (a tenant found that no longer waits is read for nothing, once)."""
        known = self._tenants.get(queue)
        if known is None or (now - known[1]).total_seconds() >= TENANTS_REUSED_S:
            known = self._tenants[queue] = (self._waiting_tenants(conn, runnable), now)
        return known[0]

    @staticmethod
    def _waiting_tenants(conn: Connection, runnable: tuple[Any, ...]) -> list[str]:
        """Tenants with runnable jobs in the queue: one index probe per tenant (a loose
        index scan, as a recursive query), however many jobs each has waiting.

        Each probe is the first row in (queue, tenant) order past the last tenant found,
        not ``min(tenant)``: with conditions the index does not hold (lease, run_at),
        SQLite works a ``min`` out over every queued row of the queue."""

        def first(*after: sa.ColumnElement[bool]) -> sa.ScalarSelect[Any]:
            query = sa.select(jobs.c.tenant).where(*runnable, *after)
            return query.order_by(jobs.c.queue, jobs.c.tenant).limit(1).scalar_subquery()

        found = sa.select(first().label("tenant")).cte("tenants", recursive=True)
        found = found.union_all(
            sa.select(first(jobs.c.tenant > found.c.tenant).label("tenant")).where(
                found.c.tenant.is_not(None)
            )
        )
        query = sa.select(found.c.tenant).where(found.c.tenant.is_not(None))
        return [tenant for (tenant,) in conn.execute(query)]

    def start(self, owner: str, starts: Sequence[transitions.Start]) -> int:
        """Move held jobs whose worker reported (id, attempt, when) it began to ``processing``.

        Only ``owner``'s still-queued hold of that attempt moves, so a late or repeated
        report (the attempt ended, was rescued or retried) changes nothing; one status
        event per job that moved. Returns how many moved.
        """
        return self._round(transitions.Starts(owner, starts), ())[0]

    def record(self, outcomes: Sequence[Outcome]) -> int:
        """Record how attempts ended; stale outcomes (wrong attempt, or the job no longer
        held: requeued or ended) change nothing. An attempt that ends before its start
        was reported is recorded all the same.

        In the same transaction: follow-up jobs, webhook deliveries, and the end of
        batches whose last job this was. Returns how many jobs changed.
        """
        return self._round(None, outcomes)[1]

    def advance(
        self, owner: str, starts: Sequence[transitions.Start], outcomes: Sequence[Outcome]
    ) -> tuple[int, int]:
        """:meth:`start`, then :meth:`record`, in one transaction: what readers see moves
        from one round's state to the next (never a started job beside the one it
        replaced still running). Returns (jobs started, jobs ended)."""
        return self._round(transitions.Starts(owner, starts), outcomes)

    def _round(
        self, starts: transitions.Starts | None, outcomes: Sequence[Outcome]
    ) -> tuple[int, int]:
        if not (starts and starts.reports) and not outcomes:
            return 0, 0
        with self.engine.begin() as conn:
            return transitions.advance(conn, starts, outcomes, self.clock(), self.jobs.add)

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
            .where(guard(Change.RENEW_LEASE), jobs.c.lease_owner == owner)
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
        with read_only(self.engine) as conn:
            return [job_from_mapping(row._mapping) for row in conn.execute(query)]

    def cancel_requests(self, owner: str) -> list[tuple[str, int]]:
        """(job id, attempt) of jobs ``owner`` holds whose cancellation was asked for."""
        query = sa.select(jobs.c.id, jobs.c.attempt).where(
            HELD,
            jobs.c.cancel_requested.is_(True),
            jobs.c.lease_owner == owner,
        )
        with read_only(self.engine) as conn:
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
        running = (
            jobs.c.id == sa.bindparam("b_id"),
            jobs.c.attempt == sa.bindparam("b_attempt"),
            guard(Change.PROGRESS),
        )
        with self.engine.begin() as conn:
            written = conn.execute(
                sa.update(jobs)
                .where(*running)
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
                    ).where(*running),
                ),
                params,
            )
        return written

    def set_held_back(
        self, pairs: Mapping[KeyPair, tuple[str, frozenset[str]]], run_keys: Mapping[str, str]
    ) -> int:
        """Say why the jobs of saturated concurrency keys and full run keys wait (the claim
        does not read them): :func:`raypipe.store.flow_control.set_held_back`."""
        if not pairs and not run_keys:
            return 0
        return flow_control.set_held_back(self.engine, pairs, run_keys)

    def pause_run_key(self, key: str, until: datetime) -> None:
        """Treat run key ``key`` as full until ``until`` (its service answered 429)."""
        flow_control.pause(self.engine, key, until)

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
                            guard(Change.SET_WAITING),
                            jobs.c.message.is_distinct_from(text),
                        )
                        .values(message=text)
                    )
                    changed += conn.execute(statement).rowcount
        return changed
