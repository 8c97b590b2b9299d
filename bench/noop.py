"""No-op jobs through raypipe against raw Ray tasks doing the same no-op, in the same run.

    python bench/noop.py --jobs 5000 --db sqlite --db postgres

For each database: raw Ray tasks (N ``ray.remote`` no-ops, ``ray.get`` on all), then N
raypipe ``noop`` jobs submitted in one batch and timed until every row is terminal (after
one job has started the ``workers`` pool's actor, as the raw side's workers are warm).
The two sides alternate ``--repeat`` times and each side's best is kept: this machine's
speed drifts by up to 2× within a minute, which one run of each would read as a ratio.
Prints jobs/s for both and the ratio raypipe / raw.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import ray
from common import database, start_ray

from raypipe.config import Settings, get_settings
from raypipe.direct import DirectClient
from raypipe.jobs import JobStatus
from raypipe.runtime import actors


@ray.remote(num_cpus=1, max_retries=0)
def raw_noop() -> dict[str, object]:
    return {}


def raw_rate(n: int) -> float:
    started = time.perf_counter()
    ray.get([raw_noop.remote() for _ in range(n)])
    return n / (time.perf_counter() - started)


def raypipe_rate(settings: Settings, n: int) -> tuple[float, float]:
    """(jobs/s end to end, seconds spent submitting), on raypipe's actors started for it."""
    actors.start_actors(settings)
    client = DirectClient(settings)
    try:
        # Start the workers pool's actor first, as Ray's workers are for the raw tasks.
        client.submit("noop", {}).wait(timeout=120)
        started = time.perf_counter()
        handles = client.submit_many([("noop", {})] * n)
        submitted = time.perf_counter() - started
        while client.store.count_unfinished("default"):
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
        # Counted by id: a built-in maintenance schedule may fire a job of its own meanwhile.
        counts = client.store.count_by_status(handle.id for handle in handles)
        if counts.get(JobStatus.COMPLETED) != n:
            raise SystemExit(f"not every job completed: {counts}")
        return n / elapsed, submitted
    finally:
        # Stopped between runs: the pool's actor would hold a CPU from the raw tasks.
        actors.stop_actors(settings)
        client.close()


def compare(settings: Settings, n: int, repeat: int) -> tuple[float, float, float]:
    """(best raw Ray jobs/s, best raypipe jobs/s, seconds spent submitting in that run),
    the two sides alternating ``repeat`` times."""
    raws, runs = [], []
    for _ in range(repeat):
        raws.append(raw_rate(n))
        runs.append(raypipe_rate(settings, n))
    return (max(raws), *max(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (best kept)")
    args = parser.parse_args()
    kinds = args.db or ["sqlite", "postgres"]

    start_ray(args.num_cpus)
    raw_rate(min(args.jobs, 500))  # start the workers for both sides
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            with database(kind, Path(tmp)) as url:
                settings = get_settings(
                    database_url=url,
                    data_dir=Path(tmp) / "data",
                    namespace=f"bench-{uuid.uuid4().hex[:8]}",
                )
                rows.append((kind, *compare(settings, args.jobs, args.repeat)))
    ray.shutdown()
    print(f"\n{args.jobs} no-op jobs, {args.num_cpus} CPUs, best of {args.repeat}")
    print(
        f"{'database':<10} {'raw Ray jobs/s':>15} {'raypipe jobs/s':>15} {'ratio':>7}"
        f" {'submit s':>9}"
    )
    for kind, raw, ours, submit_s in rows:
        print(f"{kind:<10} {raw:>15.0f} {ours:>15.0f} {ours / raw:>7.2f} {submit_s:>9.2f}")


if __name__ == "__main__":
    main()
