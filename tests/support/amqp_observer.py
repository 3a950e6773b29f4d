"""Watch events on the events exchange without disturbing anyone.

An exclusive, auto-delete queue of our own, bound to ``postback.events``: it
receives a copy of every matching event, while ``postback.work`` (and any
dispatcher consuming it) is left alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from postback_core.contracts import ConversionEvent, decode_conversion_event
from postback_core.topology import EVENTS_EXCHANGE


@dataclass
class ObservedEvent:
    routing_key: str
    message_id: str | None
    content_type: str | None
    delivery_mode: int | None
    headers: dict[str, Any]
    body: bytes

    def event(self) -> ConversionEvent:
        return decode_conversion_event(self.body)


@dataclass
class EventObserver:
    received: list[ObservedEvent] = field(default_factory=list)

    def for_conversion(self, conversion_id: int) -> list[ObservedEvent]:
        return [
            m
            for m in self.received
            if m.routing_key.startswith("conversion.") and m.event().conversion_id == conversion_id
        ]

    def with_message_id(self, message_id: str) -> list[ObservedEvent]:
        return [m for m in self.received if m.message_id == message_id]


@asynccontextmanager
async def observe_events(
    amqp_url: str, routing_key: str = "conversion.*"
) -> AsyncIterator[EventObserver]:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key)
        observer = EventObserver()

        async def on_message(message: AbstractIncomingMessage) -> None:
            observer.received.append(
                ObservedEvent(
                    routing_key=message.routing_key or "",
                    message_id=message.message_id,
                    content_type=message.content_type,
                    delivery_mode=int(message.delivery_mode) if message.delivery_mode else None,
                    headers=dict(message.headers or {}),
                    body=message.body,
                )
            )

        await queue.consume(on_message, no_ack=True)
        yield observer
    finally:
        await connection.close()
