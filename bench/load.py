"""A load run over HTTP: N jobs from concurrent clients while some are cancelled and some fail.

    python bench/load.py --jobs 10000 --clients 20 --db sqlite --db postgres

For each database: the API on Ray Serve over a fresh database, raypipe's actors, and
``--clients`` threads, each a :class:`raypipe.Client`, submitting its share of the jobs one
POST at a time (``--per-request N``: N per ``POST /v1/jobs/bulk``): 80 % ``noop``, 10 %
``fail`` (a permanent error), 10 % ``sleep`` jobs delayed by an hour that the same client
cancels right after submitting. Then it waits
until every row is terminal and checks that nothing was lost or recorded twice: exactly N
rows, every one terminal, the counts by status equal to what was asked, one terminal event
per job, and one attempt per job that ran. Prints the time to submit, the time until the
last job ended, and jobs/s.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import database, start_ray
from http_api import free_port, make_key, on_serve

import raypipe
from raypipe.config import get_settings
from raypipe.jobs import JobStatus
from raypipe.runtime import actors
from raypipe.store import create_engine
from raypipe.store.tables import attempts, job_events, jobs

TERMINAL = [s.value for s in JobStatus if s.is_terminal]


def plan(n: int) -> list[str]:
    """What each job is asked to become: completed, failed or cancelled."""
    return [
        "failed" if i % 10 == 3 else "cancelled" if i % 10 == 7 else "completed" for i in range(n)
    ]


#: The job asked for each wanted outcome; the cancelled ones wait an hour, so the
#: cancel always comes first.
SPECS: dict[str, dict[str, Any]] = {
    "completed": {"type": "noop", "payload": {}},
    "failed": {"type": "fail", "payload": {"error": "PermanentError"}},
    "cancelled": {"type": "sleep", "payload": {"seconds": 1}, "delay_s": 3600},
}


def submit_share(
    url: str, key: str, share: list[str], per_request: int, errors: list[BaseException]
) -> None:
    """One client: ``share`` in order, ``per_request`` jobs per POST (1: ``/v1/jobs``,
    more: ``/v1/jobs/bulk``), each job meant to be cancelled cancelled right after."""
    try:
        with raypipe.Client(url, api_key=key, timeout=60) as client:
            for start in range(0, len(share), per_request):
                chunk = share[start : start + per_request]
                if per_request == 1:
                    handles = [client.submit(**SPECS[chunk[0]])]
                else:
                    handles = client.submit_many(SPECS[wanted] for wanted in chunk)
                for wanted, handle in zip(chunk, handles, strict=True):
                    if wanted == "cancelled":
                        handle.cancel()
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


def _tally(conn: sa.Connection, column: sa.Column) -> Counter[str]:
    rows = conn.execute(sa.select(column, sa.func.count()).group_by(column))
    return Counter({getattr(status, "value", status): count for status, count in rows})


def problems(url: str, wanted: Counter[str]) -> list[str]:
    """What went wrong, if anything: rows or outcomes that differ from what was asked."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            by_status = _tally(conn, jobs.c.status)
            twice = conn.execute(
                sa.select(job_events.c.job_id)
                .where(job_events.c.kind == "status", job_events.c.status.in_(TERMINAL))
                .group_by(job_events.c.job_id)
                .having(sa.func.count() > 1)
            ).all()
            tries = _tally(conn, attempts.c.status)
    finally:
        engine.dispose()
    found = []
    if by_status != wanted:
        found.append(f"counts by status {dict(by_status)} != asked {dict(wanted)}")
    if twice:
        found.append(f"{len(twice)} jobs have more than one terminal event")
    # Cancelled jobs never ran; every other job ran exactly once, with its one outcome.
    ran = Counter({s: n for s, n in wanted.items() if s != "cancelled"})
    if tries != ran:
        found.append(f"attempts by status {dict(tries)} != one per job that ran {dict(ran)}")
    return found


def unfinished(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(sa.func.count()).where(jobs.c.status.not_in(TERMINAL))
            return conn.execute(query).scalar_one()
    finally:
        engine.dispose()


def drive(
    api: str,
    db_url: str,
    key: str,
    wanted: list[str],
    clients: int,
    per_request: int = 1,
    timeout_s: float = 3600,
) -> tuple[float, float]:
    """Submit ``wanted`` from ``clients`` threads and wait (at most ``timeout_s``) until
    every row is terminal; returns the seconds until all were submitted and until the last
    one ended."""
    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=submit_share, args=(api, key, wanted[i::clients], per_request, errors)
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
        raise RuntimeError(f"{len(errors)} clients failed; first: {errors[0]!r}")
    while left := unfinished(db_url):
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"{left} jobs still unfinished after {timeout_s:.0f}s")
        time.sleep(0.5)
    return submitted, time.perf_counter() - started


def report(
    kind: str, wanted: list[str], clients: int, per_request: int, submitted: float, drained: float
) -> str:
    n = len(wanted)
    return (
        f"{kind:<9} {n} jobs from {clients} clients, {per_request} per POST:"
        f" all submitted in {submitted:.1f}s"
        f" ({n / submitted:.0f} jobs/s), all terminal after {drained:.1f}s"
        f" ({n / drained:.0f} jobs/s); {dict(Counter(wanted))}"
    )


def run(kind: str, n: int, clients: int, per_request: int, folder: Path, port: int) -> None:
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
        actors.start_actors(settings)
        try:
            with on_serve(settings, port) as api:
                submitted, drained = drive(api, url, key, wanted, clients, per_request)
        finally:
            actors.stop_actors(settings)
        found = problems(url, Counter(wanted))
        if found:
            raise SystemExit("; ".join(found))
        print(
            report(kind, wanted, clients, submitted, drained) + "; none lost, none twice",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument(
        "--per-request", type=int, default=1, help="jobs per POST (more: /v1/jobs/bulk)"
    )
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    from ray import serve

    start_ray(args.cpus)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.db or ["sqlite", "postgres"]:
            run(kind, args.jobs, args.clients, args.per_request, Path(folder), port)
    serve.shutdown()


if __name__ == "__main__":
    main()
