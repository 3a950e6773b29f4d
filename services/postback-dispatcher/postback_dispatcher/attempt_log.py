"""A small async batch writer for the attempt log and delivery outcomes.

One INSERT per attempt would put a database round trip on every postback;
instead records are collected and written every few milliseconds (COPY for the
attempts, one UPDATE … FROM unnest for the delivery rows) in one transaction.
``write`` returns once its batch is committed, so a caller can ack a message
only after the state it depends on (e.g. "delivered") is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from postback_dispatcher import repository
from postback_dispatcher.repository import AttemptRecord, DeliveryOutcome

log = logging.getLogger(__name__)

_WRITE_RETRIES = 3


class AttemptLogWriter:
    def __init__(
        self, pool: asyncpg.Pool, *, flush_interval: float = 0.020, max_batch: int = 500
    ) -> None:
        self._pool = pool
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._attempts: list[AttemptRecord] = []
        self._outcomes: list[DeliveryOutcome] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="attempt-log-writer")

    async def write(self, attempt: AttemptRecord | None, outcome: DeliveryOutcome | None) -> None:
        """Queue one record (and delivery update); wait until it is committed."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if attempt is not None:
            self._attempts.append(attempt)
        if outcome is not None:
            self._outcomes.append(outcome)
        self._waiters.append(waiter)
        if len(self._waiters) == 1 or len(self._waiters) >= self._max_batch:
            self._wakeup.set()
        # The waiter is this caller's own: if the caller is cancelled, the flush skips it.
        await waiter

    async def _run(self) -> None:
        # Idle until the first record of a batch; then collect for ``flush_interval``
        # (or until the batch is full) and write it; what arrives meanwhile is next.
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            if len(self._waiters) < self._max_batch and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full_or_closing(), self._flush_interval)
            await self._flush()
            if self._waiters:
                self._wakeup.set()
        await self._flush()

    async def _full_or_closing(self) -> None:
        self._wakeup.clear()
        while len(self._waiters) < self._max_batch and not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()

    async def _flush(self) -> None:
        if not self._waiters:
            return
        attempts, self._attempts = self._attempts, []
        outcomes, self._outcomes = self._outcomes, []
        waiters, self._waiters = self._waiters, []
        for attempt in range(1, _WRITE_RETRIES + 1):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    if attempts:
                        await repository.insert_attempts(conn, attempts)
                    if outcomes:
                        await repository.apply_outcomes(conn, outcomes)
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("attempt log write failed (%s), try %d", type(exc).__name__, attempt)
                if attempt == _WRITE_RETRIES:
                    log.error("dropping %d attempt log rows after repeated failures", len(attempts))
                else:
                    await asyncio.sleep(0.2 * attempt)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
