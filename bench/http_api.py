"""Job submission over HTTP: the API on Ray Serve against the same app on plain uvicorn.

    python bench/http_api.py --db sqlite --db postgres

For each database and each server (a fresh database each), measures:

* single: one client submitting ``noop`` jobs one at a time (POST /v1/jobs): p50/p99;
* concurrent: ``--clients`` threads submitting one job per request: requests/s, p50/p99;
* bulk: POST /v1/jobs/bulk with ``--bulk-size`` jobs per request, one at a time: jobs/s.

Every answer must be a 202; afterwards the rows in the database must number exactly the
jobs accepted, so the figures count jobs accepted *and committed*. raypipe's actors run
(so each submission wakes a live dispatcher), but by default jobs are submitted with a
one-hour delay so no job runs during the measurement: this measures submission only.
``--process`` submits them due now, so the cluster works through them meanwhile.
Rate limits are off unless ``--rate-limit`` (then one very high ``submit`` limit, to
include the per-request counter upsert).

Serve: ``raypipe.api.deployment.build`` under ``serve.run`` (one replica). uvicorn:
``raypipe.api.create_app(settings)`` in a subprocess (one worker, connected to the same
Ray cluster so it wakes the dispatcher too). Prints one table with both and the ratio.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
import sqlalchemy as sa
from common import database, start_ray

from raypipe.config import RateLimit, Settings, get_settings
from raypipe.runtime import actors
from raypipe.store import create_engine
from raypipe.store.access import AccessStore
from raypipe.store.tables import jobs as jobs_table

ROOT = Path(__file__).resolve().parent.parent
SERVE_APP = "raypipe-bench"
TARGET_BULK_JOBS_S = 2000.0
TARGET_SINGLE_P50_MS = 20.0


# -- databases ---------------------------------------------------------------------------


def count_rows(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(jobs_table)).scalar_one()
    finally:
        engine.dispose()


def make_key(url: str) -> str:
    engine = create_engine(url)
    try:
        return AccessStore(engine).create_key("bench")[0]
    finally:
        engine.dispose()


# -- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """What one server did against one database."""

    single_ms: list[float] = field(default_factory=list)
    concurrent_ms: list[float] = field(default_factory=list)
    concurrent_s: float = 0.0
    bulk_ms: list[float] = field(default_factory=list)
    bulk_jobs: int = 0
    bulk_s: float = 0.0
    accepted: int = 0
    committed: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def timed_posts(client: httpx.Client, n: int, body: Callable[[int], Any], path: str) -> list[float]:
    """``n`` POSTs one after the other; their latencies in ms. Anything but 202 aborts."""
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        response = client.post(path, json=body(i))
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code != 202:
            raise SystemExit(f"POST {path}: {response.status_code} {response.text[:300]}")
    return latencies


def measure(url: str, key: str, args: argparse.Namespace) -> Result:
    delay = 0.0 if args.process else 3600.0
    job = {"type": "noop", "payload": {}, "delay_s": delay}
    headers = {"Authorization": f"Bearer {key}"}
    result = Result()

    def client() -> httpx.Client:
        return httpx.Client(base_url=url, headers=headers, timeout=120)

    with client() as one:
        timed_posts(one, args.warmup, lambda _: job, "/v1/jobs")
        result.single_ms = timed_posts(one, args.single, lambda _: job, "/v1/jobs")

    per_client = args.concurrent // args.clients
    latencies: list[list[float]] = [[] for _ in range(args.clients)]
    start = threading.Barrier(args.clients + 1)

    def worker(index: int) -> None:
        with client() as mine:
            timed_posts(mine, 5, lambda _: job, "/v1/jobs")  # open the connection
            start.wait()
            latencies[index] = timed_posts(mine, per_client, lambda _: job, "/v1/jobs")

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

    bulk = {"jobs": [job] * args.bulk_size}
    with client() as one:
        timed_posts(one, 1, lambda _: bulk, "/v1/jobs/bulk")  # warm up
        started = time.perf_counter()
        result.bulk_ms = timed_posts(one, args.bulk_requests, lambda _: bulk, "/v1/jobs/bulk")
        result.bulk_s = time.perf_counter() - started
    result.bulk_jobs = args.bulk_size * args.bulk_requests
    result.accepted = (
        args.warmup
        + args.single
        + 5 * args.clients
        + per_client * args.clients
        + args.bulk_size * (args.bulk_requests + 1)
    )
    return result


def run_one(kind: str, server: str, folder: Path, port: int, args: argparse.Namespace) -> Result:
    with database(kind, folder) as url:
        settings = get_settings(
            database_url=url,
            data_dir=folder / "data",
            namespace=f"bench-{uuid.uuid4().hex[:8]}",
            rate_limits={"submit": RateLimit(limit=10**12, window_s=60)} if args.rate_limit else {},
            max_bulk_jobs=max(10_000, args.bulk_size),
        )
        key = make_key(url)
        actors.start_actors(settings)
        try:
            serving = on_serve(settings, port) if server == "serve" else on_uvicorn(settings)
            with serving as api:
                print(f"  {kind}/{server}: measuring at {api}", flush=True)
                result = measure(api, key, args)
        finally:
            actors.stop_actors(settings)
        result.committed = count_rows(url)
        if result.committed != result.accepted:
            raise SystemExit(
                f"{kind}/{server}: {result.accepted} jobs accepted, {result.committed} in the"
                " database"
            )
        return result


# -- report ------------------------------------------------------------------------------

MEASURES: list[tuple[str, Callable[[Result], float]]] = [
    ("single POST p50 ms", lambda r: percentile(r.single_ms, 50)),
    ("single POST p99 ms", lambda r: percentile(r.single_ms, 99)),
    ("{clients} clients: requests/s", lambda r: len(r.concurrent_ms) / r.concurrent_s),
    ("{clients} clients: p50 ms", lambda r: percentile(r.concurrent_ms, 50)),
    ("{clients} clients: p99 ms", lambda r: percentile(r.concurrent_ms, 99)),
    ("bulk ({bulk_size}/request): jobs/s", lambda r: r.bulk_jobs / r.bulk_s),
    ("bulk request p50 ms", lambda r: percentile(r.bulk_ms, 50)),
]


def report(results: dict[tuple[str, str], Result], args: argparse.Namespace) -> None:
    kinds = list(dict.fromkeys(kind for kind, _ in results))
    servers = list(dict.fromkeys(server for _, server in results))
    ratio = servers == ["serve", "uvicorn"]
    mode = "jobs processed meanwhile" if args.process else "submission only (jobs deferred 1 h)"
    limits = "rate limit on (upsert per request)" if args.rate_limit else "rate limits off"
    print(
        f"\nraypipe HTTP submission, {args.num_cpus} CPUs, {mode}, {limits}; single:"
        f" {args.single} requests; concurrent: {args.concurrent} requests from {args.clients}"
        f" threads; bulk: {args.bulk_requests} x {args.bulk_size} jobs; every job committed"
    )
    header = f"{'database':<10} {'measure':<32}" + "".join(f" {s:>10}" for s in servers)
    print(header + (f" {'Serve/uvicorn':>14}" if ratio else ""))
    for kind in kinds:
        for template, get in MEASURES:
            name = template.format(clients=args.clients, bulk_size=args.bulk_size)
            values = [get(results[kind, server]) for server in servers]
            line = f"{kind:<10} {name:<32}" + "".join(f" {v:>10.1f}" for v in values)
            print(line + (f" {values[0] / values[1]:>14.2f}" if ratio else ""))
    print(
        f"targets: bulk >= {TARGET_BULK_JOBS_S:.0f} jobs/s accepted and committed;"
        f" single submit p50 <= {TARGET_SINGLE_P50_MS:.0f} ms"
    )
    for (kind, server), result in results.items():
        p50 = percentile(result.single_ms, 50)
        rate = result.bulk_jobs / result.bulk_s
        print(
            f"  {kind:<8} {server:<8} single p50 {p50:6.1f} ms"
            f" {'met' if p50 <= TARGET_SINGLE_P50_MS else 'MISSED':<6}"
            f"  bulk {rate:7.0f} jobs/s {'met' if rate >= TARGET_BULK_JOBS_S else 'MISSED'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--server", action="append", choices=["serve", "uvicorn"])
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--single", type=int, default=500, help="sequential single submissions")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--concurrent", type=int, default=2000, help="requests over all clients")
    parser.add_argument("--bulk-size", type=int, default=1000)
    parser.add_argument("--bulk-requests", type=int, default=20)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--process", action="store_true", help="let the jobs run meanwhile")
    parser.add_argument("--rate-limit", action="store_true", help="keep a (huge) submit limit")
    parser.add_argument("--uvicorn-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.uvicorn_child:
        uvicorn_child(args.uvicorn_child)
        return
    kinds = args.db or ["sqlite"]
    servers = args.server or ["serve", "uvicorn"]

    start_ray(args.num_cpus)
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results: dict[tuple[str, str], Result] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in kinds:
                for server in servers:
                    results[kind, server] = run_one(kind, server, Path(tmp), port, args)
    finally:
        serve.shutdown()
        ray.shutdown()
    report(results, args)


if __name__ == "__main__":
    main()
