"""The dispatcher's broker connection and a publisher that waits for confirms.

Every publish the dispatcher makes (retry tier, dead letter, replay) must not
be lost, so the channel runs in confirm mode and ``publish`` returns only once
the broker has taken responsibility for the message (or raises).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection


class BrokerUnavailable(RuntimeError):
    """The dispatcher is not connected to the broker (not started, or stopping)."""


class ConfirmedPublisher:
    """Publishes persistent messages to named exchanges with publisher confirms."""

    def __init__(self) -> None:
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
        """Publish and wait for the broker's confirm; raises if it is refused or unroutable."""
        target = await self._exchange(exchange)
        message = aio_pika.Message(
            body,
            headers=dict(headers or {}),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=message_id,
        )
        await target.publish(message, routing_key=routing_key, mandatory=True)
