"""The SQL of batches: one transaction writes a batch with all its jobs; counts and progress
are read from the jobs themselves, so they are exact however jobs finish."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from raypipe.batches import BatchRecord, BatchStatus, eta_s
from raypipe.exceptions import Conflict, NotFound
from raypipe.jobs import JobRecord, JobStatus
from raypipe.store import completion, idempotency, transitions
from raypipe.store.engine import read_only
from raypipe.store.jobs import Charge, JobStore, check_id, job_from_mapping, select_jobs
from raypipe.store.tables import UTCDateTime, batches, jobs

#: Jobs read per query when a batch's jobs are listed in order.
PAGE = 1000


class BatchStore:
    """Batches over the same engine and clock as a :class:`JobStore`."""

    def __init__(self, store: JobStore):
        self.store = store
        self.engine = store.engine

    def create(
        self,
        tenant: str,
        rows: list[dict[str, Any]],
        *,
        tags: list[str],
        webhook_url: str | None = None,
        then: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        request_hash: str = "",
    ) -> tuple[BatchRecord, bool]:
        """Write a batch and its prepared job rows, all or nothing, in submission order;
        returns it and whether it is new. A batch made under the same ``idempotency_key``
        with the same ``request_hash`` is returned instead (nothing written); with another
        hash, a :class:`Conflict`."""
        now = self.store.clock()
        batch_id = str(uuid.uuid4())
        for index, row in enumerate(rows):
            row.update(batch_id=batch_id, batch_index=index)
            row.setdefault("created_at", now)
        batch = {
            "id": batch_id,
            "tenant": tenant,
            "total": len(rows),
            "status": BatchStatus.RUNNING.value,
            "tags": list(tags),
            "webhook_url": webhook_url,
            "then": then,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
            "created_at": now,
            "updated_at": now,
        }
        with self.engine.begin() as conn:
            if idempotency_key:
                found = idempotency.insert_once(conn, batches, [batch], lambda: sa.select(batches))
                first = idempotency.earlier(batch, found, "batch")
                if first is not None:
                    record = self._record(conn, first, now)
                    job_ids = conn.execute(
                        sa.select(jobs.c.id)
                        .where(jobs.c.batch_id == first.id)
                        .order_by(jobs.c.batch_index)
                    ).scalars()
                    return BatchRecord(**{**record.__dict__, "job_ids": list(job_ids)}), False
            else:
                conn.execute(batches.insert(), batch)
            self.store.add(conn, rows, now)
            record = self._record(conn, self._row(conn, batch_id, tenant), now)
        return BatchRecord(**{**record.__dict__, "job_ids": [row["id"] for row in rows]}), True

    def get(self, batch_id: str, tenant: str | None = None) -> BatchRecord:
        """The batch with its live counts, or :class:`NotFound` (also for another tenant's)."""
        with read_only(self.engine) as conn:
            return self._record(conn, self._row(conn, batch_id, tenant), self.store.clock())

    def list(self, tenant: str | None = None, limit: int = 50) -> list[BatchRecord]:
        """The newest batches first."""
        query = sa.select(batches).order_by(batches.c.created_at.desc()).limit(limit)
        if tenant is not None:
            query = query.where(batches.c.tenant == tenant)
        now = self.store.clock()
        with read_only(self.engine) as conn:
            return [self._record(conn, row, now) for row in conn.execute(query).all()]

    def jobs(
        self,
        batch_id: str,
        tenant: str | None = None,
        status: JobStatus | None = None,
        after: int = -1,
        limit: int | None = None,
    ) -> Iterator[JobRecord]:
        """The batch's jobs in submission order, from index ``after + 1``, read a page at a time."""
        self.get(batch_id, tenant)
        left = limit
        while left is None or left > 0:
            page = PAGE if left is None else min(PAGE, left)
            query = (
                select_jobs()
                .where(jobs.c.batch_id == batch_id, jobs.c.batch_index > after)
                .order_by(jobs.c.batch_index)
                .limit(page)
            )
            if status is not None:
                query = query.where(jobs.c.status == status)
            with read_only(self.engine) as conn:
                found = [job_from_mapping(row._mapping) for row in conn.execute(query)]
            yield from found
            if len(found) < page:
                return
            after = found[-1].batch_index or 0
            if left is not None:
                left -= len(found)

    def cancel(self, batch_id: str, tenant: str | None = None) -> BatchRecord:
        """Cancel the batch's unclaimed jobs now and ask its held ones to stop; the batch's
        outcome is ``cancelled`` once they have. A finished batch is a :class:`Conflict`."""
        now = self.store.clock()
        with self.engine.begin() as conn:
            batch = self._row(conn, batch_id, tenant)
            if batch.status != BatchStatus.RUNNING.value:
                raise Conflict(f"batch {batch_id} is {batch.status}: only running batches")
            # Jobs first, then the batch row: the order in which recording an outcome locks.
            in_batch = jobs.c.batch_id == batch_id
            transitions.cancel_unheld(conn, in_batch, now)
            transitions.ask_to_stop(conn, in_batch, now)
            conn.execute(
                sa.update(batches)
                .where(batches.c.id == batch_id)
                .values(cancel_requested=True, updated_at=now)
            )
            completion.settle(conn, [batch_id], now, self.store.add)
        return self.get(batch_id)

    def retry_failed(
        self, batch_id: str, tenant: str | None = None, charge: Charge | None = None
    ) -> tuple[BatchRecord, int]:
        """Queue the batch's failed jobs again (one more attempt each); the batch runs again
        and its next end fires its callbacks again. Returns the batch and how many.

        ``charge`` is called with the transaction and how many were queued: it may refuse
        (a tenant's rate limit), which undoes them all."""
        now = self.store.clock()
        with self.engine.begin() as conn:
            self._row(conn, batch_id, tenant)
            retried = transitions.requeue(
                conn,
                sa.and_(jobs.c.batch_id == batch_id, jobs.c.status == JobStatus.FAILED),
                now,
                _greatest(conn, jobs.c.max_attempts, jobs.c.attempt + 1),
            )
            if charge is not None:
                charge(conn, len(retried))
        return self.get(batch_id), len(retried)

    # -- reading ---------------------------------------------------------------------

    def _row(self, conn: Connection, batch_id: str, tenant: str | None) -> Row[Any]:
        check_id(batch_id)
        query = sa.select(batches).where(batches.c.id == batch_id)
        if tenant is not None:
            query = query.where(batches.c.tenant == tenant)
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"batch {batch_id} not found")
        return row

    def _record(self, conn: Connection, row: Row[Any], now: datetime) -> BatchRecord:
        terminal = [s for s in JobStatus if s.is_terminal]
        counts = completion.count_by_status(conn, [row.id])[row.id]
        running_progress, first_started = conn.execute(
            sa.select(
                sa.func.coalesce(
                    sa.func.sum(
                        sa.case((jobs.c.status == JobStatus.PROCESSING, jobs.c.progress), else_=0)
                    ),
                    0.0,
                ),
                sa.func.min(jobs.c.started_at),
            ).where(jobs.c.batch_id == row.id)
        ).one()
        done = sum(counts[s.value] for s in terminal)
        progress = (
            round((100.0 * done + float(running_progress)) / row.total, 2) if row.total else 100.0
        )
        if first_started is not None:
            first_started = UTCDateTime().process_result_value(first_started, conn.dialect)
        status = BatchStatus(row.status)
        return BatchRecord(
            id=row.id,
            tenant=row.tenant,
            status=status,
            total=row.total,
            counts=counts,
            progress=100.0 if status is not BatchStatus.RUNNING else min(progress, 99.99),
            eta_s=0.0
            if status is not BatchStatus.RUNNING
            else eta_s(row.total, progress, first_started, now),
            tags=list(row.tags or []),
            webhook_url=row.webhook_url,
            then=row.then,
            cancel_requested=bool(row.cancel_requested),
            created_at=row.created_at,
            finished_at=row.finished_at,
            completions=row.completions,
        )


def _greatest(conn: Connection, *values: Any) -> Any:
    """SQL's larger-of: ``greatest`` on PostgreSQL, the many-argument ``max`` on SQLite."""
    return (sa.func.max if conn.dialect.name == "sqlite" else sa.func.greatest)(*values)
