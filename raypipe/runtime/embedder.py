"""Embedding on pool actors: the models an actor keeps loaded, and texts spread over actors."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import ray
from ray.actor import ActorHandle

from raypipe.config_groups import EmbeddingSettings
from raypipe.embedding import models
from raypipe.embedding.batcher import Batcher
from raypipe.embedding.models import EmbeddingModel, Embeddings

#: Called with (texts done, texts in all) as chunks finish.
OnChunk = Callable[[int, int], None]
#: Embeds on the caller's own actor: (texts, model, normalize) -> their embeddings.
LocalEmbed = Callable[[list[str], str, bool], Embeddings]

#: A job's chunks out on each actor at once: one encoding while the next waits there, so
#: the actor never idles between them, and another job's request waits for one chunk.
CHUNKS_PER_ACTOR = 2
#: How often a job waiting for its chunks looks up (an interrupt lands then at the latest).
WAKE_S = 0.2


class ModelHost:
    """The embedding models one actor has loaded (each on first use, the configured fallback
    if it cannot load), each with a :class:`Batcher` that merges the requests of the
    actor's concurrent jobs, and of other jobs' calls, into model batches."""

    def __init__(self, config: EmbeddingSettings):
        if config.threads:
            import torch

            torch.set_num_threads(config.threads)
        self.config = config
        self._loaded: dict[str, tuple[EmbeddingModel, Batcher]] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}

    async def embed(
        self, texts: list[str], model: str | None, normalize: bool, key: Hashable = None
    ) -> Embeddings:
        """The vectors of ``texts`` (float32), with the model and backend that made them.

        ``key`` names the caller (one job's chunks share it): callers take turns at the
        model, a request at a time (see :class:`Batcher`)."""
        loaded, batcher = await self.loaded(models.check_model(self.config, model))
        if not texts:
            return loaded.encode([])
        vectors = await batcher.submit(texts, key)
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return Embeddings(vectors.astype(np.float32, copy=False), loaded.name, loaded.backend)

    async def loaded(self, name: str) -> tuple[EmbeddingModel, Batcher]:
        """The model ``name`` and its batcher, loading it on first use (once: a caller
        cancelled meanwhile leaves the load to the others; a failed one is tried again)."""
        if name not in self._loaded:
            loading = self._loading.get(name)
            if loading is None or loading.done():
                loading = asyncio.get_running_loop().create_task(self._load(name))
                self._loading[name] = loading
            await asyncio.shield(loading)
        return self._loaded[name]

    async def _load(self, name: str) -> None:
        # Loading takes seconds: off the event loop, so other calls go on.
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, models.load, self.config, name)
        self._loaded[name] = (model, self._batcher(model))

    def _batcher(self, model: EmbeddingModel) -> Batcher:
        # Merged calls reach a job's chunk size: a call of several model batches sorts its
        # texts by length and pads less (1 thread: 191 texts/s in calls of 256 short
        # sentences, 155 in calls of 64); it runs them a model batch at a time, so a call
        # nobody waits for any more (its jobs cancelled) stops after one.
        config = self.config
        return Batcher(
            model.encode_until,
            max_batch=config.chunk_size,
            max_wait_s=config.max_wait_ms / 1000,
            model_batch=config.batch_size,
        )

    def info(self) -> dict[str, Any]:
        return {
            name: {
                "dim": model.dim,
                "device": model.device,
                "backend": model.backend,
                **batcher.stats,
            }
            for name, (model, batcher) in self._loaded.items()
        }


def embed_on(
    actors: Sequence[ActorHandle],
    config: EmbeddingSettings,
    texts: Sequence[str],
    model: str | None,
    normalize: bool,
    on_chunk: OnChunk | None,
    local: LocalEmbed | None = None,
) -> Embeddings:
    """Embed across a pool's actors: identical texts once, chunks spread over the actors
    from a random one (each merges what it gets with other jobs' requests), rows in order.

    Each actor holds at most ``CHUNKS_PER_ACTOR`` of the job's chunks at a time (one
    encoding, one next), and takes them in turn with other jobs' requests: a large job
    never queues all its texts ahead of anyone. If the attempt is interrupted (a cancel),
    the chunks it has out are withdrawn: queued ones are dropped, a running one stops
    after its model batch.

    With ``local`` (the job runs on an actor of this pool), texts that fit in one chunk
    are embedded there: no Ray call, and merged with that actor's other jobs' texts.
    """
    name = models.check_model(config, model)
    unique, positions = _unique(texts)
    size = config.chunk_size
    if local is not None and len(unique) <= size:
        found = local(unique, name, normalize)
        if on_chunk is not None:
            on_chunk(len(unique), len(unique))
        return Embeddings(found.vectors[positions], found.model, found.backend)
    key = uuid.uuid4().hex  # this call's chunks take their turns together
    starts = iter(_starts(len(unique), size))
    # Each chunk's call out, to where the chunk starts and the actor it went to (Ray types
    # actor calls as Never).
    out: dict[ray.ObjectRef[Embeddings], tuple[int, ActorHandle]] = {}

    def send(actor: ActorHandle) -> None:
        at = next(starts, None)
        if at is not None:
            out[actor.embed.remote(unique[at : at + size], name, normalize, key)] = (at, actor)

    first = random.randrange(len(actors))
    for _ in range(CHUNKS_PER_ACTOR):
        for i in range(len(actors)):
            send(actors[(first + i) % len(actors)])
    parts: dict[int, np.ndarray] = {}
    last: Embeddings | None = None
    done = 0
    try:
        while out:
            # Not a wait without end: an interrupt reaches this thread when Ray returns.
            ready, _ = ray.wait(list(out), num_returns=1, timeout=WAKE_S)
            if not ready:
                continue
            at, actor = out.pop(ready[0])
            last = ray.get(ready[0])
            send(actor)
            parts[at] = last.vectors
            done += len(last.vectors)
            if on_chunk is not None:
                on_chunk(done, len(unique))
    finally:
        for ref in out:  # none unless interrupted or failed
            ray.cancel(ref)
    assert last is not None  # a chunk at least, even of no texts (see _starts)
    vectors = np.concatenate([parts[at] for at in sorted(parts)])[positions]
    return Embeddings(vectors, last.model, last.backend)


def _starts(count: int, size: int) -> range:
    """Where each chunk begins; one (empty) chunk for no texts, so the model names itself."""
    return range(0, max(count, 1), size)


def _unique(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct texts in first-seen order, and each input's row among them."""
    index: dict[str, int] = {}
    positions = np.fromiter(
        (index.setdefault(text, len(index)) for text in texts), dtype=np.int64, count=len(texts)
    )
    return list(index), positions
