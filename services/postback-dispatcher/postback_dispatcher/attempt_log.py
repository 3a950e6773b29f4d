"""A small async batch writer for the attempt log and delivery outcomes.

One INSERT per attempt would put a database round trip on every postback;
instead records are collected and written every few milliseconds (COPY for the
attempts, one UPDATE … FROM unnest for the delivery rows) in one transaction.
``write`` returns once its batch is committed, so a caller can ack a message
only after the state it depends on (e.g. "delivered") is durable.

Nothing is dropped: while the database is away a batch is retried (backoff,
capped) and its writers keep waiting, so their messages stay unacked. ``write``
raises only when the writer closes with the batch still unwritten
(``AttemptLogUnavailable``) or when the database refuses that record itself
(a data error: it is retried alone first, so it can't take others with it);
either way the caller must not ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from postback_dispatcher import repository
from postback_dispatcher.repository import DATA_ERRORS, AttemptRecord, DeliveryOutcome

log = logging.getLogger(__name__)

_BACKOFF_FIRST_SECONDS = 0.1
_BACKOFF_MAX_SECONDS = 2.0

_Entry = tuple[AttemptRecord | None, DeliveryOutcome | None, asyncio.Future[None]]


class AttemptLogUnavailable(RuntimeError):
    """The record was not written (the writer closed while the database was away)."""


class AttemptLogWriter:
    def __init__(
        self, pool: asyncpg.Pool, *, flush_interval: float = 0.020, max_batch: int = 500
    ) -> None:
        self._pool = pool
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._entries: list[_Entry] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.write_failures = 0  # failed batch writes (the database away), for /metrics

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="attempt-log-writer")

    async def write(self, attempt: AttemptRecord | None, outcome: DeliveryOutcome | None) -> None:
        """Queue one record (and delivery update); wait until it is committed."""
        if self._closing:
            raise AttemptLogUnavailable("attempt log writer is closed")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._entries.append((attempt, outcome, waiter))
        if len(self._entries) == 1 or len(self._entries) >= self._max_batch:
            self._wakeup.set()
        # The waiter is this caller's own: if the caller is cancelled, the flush skips it.
        await waiter

    async def _run(self) -> None:
        # Idle until the first record of a batch; then collect for ``flush_interval``
        # (or until the batch is full) and write it; what arrives meanwhile is next.
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            if len(self._entries) < self._max_batch and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full_or_closing(), self._flush_interval)
            await self._flush()
            if self._entries:
                self._wakeup.set()
        await self._flush()

    async def _full_or_closing(self) -> None:
        self._wakeup.clear()
        while len(self._entries) < self._max_batch and not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()

    async def _flush(self) -> None:
        if not self._entries:
            return
        entries, self._entries = self._entries, []
        delay = _BACKOFF_FIRST_SECONDS
        while True:
            try:
                await self._write(entries)
                break
            except DATA_ERRORS as exc:
                if len(entries) == 1:
                    log.error("attempt log: the database refused a record (%s)", exc)
                    _settle(entries, exc)
                    return
                # One bad record fails the whole batch: write each alone.
                for entry in entries:
                    await self._write_alone(entry)
                return
            except Exception as exc:  # the database is away: wait for it, keep the rows
                self.write_failures += 1
                if self._closing:
                    log.error(
                        "attempt log: closing with %d records unwritten (%s); their messages"
                        " stay unacked and return to the queue",
                        len(entries),
                        exc,
                    )
                    _settle(entries, AttemptLogUnavailable(f"{type(exc).__name__}: {exc}"))
                    return
                log.warning(
                    "attempt log write failed (%s); %d records kept, retrying in %.1fs",
                    type(exc).__name__,
                    len(entries),
                    delay,
                )
                await self._sleep_unless_closing(delay)
                delay = min(delay * 2, _BACKOFF_MAX_SECONDS)
        _settle(entries, None)

    async def _write_alone(self, entry: _Entry) -> None:
        try:
            await self._write([entry])
        except DATA_ERRORS as exc:
            log.error("attempt log: the database refused a record (%s)", exc)
            _settle([entry], exc)
            return
        except Exception:
            self._entries.append(entry)  # the database went away meanwhile: next batch
            self._wakeup.set()
            return
        _settle([entry], None)

    async def _write(self, entries: list[_Entry]) -> None:
        attempts = [a for a, _, waiter in entries if a is not None]
        outcomes = [o for _, o, waiter in entries if o is not None]
        async with self._pool.acquire() as conn, conn.transaction():
            if attempts:
                await repository.insert_attempts(conn, attempts)
            if outcomes:
                await repository.apply_outcomes(conn, outcomes)

    async def _sleep_unless_closing(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed_signal(), seconds)

    async def _closed_signal(self) -> None:
        while not self._closing:
            self._wakeup.clear()
            await self._wakeup.wait()

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task


def _settle(entries: list[_Entry], error: BaseException | None) -> None:
    for _, _, waiter in entries:
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
