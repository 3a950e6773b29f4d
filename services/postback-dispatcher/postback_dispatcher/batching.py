"""Batching on the hot path: attempt claims (one statement per batch) and acks.

At thousands of postbacks per second the per-message database round trip and
per-message AMQP ack frame cost more than the HTTP request itself (each is a
syscall plus a wake-up on a small machine). Both are batched here without
weakening the rules: a claim is still committed before its request is sent, and
a message is still acked only after its follow-up is done.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from typing import Any

import asyncpg
from aiormq.abc import AbstractChannel, DeliveredMessage

from postback_dispatcher import repository
from postback_dispatcher.repository import DATA_ERRORS, Claim, ClaimRequest

log = logging.getLogger(__name__)


_NO_HEADERS: dict[str, Any] = {}
# An ack batch that is not written within this (a connection stuck half-open) is
# given up: its messages are redelivered, and the batcher serves the next channel.
ACK_SECONDS = 10.0


class Delivery:
    """One consumed message, straight from aiormq.

    aio-pika's IncomingMessage costs more per message than the HTTP request's own
    client work at thousands per second; the dispatcher needs only these fields.
    """

    __slots__ = ("body", "channel", "delivery_tag", "headers")

    def __init__(self, raw: DeliveredMessage) -> None:
        self.body: bytes = raw.body
        # Read-only here (follow-ups build their own header dicts).
        self.headers: dict[str, Any] = raw.header.properties.headers or _NO_HEADERS
        self.delivery_tag: int | None = getattr(raw.delivery, "delivery_tag", None)
        self.channel: AbstractChannel = raw.channel

    async def nack(self, *, requeue: bool = True) -> None:
        if self.delivery_tag is not None:
            await self.channel.basic_nack(self.delivery_tag, requeue=requeue)


class ClaimBatcher:
    """Collects claims and runs them as one upsert.

    Under load (the last batch held ``busy_batch`` claims or more) it waits
    ``linger_seconds`` for more, so that thousands of postbacks a second cost a
    few hundred statements; when traffic is light a claim goes out at once
    (the claim is on the path to the request, so lingering would be latency).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        max_attempts: int,
        *,
        max_batch: int = 256,
        linger_seconds: float = 0.008,
        busy_batch: int = 16,
    ) -> None:
        self._pool = pool
        self._max_attempts = max_attempts
        self._max_batch = max_batch
        self._linger = linger_seconds
        self._busy_batch = busy_batch
        self._last_batch = 0
        self._pending: dict[int, tuple[ClaimRequest, asyncio.Future[Claim]]] = {}
        # A second claim for a conversion already in the batch waits for the next one
        # (one upsert can't touch a row twice).
        self._overflow: deque[tuple[ClaimRequest, asyncio.Future[Claim]]] = deque()
        self._flusher: asyncio.Task[None] | None = None

    async def claim(self, request: ClaimRequest) -> Claim:
        future: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        if request.conversion_id in self._pending:
            self._overflow.append((request, future))
        else:
            self._pending[request.conversion_id] = (request, future)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_soon())
        return await future

    async def _flush_soon(self) -> None:
        try:
            while self._pending:
                if len(self._pending) < self._max_batch:
                    busy = self._last_batch >= self._busy_batch
                    # Light traffic: only let the claims of this loop iteration join.
                    await asyncio.sleep(self._linger if busy else 0)
                batch = list(self._pending.values())[: self._max_batch]
                self._last_batch = len(batch)
                for request, _ in batch:
                    del self._pending[request.conversion_id]
                while self._overflow and self._overflow[0][0].conversion_id not in self._pending:
                    request, future = self._overflow.popleft()
                    self._pending[request.conversion_id] = (request, future)
                await self._run(batch)
        finally:
            self._flusher = None
            if self._pending:  # claims that arrived during the last run
                self._flusher = asyncio.create_task(self._flush_soon())

    async def _run(self, batch: list[tuple[ClaimRequest, asyncio.Future[Claim]]]) -> None:
        try:
            async with self._pool.acquire() as conn:
                claims = await repository.claim_attempts(
                    conn, [request for request, _ in batch], self._max_attempts
                )
        except DATA_ERRORS as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            # One bad row fails the whole statement: claim each alone, so only it fails.
            log.warning("claim batch of %d failed (%s); claiming each alone", len(batch), exc)
            for item in batch:
                await self._run([item])
            return
        except Exception as exc:
            _fail(batch, exc)
            return
        for request, future in batch:
            if not future.done():
                future.set_result(claims[request.conversion_id])


def _fail(batch: list[tuple[ClaimRequest, asyncio.Future[Claim]]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


class AckBatcher:
    """Acks finished messages with one ``multiple`` ack per contiguous run of tags.

    Delivery tags grow in delivery order on a channel, so once every message up
    to tag T is finished, one ``basic.ack(T, multiple=True)`` settles them all.
    A finished message stuck behind a slow one is acked on its own after
    ``straggler_seconds`` so it doesn't hold a prefetch slot for long.
    """

    def __init__(self, *, interval: float = 0.005, straggler_seconds: float = 0.05) -> None:
        self._interval = interval
        self._straggler = straggler_seconds
        self._channel: AbstractChannel | None = None
        # [delivery tag, state, finished at]; state: 0 pending, 1 to ack, 2 settled.
        self._window: deque[list[float]] = deque()
        self._index: dict[int, list[float]] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ack-batcher")

    def received(self, message: Delivery) -> None:
        channel = _channel_of(message)
        if channel is None:
            return
        if channel is not self._channel:  # new channel after a reconnect: old tags are void
            self._channel = channel
            self._window.clear()
            self._index.clear()
        tag = message.delivery_tag
        if tag is None:
            return
        entry: list[float] = [tag, 0, 0.0]
        if self._window and tag < self._window[-1][0]:
            # Keep tag order even if callbacks ran out of order: a multiple ack must
            # never cover a message that is still being worked on.
            position = bisect.bisect_left([e[0] for e in self._window], tag)
            self._window.insert(position, entry)
        else:
            self._window.append(entry)
        self._index[tag] = entry

    def ack(self, message: Delivery) -> None:
        """Mark finished; the ack frame goes out with the next batch."""
        entry = self._entry(message)
        if entry is not None:
            entry[1], entry[2] = 1, time.monotonic()
            self._wakeup.set()

    def settled(self, message: Delivery) -> None:
        """The message was nacked (or otherwise settled) on its own."""
        entry = self._entry(message)
        if entry is not None:
            entry[1] = 2
            self._wakeup.set()

    def _entry(self, message: Delivery) -> list[float] | None:
        if _channel_of(message) is not self._channel or message.delivery_tag is None:
            return None
        return self._index.get(message.delivery_tag)

    async def _run(self) -> None:
        while not self._closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self, *, everything: bool = False) -> None:
        channel = self._channel
        if channel is None:
            return
        last_to_ack: int | None = None
        while self._window and self._window[0][1] != 0:
            tag, state, _ = self._window.popleft()
            del self._index[int(tag)]
            if state == 1:
                last_to_ack = int(tag)
        try:
            async with asyncio.timeout(ACK_SECONDS):
                await self._send_acks(channel, last_to_ack, everything)
        except Exception as exc:  # channel closed or stuck: those messages will be redelivered
            log.warning("ack batch failed (%r); messages will be redelivered", exc)
            if channel is self._channel:
                self._window.clear()
                self._index.clear()

    async def _send_acks(
        self, channel: AbstractChannel, last_to_ack: int | None, everything: bool
    ) -> None:
        if last_to_ack is not None:
            await channel.basic_ack(last_to_ack, multiple=True)
        now = time.monotonic()
        stragglers = [
            e for e in self._window if e[1] == 1 and (everything or now - e[2] >= self._straggler)
        ]
        for entry in stragglers:
            await channel.basic_ack(int(entry[0]))
            entry[1] = 2
        if any(e[1] == 1 for e in self._window):
            self._wakeup.set()  # come back for the rest

    async def close(self) -> None:
        await self.flush(everything=True)
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _channel_of(message: Delivery) -> AbstractChannel | None:
    channel = message.channel
    return None if channel.is_closed else channel
