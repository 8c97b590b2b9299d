"""What one claim round costs behind a deep backlog of many tenants, with fair share
against first come first served, in the same run.

    python bench/claim_scale.py --rows 1000000 --tenants 1000

For each database: a fresh database holding ``--rows`` queued ``noop`` rows spread over
``--tenants`` tenants (written straight into the table, not timed), then ``--rounds``
claim rounds of ``--batch`` jobs each way, in turn: the store's claim with fair share's
tenant ranking (the dispatcher's default) and without it (reference). After each round
the claimed rows are let go again (not timed), so that every round sees the same
backlog. Prints the median milliseconds of a round and the ratio fair / first come first
served (lower is better), and the same at ``--small`` rows, to show whether a round's
cost grows with the backlog.

What a fair round does more: when its first read of a queue is full, it reads the most
deserving of the tenants waiting there (at most 32), a few rows each, one index range per
tenant; which tenants wait is found again at most once a second (one index probe per
tenant, a loose index scan), so a round's cost grows neither with the rows nor, beyond
that, with the tenants. On PostgreSQL the table is analyzed after seeding, as autovacuum
does soon after a table grows: without statistics the planner picks the wrong index for
the probes.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from common import DB_NAMES, Table, alternate, database, parser, report

from raypipe.fair_share import FairShare
from raypipe.jobs import JobStatus, utcnow
from raypipe.store import Candidate, DispatchStore, JobStore
from raypipe.store.tables import jobs

OWNER = "bench-dispatcher"
#: Rows written per statement while seeding.
SEED_CHUNK = 20_000


def seed(url: str, rows: int, tenants: int) -> None:
    """``rows`` queued noop jobs, tenant by tenant in turn, all due."""
    engine = sa.create_engine(url)
    created = utcnow() - timedelta(minutes=1)
    try:
        for at in range(0, rows, SEED_CHUNK):
            batch = [
                {
                    "id": str(uuid.uuid4()),
                    "tenant": f"tenant-{i % tenants:05d}",
                    "type": "noop",
                    "queue": "default",
                    "priority": 0,
                    "status": JobStatus.QUEUED,
                    "tags": [],
                    "attempt": 0,
                    "max_attempts": 3,
                    "timeout_s": 60.0,
                    "request_hash": "",
                    "cancel_requested": False,
                    "created_at": created + timedelta(microseconds=i),
                    "run_at": created,
                    "updated_at": created,
                }
                for i in range(at, min(rows, at + SEED_CHUNK))
            ]
            with engine.begin() as conn:
                conn.execute(jobs.insert(), batch)
        if engine.dialect.name == "postgresql":
            # What autovacuum does within a minute of a table growing this much: without
            # statistics, PostgreSQL's planner takes a million rows for a handful.
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                    sa.text("ANALYZE jobs")
                )
    finally:
        engine.dispose()


def rounds(url: str, batch: int, count: int, fair: bool) -> float:
    """The median seconds of ``count`` claim rounds, each let go again afterwards."""
    store = JobStore.from_url(url)
    dispatch = DispatchStore(store)
    share = FairShare({}, half_life_s=300.0, now=time.monotonic())

    def take(candidates: Sequence[Candidate], _free: dict[str, int]) -> list[Candidate]:
        return list(candidates[:batch])

    def rank(tenants: list[str]) -> list[str]:
        return share.rank_tenants(tenants, time.monotonic())

    spent = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            claimed = dispatch.claim(
                OWNER, 60.0, {"default": batch}, take, batch, rank if fair else None
            )
            spent.append(time.perf_counter() - started)
            with store.engine.begin() as conn:
                conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id.in_([job.id for job in claimed]))
                    .values(lease_owner=None, lease_expires_at=None)
                )
    finally:
        store.dispose()
    return statistics.median(spent)


def measure(
    kinds: list[str], sizes: list[int], tenants: int, batch: int, count: int, repeat: int
) -> Table:
    rows, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            for size in sizes:
                with database(kind, Path(tmp)) as url:
                    seed(url, size, tenants)
                    firsts, fairs = alternate(
                        repeat,
                        lambda url=url: rounds(url, batch, count, fair=False),
                        lambda url=url: rounds(url, batch, count, fair=True),
                    )
                first, fair = min(firsts), min(fairs)
                rows.append(
                    (
                        DB_NAMES[kind],
                        f"{size:,}",
                        f"{first * 1000:.2f}",
                        f"{fair * 1000:.2f}",
                        f"{fair / first:.2f}",
                    )
                )
                if size == max(sizes):
                    ratios[f"claim round, fair / first come first served, {DB_NAMES[kind]}"] = (
                        fair / first
                    )
    return Table(
        title=(
            f"one claim round of {batch} jobs behind a backlog over {tenants:,} tenants,"
            f" median of {count} rounds, best of {repeat}"
        ),
        columns=("database", "queued rows", "first come ms", "fair ms", "ratio"),
        rows=tuple(rows),
        ratios=ratios,
        notes=("ratio: fair / first come first served, lower is better",),
    )


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--rows", type=int, default=1_000_000)
    args.add_argument("--small", type=int, default=10_000)
    args.add_argument("--tenants", type=int, default=1000)
    args.add_argument("--batch", type=int, default=500)
    args.add_argument("--rounds", type=int, default=20)
    args.add_argument("--db", choices=["sqlite", "postgres"], action="append")
    options = args.parse_args()
    sizes = sorted({options.small, options.rows})
    table = measure(
        options.db or ["sqlite"],
        sizes,
        options.tenants,
        options.batch,
        options.rounds,
        options.repeat,
    )
    report([table], options.json)


if __name__ == "__main__":
    main()
