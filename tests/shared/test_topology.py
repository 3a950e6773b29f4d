from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from postback_core.topology import (
    EVENTS_EXCHANGE,
    declare_topology,
    retry_queue_name,
    retry_routing_key,
)
from tests.support.infra import create_test_vhost, delete_vhost
from tests.support.polling import wait_for


@pytest.fixture
async def channel() -> AsyncIterator[AbstractChannel]:
    name, url = await create_test_vhost("topology")
    connection = await aio_pika.connect(url)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()
        await delete_vhost(name)


async def next_message(queue: AbstractQueue) -> AbstractIncomingMessage:
    async def probe() -> AbstractIncomingMessage | None:
        return await queue.get(fail=False, no_ack=False)

    return await wait_for(probe, timeout=10, message=f"a message on {queue.name}")


async def test_retry_tier_returns_message_to_work_queue_after_its_ttl(
    channel: AbstractChannel,
) -> None:
    topology = await declare_topology(channel, (0.3, 60))
    sent = time.monotonic()
    await topology.retry.publish(
        aio_pika.Message(b"event", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=retry_routing_key(0.3),
    )
    message = await next_message(topology.work_queue)
    assert message.body == b"event"
    assert 0.25 <= time.monotonic() - sent < 5
    await message.ack()


async def test_changed_delays_declare_new_queues_without_conflict(
    channel: AbstractChannel,
) -> None:
    await declare_topology(channel, (5, 300))
    topology = await declare_topology(channel, (7, 300))  # a new 7 s tier must not clash
    assert retry_queue_name(7) in {q.name for q in topology.retry_queues.values()}


async def test_conversion_events_reach_the_work_queue(channel: AbstractChannel) -> None:
    topology = await declare_topology(channel, (1,))
    exchange = await channel.get_exchange(EVENTS_EXCHANGE)
    await exchange.publish(aio_pika.Message(b"conv"), routing_key="conversion.created")
    message = await next_message(topology.work_queue)
    assert message.body == b"conv"
    await message.ack()
