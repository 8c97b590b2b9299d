"""The warm embedding model actors: a pool per model, shared by every job."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from raypipe.config import Settings
from raypipe.embedding import models
from raypipe.embedding.batcher import Batcher
from raypipe.embedding.models import Embeddings

EMBEDDER_PREFIX = "raypipe-embedder-"


class Embedder:
    """Holds one loaded model (the configured fallback if the model cannot load) and
    merges the requests of concurrent jobs into model batches.

    An async actor: requests keep arriving while a batch encodes on a worker thread.
    """

    def __init__(self, settings: Settings, model: str):
        if settings.embedding_threads:
            import torch

            torch.set_num_threads(settings.embedding_threads)
        self.model = models.load(settings, model)
        self.batcher = Batcher(
            lambda texts: self.model.encode(texts, normalize=False).vectors,
            max_batch=settings.embedding_batch_size,
            max_wait_s=settings.embedding_max_wait_ms / 1000,
            model_batch=settings.embedding_batch_size,
        )

    async def embed(self, texts: list[str], normalize: bool) -> tuple[np.ndarray, str]:
        """Vectors of ``texts`` (float32) and the name of the model that made them."""
        vectors = await self.batcher.submit(texts)
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return vectors.astype(np.float32, copy=False), self.model.name

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "dim": self.model.dim,
            "device": self.model.device,
            "threads": _threads(),
            **self.batcher.stats,
        }


def actor_name(model: str, index: int) -> str:
    return f"{EMBEDDER_PREFIX}{re.sub(r'[^A-Za-z0-9._-]', '_', model)}-{index}"


def gpus_per_actor(settings: Settings, cluster_gpus: float) -> float:
    """The configured GPU share, or an even share of the cluster's GPUs (at most one each)."""
    if settings.embedding_num_gpus is not None:
        return settings.embedding_num_gpus
    if cluster_gpus <= 0:
        return 0.0
    return min(1.0, cluster_gpus / settings.embedding_pool_size)


#: Actor handles per (namespace, model) in this worker process: looking them up costs
#: several round trips to Ray's GCS, too much to pay on every small job.
_pools: dict[tuple[str, str], list[ActorHandle]] = {}


def cached_pool(settings: Settings, model: str) -> list[ActorHandle]:
    key = (settings.namespace, model)
    if key not in _pools:
        _pools[key] = pool(settings, model)
    return _pools[key]


def pool(settings: Settings, model: str) -> list[ActorHandle]:
    """The model's actors, created on first use (detached: they stay warm between jobs)."""
    gpus = gpus_per_actor(settings, ray.cluster_resources().get("GPU", 0.0))
    options = {
        "namespace": settings.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": 3,
        "num_cpus": settings.embedding_num_cpus,
        "num_gpus": gpus,
        "max_concurrency": 1000,
    }
    return [
        ray.remote(Embedder)
        .options(name=actor_name(model, index), **options)
        .remote(settings, model)
        for index in range(settings.embedding_pool_size)
    ]


def embed(
    settings: Settings,
    texts: Sequence[str],
    model: str | None,
    normalize: bool,
    on_chunk: Callable[[int, int], None] | None,
) -> Embeddings:
    """Embed ``texts`` across the pool: identical texts once, chunks spread over the
    actors, rows back in input order."""
    name = models.check_model(settings, model)
    index: dict[str, int] = {}
    positions = np.fromiter(
        (index.setdefault(text, len(index)) for text in texts), dtype=np.int64, count=len(texts)
    )
    unique = list(index)
    try:
        vectors, used = _spread(cached_pool(settings, name), unique, normalize, settings, on_chunk)
    except RayActorError:  # the pool was stopped and started again since it was cached
        _pools.pop((settings.namespace, name), None)
        vectors, used = _spread(cached_pool(settings, name), unique, normalize, settings, on_chunk)
    return Embeddings(vectors[positions], used or name)


def _spread(
    actors: list[ActorHandle],
    texts: list[str],
    normalize: bool,
    settings: Settings,
    on_chunk: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, str | None]:
    """Chunks of ``texts`` over the actors, starting at a random one; rows in order."""
    if not texts:
        info = ray.get(actors[0].info.remote())
        return np.zeros((0, info["dim"]), dtype=np.float32), info["model"]
    size = settings.embedding_chunk_size
    start = random.randrange(len(actors))
    refs = {
        actors[(start + i) % len(actors)].embed.remote(texts[at : at + size], normalize): at
        for i, at in enumerate(range(0, len(texts), size))
    }
    parts: dict[int, np.ndarray] = {}
    used = None
    pending = list(refs)
    done = 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        vectors, used = ray.get(ready[0])
        parts[refs[ready[0]]] = vectors
        done += len(vectors)
        if on_chunk is not None:
            on_chunk(done, len(texts))
    return np.concatenate([parts[at] for at in sorted(parts)]), used


def stop(settings: Settings) -> list[str]:
    """Kill every embedding actor of this namespace."""
    stopped = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == settings.namespace and entry["name"].startswith(EMBEDDER_PREFIX):
            ray.kill(ray.get_actor(entry["name"], namespace=settings.namespace), no_restart=True)
            stopped.append(entry["name"])
    return stopped


def _threads() -> int:
    import torch

    return torch.get_num_threads()
