"""Job state moves, each one function that writes its event row, used by every caller:
the dispatcher's round (attempts that began and ended), cancelling queued jobs, asking
held ones to stop, and queueing finished ones again.

A round reads the current rows of every job it reports on (one query, locked on
PostgreSQL), decides in Python which reports still apply, then writes each kind of row
with one statement run over many parameter sets. An attempt that begins and ends within
one round (a bundled tiny job) is written once: its job row moves straight to the end
with its start time, and its attempt row is inserted already finished. Every UPDATE
keeps its guard (id, attempt, held) and the round checks that each matched: rows that
changed under it are a conflict, rolled back and retried, never a lost or double write.

An attempt row exists from the attempt's start (or its end, if it never started):
claims write only the job row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from raypipe.followups import follow_up_row
from raypipe.jobs import CANCELLED_ON_REQUEST, AttemptStatus, ErrorInfo, Outcome, UniqueWhile
from raypipe.lifecycle import Change, JobStatus
from raypipe.store import completion, logs
from raypipe.store.tables import attempts, guard, job_events, jobs

#: Ids per statement that lists them: well under SQLite's limit on bound parameters.
CHUNK = 400

#: What the end of a job needs to know of it: its event, follow-ups, webhook and batch.
ENDED_COLUMNS = (
    jobs.c.id,
    jobs.c.attempt,
    jobs.c.progress,
    jobs.c.message,
    jobs.c.stage,
    jobs.c.tenant,
    jobs.c.then,
    jobs.c.type,
    jobs.c.queue,
    jobs.c.tags,
    jobs.c.batch_id,
    jobs.c.webhook_url,
    jobs.c.trace_parent,
)

#: A start report: (job id, attempt, when its code began).
Start = tuple[str, int, datetime]


@dataclass(frozen=True)
class Starts:
    """One dispatcher's start reports: each moves only a job that ``owner`` holds."""

    owner: str
    reports: Sequence[Start]


_CURRENT = sa.select(*ENDED_COLUMNS, jobs.c.status, jobs.c.lease_owner, jobs.c.run_at).where(
    jobs.c.id.in_(sa.bindparam("ids", expanding=True))
)

#: The start time of a job's current attempt, from its attempt row.
_STARTED_AT = (
    sa.select(attempts.c.started_at)
    .where(attempts.c.job_id == jobs.c.id, attempts.c.attempt == jobs.c.attempt)
    .scalar_subquery()
)


#: A unique job's slot once an attempt of it began: a job unique while ``queued`` leaves its
#: window (:mod:`raypipe.store.unique`), and never holds the slot again.
_SLOT_AFTER_START = sa.case(
    (
        sa.and_(jobs.c.unique_while == UniqueWhile.QUEUED.value, _STARTED_AT.is_not(None)),
        sa.null(),
    ),
    else_=jobs.c.unique_slot,
)


class RoundConflict(RuntimeError):
    """A guarded row changed between the round's read and its write (rolled back)."""


def advance(
    conn: Connection,
    starts: Starts | None,
    outcomes: Sequence[Outcome],
    now: datetime,
    add: completion.AddJobs,
) -> tuple[int, int]:
    """Record one dispatcher's start reports (none: ``None``) and how attempts ended,
    inside ``conn``'s transaction. Returns (jobs started, jobs ended).

    A start applies to its owner's still-queued hold of that attempt; an outcome to a
    held job's current attempt, whoever holds it (a rescue records another's). Stale
    reports (the attempt ended, was rescued or retried) change nothing. An outcome whose
    status an attempt's end may not write is an :class:`~raypipe.lifecycle.IllegalMove`,
    before any SQL runs.
    """
    ending: dict[str, Outcome] = {}
    for outcome in outcomes:
        Change.END.to(outcome.status)
        if outcome.job_id not in ending or outcome.attempt > ending[outcome.job_id].attempt:
            ending[outcome.job_id] = outcome
    begun: dict[str, tuple[int, datetime]] = {}
    for job_id, attempt, at in starts.reports if starts else ():
        if job_id not in begun or attempt > begun[job_id][0]:
            begun[job_id] = (attempt, at)
    current = _current(conn, sorted(begun.keys() | ending.keys()))

    started = {
        job_id: at
        for job_id, (attempt, at) in begun.items()
        if starts is not None
        and (row := current.get(job_id)) is not None
        and row.attempt == attempt
        and row.status in Change.START.sources
        and row.lease_owner == starts.owner
    }
    ended = [
        outcome
        for outcome in ending.values()
        if (row := current.get(outcome.job_id)) is not None
        and row.attempt == outcome.attempt
        and row.status in Change.END.sources
        and row.lease_owner is not None
    ]
    ended_ids = {outcome.job_id for outcome in ended}
    only_started = [job_id for job_id in started if job_id not in ended_ids]

    # Attempt rows first: the job rows below take their start time from them.
    new_attempts = [
        _attempt_row(current[job_id], started[job_id], AttemptStatus.RUNNING)
        for job_id in only_started
    ]
    new_attempts += [
        {
            **_attempt_row(row, started.get(o.job_id), o.final_attempt_status),
            "finished_at": now,
            **error_values(o.error),
        }
        for o in ended
        if (row := current[o.job_id]).status != JobStatus.PROCESSING
    ]
    if new_attempts:
        conn.execute(attempts.insert(), new_attempts)

    if starts is not None:
        held = sa.and_(guard(Change.START), jobs.c.lease_owner == starts.owner)
        processing = Change.START.to(JobStatus.PROCESSING)
        for attempt, ids in _by_attempt(only_started, current):
            _write(
                conn,
                sa.update(jobs)
                .where(jobs.c.id.in_(ids), jobs.c.attempt == attempt, held)
                .values(
                    status=processing,
                    started_at=_STARTED_AT,
                    updated_at=now,
                    unique_slot=_SLOT_AFTER_START,
                ),
                len(ids),
            )
    for group in _alike(ended).values():
        first = group[0]
        for attempt, ids in _by_attempt([o.job_id for o in group], current):
            _write(
                conn,
                sa.update(jobs)
                .where(jobs.c.id.in_(ids), jobs.c.attempt == attempt, guard(Change.END))
                .values(
                    {
                        **finish_values(first, now),
                        "started_at": sa.func.coalesce(jobs.c.started_at, _STARTED_AT),
                    }
                ),
                len(ids),
            )
            # Attempts begun in an earlier round end in their existing row.
            begun_before = [i for i in ids if current[i].status == JobStatus.PROCESSING]
            _write(
                conn,
                sa.update(attempts)
                .where(
                    attempts.c.job_id.in_(begun_before),
                    attempts.c.attempt == attempt,
                    attempts.c.status == AttemptStatus.RUNNING,
                )
                .values(
                    status=first.final_attempt_status, finished_at=now, **error_values(first.error)
                ),
                len(begun_before),
            )
        if first.status.is_terminal:
            rows = [current[o.job_id] for o in group]
            completion.notify(conn, rows, first.status, first.result, first.error, now)

    events = [
        status_event(job_id, JobStatus.PROCESSING, current[job_id].attempt, now)
        for job_id in started
    ]
    events += [_end_event(current[o.job_id], o, now) for o in ended]
    if events:
        conn.execute(job_events.insert(), events)
    # An attempt's last lines, stale or not (it logged them), land with its outcome: its
    # log is complete by the time its end can be read.
    logs.insert(conn, [line for o in outcomes if o.job_id in current for line in o.logs])
    _follow_up(conn, ended, current, now, add)
    batch_ids = {current[o.job_id].batch_id for o in ended if o.status.is_terminal}
    completion.settle(conn, batch_ids, now, add)
    return len(started), len(ended)


def _current(conn: Connection, ids: list[str]) -> dict[str, Row]:
    query = _CURRENT.with_for_update() if conn.dialect.name == "postgresql" else _CURRENT
    return {row.id: row for chunk in chunks(ids) for row in conn.execute(query, {"ids": chunk})}


def _by_attempt(ids: list[str], current: Mapping[str, Row[Any]]) -> Iterator[tuple[int, list[str]]]:
    """Ids by their current attempt number (nearly always one group), in chunks."""
    groups: dict[int, list[str]] = {}
    for job_id in ids:
        groups.setdefault(current[job_id].attempt, []).append(job_id)
    for attempt, group in groups.items():
        for chunk in chunks(group):
            yield attempt, chunk


def _alike(outcomes: list[Outcome]) -> dict[tuple[Any, ...], list[Outcome]]:
    """Outcomes that write equal values (every no-op's ``{}``, say) share statements."""
    groups: dict[tuple[Any, ...], list[Outcome]] = {}
    for o in outcomes:
        key = (
            o.status,
            o.final_attempt_status,
            json.dumps(o.result, sort_keys=True),
            o.error,
            o.run_at,
            o.message,
            o.stage,
            json.dumps(o.artifacts, sort_keys=True),
            o.refund,
        )
        groups.setdefault(key, []).append(o)
    return groups


def _write(conn: Connection, statement: sa.Update, expected: int) -> None:
    """Run a guarded UPDATE of ``expected`` rows in chunks of ids; each must match."""
    if not expected:
        return
    matched = conn.execute(statement).rowcount
    if matched != expected:
        raise RoundConflict(f"{expected - matched} of {expected} rows changed during the round")


def _attempt_row(
    row: Row[Any], started_at: datetime | None, status: AttemptStatus
) -> dict[str, Any]:
    return {
        "job_id": row.id,
        "attempt": row.attempt,
        "status": status,
        "lease_owner": row.lease_owner,
        "started_at": started_at,
        "ready_at": row.run_at,
        "finished_at": None,
        **error_values(None),
    }


def _end_event(row: Row[Any], outcome: Outcome, now: datetime) -> dict[str, Any]:
    """The status event of an end, with the progress the job row is left with."""
    progress, message, stage = row.progress, row.message, row.stage
    if outcome.status is JobStatus.COMPLETED:
        progress = 100.0
        if outcome.message is not None or outcome.stage is not None:
            message, stage = outcome.message, outcome.stage
    return status_event(row.id, outcome.status, row.attempt, now, progress, message, stage)


def _follow_up(
    conn: Connection,
    ended: list[Outcome],
    current: Mapping[str, Row[Any]],
    now: datetime,
    add: completion.AddJobs,
) -> None:
    """Submit the follow-ups of jobs that just completed, in the same transaction as
    their completion: exactly once, whatever crashes afterwards."""
    rows = [
        row
        for outcome in ended
        if outcome.status is JobStatus.COMPLETED and (parent := current[outcome.job_id]).then
        for row in [follow_up_row(parent.then, parent.id, parent.tenant, outcome.result, now)]
        if row is not None
    ]
    if rows:
        add(conn, rows, now)


def chunks(items: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def status_event(
    job_id: str,
    status: JobStatus,
    attempt: int,
    now: datetime,
    progress: float = 0.0,
    message: str | None = None,
    stage: str | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "status",
        "status": status.value,
        "attempt": attempt,
        "progress": progress,
        "message": message,
        "stage": stage,
        "created_at": now,
    }


def cancel_unheld(
    conn: Connection, where: sa.ColumnElement[bool], now: datetime
) -> Sequence[Row[Any]]:
    """Cancel the queued jobs matching ``where`` that no dispatcher holds (their webhooks
    queued; the caller settles their batches); returns their rows (``ENDED_COLUMNS``)."""
    ended = conn.execute(
        sa.update(jobs)
        .where(where, guard(Change.CANCEL))
        .values(
            status=Change.CANCEL.to(JobStatus.CANCELLED),
            finished_at=now,
            updated_at=now,
            cancel_requested=True,
            **error_values(CANCELLED_ON_REQUEST),
            **LEFT_WINDOW,
        )
        .returning(*ENDED_COLUMNS)
    ).all()
    if ended:
        conn.execute(
            job_events.insert(),
            [status_event(r.id, JobStatus.CANCELLED, r.attempt, now, r.progress) for r in ended],
        )
        completion.notify(conn, ended, JobStatus.CANCELLED, None, CANCELLED_ON_REQUEST, now)
    return ended


def ask_to_stop(conn: Connection, where: sa.ColumnElement[bool], now: datetime) -> int:
    """Flag the held jobs matching ``where`` for their dispatcher to stop (it records the
    end); returns how many."""
    flagged = (
        sa.update(jobs)
        .where(where, guard(Change.ASK_TO_STOP))
        .values(cancel_requested=True, updated_at=now)
    )
    return conn.execute(flagged).rowcount


def requeue(
    conn: Connection, where: sa.ColumnElement[bool], now: datetime, max_attempts: Any
) -> Sequence[Row[Any]]:
    """Queue the failed or cancelled jobs matching ``where`` again with ``max_attempts`` (a
    value or a column expression), and reopen their batches; returns their (id, attempt,
    batch_id) rows."""
    rows = conn.execute(
        sa.update(jobs)
        .where(where, guard(Change.RETRY))
        .values(requeued(now, max_attempts))
        .returning(jobs.c.id, jobs.c.attempt, jobs.c.batch_id)
    ).all()
    if rows:
        conn.execute(
            job_events.insert(),
            [status_event(r.id, JobStatus.QUEUED, r.attempt, now) for r in rows],
        )
        completion.reopen(conn, [r.batch_id for r in rows], now)
    return rows


def requeued(now: datetime, max_attempts: Any) -> dict[str, Any]:
    """The values that send a finished job back to the queue for one more attempt."""
    return {
        "status": Change.RETRY.to(JobStatus.QUEUED),
        "run_at": now,
        "updated_at": now,
        "finished_at": None,
        "cancel_requested": False,
        "lease_owner": None,
        "lease_expires_at": None,
        "max_attempts": max_attempts,
        "progress": 0.0,
        "message": None,
        "stage": None,
        **error_values(None),
    }


#: What an ended job writes: it leaves any unique window for good (a retry does not
#: take the slot back, so it may run beside a newer job of its key).
LEFT_WINDOW: dict[str, Any] = {"unique_slot": None}


def error_values(error: ErrorInfo | None) -> dict[str, Any]:
    return {
        "error_type": error.type if error else None,
        "error_message": error.message if error else None,
        "error_traceback": error.traceback if error else None,
    }


def finish_values(outcome: Outcome, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": Change.END.to(outcome.status),
        "updated_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        **error_values(outcome.error),
    }
    if outcome.status is JobStatus.QUEUED:
        values["run_at"] = outcome.run_at
        # Queued again after it began (in this round, or an earlier one): out of a
        # ``queued`` window all the same.
        values["unique_slot"] = _SLOT_AFTER_START
        if outcome.refund:
            values["max_attempts"] = jobs.c.max_attempts + 1
    else:
        values["finished_at"] = now
        values.update(LEFT_WINDOW)
    if outcome.status is JobStatus.COMPLETED:
        values["result"] = outcome.result
        values["artifacts"] = list(outcome.artifacts) or None
        values["progress"] = 100.0
        if outcome.message is not None or outcome.stage is not None:
            values["message"], values["stage"] = outcome.message, outcome.stage
    return values
