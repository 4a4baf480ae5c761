"""Adaptive micro-batching: concurrent requests for a model gathered into one model call.

When the model is idle a request is scored at once (no waiting: a lone caller pays nothing).
Requests that arrive while a batch is being scored queue up and go together in the next call,
up to ``max_batch_size`` rows, waiting for more at most ``max_batch_time_ms`` after the oldest
of them arrived. A request larger than the batch size is scored whole, on its own. Only
requests with the same ``key`` (for the data plane: the same Arrow schema) share a call.

Each caller gets back exactly the result the scorer gave for its own payload: the scorer takes
the list of payloads and returns one result (or exception) per payload, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

ScoreMany = Callable[[list[Any]], list[Any]]


@dataclass(eq=False)
class _Pending:
    payload: Any
    rows: int
    key: Any
    future: asyncio.Future
    arrived: float


class AdaptiveBatcher:
    """Gathers ``submit`` calls into calls of ``score_many`` run in a one-thread executor.

    One model call at a time: the event loop keeps accepting and decoding requests while the
    model works, and those requests form the next batch. ``on_batch(rows, requests)`` and
    ``on_queue(waiting)`` report to metrics.
    """

    def __init__(
        self,
        score_many: ScoreMany,
        max_batch_size: int = 64,
        max_batch_time_ms: float = 2.0,
        executor: Executor | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        self.score_many = score_many
        self.max_batch_size = max_batch_size
        self.max_wait = max_batch_time_ms / 1000
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="batch-infer-model")
        self._own_executor = executor is None
        self._on_batch = on_batch or (lambda rows, requests: None)
        self._on_queue = on_queue or (lambda waiting: None)
        self._pending: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, payload: Any, rows: int, key: Any = None) -> Any:
        """Score ``payload`` (``rows`` rows) in the next model call; its own result comes back."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._arrived = asyncio.Event()
            self._task = loop.create_task(self._run(), name="batch-infer-batcher")
        future = loop.create_future()
        self._pending.append(_Pending(payload, rows, key, future, time.monotonic()))
        self._on_queue(len(self._pending))
        self._arrived.set()
        return await future

    async def close(self) -> None:
        """Stop gathering (callers still waiting get CancelledError) and free the thread."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for item in self._pending:
            item.future.cancel()
        self._pending.clear()
        if self._own_executor:
            self._executor.shutdown(wait=False)

    async def _run(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        backlog = False  # requests queued up while the model worked
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()  # idle: whatever arrives goes at once
            elif backlog:
                await self._wait_for_more()
            batch = self._take()
            self._on_queue(len(self._pending))
            if not batch:
                continue
            self._on_batch(sum(item.rows for item in batch), len(batch))
            try:
                results = await loop.run_in_executor(
                    self._executor, self.score_many, [item.payload for item in batch]
                )
            except Exception as exc:  # the scorer failed as a whole: every caller hears why
                results = [exc] * len(batch)
            for item, result in zip(batch, results, strict=True):
                if item.future.done():  # the caller went away
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            backlog = bool(self._pending)

    async def _wait_for_more(self) -> None:
        """Wait until the batch is full or its oldest request has waited ``max_wait``."""
        assert self._arrived is not None
        deadline = self._pending[0].arrived + self.max_wait
        while self._compatible_rows() < self.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    def _compatible_rows(self) -> int:
        key = self._pending[0].key
        return sum(item.rows for item in self._pending if item.key == key)

    def _take(self) -> list[_Pending]:
        """The oldest live request, and every later one of the same key that still fits."""
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
        if not self._pending:
            return []
        first = self._pending.popleft()
        batch, rows, left = [first], first.rows, deque()
        for item in self._pending:
            if item.future.done():
                continue
            if item.key == first.key and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                left.append(item)
        self._pending = left
        return batch
