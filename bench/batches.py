"""Writing and reading a large batch, against a plain insert of the same rows, in one run.

    python bench/batches.py --jobs 10000

For each database: the reference is one ``INSERT`` of N already-built ``noop`` job rows
(SQLAlchemy ``executemany``, no validation, no events); raypipe is ``prepare_batch``
(validation of every spec) plus ``BatchStore.create`` (the batch row, N jobs and their
first events in one transaction). The two alternate ``--repeat`` times on the same
database and each one's best is kept. Then the time to read the last batch's counts and
progress (``BatchStore.get``), and to list all its jobs in order. Prints jobs/s and the
ratio raypipe / reference.

The batch does about three times the reference's writing (job rows, their events, the
batch row) plus pydantic validation of each payload, which is what limits it. Reading a
batch is two indexed aggregate queries, whatever its size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import DB_NAMES, Table, alternate, database, parser, report

from raypipe import registry
from raypipe.config import Settings, get_settings
from raypipe.jobs import utcnow
from raypipe.store import JobStore, create_engine
from raypipe.store.batches import BatchStore
from raypipe.store.tables import jobs
from raypipe.submission import prepare, prepare_batch


def plain_insert(store: JobStore, settings: Settings, n: int) -> float:
    """Seconds to insert ``n`` rows built beforehand (not timed), as they are."""
    specs = [{"type": "noop", "payload": {}} for _ in range(n)]
    rows = prepare(specs, settings, utcnow(), loc_prefix=("jobs",))
    for row in rows:
        row.update(status="queued", updated_at=row["created_at"])
    started = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(jobs.insert(), rows)
    return time.perf_counter() - started


def batch(batches: BatchStore, settings: Settings, n: int) -> tuple[float, float, str]:
    """(seconds in all, of which validating, the batch's id) for an ``n``-job batch."""
    specs = [{"type": "noop", "payload": {}} for _ in range(n)]
    started = time.perf_counter()
    rows, fields = prepare_batch({"jobs": specs}, settings, utcnow())
    validated = time.perf_counter() - started
    created, _new = batches.create("default", rows, **fields)
    return time.perf_counter() - started, validated, created.id


def run(kind: str, n: int, folder: Path, repeat: int) -> tuple[tuple[str, ...], float]:
    """(the table's row, the ratio): both sides on a fresh database of ``kind``, then the
    reads."""
    with database(kind, folder) as url:
        settings = get_settings(database_url=url, data_dir=folder / "data")
        registry.load(settings.processor_modules)
        store = JobStore(create_engine(url))
        batches = BatchStore(store)
        try:
            references, ours = alternate(
                repeat,
                lambda: plain_insert(store, settings, n),
                lambda: batch(batches, settings, n),
            )
            total, validated, batch_id = min(ours)
            started = time.perf_counter()
            read = batches.get(batch_id)
            read_s = time.perf_counter() - started
            started = time.perf_counter()
            listed = sum(1 for _ in batches.jobs(batch_id))
            list_s = time.perf_counter() - started
        finally:
            store.dispose()
    if read.counts["queued"] != n or listed != n:
        raise SystemExit(f"batch {batch_id}: {read.counts} and {listed} listed, not {n}")
    reference, ours_rate = n / min(references), n / total
    row = (
        DB_NAMES[kind],
        f"{reference:,.0f}",
        f"{ours_rate:,.0f}",
        f"{total:.2f}",
        f"{validated:.2f}",
        f"{ours_rate / reference:.2f}",
        f"{read_s * 1000:.0f}",
        f"{list_s:.2f}",
    )
    return row, ours_rate / reference


def measure(kinds: list[str], n: int, repeat: int) -> Table:
    with tempfile.TemporaryDirectory() as folder:
        runs = {DB_NAMES[kind]: run(kind, n, Path(folder), repeat) for kind in kinds}
    return Table(
        title=f"a batch of {n:,} no-op jobs against a plain insert of them, best of {repeat}",
        columns=(
            "database",
            "plain insert jobs/s",
            "raypipe batch jobs/s",
            "batch s",
            "of which validation s",
            "ratio",
            "read counts ms",
            f"list {n:,} jobs s",
        ),
        rows=tuple(row for row, _ in runs.values()),
        ratios={f"batch insert jobs/s, {name}": ratio for name, (_, ratio) in runs.items()},
    )


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--jobs", type=int, default=10_000)
    args.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    options = args.parse_args()
    kinds = options.db or ["sqlite", "postgres"]
    report([measure(kinds, options.jobs, options.repeat)], options.json)


if __name__ == "__main__":
    main()
