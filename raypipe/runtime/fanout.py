"""Sub-work of a running processor on the cluster: Ray tasks, and the embedding actors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ray

from raypipe.config import Settings
from raypipe.embedding.models import Embeddings
from raypipe.runtime import embedder

T = TypeVar("T")


def _call(fn: Callable[[], Any]) -> Any:
    return fn()


class RayRunner:
    """The cluster's :class:`~raypipe.context.Runner`."""

    def __init__(self, settings: Settings):
        self.settings = settings

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
        return embedder.embed(self.settings, texts, model, normalize, on_chunk)
