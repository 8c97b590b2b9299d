"""Job submission over HTTP: the API on Ray Serve against the same app on plain uvicorn.

    python bench/http_api.py --db sqlite --db postgres

For each database, both servers run at once, each on a fresh database of its own, and
are measured in turn (``--repeat`` times; each measure's best is kept), so that each
side's runs see the same machine, neither one starting up or tearing down while the
other is measured:

* single: one client submitting ``noop`` jobs one at a time (POST /v1/jobs): p50/p99;
* concurrent: ``--clients`` threads submitting one job per request: requests/s, p50/p99;
* bulk: POST /v1/jobs/bulk with ``--bulk-size`` jobs per request, one at a time: jobs/s.

Every answer must be a 202; afterwards every job id the answers named must be in the
database, so the figures count jobs accepted *and committed* (by id: a built-in
maintenance schedule may add a job of its own). raypipe's actors run (so each submission
wakes a live dispatcher), but by default jobs are submitted with a one-hour delay so no
job runs during the measurement: this measures submission only. ``--process`` submits
them due now, so the cluster works through them meanwhile. Rate limits are off unless
``--rate-limit`` (then one very high ``submit`` limit, to include the per-request
counter upsert).

Serve: ``raypipe.api.deployment.build`` under ``serve.run`` (one replica). uvicorn:
``raypipe.api.create_app(settings)`` in a subprocess (one worker, connected to the same
Ray cluster so it wakes the dispatcher too). Prints one table with both and the ratio
Serve / uvicorn, and the targets (bulk jobs/s, single submission p50).

(Not ``http.py``, which would shadow the standard library's ``http`` package for every
script in ``bench/``.) What limits Serve here is its own cost per request, its proxy
plus the replica's overhead, several times the app's own on uvicorn: it shows on single
and concurrent submissions, and vanishes in bulk requests, where the database's writing
dominates. For high rates of single submissions, use bulk, or serve
``raypipe.api.create_app(settings)`` with uvicorn beside Serve.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import ray
from common import (
    DB_NAMES,
    Table,
    alternate,
    bench_settings,
    count_by_status,
    database,
    free_port,
    parser,
    report,
    start_ray,
)

from raypipe.config import Settings
from raypipe.config_groups import RateLimit
from raypipe.direct import running
from raypipe.store import JobStore
from raypipe.store.access import AccessStore

ROOT = Path(__file__).resolve().parent.parent
SERVE_APP = "raypipe-bench"
TARGET_BULK_JOBS_S = 2000.0
TARGET_SINGLE_P50_MS = 20.0


def make_key(store: JobStore) -> str:
    return AccessStore(store.engine).create_key("bench")[0]


# -- servers -----------------------------------------------------------------------------


def wait_until_up(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/openapi.json", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API at {url} did not come up within {timeout:.0f}s")


@contextmanager
def on_serve(settings: Settings, port: int) -> Iterator[str]:
    from ray import serve

    from raypipe.api.deployment import build

    serve.run(build(settings), name=SERVE_APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url)
        yield url
    finally:
        serve.delete(SERVE_APP)


@contextmanager
def on_uvicorn(settings: Settings) -> Iterator[str]:
    """The same app on uvicorn, in a process of its own connected to this Ray cluster."""
    port = free_port()
    env = {
        **os.environ,
        "RAYPIPE_BENCH_SETTINGS": settings.model_dump_json(),
        "RAYPIPE_BENCH_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    child = subprocess.Popen(
        [sys.executable, os.path.realpath(__file__), "--uvicorn-child", str(port)],
        env=env,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def uvicorn_child(port: int) -> None:
    import uvicorn

    from raypipe.api import create_app

    settings = Settings.model_validate_json(os.environ["RAYPIPE_BENCH_SETTINGS"])
    ray.init(
        address=os.environ["RAYPIPE_BENCH_RAY_ADDRESS"],
        namespace=settings.namespace,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    uvicorn.run(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


# -- load ----------------------------------------------------------------------------------


@dataclass
class Result:
    """What one server did in one run, and the ids of every job it accepted."""

    single_ms: list[float] = field(default_factory=list)
    concurrent_ms: list[float] = field(default_factory=list)
    concurrent_s: float = 0.0
    bulk_ms: list[float] = field(default_factory=list)
    bulk_jobs: int = 0
    bulk_s: float = 0.0
    ids: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def timed_posts(
    client: httpx.Client, n: int, body: Callable[[int], Any], path: str, ids: list[str]
) -> list[float]:
    """``n`` POSTs one after the other; their latencies in ms. Anything but 202 aborts.
    The ids of the jobs accepted are added to ``ids`` after the last POST (reading the
    answers is no part of what is timed)."""
    latencies, answers = [], []
    for i in range(n):
        started = time.perf_counter()
        response = client.post(path, json=body(i))
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code != 202:
            raise SystemExit(f"POST {path}: {response.status_code} {response.text[:300]}")
        answers.append(response)
    for answer in answers:
        accepted = answer.json()
        if "jobs" in accepted:  # a bulk request's
            ids.extend(job["id"] for job in accepted["jobs"])
        else:
            ids.append(accepted["id"])
    return latencies


def measure(url: str, key: str, args: argparse.Namespace) -> Result:
    """One run of the three loads against the API at ``url``."""
    delay = 0.0 if args.process else 3600.0
    job = {"type": "noop", "payload": {}, "delay_s": delay}
    headers = {"Authorization": f"Bearer {key}"}
    result = Result()

    def client() -> httpx.Client:
        return httpx.Client(base_url=url, headers=headers, timeout=120)

    with client() as one:
        timed_posts(one, args.warmup, lambda _: job, "/v1/jobs", result.ids)
        result.single_ms = timed_posts(one, args.single, lambda _: job, "/v1/jobs", result.ids)

    per_client = args.concurrent // args.clients
    latencies: list[list[float]] = [[] for _ in range(args.clients)]
    ids: list[list[str]] = [[] for _ in range(args.clients)]
    start = threading.Barrier(args.clients + 1)

    def worker(index: int) -> None:
        with client() as mine:
            timed_posts(mine, 5, lambda _: job, "/v1/jobs", ids[index])  # open the connection
            start.wait()
            latencies[index] = timed_posts(mine, per_client, lambda _: job, "/v1/jobs", ids[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    result.concurrent_s = time.perf_counter() - started
    result.concurrent_ms = [ms for some in latencies for ms in some]
    if len(result.concurrent_ms) != per_client * args.clients:
        raise SystemExit("a concurrent client failed (see above)")
    result.ids += [job_id for some in ids for job_id in some]

    bulk = {"jobs": [job] * args.bulk_size}
    with client() as one:
        timed_posts(one, 1, lambda _: bulk, "/v1/jobs/bulk", result.ids)  # warm up
        started = time.perf_counter()
        result.bulk_ms = timed_posts(
            one, args.bulk_requests, lambda _: bulk, "/v1/jobs/bulk", result.ids
        )
        result.bulk_s = time.perf_counter() - started
    result.bulk_jobs = args.bulk_size * args.bulk_requests
    return result


def run_database(
    kind: str, servers: list[str], folder: Path, port: int, args: argparse.Namespace
) -> dict[str, list[Result]]:
    """Every server's runs against ``kind``: the servers up at once, each on a fresh
    database of its own, measured in turn; fails unless every job accepted is committed."""
    with ExitStack() as stack:
        apis = {}
        for server in servers:
            url = stack.enter_context(database(kind, folder))
            settings = bench_settings(
                url,
                folder / server,
                rate_limits={"submit": RateLimit(limit=10**12, window_s=60)}
                if args.rate_limit
                else {},
                max_bulk_jobs=max(10_000, args.bulk_size),
            )
            client = stack.enter_context(running(settings))
            serving = on_serve(settings, port) if server == "serve" else on_uvicorn(settings)
            apis[server] = (stack.enter_context(serving), client.store)
            print(f"  {kind}/{server}: at {apis[server][0]}", flush=True)
        runs = alternate(
            args.repeat,
            *(partial(measure, api, make_key(store), args) for api, store in apis.values()),
        )
        for server, results in zip(servers, runs, strict=True):
            ids = [job_id for result in results for job_id in result.ids]
            committed = sum(count_by_status(apis[server][1], ids).values())
            if committed != len(ids):
                raise SystemExit(
                    f"{kind}/{server}: {len(ids)} jobs accepted, {committed} in the database"
                )
    return dict(zip(servers, runs, strict=True))


# -- report ------------------------------------------------------------------------------

#: What the table shows of each run: (name, value, whether higher is better).
MEASURES: list[tuple[str, Callable[[Result], float], bool]] = [
    ("single POST p50 ms", lambda r: percentile(r.single_ms, 50), False),
    ("single POST p99 ms", lambda r: percentile(r.single_ms, 99), False),
    ("{clients} clients: requests/s", lambda r: len(r.concurrent_ms) / r.concurrent_s, True),
    ("{clients} clients: p50 ms", lambda r: percentile(r.concurrent_ms, 50), False),
    ("{clients} clients: p99 ms", lambda r: percentile(r.concurrent_ms, 99), False),
    ("bulk ({bulk_size}/request): jobs/s", lambda r: r.bulk_jobs / r.bulk_s, True),
    ("bulk request p50 ms", lambda r: percentile(r.bulk_ms, 50), False),
]
BULK_JOBS_S, SINGLE_P50_MS = MEASURES[5], MEASURES[0]


def best(results: list[Result], measure: tuple[str, Callable[[Result], float], bool]) -> float:
    """A measure's best over the runs: the highest rate, the lowest latency."""
    _, get, higher = measure
    values = [get(result) for result in results]
    return max(values) if higher else min(values)


def table(runs: dict[str, dict[str, list[Result]]], args: argparse.Namespace) -> Table:
    servers = args.server or ["serve", "uvicorn"]
    ratio = servers == ["serve", "uvicorn"]
    mode = "jobs processed meanwhile" if args.process else "submission only (jobs deferred 1 h)"
    limits = "rate limit on (upsert per request)" if args.rate_limit else "rate limits off"
    rows, ratios, notes = [], {}, []
    for kind, by_server in runs.items():
        for measure in MEASURES:
            name = measure[0].format(clients=args.clients, bulk_size=args.bulk_size)
            values = [best(by_server[server], measure) for server in servers]
            cells = [f"{v:,.1f}" for v in values]
            rows.append(
                (DB_NAMES[kind], name, *cells, *([f"{values[0] / values[1]:.2f}"] if ratio else []))
            )
            if ratio and measure is BULK_JOBS_S:
                ratios[f"HTTP bulk jobs/s, {DB_NAMES[kind]} (Serve / uvicorn)"] = (
                    values[0] / values[1]
                )
        for server in servers:
            p50 = best(by_server[server], SINGLE_P50_MS)
            rate = best(by_server[server], BULK_JOBS_S)
            notes.append(
                f"{DB_NAMES[kind]}, {server}: single p50 {p50:.1f} ms"
                f" {'met' if p50 <= TARGET_SINGLE_P50_MS else 'MISSED'};"
                f" bulk {rate:,.0f} jobs/s {'met' if rate >= TARGET_BULK_JOBS_S else 'MISSED'}"
            )
    return Table(
        title=(
            f"raypipe HTTP submission, {args.num_cpus} CPUs, {mode}, {limits}; single:"
            f" {args.single} requests; concurrent: {args.concurrent} requests from"
            f" {args.clients} threads; bulk: {args.bulk_requests} x {args.bulk_size} jobs;"
            f" every job committed; best of {args.repeat}"
        ),
        columns=("database", "measure", *servers, *(["Serve/uvicorn"] if ratio else [])),
        rows=tuple(rows),
        ratios=ratios,
        notes=(
            f"targets: bulk >= {TARGET_BULK_JOBS_S:,.0f} jobs/s accepted and committed;"
            f" single submit p50 <= {TARGET_SINGLE_P50_MS:.0f} ms",
            *notes,
        ),
    )


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    args.add_argument("--server", action="append", choices=["serve", "uvicorn"])
    args.add_argument("--warmup", type=int, default=50)
    args.add_argument("--single", type=int, default=500, help="sequential single submissions")
    args.add_argument("--clients", type=int, default=8)
    args.add_argument("--concurrent", type=int, default=2000, help="requests over all clients")
    args.add_argument("--bulk-size", type=int, default=1000)
    args.add_argument("--bulk-requests", type=int, default=20)
    args.add_argument("--num-cpus", type=int, default=2)
    args.add_argument("--process", action="store_true", help="let the jobs run meanwhile")
    args.add_argument("--rate-limit", action="store_true", help="keep a (huge) submit limit")
    args.add_argument("--uvicorn-child", type=int, help=argparse.SUPPRESS)
    options = args.parse_args()
    if options.uvicorn_child:
        uvicorn_child(options.uvicorn_child)
        return

    start_ray(options.num_cpus)
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runs = {
                kind: run_database(
                    kind, options.server or ["serve", "uvicorn"], Path(tmp), port, options
                )
                for kind in options.db or ["sqlite"]
            }
    finally:
        serve.shutdown()
        ray.shutdown()
    report([table(runs, options)], options.json)


if __name__ == "__main__":
    main()
