"""Rows written once per key. Idempotency keys, for every table that takes them (jobs,
batches): a row is written once per (tenant, key); the same request again finds the first
row, and a different request under the same key is a :class:`Conflict`. Concurrent
duplicates race on the table's unique index, so exactly one of them writes. Unique jobs
(:mod:`raypipe.store.unique`) race the same way on their slot's index."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from raypipe.exceptions import Conflict
from raypipe.store.engine import upsert

#: The row that holds each key, by the key's values (``(tenant, idempotency_key)``…).
Found = dict[tuple[Any, ...], Row[Any]]

#: The columns of an idempotency key, unique together in every table that takes one.
IDEMPOTENCY_KEY = ("tenant", "idempotency_key")


def insert_once(
    conn: Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    select: Callable[[], sa.Select[Any]],
) -> Found:
    """Insert ``rows``, skipping those whose (tenant, idempotency_key) is taken already;
    returns the row that holds each key now (``select()``: the query to read them with)."""
    insert_new(conn, table, rows)
    return holders(conn, table, rows, select, IDEMPOTENCY_KEY)


def insert_new(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows``, skipping each that would take a value of one of ``table``'s unique
    indexes that a row holds already (committed, or written by a transaction that then
    commits: PostgreSQL waits for it). NULLs never conflict."""
    conn.execute(upsert(conn, table).on_conflict_do_nothing(), rows)


def holders(
    conn: Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    select: Callable[[], sa.Select[Any]],
    key: Sequence[str],
) -> Found:
    """The rows that hold the values of ``key`` (columns, unique together) that ``rows``
    name, by those values; rows whose last key column is empty name none."""
    *scope, last = key
    wanted: dict[tuple[Any, ...], set[Any]] = {}
    for row in rows:
        if row.get(last):
            wanted.setdefault(tuple(row[name] for name in scope), set()).add(row[last])
    found: Found = {}
    for values, taken in wanted.items():
        query = select().where(
            *(table.c[name] == value for name, value in zip(scope, values, strict=True)),
            table.c[last].in_(sorted(taken)),
        )
        for holder in conn.execute(query):
            found[key_of(holder._mapping, key)] = holder
    return found


def key_of(row: Any, key: Sequence[str]) -> tuple[Any, ...]:
    """The values of ``key`` in ``row`` (a dict or a row's mapping), as :data:`Found` keys
    them."""
    return tuple(row.get(name) for name in key)


def earlier(row: dict[str, Any], found: Found, noun: str) -> Row[Any] | None:
    """The row that an earlier request wrote under ``row``'s key (``row`` is a replay), or
    None (``row`` is new); a :class:`Conflict` if that request asked something else."""
    first = found.get(key_of(row, IDEMPOTENCY_KEY))
    if first is None or first.id == row["id"]:
        return None
    if first.request_hash != row["request_hash"]:
        raise Conflict(
            f"idempotency key {row['idempotency_key']!r} was used for a different request"
            f" ({noun} {first.id})"
        )
    return first
