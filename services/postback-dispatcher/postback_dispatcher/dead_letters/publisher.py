"""Publishing replayed events back into the normal pipeline, with publisher confirms.

A replay is an ordinary ``conversion.created`` event on the events exchange:
the consumer treats it like any other, with the publisher's *current*
settings, so an operator who fixed a broken URL gets the fixed one.
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from postback_core import amqp
from postback_core.contracts import CONVERSION_CREATED
from postback_core.topology import (
    EVENTS_EXCHANGE,
    HEADER_ATTEMPT,
    HEADER_SEQUENCE,
    HEADER_TRIGGER,
    declare_topology,
)
from postback_dispatcher.broker import ConfirmedPublisher

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """The broker did not confirm the message (down, nacked or too slow)."""


def replay_headers(previous_sequence: int) -> dict[str, str | int]:
    """A replay starts a new delivery sequence with its attempt count at zero."""
    return {
        HEADER_TRIGGER: "replay",
        HEADER_SEQUENCE: previous_sequence + 1,
        HEADER_ATTEMPT: 0,
    }


class ReplayPublisher:
    """Publishes replays with confirms: through the dispatcher's own confirmed publisher
    when it is connected, else over a lazily opened channel of its own (so operators can
    replay even while the consumer is (re)connecting, and tests can point it anywhere).
    """

    def __init__(
        self,
        amqp_url: str,
        retry_delays: tuple[float, ...],
        confirm_timeout: float = 10.0,
        shared: ConfirmedPublisher | None = None,
    ) -> None:
        self.shared = shared
        self.amqp_url = amqp_url
        self.retry_delays = retry_delays
        self.confirm_timeout = confirm_timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def _events_exchange(self) -> AbstractExchange:
        async with self._lock:
            if self._exchange is not None and self._channel and not self._channel.is_closed:
                return self._exchange
            await self._close_quietly()
            try:
                self._connection = await asyncio.wait_for(
                    amqp.connect(self.amqp_url), self.confirm_timeout
                )
                self._channel = await self._connection.channel(publisher_confirms=True)
                topology = await declare_topology(self._channel, self.retry_delays)
            except Exception as exc:
                await self._close_quietly()
                raise PublishError(f"broker unavailable: {type(exc).__name__}") from exc
            self._exchange = topology.events
            return self._exchange

    async def publish_event(
        self, body: bytes, headers: dict[str, str | int], message_id: str | None
    ) -> None:
        """Publish one event persistently and wait for the broker's confirm."""
        if self.shared is not None and self.shared.connected:
            try:
                await asyncio.wait_for(
                    self.shared.publish(
                        EVENTS_EXCHANGE, CONVERSION_CREATED, body, headers, message_id=message_id
                    ),
                    self.confirm_timeout,
                )
            except Exception as exc:
                log.warning("replay publish failed: %s", type(exc).__name__)
                raise PublishError(f"broker did not confirm: {type(exc).__name__}") from exc
            return
        exchange = await self._events_exchange()
        message = aio_pika.Message(
            body,
            headers=dict(headers),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=message_id,
        )
        try:
            await exchange.publish(
                message,
                routing_key=CONVERSION_CREATED,
                mandatory=True,
                timeout=self.confirm_timeout,
            )
        except Exception as exc:
            log.warning("replay publish failed: %s", type(exc).__name__)
            async with self._lock:
                await self._close_quietly()
            raise PublishError(f"broker did not confirm: {type(exc).__name__}") from exc

    async def _close_quietly(self) -> None:
        connection, self._connection, self._channel, self._exchange = (
            self._connection,
            None,
            None,
            None,
        )
        if connection is not None:
            try:
                await connection.close()
            except Exception:  # already broken; nothing to release
                log.debug("closing a broken broker connection failed", exc_info=True)

    async def close(self) -> None:
        async with self._lock:
            await self._close_quietly()
