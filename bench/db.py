"""Database time per job of the dispatcher's state machine, against the least a durable
queue must write, in the same run.

    python bench/db.py --jobs 10000

For each database and each of ``--repeat`` runs, three fresh copies of N ``noop`` rows
(inserted first, not timed), measured in turn. Reference: per round one
``SELECT … LIMIT`` of runnable ids and two set-based ``UPDATE``s (claim, complete),
nothing else. raypipe: the store's own ``claim`` (held), ``start`` (processing, attempt
row, event) and ``record`` (completed, attempt row, event) in rounds of ``--batch`` jobs,
as the dispatcher calls them; then each round's starts and ends in one ``advance``, as a
bundle of tiny jobs reports them (the attempt row written once: the "1 round" rows).
Each one's best run is kept. Prints µs of database time per job for each phase and the
ratio raypipe / reference: here lower is better.

The reference is the least a durable queue writes per job (pick ids, mark them taken,
mark them done); raypipe also writes an attempt row, two status events and the start
time per job, and guards every move (job id, attempt number and status). Rounds are
set-wise, and a start and an end reported in the same round are one write. What limits
it: statement execution is the smaller part; most is building the statements and rows
in Python, and on PostgreSQL the per-row INSERTs of attempt rows and events.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from common import DB_NAMES, Table, alternate, database, parser, report

from raypipe.config import get_settings
from raypipe.direct import DirectClient
from raypipe.jobs import JobStatus, Outcome, utcnow
from raypipe.store import Candidate, DispatchStore, JobStore
from raypipe.store.tables import jobs

OWNER = "bench-dispatcher"
PHASES = ("claim", "start", "record")

T = TypeVar("T")


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
    spent = dict.fromkeys(PHASES, 0.0)

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


def least(url: str, batch: int) -> float:
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


def on_fresh_rows(kind: str, folder: Path, n: int, work: Callable[[str], T]) -> T:
    """``work(url)`` on a fresh database of ``kind`` holding ``n`` queued rows."""
    with database(kind, folder) as url:
        seed(url, folder, n)
        return work(url)


def fastest(runs: list[dict[str, float]]) -> dict[str, float]:
    return min(runs, key=lambda spent: sum(spent.values()))


def measure(kinds: list[str], n: int, batch: int, repeat: int) -> Table:
    per_job = 1e6 / n
    rows, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            fresh = partial(on_fresh_rows, kind, Path(tmp), n)
            references, ours, folded = alternate(
                repeat,
                partial(fresh, partial(least, batch=batch)),
                partial(fresh, partial(state_machine, batch=batch)),
                partial(fresh, partial(state_machine, batch=batch, folded=True)),
            )
            reference, plain = min(references), fastest(ours)
            ratios[f"state machine µs/job, {DB_NAMES[kind]} (lower is better)"] = (
                sum(plain.values()) / reference
            )
            for label, phases in (
                (DB_NAMES[kind], plain),
                (f"{DB_NAMES[kind]}, 1 round", fastest(folded)),
            ):
                total = sum(phases.values())
                rows.append(
                    (
                        label,
                        *(f"{phases[phase] * per_job:.1f}" for phase in PHASES),
                        f"{total * per_job:.1f}",
                        f"{reference * per_job:.1f}",
                        f"{total / reference:.2f}",
                    )
                )
    return Table(
        title=f"{n:,} jobs, rounds of {batch}: µs of database time per job, best of {repeat}",
        columns=("database", "claim", "start", "record", "raypipe", "reference", "ratio"),
        rows=tuple(rows),
        ratios=ratios,
        notes=("1 round: each job's start and end recorded in one round, as a bundle's are",),
    )


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--jobs", type=int, default=10_000)
    args.add_argument("--batch", type=int, default=500, help="jobs per round")
    args.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    options = args.parse_args()
    kinds = options.db or ["sqlite", "postgres"]
    report([measure(kinds, options.jobs, options.batch, options.repeat)], options.json)


if __name__ == "__main__":
    main()
