"""A load run over HTTP: N jobs from concurrent clients while some are cancelled and some fail.

    python bench/load.py --jobs 10000 --clients 20

For each database (``--db``, both by default): the API on Ray Serve over a fresh
database, raypipe's actors, and ``--clients`` threads, each a :class:`raypipe.Client`,
submitting its share of the jobs one POST at a time (``--per-request N``: N per
``POST /v1/jobs/bulk``): 80 % ``noop``, 10 % ``fail`` (a permanent error), 10 % ``sleep``
jobs delayed by an hour that the same client cancels right after submitting. Then it
waits until every one is terminal and checks, by the ids the API answered, that nothing
was lost or recorded twice: every job there, every one terminal, the counts by status
equal to what was asked, one terminal event per job, and one attempt per job that ran.
Prints the time to submit, the time until the last job ended, and jobs/s. This is no
comparison: it has no reference and no ratio (tests/acceptance/test_load.py runs it as a
test).

What limits it: the single Serve replica on a small machine, whose own cost per request
(as ``bench/http_api.py`` measures) sets the pace of one-job POSTs; the jobs end as fast
as they arrive. Bulk requests (``--per-request``) lift that limit.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import (
    DB_NAMES,
    Table,
    bench_settings,
    chunks,
    count_by_status,
    database,
    free_port,
    parser,
    report,
    start_ray,
    wait_drained,
)
from http_api import make_key, on_serve

import raypipe
from raypipe.direct import running
from raypipe.jobs import JobStatus
from raypipe.store import JobStore
from raypipe.store.tables import attempts, job_events

TERMINAL = [s.value for s in JobStatus if s.is_terminal]


def plan(n: int) -> list[str]:
    """What each job is asked to become: completed, failed or cancelled."""
    return [
        "failed" if i % 10 == 3 else "cancelled" if i % 10 == 7 else "completed" for i in range(n)
    ]


#: The job asked for each wanted outcome, all in the ``default`` queue; the cancelled
#: ones wait an hour, so the cancel always comes first.
SPECS: dict[str, dict[str, Any]] = {
    "completed": {"type": "noop", "payload": {}},
    "failed": {"type": "fail", "payload": {"error": "PermanentError"}},
    "cancelled": {"type": "sleep", "payload": {"seconds": 1}, "delay_s": 3600},
}


@dataclass
class Run:
    """A load run: the ids of the jobs the API accepted, and how long it took."""

    ids: list[str] = field(default_factory=list)
    submitted_s: float = 0.0
    drained_s: float = 0.0


def submit_share(
    url: str, key: str, share: list[str], per_request: int, run: Run, errors: list[BaseException]
) -> None:
    """One client: ``share`` in order, ``per_request`` jobs per POST (1: ``/v1/jobs``,
    more: ``/v1/jobs/bulk``), each job meant to be cancelled cancelled right after."""
    ids = []
    try:
        with raypipe.Client(url, api_key=key, timeout=60) as client:
            for start in range(0, len(share), per_request):
                chunk = share[start : start + per_request]
                if per_request == 1:
                    handles = [client.submit(**SPECS[chunk[0]])]
                else:
                    handles = client.submit_many(SPECS[wanted] for wanted in chunk)
                for wanted, handle in zip(chunk, handles, strict=True):
                    ids.append(handle.id)
                    if wanted == "cancelled":
                        handle.cancel()
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)
    run.ids.extend(ids)


def problems(url: str, wanted: Counter[str], ids: Sequence[str]) -> list[str]:
    """What went wrong, if anything, among the jobs ``ids``: rows or outcomes that differ
    from what was asked."""
    store = JobStore.from_url(url)
    twice, tries = 0, Counter[str]()
    try:
        by_status = Counter({s.value: n for s, n in count_by_status(store, ids).items()})
        with store.engine.connect() as conn:
            for some in chunks(ids):
                twice += len(
                    conn.execute(
                        sa.select(job_events.c.job_id)
                        .where(
                            job_events.c.job_id.in_(some),
                            job_events.c.kind == "status",
                            job_events.c.status.in_(TERMINAL),
                        )
                        .group_by(job_events.c.job_id)
                        .having(sa.func.count() > 1)
                    ).all()
                )
                ran = conn.execute(
                    sa.select(attempts.c.status, sa.func.count())
                    .where(attempts.c.job_id.in_(some))
                    .group_by(attempts.c.status)
                )
                tries.update({getattr(status, "value", status): n for status, n in ran})
    finally:
        store.dispose()
    found = []
    if len(ids) != sum(wanted.values()):
        found.append(f"{len(ids)} jobs accepted, {sum(wanted.values())} asked")
    if by_status != wanted:
        found.append(f"counts by status {dict(by_status)} != asked {dict(wanted)}")
    if twice:
        found.append(f"{twice} jobs have more than one terminal event")
    # Cancelled jobs never ran; every other job ran exactly once, with its one outcome.
    ran_once = Counter({s: n for s, n in wanted.items() if s != "cancelled"})
    if tries != ran_once:
        found.append(f"attempts by status {dict(tries)} != one per job that ran {dict(ran_once)}")
    return found


def drive(
    api: str,
    db_url: str,
    key: str,
    wanted: list[str],
    clients: int,
    per_request: int = 1,
    timeout_s: float = 3600,
) -> Run:
    """Submit ``wanted`` from ``clients`` threads and wait (at most ``timeout_s``) until
    none of them is unfinished."""
    run, errors = Run(), list[BaseException]()
    threads = [
        threading.Thread(
            target=submit_share, args=(api, key, wanted[i::clients], per_request, run, errors)
        )
        for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.submitted_s = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed; first: {errors[0]!r}")
    store = JobStore.from_url(db_url)
    try:
        run.drained_s = wait_drained(store, "default", 0.5, timeout_s) - started
    finally:
        store.dispose()
    return run


def table(rows: Sequence[tuple[str, ...]], clients: int, per_request: int) -> Table:
    """The load runs' table; ``rows`` from :func:`row`."""
    return Table(
        title=(
            f"jobs over HTTP from {clients} clients, {per_request} per POST, on Serve;"
            " checked by id: none lost, none recorded twice"
        ),
        columns=("database", "jobs", "submitted in s", "all terminal after s", "jobs/s", "counts"),
        rows=tuple(rows),
    )


def row(kind: str, wanted: list[str], run: Run) -> tuple[str, ...]:
    """A run's row of :func:`table`."""
    return (
        DB_NAMES[kind],
        f"{len(wanted):,}",
        f"{run.submitted_s:.1f}",
        f"{run.drained_s:.1f}",
        f"{len(wanted) / run.drained_s:,.0f}",
        ", ".join(f"{n:,} {status}" for status, n in Counter(wanted).items()),
    )


def measure(
    kind: str, n: int, clients: int, per_request: int, folder: Path, port: int
) -> tuple[str, ...]:
    """One load run on a fresh database of ``kind``; its row of the table. Fails if
    anything was lost or recorded twice."""
    with database(kind, folder) as url:
        settings = bench_settings(url, folder, rate_limits={})
        wanted = plan(n)
        with running(settings) as client, on_serve(settings, port) as api:
            run = drive(api, url, make_key(client.store), wanted, clients, per_request)
        found = problems(url, Counter(wanted), run.ids)
    if found:
        raise SystemExit("; ".join(found))
    return row(kind, wanted, run)


def main() -> None:
    args = parser(__doc__, repeat=False)
    args.add_argument("--jobs", type=int, default=10_000)
    args.add_argument("--clients", type=int, default=20)
    args.add_argument(
        "--per-request", type=int, default=1, help="jobs per POST (more: /v1/jobs/bulk)"
    )
    args.add_argument("--cpus", type=int, default=2)
    args.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    options = args.parse_args()
    from ray import serve

    start_ray(options.cpus)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        with tempfile.TemporaryDirectory() as folder:
            rows = [
                measure(
                    kind, options.jobs, options.clients, options.per_request, Path(folder), port
                )
                for kind in options.db or ["sqlite", "postgres"]
            ]
    finally:
        serve.shutdown()
    report([table(rows, options.clients, options.per_request)], options.json)


if __name__ == "__main__":
    main()
