"""What else is written in the transaction that ends a job: its webhook delivery, and the end
of its batch with the batch's callbacks. Being in that transaction is what makes each of
them happen exactly once, whatever crashes or runs concurrently."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from raypipe.batches import BatchStatus, outcome
from raypipe.followups import follow_up_row
from raypipe.jobs import ErrorInfo
from raypipe.lifecycle import UNFINISHED_STATUSES, JobStatus
from raypipe.store.tables import batches, jobs, webhook_deliveries
from raypipe.webhooks.events import batch_event, job_event

#: Writes job rows in a transaction (:meth:`raypipe.store.jobs.JobStore.add`); what it
#: returns is not used here.
AddJobs = Callable[[Connection, list[dict[str, Any]], datetime], object]


def notify(
    conn: Connection,
    ended: Sequence[Any],
    status: JobStatus,
    result: Any,
    error: ErrorInfo | None,
    now: datetime,
) -> None:
    """Queue the webhooks of jobs that just reached the terminal ``status`` in this
    transaction; ``ended``: rows with (id, type, queue, attempt, tenant, tags, batch_id,
    webhook_url). Their batches are settled after, once per transaction (:func:`settle`)."""
    deliveries = [job_event(job, status, result, error, now) for job in ended if job.webhook_url]
    if deliveries:
        conn.execute(webhook_deliveries.insert(), deliveries)


def settle(conn: Connection, batch_ids: Iterable[str | None], now: datetime, add: AddJobs) -> None:
    """End every running batch among ``batch_ids`` whose jobs are all terminal now, and write
    its callbacks.

    On PostgreSQL the batch rows are locked (in id order) before the jobs are counted:
    two transactions that each end one of a batch's last two jobs then count one after
    the other, and the second sees the first's job ended. (SQLite runs one writer at a time.)
    """
    ids = sorted({batch_id for batch_id in batch_ids if batch_id})
    if not ids:
        return
    query = (
        sa.select(batches)
        .where(batches.c.id.in_(ids), batches.c.status == BatchStatus.RUNNING.value)
        .order_by(batches.c.id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    running = {row.id: row for row in conn.execute(query)}
    if not running:
        return
    unfinished = set(
        conn.execute(
            sa.select(jobs.c.batch_id)
            .where(
                jobs.c.batch_id.in_(list(running)), jobs.c.status.in_(sorted(UNFINISHED_STATUSES))
            )
            .group_by(jobs.c.batch_id)
        ).scalars()
    )
    done = [running[batch_id] for batch_id in running if batch_id not in unfinished]
    if not done:
        return
    counts = count_by_status(conn, [batch.id for batch in done])
    for batch in done:
        status = outcome(counts[batch.id], batch.cancel_requested)
        ended = conn.execute(
            sa.update(batches)
            .where(batches.c.id == batch.id, batches.c.status == BatchStatus.RUNNING.value)
            .values(
                status=status.value,
                finished_at=now,
                updated_at=now,
                completions=batches.c.completions + 1,
            )
        ).rowcount
        if ended:
            summary = {
                "id": batch.id,
                "status": status.value,
                "total": batch.total,
                "counts": counts[batch.id],
            }
            _callbacks(conn, batch, summary, now, add)


def reopen(conn: Connection, batch_ids: Iterable[str | None], now: datetime) -> None:
    """Jobs of these batches run again (a retry): their batches are running once more, and
    their next end fires their callbacks again."""
    ids = sorted({batch_id for batch_id in batch_ids if batch_id})
    if ids:
        conn.execute(
            sa.update(batches)
            .where(batches.c.id.in_(ids))
            .values(
                status=BatchStatus.RUNNING.value,
                finished_at=None,
                cancel_requested=False,
                updated_at=now,
            )
        )


def count_by_status(conn: Connection, batch_ids: list[str]) -> dict[str, dict[str, int]]:
    """Per batch, how many of its jobs are in each status (every status present, 0 or more)."""
    counts = {batch_id: {s.value: 0 for s in JobStatus} for batch_id in batch_ids}
    query = (
        sa.select(jobs.c.batch_id, jobs.c.status, sa.func.count())
        .where(jobs.c.batch_id.in_(batch_ids))
        .group_by(jobs.c.batch_id, jobs.c.status)
    )
    for batch_id, status, count in conn.execute(query):
        counts[batch_id][JobStatus(status).value] = count
    return counts


def _callbacks(
    conn: Connection, batch: Any, summary: dict[str, Any], now: datetime, add: AddJobs
) -> None:
    if batch.then:
        row = follow_up_row(batch.then, batch.id, batch.tenant, summary, now)
        if row is not None:
            row["parent_id"] = None  # the parent is a batch, not a job
            row["tags"] = [*row["tags"], f"batch:{batch.id}"]
            add(conn, [row], now)
    if batch.webhook_url:
        conn.execute(
            webhook_deliveries.insert(),
            [batch_event(batch.tenant, batch.webhook_url, summary, now)],
        )
