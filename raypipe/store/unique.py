"""Unique jobs: while a job with a ``unique_key`` is in its window (``unique_while``:
``queued``, or ``running`` for queued or processing) its ``unique_slot`` holds the key, and
the unique index on (tenant, type, unique_slot) refuses a second such job. A submission
that finds the slot taken gets the job that holds it; with ``on_duplicate: replace`` a
holder still queued, that no dispatcher holds, takes the new payload and ``run_at``
(debounce).

Leaving the window clears the slot for good (:mod:`raypipe.store.transitions`): a job
retried after it ended is not unique again, and may run beside a newer job of its key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from raypipe.jobs import OnDuplicate
from raypipe.store import idempotency
from raypipe.store.idempotency import IDEMPOTENCY_KEY, Found, key_of
from raypipe.store.tables import UNHELD_QUEUED, job_payloads, jobs

#: The columns of a unique job's slot, unique together (``uq_jobs_unique_slot``).
SLOT = ("tenant", "type", "unique_slot")

#: A job row's field that says what a duplicate does to the job holding its slot; asked
#: of the spec (:func:`raypipe.submission.prepare` writes it), not stored.
ON_DUPLICATE = "on_duplicate"


@dataclass
class Holders:
    """Who holds the keys that submitted rows name, read in their transaction."""

    #: The job holding each (tenant, idempotency key).
    keys: Found = field(default_factory=dict)
    #: The job holding each (tenant, type, unique slot).
    slots: Found = field(default_factory=dict)

    def holder(self, row: dict[str, Any]) -> Row[Any] | None:
        """The other job that holds ``row``'s slot (``row`` was not written), or None."""
        held = self.slots.get(key_of(row, SLOT))
        return held if held is not None and held.id != row["id"] else None

    def wrote(self, row: dict[str, Any]) -> bool:
        """Whether :func:`insert` wrote ``row``: no other job holds its idempotency key or
        its slot."""
        for found, key in ((self.keys, IDEMPOTENCY_KEY), (self.slots, SLOT)):
            held = found.get(key_of(row, key))
            if held is not None and held.id != row["id"]:
                return False
        return True


def insert(
    conn: Connection, rows: list[dict[str, Any]], select: Callable[[], sa.Select[Any]]
) -> Holders:
    """Insert job rows (without their payloads), skipping each whose idempotency key or
    unique slot is taken, even by a concurrent submission; returns who holds each key.

    A slot whose holder left its window between the insert and the read (it started or
    ended) is free again: its row is inserted once more.
    """
    found = Holders()
    pending = rows
    while pending:
        idempotency.insert_new(conn, jobs, pending)
        keys = idempotency.holders(conn, jobs, pending, select, IDEMPOTENCY_KEY)
        slots = idempotency.holders(conn, jobs, pending, select, SLOT)
        found.keys.update(keys)
        found.slots.update(slots)
        pending = [
            row
            for row in pending
            if row.get("unique_slot")
            and key_of(row, SLOT) not in slots
            and key_of(row, IDEMPOTENCY_KEY) not in keys
        ]
    return found


def keyed(rows: list[dict[str, Any]]) -> bool:
    """Whether any row takes a key (idempotency or unique): they are written by
    :func:`insert`; others by a plain INSERT, the faster."""
    return any(row.get("idempotency_key") or row.get("unique_slot") for row in rows)


def replace(conn: Connection, holder_id: str, row: dict[str, Any], now: datetime) -> None:
    """Give the job ``holder_id`` the payload and ``run_at`` of ``row``, a duplicate of it,
    if ``row`` asks to replace it and that job is still queued and no dispatcher holds it
    (the guarded UPDATE waits for a concurrent claim on PostgreSQL)."""
    if row.get(ON_DUPLICATE) != OnDuplicate.REPLACE:
        return
    moved = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == holder_id, UNHELD_QUEUED)
        .values(run_at=row["run_at"], updated_at=now)
    ).rowcount
    if moved:
        conn.execute(
            sa.update(job_payloads)
            .where(job_payloads.c.job_id == holder_id)
            .values(payload=row["payload"])
        )
