"""Merging embedding requests from concurrent jobs into model batches (pure asyncio)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Encode = Callable[[list[str]], np.ndarray]


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future[np.ndarray]


class Batcher:
    """Collects requests until ``max_batch`` texts are waiting or ``max_wait_s`` has passed
    since the first, then runs one ``encode`` over all of them on a worker thread.

    While a batch is encoding the next one fills up, so under load batches grow by
    themselves; a lone request waits at most ``max_wait_s``. A request that would take a
    batch past ``max_batch`` starts the next one instead (a lone larger one goes alone):
    ``encode`` sorts a call's texts by length and runs them ``model_batch`` at a time, so a
    call of several model batches pads less than one of a single batch, and a call just
    past a multiple of ``model_batch`` pays a forward pass for its few last texts.
    """

    def __init__(self, encode: Encode, max_batch: int, max_wait_s: float, model_batch: int):
        self.encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.model_batch = model_batch
        self.stats: Counter[str] = Counter()
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._next: _Request | None = None

    async def submit(self, texts: list[str]) -> np.ndarray:
        """The vectors of ``texts`` (one row each, in order)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(list(texts), future))
        self.stats["requests"] += 1
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._next or await self._queue.get()
            self._next = None
            batch = [first]
            size = len(first.texts)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if size + len(item.texts) > self.max_batch:
                    self._next = item
                    break
                batch.append(item)
                size += len(item.texts)
            await self._encode(batch)

    async def _encode(self, batch: list[_Request]) -> None:
        texts = [text for request in batch for text in request.texts]
        try:
            vectors = await asyncio.to_thread(self.encode, texts)
        except Exception as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        self.stats["batches"] += 1
        self.stats["forward_passes"] += math.ceil(len(texts) / self.model_batch)
        self.stats["texts"] += len(texts)
        start = 0
        for request in batch:
            end = start + len(request.texts)
            if not request.future.done():
                request.future.set_result(vectors[start:end])
            start = end
