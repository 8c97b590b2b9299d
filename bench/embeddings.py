"""Texts/s of embed.texts through raypipe against the model's own ``encode``, in one run.

    python bench/embeddings.py --texts 2000 --small-jobs 200

Reference: ``SentenceTransformer.encode`` on the same texts in this process, with the
same batch size (torch uses every core here). raypipe, on the ``embeddings`` pool held at
``--pool-size`` warm actors of 1 CPU each (``min_size``, so the model load is not timed):
(a) many concurrent small jobs of ``texts / small-jobs`` texts each, (b) one large job of
every text. Each is timed from submission until the last job is terminal, and printed
with its ratio to the reference; the reference and both cases alternate ``--repeat``
times and each one's best is kept. Last (unless ``--no-cold-start``, as the smoke
runs it), the price of an idle pool shrunk to nothing: one 10-text job on the default
pools with no actor (start one, load the model), then again, warm (raise the pool's
``idle_s`` or set its ``min_size`` to keep a model loaded).

The jobs run on the model's actors: the large job's chunks of
``RAYPIPE_EMBEDDING_CHUNK_SIZE`` texts spread over both (a job of one chunk runs on one
actor's core, against ``encode`` on every core), and a small job's texts are embedded on
the actor it runs on (no Ray call), merged into model calls with that actor's other
jobs' texts. Two things keep the small jobs near the reference:

- the size of those model calls: ``encode`` sorts a call's texts by length before it
  cuts them into batches, so one call of many short sentences pads far less than
  several small calls. Calls reach ``RAYPIPE_EMBEDDING_CHUNK_SIZE`` texts (a request that
  would overfill one starts the next), and each actor runs a bundle's jobs at once so
  the next call fills while one runs;
- one actor call per bundle of jobs that run at once, in place of one call per job: a
  call per job was pickled with the pool's actor handles and streamed its own events
  back, which cost the dispatcher a CPU the actors share, and a bundle's texts reach the
  actor together.

What limits it: the actors' model calls are shorter than the chunk size (the first call
of a run starts moments after its first request, and the last ones are what is left),
and the dispatcher, the progress actor and the bench's own polling take CPU from the
same two cores. The ``embeddings`` queue admits 128 jobs: each actor holds a bundle
running and a second one waiting (the pool's ``prefetch``), so that the model never waits
for the dispatcher between bundles and every call after the first is full; with 64, the
small jobs measured 0.82 and 0.89 against 0.97 and 0.92 (same runs, alternating). No GPU
was measured.
"""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path

import ray
from common import (
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
from raypipe.direct import DirectClient, running
from raypipe.embedding.models import EmbeddingModel, load
from raypipe.runtime.names import DISPATCHER_ACTOR

WORDS = "river market signal quiet engine harvest window silver planet garden orbit lantern"


def corpus(n: int) -> list[str]:
    """Distinct sentences of 8–16 words (no two alike, so nothing is deduplicated)."""
    words = WORDS.split()
    return [
        f"item {i}: " + " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(8 + i % 9))
        for i in range(n)
    ]


def reference_rate(model: EmbeddingModel, texts: list[str]) -> float:
    model.encode(texts[:64])  # warm up
    started = time.perf_counter()
    model.encode(texts)
    return len(texts) / (time.perf_counter() - started)


def run_jobs(client: DirectClient, batches: list[list[str]]) -> float:
    """Texts/s from submission until every job is terminal (polled every 50 ms: each poll
    is a query, and the CPU it takes is the pool's; the end is seen up to 50 ms late)."""
    started = time.perf_counter()
    handles = client.submit_many([("embed.texts", {"texts": b}) for b in batches])
    ended = wait_for(client.store, "embeddings", [h.id for h in handles], poll_s=0.05)
    return sum(map(len, batches)) / (ended - started)


def warm_up(settings: Settings) -> None:
    """Load the model on every actor of the pool before anything is timed."""
    dispatcher = ray.get_actor(DISPATCHER_ACTOR, namespace=settings.namespace)
    names = ray.get(dispatcher.info.remote())["pools"]["embeddings"]["actors"]
    actors = [ray.get_actor(name, namespace=settings.namespace) for name in names]
    ray.get([actor.embed.remote(["warm up"], None, True) for actor in actors])


def cold_start(url: str, folder: Path, texts: list[str]) -> tuple[float, float]:
    """Seconds for one small job on the default pools, shrunk to nothing (an actor starts
    and loads the model), then for the same job again on the warm actor."""
    with running(bench_settings(url, folder)) as client:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            run_jobs(client, [texts])
            times.append(time.perf_counter() - started)
        return times[0], times[1]


def measure(
    n: int,
    small_jobs: int,
    kind: str,
    num_cpus: int,
    pool_size: int,
    repeat: int,
    cold: bool = True,
) -> list[Table]:
    """The comparison's table, and (``cold``) the cold start's."""
    texts = corpus(n)
    per_job = max(1, n // small_jobs)
    small = [texts[i : i + per_job] for i in range(0, n, per_job)]
    start_ray(num_cpus)
    try:
        with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
            settings = bench_settings(
                url,
                Path(tmp),
                pools={"embeddings": {"min_size": pool_size, "max_size": pool_size}},
            )
            with running(settings) as client:
                warm_up(settings)
                references, ones, manys = alternate(
                    repeat,
                    partial(reference_rate, load(settings.embeddings), texts),
                    partial(run_jobs, client, [texts]),
                    partial(run_jobs, client, small),
                )
            idle = cold_start(url, Path(tmp), texts[:10]) if cold else None
    finally:
        ray.shutdown()
    reference, one, many = max(references), max(ones), max(manys)
    comparison = Table(
        title=(
            f"{n:,} texts, batch {settings.embeddings.batch_size}, pool of {pool_size},"
            f" {kind}, {num_cpus} CPUs, best of {repeat}"
        ),
        columns=("case", "texts/s", "ratio"),
        rows=(
            (f"encode() in one process ({num_cpus} torch threads)", f"{reference:.1f}", "1.00"),
            (f"{len(small)} jobs × {per_job} texts", f"{many:.1f}", f"{many / reference:.2f}"),
            (f"1 job × {n:,} texts", f"{one:.1f}", f"{one / reference:.2f}"),
        ),
        ratios={
            "embeddings texts/s, 1 large job": one / reference,
            "embeddings texts/s, small jobs": many / reference,
        },
    )
    if idle is None:
        return [comparison]
    return [
        comparison,
        Table(
            title="the price of an idle pool shrunk to nothing",
            columns=("a 10-text job", "seconds"),
            rows=(
                ("on a pool with no actor (one starts, loads the model)", f"{idle[0]:.2f}"),
                ("again, on the warm actor", f"{idle[1]:.2f}"),
            ),
        ),
    ]


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--texts", type=int, default=2000)
    args.add_argument("--small-jobs", type=int, default=200)
    args.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    args.add_argument("--num-cpus", type=int, default=2)
    args.add_argument("--pool-size", type=int, default=2)
    args.add_argument("--no-cold-start", action="store_true", help="skip the price of an idle pool")
    options = args.parse_args()
    tables = measure(
        options.texts,
        options.small_jobs,
        options.db,
        options.num_cpus,
        options.pool_size,
        options.repeat,
        cold=not options.no_cold_start,
    )
    report(tables, options.json)


if __name__ == "__main__":
    main()
