"""Concurrency keys and run limits in the database: what a claim reads of them (held jobs
per key, starts per run key in each window, paused keys), the starts it writes, the
waiting messages of jobs the claim does not read, and a service's pause of a run key.

The decisions are :mod:`raypipe.flow_control`'s; the claim itself is
:meth:`raypipe.store.dispatch.DispatchStore.claim`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from raypipe.flow_control import FlowLimits, FlowState, KeyPair, RunUse
from raypipe.lifecycle import Change
from raypipe.store.engine import upsert
from raypipe.store.tables import guard, jobs, run_pauses, run_starts


def read(
    conn: Connection, limits: FlowLimits, held: Mapping[KeyPair, int], now: datetime
) -> FlowState:
    """The state a claim decides on: ``held`` (counted with the queues' slots), the starts
    of each run key in each configured window, and the pauses not yet over. Without run
    limits, nothing more is read."""
    if not limits.run_limits:
        return FlowState(now, held)
    return FlowState(now, held, _starts(conn, limits.windows, now), _pauses(conn, now))


def _starts(
    conn: Connection, windows: Iterable[float], now: datetime
) -> dict[tuple[float, str], RunUse]:
    """Starts per run key within each window: one grouped query per window length (a
    few), over a table pruned to the longest."""
    starts: dict[tuple[float, str], RunUse] = {}
    for window in windows:
        query = (
            sa.select(run_starts.c.key, sa.func.count(), sa.func.min(run_starts.c.started_at))
            .where(run_starts.c.started_at > now - timedelta(seconds=window))
            .group_by(run_starts.c.key)
        )
        for key, count, oldest in conn.execute(query):
            starts[(window, key)] = RunUse(count, oldest)
    return starts


def _pauses(conn: Connection, now: datetime) -> dict[str, datetime]:
    query = sa.select(run_pauses.c.key, run_pauses.c.until).where(run_pauses.c.until > now)
    return {key: until for key, until in conn.execute(query)}


def record_starts(conn: Connection, keys: Iterable[str], now: datetime) -> None:
    """One start per claimed job with a run key, in the claim's transaction: the next
    claim (of any dispatcher) counts it."""
    rows = [{"key": key, "started_at": now} for key in keys]
    if rows:
        conn.execute(run_starts.insert(), rows)


def prune(conn: Connection, limits: FlowLimits, now: datetime) -> int:
    """Forget starts older than the longest window (and pauses over): nothing counts
    them any more. Returns the starts removed."""
    before = now - timedelta(seconds=limits.longest_window_s)
    conn.execute(sa.delete(run_pauses).where(run_pauses.c.until <= now))
    return conn.execute(sa.delete(run_starts).where(run_starts.c.started_at < before)).rowcount


def pause(engine: Engine, key: str, until: datetime) -> None:
    """Treat run key ``key`` as full until ``until`` (its service asked to wait); a later
    pause of the same key wins, an earlier one changes nothing."""
    insert = upsert(engine, run_pauses).values(key=key, until=until)
    statement = insert.on_conflict_do_update(
        index_elements=[run_pauses.c.key],
        set_={"until": insert.excluded.until},
        where=run_pauses.c.until < insert.excluded.until,
    )
    with engine.begin() as conn:
        conn.execute(statement)


def set_held_back(
    engine: Engine,
    pairs: Mapping[KeyPair, tuple[str, frozenset[str]]],
    run_keys: Mapping[str, str],
) -> int:
    """Say why the queued jobs of saturated (tenant, queue, key) pairs (-> message, and
    the types whose larger limit lets them be read all the same) and of full run keys
    wait: the claim does not read them, so no admission pass writes theirs. One UPDATE
    per key, of its rows whose message differs. Returns rows changed."""
    updates: list[tuple[str, tuple[sa.ColumnElement[bool], ...]]] = [
        (
            message,
            (
                jobs.c.tenant == tenant,
                jobs.c.queue == queue,
                jobs.c.concurrency_key == key,
                jobs.c.type.not_in(sorted(allowed)),
            ),
        )
        for (tenant, queue, key), (message, allowed) in pairs.items()
    ]
    updates += [(message, (jobs.c.run_key == key,)) for key, message in run_keys.items()]
    changed = 0
    with engine.begin() as conn:
        for message, rows in updates:
            statement = (
                sa.update(jobs)
                .where(*rows, guard(Change.SET_WAITING), jobs.c.message.is_distinct_from(message))
                .values(message=message)
            )
            changed += conn.execute(statement).rowcount
    return changed
