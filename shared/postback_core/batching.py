"""Group commit for hot paths: concurrent calls coalesced into one batch.

A request that finds the batcher idle runs at once, alone, so a quiet system
pays no added latency. Under load, calls that arrive while ``max_in_flight``
batches are already running wait for the next free slot and then go together:
one database round trip and one commit for many requests. The batch size grows
with the load by itself; there is no timer to tune.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

BatchFunction = Callable[[list[ItemT]], Awaitable[Sequence[ResultT | BaseException]]]


class MicroBatcher(Generic[ItemT, ResultT]):
    """``await submit(item)`` resolves with that item's entry of ``run_batch(items)``.

    ``run_batch`` returns one result per item, in order; an exception object in
    place of a result fails only that caller. If ``run_batch`` itself raises,
    every caller of that batch gets the exception.
    """

    def __init__(
        self,
        run_batch: BatchFunction[ItemT, ResultT],
        *,
        max_batch: int = 256,
        max_in_flight: int = 2,
        name: str = "batch",
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._name = name
        self._pending: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: ItemT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._in_flight < self._max_in_flight:
            self._start_batch()
        # Shielded: a caller that goes away (client disconnect) must not cancel
        # the batch's work for everyone else; its result is simply dropped.
        return await asyncio.shield(future)

    async def drain(self) -> None:
        """Wait until every submitted item has been run (for graceful stops)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _start_batch(self) -> None:
        self._in_flight += 1
        task = asyncio.create_task(self._run(), name=f"{self._name}-batch")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        # The batch is taken when the task first runs, not when it was created:
        # everything submitted in the same event-loop iteration (requests read
        # from the sockets in one go) joins it, without any added wait.
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        if not batch:  # another batch took them
            self._in_flight -= 1
            return
        try:
            results = await self._run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"{self._name}: {len(results)} results for a batch of {len(batch)}"
                )
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except BaseException as exc:
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            if self._pending:
                self._start_batch()
