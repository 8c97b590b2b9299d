"""Merging embedding requests from concurrent jobs into model batches (pure asyncio)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

#: ``encode(texts, abandoned)``: the rows of ``texts``, or None if it stopped early because
#: ``abandoned()`` said that no request of the call still wants them.
Encode = Callable[[list[str], Callable[[], bool]], np.ndarray | None]


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future[np.ndarray]
    key: Hashable


class Batcher:
    """Collects requests until ``max_batch`` texts are waiting or ``max_wait_s`` has passed
    since the first, then runs one ``encode`` over all of them on a worker thread.

    While a batch is encoding the next one fills up, so under load batches grow by
    themselves; a lone request waits at most ``max_wait_s``. A request that would take a
    batch past ``max_batch`` starts the next one instead (a lone larger one goes alone):
    ``encode`` sorts a call's texts by length and runs them ``model_batch`` at a time, so a
    call of several model batches pads less than one of a single batch, and a call just
    past a multiple of ``model_batch`` pays a forward pass for its few last texts.

    Requests of one ``key`` (a job's chunks) are served in order, and keys take turns: a
    key served by the batch being encoded waits behind every key that came meanwhile, so
    a job's next chunk never runs ahead of another job's request that arrived while its
    last one ran. A request withdrawn (its caller cancelled) is dropped unencoded, and a
    call whose every request was withdrawn stops after its model batch (``abandoned``).
    """

    def __init__(self, encode: Encode, max_batch: int, max_wait_s: float, model_batch: int):
        self.encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.model_batch = model_batch
        self.stats: Counter[str] = Counter()
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        #: Keys waiting for a turn, in turn order, each with its requests in order.
        self._turns: dict[Hashable, deque[_Request]] = {}
        #: Keys served by the batch being encoded (with what they sent since): they take
        #: their next turn when it ends.
        self._served: dict[Hashable, deque[_Request]] = {}

    async def submit(self, texts: list[str], key: Hashable = None) -> np.ndarray:
        """The vectors of ``texts`` (one row each, in order). ``key``: whose request it is
        (requests of one key are served in order, keys in turn); None: its own."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        future: asyncio.Future[np.ndarray] = loop.create_future()
        await self._queue.put(_Request(list(texts), future, future if key is None else key))
        self.stats["requests"] += 1
        return await future

    def _arrived(self, request: _Request) -> None:
        waiting = self._served.get(request.key)
        if waiting is None:
            waiting = self._turns.setdefault(request.key, deque())
        waiting.append(request)

    def _head(self) -> _Request | None:
        """The request whose turn it is (withdrawn ones are dropped on the way)."""
        while self._turns:
            key = next(iter(self._turns))
            waiting = self._turns[key]
            while waiting and waiting[0].future.done():
                waiting.popleft()
                self.stats["withdrawn"] += 1
            if waiting:
                return waiting[0]
            del self._turns[key]
        return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._turns:
                self._arrived(await self._queue.get())
            batch: list[_Request] = []
            size = 0
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                while not self._queue.empty():
                    self._arrived(self._queue.get_nowait())
                request = self._head()
                if request is None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        self._arrived(await asyncio.wait_for(self._queue.get(), remaining))
                    except asyncio.TimeoutError:
                        break
                    continue
                if batch and size + len(request.texts) > self.max_batch:
                    break
                # Its key's turn ends: what else it has waits until this batch is done.
                waiting = self._turns.pop(request.key)
                waiting.popleft()
                self._served[request.key] = waiting
                batch.append(request)
                size += len(request.texts)
            if batch:
                await self._encode(batch)
            while not self._queue.empty():  # what came meanwhile goes first
                self._arrived(self._queue.get_nowait())
            for key, waiting in self._served.items():
                if waiting:
                    self._turns[key] = waiting
            self._served.clear()

    async def _encode(self, batch: list[_Request]) -> None:
        texts = [text for request in batch for text in request.texts]

        def abandoned() -> bool:
            return all(request.future.done() for request in batch)

        try:
            vectors = await asyncio.to_thread(self.encode, texts, abandoned)
        except Exception as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        if vectors is None:
            self.stats["abandoned"] += 1
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
