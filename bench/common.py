"""What the scripts in bench/ share: a local Ray of fixed size, a fresh migrated database,
raypipe running on it, a run's own jobs waited for and counted, the two sides of a
comparison taken in turn, and the one shape of every bench's figures (:class:`Table`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
import sqlalchemy as sa

from raypipe.config import Settings, get_settings
from raypipe.jobs import JobStatus
from raypipe.store import JobStore, create_engine, schema_version

PG_ADMIN_URL = os.environ.get(
    "RAYPIPE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
#: How the tables name each ``--db`` choice.
DB_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
#: Ids per query when counting a run's jobs: SQLite takes at most 32,766 parameters.
IDS_PER_QUERY = 10_000

T = TypeVar("T")


# -- figures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """One table of a bench's figures, as its ``main()`` prints it.

    ``rows`` are formatted cells, the first column a label; ``ratios`` name the headline
    ratios (raypipe over the reference measured in the same run) that bench/run_all.py
    summarises in the README and tests/perf holds to their floors; ``notes`` are lines
    printed under the table.
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    ratios: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Table:
        """The table back from its JSON (``asdict``) form."""
        return cls(
            title=data["title"],
            columns=tuple(data["columns"]),
            rows=tuple(tuple(row) for row in data["rows"]),
            ratios=dict(data["ratios"]),
            notes=tuple(data["notes"]),
        )

    def text(self) -> str:
        """For a terminal: aligned columns, words to the left and figures to the right."""
        cells = [self.columns, *self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        words = [
            all(any(c.isalpha() for c in row[i]) for row in self.rows) for i in range(len(widths))
        ]
        lines = [self.title]
        for row in cells:
            line = "  ".join(
                cell.ljust(width) if left else cell.rjust(width)
                for cell, width, left in zip(row, widths, words, strict=True)
            )
            lines.append(line.rstrip())
        return "\n".join([*lines, *self.notes])

    def markdown(self) -> str:
        """For docs/benchmarks.md: the title in bold, a table, the notes as a list."""
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "---|" * len(self.columns))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines)


def parser(doc: str, repeat: bool = True) -> argparse.ArgumentParser:
    """A bench's command line, with ``--json`` (and ``--repeat`` where it compares)."""
    result = argparse.ArgumentParser(description=doc.splitlines()[0])
    result.add_argument(
        "--json", type=Path, help="also write the tables there, for bench/run_all.py"
    )
    if repeat:
        result.add_argument(
            "--repeat", type=int, default=3, help="runs of each side, in turn (best kept)"
        )
    return result


def report(tables: Sequence[Table], json_path: Path | None) -> None:
    """Print ``tables``; write them to ``json_path`` as well when one is given."""
    for table in tables:
        print("\n" + table.text(), flush=True)
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(t) for t in tables], indent=1) + "\n")


def alternate(repeat: int, *sides: Callable[[], T]) -> list[list[T]]:
    """Each side's results over ``repeat`` runs, the sides taken in turn (a, b, a, b…).

    This machine's speed drifts by up to 2× within a minute, which one run of each side
    would read as a ratio; callers keep each side's best.
    """
    results: list[list[T]] = [[] for _ in sides]
    for _ in range(repeat):
        for side, runs in zip(sides, results, strict=True):
            runs.append(side())
    return results


# -- databases and raypipe ---------------------------------------------------------------


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh migrated database of ``kind``; dropped afterwards (PostgreSQL)."""
    if kind == "sqlite":
        url = f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        admin = None
    else:
        name = f"raypipe_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)
    engine = create_engine(url)
    schema_version.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            admin.dispose()


def start_ray(num_cpus: int) -> None:
    """A local Ray of ``num_cpus`` CPUs for this run, quiet and without the dashboard."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def bench_settings(url: str, folder: Path, **overrides: Any) -> Settings:
    """Settings on ``url`` with a Ray namespace of their own (raypipe's actors of an
    earlier measurement may still be going away)."""
    return get_settings(
        database_url=url,
        data_dir=folder / "data",
        namespace=f"bench-{uuid.uuid4().hex[:8]}",
        **overrides,
    )


def chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """``ids`` in slices small enough for one query's parameters (SQLite takes 32,766)."""
    for start in range(0, len(ids), IDS_PER_QUERY):
        yield ids[start : start + IDS_PER_QUERY]


def count_by_status(store: JobStore, ids: Sequence[str]) -> Counter[JobStatus]:
    """How many of the jobs ``ids`` are in each status.

    A bench counts its own jobs by id, never all rows: a built-in maintenance schedule
    may fire a job of its own during the run.
    """
    counts: Counter[JobStatus] = Counter()
    for some in chunks(ids):
        counts.update(store.count_by_status(some))
    return counts


def wait_drained(store: JobStore, queue: str, poll_s: float, timeout_s: float = 3600) -> float:
    """Wait until ``queue`` has no job queued or processing; the ``perf_counter`` at which
    that was seen.

    A bench waits for its own jobs this way, then counts them by id: the queue's count is
    one indexed query, where counting thousands of ids takes tens of milliseconds per
    poll, CPU that the measured side needs. Another job in the queue can only make the
    wait longer.
    """
    deadline = time.perf_counter() + timeout_s
    while left := store.count_unfinished(queue):
        if time.perf_counter() > deadline:
            raise SystemExit(f"{left} jobs of queue {queue!r} unfinished after {timeout_s:.0f}s")
        time.sleep(poll_s)
    return time.perf_counter()


def wait_for(store: JobStore, queue: str, ids: Sequence[str], poll_s: float) -> float:
    """Wait until the jobs ``ids``, all in ``queue``, are terminal (:func:`wait_drained`);
    the ``perf_counter`` at which that was seen. Fails unless every one completed."""
    ended = wait_drained(store, queue, poll_s)
    counts = count_by_status(store, ids)
    if counts[JobStatus.COMPLETED] != len(ids):
        failed = next(j for j in map(store.get, ids) if j.status is not JobStatus.COMPLETED)
        raise SystemExit(
            f"not every job completed: {dict(counts)}; job {failed.id} {failed.status.value}:"
            f" {failed.error}"
        )
    return ended


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
