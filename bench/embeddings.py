"""Texts/s of embed.texts through raypipe against the model's own ``encode``, in one run.

    python bench/embeddings.py --texts 2000 --small-jobs 200

Reference: ``SentenceTransformer.encode`` on the same texts in this process, with the
same batch size (torch uses every core here). raypipe, on the ``embeddings`` pool held at
``--pool-size`` warm actors of 1 CPU each (``min_size``, so the model load is not timed):
(a) many concurrent small jobs of ``texts / small-jobs`` texts each, (b) one large job of
every text. Each is timed from submission until the last job is terminal, and printed
with its ratio to the reference; the reference and both cases alternate ``--repeat``
times and each one's best is kept. Last, the price of an idle pool shrunk to nothing: one
10-text job on the default pools with no actor (start one, load the model), then again.
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
from raypipe.embedding.models import EmbeddingModel, load
from raypipe.jobs import JobStatus
from raypipe.runtime import actors
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
    while client.store.count_unfinished("embeddings"):
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    for handle in handles:
        job = handle.refresh()
        if job.status is not JobStatus.COMPLETED:
            raise SystemExit(f"job {job.id} {job.status.value}: {job.error}")
    return sum(map(len, batches)) / elapsed


def warm_up(settings: Settings) -> None:
    """Load the model on every actor of the pool before anything is timed."""
    dispatcher = ray.get_actor(DISPATCHER_ACTOR, namespace=settings.namespace)
    names = ray.get(dispatcher.info.remote())["pools"]["embeddings"]["actors"]
    actors = [ray.get_actor(name, namespace=settings.namespace) for name in names]
    ray.get([actor.embed.remote(["warm up"], None, True) for actor in actors])


def cold_start(url: str, folder: Path, texts: list[str]) -> tuple[float, float]:
    """Seconds for one small job on the default pools, shrunk to nothing (an actor starts
    and loads the model), then for the same job again on the warm actor."""
    settings = get_settings(
        database_url=url, data_dir=folder / "data", namespace=f"bench-{uuid.uuid4().hex[:8]}"
    )
    actors.start_actors(settings)
    client = DirectClient(settings)
    try:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            run_jobs(client, [texts])
            times.append(time.perf_counter() - started)
        return times[0], times[1]
    finally:
        actors.stop_actors(settings)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--small-jobs", type=int, default=200)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case (best kept)")
    args = parser.parse_args()
    texts = corpus(args.texts)
    per_job = max(1, args.texts // args.small_jobs)
    small = [texts[i : i + per_job] for i in range(0, len(texts), per_job)]

    start_ray(args.num_cpus)
    with tempfile.TemporaryDirectory() as tmp, database(args.db, Path(tmp)) as url:
        settings = get_settings(
            database_url=url,
            data_dir=Path(tmp) / "data",
            namespace=f"bench-{uuid.uuid4().hex[:8]}",
            pools={"embeddings": {"min_size": args.pool_size, "max_size": args.pool_size}},
        )
        actors.start_actors(settings)
        client = DirectClient(settings)
        try:
            warm_up(settings)
            # The sides alternate, each one's best kept: this machine's speed drifts by up to
            # 2x within a minute, which one run of each would read as a ratio.
            model = load(settings)
            references, ones, manys = [], [], []
            for _ in range(args.repeat):
                references.append(reference_rate(model, texts))
                ones.append(run_jobs(client, [texts]))
                manys.append(run_jobs(client, small))
            reference, one, many = max(references), max(ones), max(manys)
        finally:
            actors.stop_actors(settings)
            client.close()
        cold, warm = cold_start(url, Path(tmp), texts[:10])

    print(
        f"texts={args.texts} batch={settings.embedding_batch_size} pool={args.pool_size} "
        f"db={args.db} cpus={args.num_cpus} best of {args.repeat}"
    )
    print(f"{'case':<32}{'texts/s':>10}{'ratio':>8}")
    print(f"{'encode() in one process':<32}{reference:>10.1f}{1.0:>8.2f}")
    print(f"{f'{len(small)} jobs x {per_job} texts':<32}{many:>10.1f}{many / reference:>8.2f}")
    print(f"{f'1 job x {args.texts} texts':<32}{one:>10.1f}{one / reference:>8.2f}")
    print(f"a 10-text job on a pool shrunk to nothing: {cold:.2f} s; again, warm: {warm:.2f} s")


if __name__ == "__main__":
    main()
