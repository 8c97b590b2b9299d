"""A load run over HTTP: N jobs from concurrent clients while some are cancelled and some fail.

    python bench/load.py --jobs 10000 --clients 20 --db sqlite --db postgres

For each database: the API on Ray Serve over a fresh database, raypipe's actors, and
``--clients`` threads, each a :class:`raypipe.Client`, submitting its share of the jobs one
POST at a time: 80 % ``noop``, 10 % ``fail`` (a permanent error), 10 % ``sleep`` jobs
delayed by an hour that the same client cancels right after submitting. Then it waits
until every row is terminal and checks that nothing was lost or recorded twice: exactly N
rows, every one terminal, the counts by status equal to what was asked, and one terminal
event per job. Prints the time to submit, the time until the last job ended, and jobs/s.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
from common import database, start_ray
from http_api import free_port, make_key, on_serve

import raypipe
from raypipe.config import get_settings
from raypipe.jobs import JobStatus
from raypipe.runtime import cluster
from raypipe.store import create_engine
from raypipe.store.tables import job_events, jobs

TERMINAL = [s.value for s in JobStatus if s.is_terminal]


def plan(n: int) -> list[str]:
    """What each job is asked to become: completed, failed or cancelled."""
    return [
        "failed" if i % 10 == 3 else "cancelled" if i % 10 == 7 else "completed" for i in range(n)
    ]


def submit_share(url: str, key: str, share: list[str], errors: list[BaseException]) -> None:
    try:
        with raypipe.Client(url, api_key=key, timeout=60) as client:
            for wanted in share:
                if wanted == "failed":
                    client.submit("fail", {"error": "PermanentError"})
                elif wanted == "cancelled":
                    client.submit("sleep", {"seconds": 1}, delay_s=3600).cancel()
                else:
                    client.submit("noop", {})
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


def check(url: str, wanted: Counter[str]) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            by_status = Counter(
                {
                    status.value if isinstance(status, JobStatus) else status: count
                    for status, count in conn.execute(
                        sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
                    )
                }
            )
            twice = conn.execute(
                sa.select(job_events.c.job_id)
                .where(job_events.c.kind == "status", job_events.c.status.in_(TERMINAL))
                .group_by(job_events.c.job_id)
                .having(sa.func.count() > 1)
            ).all()
    finally:
        engine.dispose()
    if by_status != wanted:
        raise SystemExit(f"counts by status {dict(by_status)} != asked {dict(wanted)}")
    if twice:
        raise SystemExit(f"{len(twice)} jobs have more than one terminal event")


def unfinished(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(sa.func.count()).where(jobs.c.status.not_in(TERMINAL))
            return conn.execute(query).scalar_one()
    finally:
        engine.dispose()


def run(kind: str, n: int, clients: int, folder: Path, port: int) -> None:
    with database(kind, folder) as url:
        settings = get_settings(
            database_url=url,
            data_dir=folder / "data",
            namespace=f"load-{uuid.uuid4().hex[:8]}",
            rate_limits={},
            maintenance_schedules=False,
        )
        key = make_key(url)
        wanted = plan(n)
        cluster.start_actors(settings)
        try:
            with on_serve(settings, port) as api:
                errors: list[BaseException] = []
                threads = [
                    threading.Thread(
                        target=submit_share, args=(api, key, wanted[i::clients], errors)
                    )
                    for i in range(clients)
                ]
                started = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                submitted = time.perf_counter() - started
                if errors:
                    raise SystemExit(f"{len(errors)} clients failed; first: {errors[0]!r}")
                while unfinished(url):
                    time.sleep(0.5)
                drained = time.perf_counter() - started
        finally:
            cluster.stop_actors(settings)
        check(url, Counter(wanted))
        print(
            f"{kind:<9} {n} jobs from {clients} clients: all submitted in {submitted:.1f}s"
            f" ({n / submitted:.0f} jobs/s), all terminal after {drained:.1f}s"
            f" ({n / drained:.0f} jobs/s); {dict(Counter(wanted))}; none lost, none twice",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    from ray import serve

    start_ray(args.cpus)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.db or ["sqlite", "postgres"]:
            run(kind, args.jobs, args.clients, Path(folder), port)
    serve.shutdown()


if __name__ == "__main__":
    main()
