"""Writing and reading a large batch, against a plain insert of the same rows, in one run.

    python bench/batches.py --jobs 10000 --db sqlite --db postgres

For each database: the reference is one ``INSERT`` of N already-built ``noop`` job rows
(SQLAlchemy ``executemany``, no validation, no events); raypipe is ``prepare_batch``
(validation of every spec) plus ``BatchStore.create`` (the batch row, N jobs and their
first events in one transaction). Then the time to read the batch's counts and progress
(``BatchStore.get``), and to list all its jobs in order. Prints jobs/s and the ratio
raypipe / reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import database

from raypipe import registry
from raypipe.config import get_settings
from raypipe.jobs import utcnow
from raypipe.store import JobStore, create_engine
from raypipe.store.batches import BatchStore
from raypipe.store.tables import jobs
from raypipe.submission import prepare, prepare_batch


def run(kind: str, n: int, folder: Path) -> None:
    with database(kind, folder) as url:
        settings = get_settings(database_url=url, data_dir=folder / "data")
        registry.load(settings.processor_modules)
        store = JobStore(create_engine(url))
        batches = BatchStore(store)
        specs = [{"type": "noop", "payload": {}} for _ in range(n)]

        rows = prepare(specs, settings, utcnow(), loc_prefix=("jobs",))
        for row in rows:
            row.update(status="queued", updated_at=row["created_at"])
        started = time.perf_counter()
        with store.engine.begin() as conn:
            conn.execute(jobs.insert(), rows)
        reference = n / (time.perf_counter() - started)

        started = time.perf_counter()
        rows, fields = prepare_batch({"jobs": specs}, settings, utcnow())
        validated = time.perf_counter() - started
        batch = batches.create("default", rows, **fields)
        total = time.perf_counter() - started
        ours = n / total

        started = time.perf_counter()
        read = batches.get(batch.id)
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        listed = sum(1 for _ in batches.jobs(batch.id))
        list_s = time.perf_counter() - started
        assert read.counts["queued"] == n and listed == n
        store.dispose()
        print(
            f"{kind:<9} plain insert {reference:8.0f} jobs/s | raypipe batch {ours:8.0f} jobs/s"
            f" ({total:.2f}s, validation {validated:.2f}s) | ratio {ours / reference:.2f}"
            f" | read counts {read_s * 1000:.0f} ms | list {n} jobs {list_s:.2f}s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.db or ["sqlite", "postgres"]:
            run(kind, args.jobs, Path(folder))


if __name__ == "__main__":
    main()
