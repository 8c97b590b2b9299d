"""Idempotency keys, for every table that takes them (jobs, batches): a row is written once
per (tenant, key); the same request again finds the first row, and a different request
under the same key is a :class:`Conflict`. Concurrent duplicates race on the table's unique
(tenant, idempotency_key) index, so exactly one of them writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from raypipe.exceptions import Conflict
from raypipe.store.engine import upsert

#: The row that holds each (tenant, idempotency key).
Found = dict[tuple[str, str], Row[Any]]


def insert_once(
    conn: Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    select: Callable[[], sa.Select[Any]],
) -> Found:
    """Insert ``rows``, skipping those whose (tenant, idempotency_key) is taken already;
    returns the row that holds each key now (``select()``: the query to read them with)."""
    conn.execute(
        upsert(conn, table).on_conflict_do_nothing(index_elements=["tenant", "idempotency_key"]),
        rows,
    )
    by_tenant: dict[str, set[str]] = {}
    for row in rows:
        if row.get("idempotency_key"):
            by_tenant.setdefault(row["tenant"], set()).add(row["idempotency_key"])
    found: Found = {}
    for tenant, keys in by_tenant.items():
        query = select().where(table.c.tenant == tenant, table.c.idempotency_key.in_(sorted(keys)))
        for existing in conn.execute(query):
            found[(existing.tenant, existing.idempotency_key)] = existing
    return found


def earlier(row: dict[str, Any], found: Found, noun: str) -> Row[Any] | None:
    """The row that an earlier request wrote under ``row``'s key (``row`` is a replay), or
    None (``row`` is new); a :class:`Conflict` if that request asked something else."""
    first = found.get((row["tenant"], row.get("idempotency_key") or ""))
    if first is None or first.id == row["id"]:
        return None
    if first.request_hash != row["request_hash"]:
        raise Conflict(
            f"idempotency key {row['idempotency_key']!r} was used for a different request"
            f" ({noun} {first.id})"
        )
    return first
