"""Sub-work of a running processor on the cluster: Ray tasks, and the embedding pool."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import ray
from ray.actor import ActorHandle

from raypipe.config_groups import EmbeddingSettings
from raypipe.embedding.models import Embeddings
from raypipe.exceptions import PermanentError
from raypipe.runtime import embedder

#: The actors of the pools a processor ``uses``, handed to its attempt by the dispatcher.
PoolHandles = Mapping[str, Sequence[ActorHandle]]
EMBEDDINGS_POOL = "embeddings"

T = TypeVar("T")


def _call(fn: Callable[[], Any]) -> Any:
    return fn()


class RayRunner:
    """The cluster's :class:`~raypipe.context.Runner` for an attempt in a Ray task."""

    def __init__(
        self,
        embeddings: EmbeddingSettings,
        pools: PoolHandles,
        local: embedder.LocalEmbed | None = None,
    ):
        """``embeddings``: how ``ctx.embed`` calls go to the pool; ``local``: set when the
        attempt runs on an embeddings pool actor (see
        :func:`~raypipe.runtime.embedder.embed_on`)."""
        self.embeddings = embeddings
        self.pools = pools
        self.local = local

    def parallel(
        self,
        calls: Sequence[Callable[[], T]],
        *,
        num_cpus: float = 1.0,
        memory: int | None = None,
        on_done: Callable[[int, T], None] | None = None,
    ) -> list[T]:
        options: dict[str, Any] = {"num_cpus": num_cpus}
        if memory:
            options["memory"] = memory
        remote = ray.remote(_call).options(**options)
        refs = [remote.remote(call) for call in calls]
        position = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, T] = {}
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                index = position[ready[0]]
                # A failure re-raises as the callable raised it: Ray's error is also an
                # instance of the original class, so PermanentError stays permanent.
                results[index] = ray.get(ready[0])
                if on_done is not None:
                    on_done(index, results[index])
        finally:
            for ref in pending:
                ray.cancel(ref)
        return [results[i] for i in range(len(refs))]

    def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        normalize: bool = True,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> Embeddings:
        actors = self.pools.get(EMBEDDINGS_POOL)
        if not actors:
            raise PermanentError(
                "ctx.embed needs the embeddings pool: declare"
                f" @processor(..., uses=[{EMBEDDINGS_POOL!r}]) (or pool={EMBEDDINGS_POOL!r})"
            )
        return embedder.embed_on(
            actors, self.embeddings, texts, model, normalize, on_chunk, self.local
        )
