"""Processing statistics, computed by the database from the recorded jobs and attempts.

Every figure is an aggregate over rows, never an in-memory counter, so every API replica
and the CLI see the same numbers, and they survive restarts. A handful of set-based
queries answer a request, each served by an index on ``finished_at`` or on open jobs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.expression import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from raypipe.exceptions import InvalidInput
from raypipe.jobs import AttemptStatus, JobStatus, iso, utcnow
from raypipe.store.engine import READ_ONLY
from raypipe.store.jobs import Clock
from raypipe.store.tables import PROCESSING_ONLY, QUEUED_ONLY, attempts, jobs

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: The window when none is given, and the longest one a request may ask for.
DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=366)
#: Percentiles reported, by nearest rank: the value at rank ceil(p/100 * n) of n sorted.
PERCENTILES = (50, 95)

FINISHED_ATTEMPTS = (
    AttemptStatus.COMPLETED,
    AttemptStatus.FAILED,
    AttemptStatus.TIMED_OUT,
    AttemptStatus.CANCELLED,
)
TERMINAL_JOBS = tuple(status for status in JobStatus if status.is_terminal)
ERROR_ATTEMPTS = (AttemptStatus.FAILED, AttemptStatus.TIMED_OUT)
#: Conditions on the jobs table that select the jobs counted.
Conditions = Sequence[sa.ColumnElement[bool]]
#: A SELECT of any columns.
AnySelect: TypeAlias = "sa.Select[Unpack[tuple[Any, ...]]]"
#: A SELECT that a helper adds conditions to, keeping its columns.
SelectT = TypeVar("SelectT", bound=AnySelect)
#: The error type counted for a failed attempt that recorded none.
UNKNOWN_ERROR = "unknown"
#: The series' bucket widths in seconds: the narrowest that cuts the window into at most
#: SERIES_BUCKETS is used, so a chart gets at most about that many points, whatever the
#: window (366 days: weeks, 53 of them).
BUCKET_WIDTHS_S = (
    *(1, 2, 5, 10, 15, 30),  # seconds
    *(60, 120, 300, 600, 900, 1800),  # minutes
    *(3600, 7200, 10800, 21600, 43200),  # hours
    *(86400, 172800, 604800),  # days, a week
)
SERIES_BUCKETS = 60
#: Buckets are aligned to multiples of their width since this instant, so a bucket keeps
#: its bounds (and its figures) as the window moves on.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Distribution:
    """A set of durations in seconds: how many, their mean, percentiles and maximum."""

    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    max: float | None


NOTHING = Distribution(0, None, None, None, None)


@dataclass(frozen=True)
class QueueStats:
    """One queue now (``depth``, ``runnable``, ``running``, the oldest runnable job's wait)
    and over the window (``wait_s``: claim time minus the time each attempt became ready)."""

    queue: str
    depth: int
    runnable: int
    running: int
    oldest_waiting_s: float | None
    wait_s: Distribution


@dataclass(frozen=True)
class ErrorCount:
    type: str
    count: int


@dataclass(frozen=True)
class Bucket:
    """Jobs that reached each terminal status in ``[start, end)``."""

    start: datetime
    end: datetime
    jobs: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"start": iso(self.start), "end": iso(self.end), **self.jobs}


@dataclass(frozen=True)
class Stats:
    """What happened in ``[since, until)`` for the jobs the filters select.

    ``attempts`` counts attempts that finished in the window by status; ``jobs`` counts
    jobs whose terminal status was reached in the window. ``success_rate`` is completed
    over completed + failed jobs (cancelled jobs are left out: no verdict on the work);
    ``duration_s`` covers completed attempts only, so fast failures do not flatter it.
    ``series`` splits ``jobs`` over time, in buckets of ``bucket_s`` seconds.
    """

    since: datetime
    until: datetime
    filters: dict[str, str | None]
    attempts: dict[str, int]
    jobs: dict[str, int]
    success_rate: float | None
    duration_s: Distribution
    retries: int
    retried_jobs: int
    errors: tuple[ErrorCount, ...]
    queues: tuple[QueueStats, ...]
    bucket_s: int
    series: tuple[Bucket, ...]

    @property
    def hours(self) -> float:
        return (self.until - self.since).total_seconds() / 3600

    @property
    def throughput_per_hour(self) -> float:
        """Jobs that reached a terminal status, per hour of the window."""
        return self.jobs["total"] / self.hours

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": {"since": iso(self.since), "until": iso(self.until), "hours": self.hours},
            "filters": dict(self.filters),
            "attempts": dict(self.attempts),
            "jobs": dict(self.jobs),
            "success_rate": self.success_rate,
            "duration_s": asdict(self.duration_s),
            "throughput_per_hour": self.throughput_per_hour,
            "retries": self.retries,
            "retried_jobs": self.retried_jobs,
            "errors": [asdict(error) for error in self.errors],
            "queues": [asdict(queue) for queue in self.queues],
            "series": {
                "bucket_s": self.bucket_s,
                "buckets": [bucket.to_dict() for bucket in self.series],
            },
        }


def window(
    since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """The window asked for: ``until`` defaults to now and ``since`` to a day before it.

    Refuses an empty or reversed window, and one longer than :data:`MAX_WINDOW` (a bound
    on what one request may make the database scan).
    """
    until = now if until is None else until
    if since is None:
        try:
            since = until - DEFAULT_WINDOW
        except OverflowError:
            raise InvalidInput(
                "until: out of range", details=[{"loc": ["until"], "msg": "out of range"}]
            ) from None
    if since >= until:
        problem = "must be before until"
    elif until - since > MAX_WINDOW:
        problem = f"the window may span at most {MAX_WINDOW.days} days"
    else:
        return since, until
    raise InvalidInput(f"since: {problem}", details=[{"loc": ["since"], "msg": problem}])


def bucket_width(since: datetime, until: datetime) -> int:
    """The width in seconds of the series' buckets over ``[since, until)``: the narrowest
    of :data:`BUCKET_WIDTHS_S` that needs at most :data:`SERIES_BUCKETS` of them."""
    span = (until - since).total_seconds()
    fits = (width for width in BUCKET_WIDTHS_S if span <= width * SERIES_BUCKETS)
    return next(fits, BUCKET_WIDTHS_S[-1])


def buckets(
    since: datetime, until: datetime, width: int
) -> Iterator[tuple[int, datetime, datetime]]:
    """The buckets of ``width`` seconds that cover ``[since, until)``: their numbers (see
    :func:`bucket_number`) and bounds, the first and the last cut to the window."""
    step = timedelta(seconds=width)
    first = (since - EPOCH) // step
    after_last = -((EPOCH - until) // step)  # ceil((until - EPOCH) / step)
    for number in range(first, after_last):
        start = EPOCH + number * step
        yield number, max(start, since), min(start + step, until)


def bucket_number(at: sa.ColumnElement[Any], width: int, dialect: str) -> sa.ColumnElement[int]:
    """``floor(seconds since the epoch / width)`` in SQL: which bucket ``at`` falls in.

    Exact on both databases: PostgreSQL's epoch is a numeric; SQLite's is whole seconds
    (its text times), and for a whole ``width`` floor(floor(t) / width) = floor(t / width).
    """
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(sa.extract("epoch", at) / width), sa.BigInteger)
    return sa.cast(sa.func.strftime("%s", at), sa.Integer) // width


def seconds_between(
    start: sa.ColumnElement[Any], end: sa.ColumnElement[Any], dialect: str
) -> sa.ColumnElement[float]:
    """``end - start`` in seconds, in SQL.

    SQLite's date functions count whole milliseconds; rounding the julianday difference to
    them removes its floating-point error, so both databases give the same figure for the
    same rows (rows written with finer precision are read to the millisecond on SQLite).
    """
    if dialect == "postgresql":
        return sa.cast(sa.extract("epoch", end - start), sa.Float)
    days = sa.func.julianday(end) - sa.func.julianday(start)
    return sa.type_coerce(sa.func.round(days * 86_400_000) / 1000.0, sa.Float)


class StatsStore:
    """Reads statistics; writes nothing."""

    def __init__(self, engine: Engine, clock: Clock = utcnow):
        self.engine = engine
        self.clock = clock
        self.dialect = engine.dialect.name

    def compute(
        self,
        tenant: str | None = None,
        type: str | None = None,
        queue: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Stats:
        """Statistics of the jobs of ``tenant``, ``type`` and ``queue`` (None: all) over
        ``[since, until)``; see :func:`window` for the defaults and limits."""
        now = self.clock()
        since, until = window(since, until, now)
        filters = {"tenant": tenant, "type": type, "queue": queue}
        selected = self._selected(filters)
        width = bucket_width(since, until)
        with self._snapshot() as conn:
            counts = self._attempt_counts(conn, since, until, selected)
            ended = self._terminal_jobs(conn, since, until, width, selected)
            durations = self._durations(conn, since, until, selected)
            errors = self._errors(conn, since, until, selected)
            queues = self._queues(conn, since, until, now, selected)
        series = tuple(
            Bucket(start, end, _by_status(ended.get(number, {})))
            for number, start, end in buckets(since, until, width)
        )
        by_status = {s.value: sum(b.jobs[s.value] for b in series) for s in TERMINAL_JOBS}
        decided = by_status[JobStatus.COMPLETED.value] + by_status[JobStatus.FAILED.value]
        return Stats(
            since=since,
            until=until,
            filters=filters,
            attempts={
                "total": sum(counts[s.value] for s in FINISHED_ATTEMPTS),
                **{s.value: counts[s.value] for s in FINISHED_ATTEMPTS},
            },
            jobs={"total": sum(by_status.values()), **by_status},
            success_rate=by_status[JobStatus.COMPLETED.value] / decided if decided else None,
            duration_s=durations,
            retries=counts["retries"],
            retried_jobs=counts["retried_jobs"],
            errors=errors,
            queues=queues,
            bucket_s=width,
            series=series,
        )

    # -- the queries ------------------------------------------------------------------

    def _attempt_counts(
        self, conn: Connection, since: datetime, until: datetime, selected: Conditions
    ) -> dict[str, int]:
        """Finished attempts by status, and the retries among them (attempt > 1)."""
        retry = attempts.c.attempt > 1
        query = sa.select(
            *(
                sa.func.count(sa.case((attempts.c.status == status, 1))).label(status.value)
                for status in FINISHED_ATTEMPTS
            ),
            sa.func.count(sa.case((retry, 1))).label("retries"),
            sa.func.count(sa.distinct(sa.case((retry, attempts.c.job_id)))).label("retried_jobs"),
        )
        query = _finished_attempts(query, since, until, selected)
        return dict(conn.execute(query).one()._mapping)

    def _terminal_jobs(
        self,
        conn: Connection,
        since: datetime,
        until: datetime,
        width: int,
        selected: Conditions,
    ) -> dict[int, dict[str, int]]:
        """Jobs that reached a terminal status in the window, by status, per bucket of
        ``width`` seconds (numbered as :func:`bucket_number` numbers them)."""
        bucket = bucket_number(jobs.c.finished_at, width, self.dialect).label("bucket")
        query = (
            sa.select(bucket, jobs.c.status, sa.func.count())
            .where(
                jobs.c.finished_at >= since,
                jobs.c.finished_at < until,
                jobs.c.status.in_(TERMINAL_JOBS),
                *selected,
            )
            .group_by(bucket, jobs.c.status)
        )
        found: dict[int, dict[str, int]] = {}
        for number, status, count in conn.execute(query):
            found.setdefault(number, {})[JobStatus(status).value] = count
        return found

    def _durations(
        self, conn: Connection, since: datetime, until: datetime, selected: Conditions
    ) -> Distribution:
        duration = seconds_between(attempts.c.started_at, attempts.c.finished_at, self.dialect)
        completed = _finished_attempts(
            sa.select(),
            since,
            until,
            selected,
            attempts.c.status == AttemptStatus.COMPLETED,
            # One that ended before its start was reported has no duration.
            attempts.c.started_at.is_not(None),
        )
        [row] = conn.execute(_distribution(completed, duration)).all()
        return _as_distribution(row)

    def _errors(
        self, conn: Connection, since: datetime, until: datetime, selected: Conditions
    ) -> tuple[ErrorCount, ...]:
        kind = sa.func.coalesce(attempts.c.error_type, UNKNOWN_ERROR).label("type")
        count = sa.func.count().label("count")
        query = _finished_attempts(
            sa.select(kind, count), since, until, selected, attempts.c.status.in_(ERROR_ATTEMPTS)
        )
        query = query.group_by(kind).order_by(count.desc(), kind)
        return tuple(ErrorCount(kind, n) for kind, n in conn.execute(query))

    def _queues(
        self,
        conn: Connection,
        since: datetime,
        until: datetime,
        now: datetime,
        selected: Conditions,
    ) -> tuple[QueueStats, ...]:
        """Open jobs per queue now, and per queue the waits of attempts started in the window."""
        # One branch per partial index, each spelled with that index's own predicate.
        both = sa.union_all(
            *(
                sa.select(jobs.c.queue, jobs.c.status, jobs.c.run_at).where(only, *selected)
                for only in (QUEUED_ONLY, PROCESSING_ONLY)
            )
        ).subquery()
        queued = both.c.status == JobStatus.QUEUED
        runnable = sa.and_(queued, both.c.run_at <= now)
        current = sa.select(
            both.c.queue,
            sa.func.count(sa.case((queued, 1))).label("depth"),
            sa.func.count(sa.case((runnable, 1))).label("runnable"),
            sa.func.count(sa.case((both.c.status == JobStatus.PROCESSING, 1))).label("running"),
            sa.func.min(sa.case((runnable, both.c.run_at))).label("oldest"),
        ).group_by(both.c.queue)
        open_jobs = {row.queue: row for row in conn.execute(current)}

        wait = seconds_between(attempts.c.ready_at, attempts.c.started_at, self.dialect)
        started = (
            sa.select()
            .select_from(attempts.join(jobs, jobs.c.id == attempts.c.job_id))
            .where(
                attempts.c.started_at >= since,
                attempts.c.started_at < until,
                # Implied by the two above (an attempt finishes after it starts); lets the
                # index on finished_at skip what finished before the window.
                sa.or_(attempts.c.finished_at >= since, attempts.c.finished_at.is_(None)),
                attempts.c.ready_at.is_not(None),
                *selected,
            )
        )
        waits = {
            row.queue: _as_distribution(row)
            for row in conn.execute(_distribution(started, wait, jobs.c.queue))
        }

        return tuple(
            _queue_stats(name, open_jobs.get(name), waits.get(name, NOTHING), now)
            for name in sorted(open_jobs.keys() | waits.keys())
        )

    def _selected(self, filters: dict[str, str | None]) -> Conditions:
        """The jobs the filters select, as conditions.

        SQLite keeps no statistics unless ANALYZE runs, so an index on a filtered column
        (say every job a tenant ever ran) looks cheaper to it than the window's index; a
        unary plus keeps such indexes out of its plans. PostgreSQL chooses by statistics.
        """
        selected: list[sa.ColumnElement[bool]] = []
        for name, value in filters.items():
            if value is None:
                continue
            column: sa.ColumnElement[str] = jobs.c[name]
            if self.dialect == "sqlite":
                column = UnaryExpression(column, operator=custom_op("+"), type_=column.type)
            selected.append(column == value)
        return selected

    def _snapshot(self) -> Connection:
        """A read-only connection; on PostgreSQL one snapshot for every query, so the
        figures of one answer agree with each other (SQLite's read transaction is one)."""
        options: dict[str, Any] = dict(READ_ONLY)
        if self.dialect == "postgresql":
            options["isolation_level"] = "REPEATABLE READ"
        return self.engine.connect().execution_options(**options)


def _finished_attempts(
    query: SelectT,
    since: datetime,
    until: datetime,
    selected: Conditions,
    *conditions: Any,
) -> SelectT:
    """``query`` over attempts that finished in ``[since, until)`` (the index on
    ``finished_at``) and meet ``conditions``, joined with their jobs only when the job
    filters ``selected`` need them."""
    source = attempts.join(jobs, jobs.c.id == attempts.c.job_id) if selected else attempts
    return query.select_from(source).where(
        attempts.c.finished_at >= since, attempts.c.finished_at < until, *selected, *conditions
    )


def _distribution(
    rows: AnySelect, value: sa.ColumnElement[float], *keys: sa.Column[Any]
) -> AnySelect:
    """Count, mean, percentiles and maximum of ``value`` over ``rows`` (per ``keys``).

    Percentiles by nearest rank, in integer arithmetic: the same definition, and the same
    figures, on both databases (SQLite has no percentile functions).
    """
    over: dict[str, Any] = {"partition_by": list(keys)} if keys else {}
    ranked = rows.with_only_columns(
        *keys,
        value.label("value"),
        sa.func.row_number().over(order_by=value, **over).label("nth"),
        sa.func.count().over(**over).label("n"),
    ).subquery()
    groups = [ranked.c[key.name] for key in keys]
    nearest_rank = {p: (ranked.c.n * p + 99) // 100 for p in PERCENTILES}  # ceil(p * n / 100)
    return sa.select(
        *groups,
        sa.func.count().label("count"),
        sa.func.avg(ranked.c.value).label("mean"),
        *(
            sa.func.max(sa.case((ranked.c.nth == rank, ranked.c.value))).label(f"p{p}")
            for p, rank in nearest_rank.items()
        ),
        sa.func.max(ranked.c.value).label("max"),
    ).group_by(*groups)


def _by_status(found: dict[str, int]) -> dict[str, int]:
    """Counts of jobs by terminal status, with the statuses not ``found`` at 0."""
    return {status.value: found.get(status.value, 0) for status in TERMINAL_JOBS}


def _queue_stats(name: str, open_jobs: Any, waits: Distribution, now: datetime) -> QueueStats:
    oldest = None if open_jobs is None else open_jobs.oldest
    return QueueStats(
        queue=name,
        depth=open_jobs.depth if open_jobs else 0,
        runnable=open_jobs.runnable if open_jobs else 0,
        running=open_jobs.running if open_jobs else 0,
        oldest_waiting_s=None if oldest is None else round((now - oldest).total_seconds(), 3),
        wait_s=waits,
    )


def _as_distribution(row: Any) -> Distribution:
    figures = (row.mean, row.p50, row.p95, row.max)
    return Distribution(row.count, *(None if f is None else float(f) for f in figures))
