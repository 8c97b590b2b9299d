"""Database time per job of the dispatcher's state machine, against the least a durable
queue must write, in the same run.

    python bench/db.py --jobs 20000 --db sqlite --db postgres

For each database, N ``noop`` rows are inserted first (not timed). raypipe: the store's
own ``claim`` (held), ``start`` (processing, attempt row, event) and ``record``
(completed, attempt row, event) in rounds of ``--batch`` jobs, as the dispatcher calls
them; then, on a second copy, each round's starts and ends in one ``advance``, as a
bundle of tiny jobs reports them (the attempt row written once). Reference, on a fresh
copy of the same rows: per round one ``SELECT … LIMIT`` of runnable ids and two
set-based ``UPDATE``s (claim, complete), nothing else. Prints µs of database time
per job for each phase and the ratio raypipe / reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from common import database

from raypipe.config import get_settings
from raypipe.direct import DirectClient
from raypipe.jobs import JobStatus, Outcome, utcnow
from raypipe.store import Candidate, DispatchStore, JobStore
from raypipe.store.tables import jobs

OWNER = "bench-dispatcher"


def seed(url: str, folder: Path, n: int) -> None:
    client = DirectClient(get_settings(database_url=url, data_dir=folder / "data"))
    try:
        for at in range(0, n, 5000):
            client.submit_many([("noop", {})] * min(5000, n - at))
    finally:
        client.close()


def state_machine(url: str, batch: int, folded: bool = False) -> dict[str, float]:
    """Seconds spent in each of the store's calls, over every job; ``folded``: each
    round's starts and ends in one ``advance`` (a bundle of tiny jobs), timed as "start"."""
    store = JobStore.from_url(url)
    spent = {"claim": 0.0, "start": 0.0, "record": 0.0}

    def take(candidates: Sequence[Candidate], _free: dict[str, int]) -> list[Candidate]:
        return list(candidates)

    try:
        while True:
            t0 = time.perf_counter()
            dispatch = DispatchStore(store)
            claimed = dispatch.claim(OWNER, 60.0, {"default": batch}, take, batch)
            t1 = time.perf_counter()
            if not claimed:
                break
            starts = [(job.id, job.attempt, utcnow()) for job in claimed]
            ends = [Outcome(j.id, j.attempt, JobStatus.COMPLETED, {}) for j in claimed]
            if folded:
                dispatch.advance(OWNER, starts, ends)
                t2 = t3 = time.perf_counter()
            else:
                dispatch.start(OWNER, starts)
                t2 = time.perf_counter()
                dispatch.record(ends)
                t3 = time.perf_counter()
            spent["claim"] += t1 - t0
            spent["start"] += t2 - t1
            spent["record"] += t3 - t2
    finally:
        store.dispose()
    return spent


def floor(url: str, batch: int) -> float:
    """Seconds for the least work: pick ids, mark them taken, mark them done."""
    engine = sa.create_engine(url)
    spent = 0.0
    try:
        while True:
            started = time.perf_counter()
            with engine.begin() as conn:
                ids = list(
                    conn.execute(
                        sa.select(jobs.c.id)
                        .where(jobs.c.status == JobStatus.QUEUED, jobs.c.lease_owner.is_(None))
                        .limit(batch)
                    ).scalars()
                )
                if not ids:
                    break
                conn.execute(sa.update(jobs).where(jobs.c.id.in_(ids)).values(lease_owner=OWNER))
            with engine.begin() as conn:
                conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id.in_(ids))
                    .values(status=JobStatus.COMPLETED, lease_owner=None)
                )
            spent += time.perf_counter() - started
    finally:
        engine.dispose()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="jobs per round")
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db or ["sqlite", "postgres"]:
            with (
                database(kind, Path(tmp)) as ours,
                database(kind, Path(tmp)) as bundled,
                database(kind, Path(tmp)) as reference,
            ):
                for url in (ours, bundled, reference):
                    seed(url, Path(tmp), args.jobs)
                least = floor(reference, args.batch)
                rows.append((kind, state_machine(ours, args.batch), least))
                rows.append((f"{kind}, 1 round", state_machine(bundled, args.batch, True), least))
    per_job = 1e6 / args.jobs
    print(f"\n{args.jobs} jobs, rounds of {args.batch}: µs of database time per job")
    print("(1 round: each job's start and end recorded in one round, as a bundle's are)")
    print(
        f"{'database':<18} {'claim':>7} {'start':>7} {'record':>7} {'raypipe':>8}"
        f" {'reference':>10} {'ratio':>6}"
    )
    for kind, phases, least in rows:
        total = sum(phases.values())
        print(
            f"{kind:<18} {phases['claim'] * per_job:>7.1f} {phases['start'] * per_job:>7.1f}"
            f" {phases['record'] * per_job:>7.1f} {total * per_job:>8.1f}"
            f" {least * per_job:>10.1f} {total / least:>6.2f}"
        )


if __name__ == "__main__":
    main()
