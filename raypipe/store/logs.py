"""Job logs: each attempt's lines as its worker numbered them, within the attempt's bound."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from raypipe.exceptions import NotFound
from raypipe.job_logs import LogLine, Trim
from raypipe.jobs import JobRecord
from raypipe.store.engine import read_only, upsert
from raypipe.store.tables import job_logs, jobs


@dataclass(frozen=True)
class AttemptLogs:
    """An attempt's lines after ``after`` (by seq), and how many older ones its bound
    dropped."""

    job_id: str
    attempt: int
    lines: list[LogLine]
    dropped: int

    def to_dict(self) -> dict[str, Any]:
        """As ``GET /v1/jobs/{id}/logs`` answers."""
        return {
            "job_id": self.job_id,
            "attempt": self.attempt,
            "lines": [line.to_dict() for line in self.lines],
            "dropped": self.dropped,
        }


def attempt_of(job: JobRecord, attempt: int | None) -> int:
    """The attempt whose log is asked for: ``attempt``, or the job's latest (its first
    before it is claimed, so that following a new job follows that one); an attempt the
    job has not reached is not found."""
    latest = max(job.attempt, 1)
    if attempt is None:
        return latest
    if attempt > latest:
        raise NotFound(f"job {job.id} has no attempt {attempt} (it is at {job.attempt})")
    return attempt


def insert(conn: Connection, lines: Sequence[LogLine]) -> None:
    """Write lines of existing jobs in ``conn``'s transaction; a line written before (a
    resent batch) is kept once. Nothing is sent when there are none: the dispatcher records
    every outcome through here, and most attempts log nothing."""
    if lines:
        rows = [
            {
                "job_id": line.job_id,
                "attempt": line.attempt,
                "seq": line.seq,
                "ts": line.ts,
                "level": line.level,
                "message": line.message,
            }
            for line in lines
        ]
        conn.execute(upsert(conn, job_logs).on_conflict_do_nothing(), rows)


class LogStore:
    """Writes the lines workers ship and reads them back."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def append(self, lines: Sequence[LogLine], trims: Sequence[Trim]) -> None:
        """Write lines, then delete what the trims say fell out of their attempts' bounds,
        in one transaction. Lines of jobs deleted
        meanwhile are dropped, and a line written before (a resent batch) is kept once."""
        job_ids = sorted({line.job_id for line in lines} | {trim.job_id for trim in trims})
        if not job_ids:
            return
        with self.engine.begin() as conn:
            alive = set(conn.scalars(sa.select(jobs.c.id).where(jobs.c.id.in_(job_ids))))
            insert(conn, [line for line in lines if line.job_id in alive])
            for trim in trims:
                conn.execute(
                    sa.delete(job_logs).where(
                        job_logs.c.job_id == trim.job_id,
                        job_logs.c.attempt == trim.attempt,
                        job_logs.c.seq <= trim.seq,
                    )
                )

    def read(self, job_id: str, attempt: int, after: int = 0) -> AttemptLogs:
        """The attempt's lines after seq ``after``, oldest first (all of them are within
        ``log_max_bytes``, so one read is bounded)."""
        of_attempt = sa.and_(job_logs.c.job_id == job_id, job_logs.c.attempt == attempt)
        with read_only(self.engine) as conn:
            first = conn.scalar(sa.select(sa.func.min(job_logs.c.seq)).where(of_attempt))
            rows = conn.execute(
                sa.select(job_logs).where(of_attempt, job_logs.c.seq > after).order_by("seq")
            )
            lines = [LogLine(r.job_id, r.attempt, r.seq, r.ts, r.level, r.message) for r in rows]
        return AttemptLogs(job_id, attempt, lines, dropped=(first or 1) - 1)
