"""No-op jobs through raypipe against raw Ray tasks doing the same no-op, in the same run.

    python bench/noop.py --jobs 5000 --db sqlite --db postgres

For each database: raw Ray tasks (N ``ray.remote`` no-ops, ``ray.get`` on all), then N
raypipe ``noop`` jobs submitted in one batch and timed until every one is terminal (after
one job has started the ``workers`` pool's actor, as the raw side's workers are warm; the
actor is stopped between runs, so that it holds no CPU from the raw tasks). The two sides
alternate ``--repeat`` times and each side's best is kept. Prints jobs/s for both, the
ratio raypipe / raw, and the seconds spent submitting in raypipe's best run.

How raypipe keeps up with raw Ray here: ``noop`` runs bundled on the ``workers`` pool,
one actor call carrying up to 200 jobs and streaming their starts and ends back, so
Ray's cost per call is shared; a pool actor's place is freed as each job ends, and the
dispatcher sends the next jobs as places free, so the actor never drains while a round
trip is on its way; the ``default`` queue's concurrency (400) holds two bundles, so a
bundle's round trip never waits for a dispatcher round; rounds begin every
``dispatch_interval_s`` rather than that long after the previous one ended; a claim reads
the payloads of the jobs it takes only.

What limits it, on PostgreSQL most: the submission itself (every row and its first event
in one transaction, during which nothing can be claimed, where the raw side's tasks start
as they are submitted: the "submit s" column), then the state machine's database work
per job, which ``bench/db.py`` measures. Anything an attempt pays that is not the
processor's own (an import, a scan of ``sys.path``) shows here first: a ``registry.load``
per attempt once divided this figure several times over, unnoticed until tests/perf
held it to a floor.
"""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path

import ray
from common import (
    DB_NAMES,
    Table,
    alternate,
    bench_settings,
    database,
    parser,
    report,
    start_ray,
    wait_for,
)

from raypipe.config import Settings
from raypipe.direct import running


@ray.remote(num_cpus=1, max_retries=0)
def raw_noop() -> dict[str, object]:
    return {}


def raw_rate(n: int) -> float:
    started = time.perf_counter()
    ray.get([raw_noop.remote() for _ in range(n)])
    return n / (time.perf_counter() - started)


def raypipe_rate(settings: Settings, n: int) -> tuple[float, float]:
    """(jobs/s end to end, seconds spent submitting), on raypipe's actors started for it
    (and stopped after: the pool's actor would hold a CPU from the raw tasks)."""
    with running(settings) as client:
        # Start the workers pool's actor first, as Ray's workers are for the raw tasks.
        client.submit("noop", {}).wait(timeout=120)
        started = time.perf_counter()
        handles = client.submit_many([("noop", {})] * n)
        submitted = time.perf_counter() - started
        ended = wait_for(client.store, "default", [h.id for h in handles], poll_s=0.1)
        return n / (ended - started), submitted


def measure(kinds: list[str], n: int, num_cpus: int, repeat: int) -> Table:
    """Both sides on each database of ``kinds``, on a local Ray of ``num_cpus`` CPUs."""
    start_ray(num_cpus)
    raw_rate(min(n, 500))  # start the workers for both sides
    rows, ratios = [], {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in kinds:
                with database(kind, Path(tmp)) as url:
                    settings = bench_settings(url, Path(tmp))
                    raws, runs = alternate(
                        repeat, partial(raw_rate, n), partial(raypipe_rate, settings, n)
                    )
                raw, (ours, submit_s) = max(raws), max(runs)
                ratios[f"noop jobs/s, {DB_NAMES[kind]}"] = ours / raw
                rows.append(
                    (
                        DB_NAMES[kind],
                        f"{raw:,.0f}",
                        f"{ours:,.0f}",
                        f"{ours / raw:.2f}",
                        f"{submit_s:.2f}",
                    )
                )
    finally:
        ray.shutdown()
    return Table(
        title=f"{n:,} no-op jobs, {num_cpus} CPUs, best of {repeat}",
        columns=("database", "raw Ray jobs/s", "raypipe jobs/s", "ratio", "submit s"),
        rows=tuple(rows),
        ratios=ratios,
    )


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--jobs", type=int, default=5000)
    args.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    args.add_argument("--num-cpus", type=int, default=2)
    options = args.parse_args()
    kinds = options.db or ["sqlite", "postgres"]
    report([measure(kinds, options.jobs, options.num_cpus, options.repeat)], options.json)


if __name__ == "__main__":
    main()
