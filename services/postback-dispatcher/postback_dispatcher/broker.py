"""The dispatcher's broker connection: a publisher that waits for confirms, and consumers.

Every publish the dispatcher makes (retry tier, dead letter, replay) must not
be lost, so the channel runs in confirm mode and ``publish`` returns only once
the broker has taken responsibility for the message (or raises).

Every consumer is a :class:`Subscription`: the robust connection reopens its
channels after a reconnect but does not restore consumers it doesn't track, so
each subscription subscribes again itself whenever its channel reopens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq.abc import DeliveredMessage

log = logging.getLogger(__name__)


class Subscription:
    """A consumer of one queue on a robust channel, subscribed again after every reconnect."""

    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: str,
        callback: Callable[[DeliveredMessage], Coroutine[Any, Any, None]],
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._callback = callback
        self._arguments = dict(arguments or {})
        self._consumer_tag: str | None = None
        self._active = False

    @property
    def queue(self) -> str:
        return self._queue

    async def start(self) -> None:
        self._active = True
        await self._subscribe()
        self._channel.reopen_callbacks.add(self._resubscribe)

    async def cancel(self) -> None:
        """Stop taking messages (unacked ones stay with us until settled or closed)."""
        self._active = False
        self._channel.reopen_callbacks.discard(self._resubscribe)
        tag, self._consumer_tag = self._consumer_tag, None
        if tag is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                raw = await self._channel.get_underlay_channel()
                await raw.basic_cancel(tag)

    async def _subscribe(self) -> None:
        raw = await self._channel.get_underlay_channel()
        ok = await raw.basic_consume(self._queue, self._callback, arguments=self._arguments)
        self._consumer_tag = ok.consumer_tag

    async def _resubscribe(self, *_args: Any) -> None:
        if self._active:
            await self._subscribe()
            log.info("re-subscribed to %s after a reconnect", self._queue)


class BrokerUnavailable(RuntimeError):
    """The dispatcher is not connected to the broker (not started, or stopping)."""


class ConfirmedPublisher:
    """Publishes persistent messages to named exchanges with publisher confirms.

    A publish ends within ``timeout_seconds``: on a channel that a reconnect is
    replacing, the robust channel would otherwise wait for it indefinitely.
    """

    def __init__(self, *, timeout_seconds: float = 30.0) -> None:
        self.timeout_seconds = timeout_seconds
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._lock = asyncio.Lock()

    async def attach(self, connection: AbstractRobustConnection) -> None:
        self._channel = await connection.channel(publisher_confirms=True)
        self._exchanges.clear()

    async def detach(self) -> None:
        channel, self._channel = self._channel, None
        self._exchanges.clear()
        if channel is not None and not channel.is_closed:
            await channel.close()

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    async def _exchange(self, name: str) -> AbstractExchange:
        if self._channel is None:
            raise BrokerUnavailable("publisher is not connected")
        exchange = self._exchanges.get(name)
        if exchange is None:
            if name == "":
                exchange = self._channel.default_exchange
            else:
                exchange = await self._channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        *,
        message_id: str | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm; raises if refused, unroutable or late."""
        async with asyncio.timeout(self.timeout_seconds):
            await self._publish(exchange, routing_key, body, headers, message_id)

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
    ) -> None:
        target = await self._exchange(exchange)
        message = aio_pika.Message(
            body,
            headers=dict(headers or {}),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=message_id,
        )
        await target.publish(message, routing_key=routing_key, mandatory=True)
