"""Batched confirmed publishing against RabbitMQ: confirms, returns and nacks per message."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from postback_core.amqp_batch import Outgoing, publish_batch


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    conn = await aio_pika.connect_robust(amqp_url)
    yield conn
    await conn.close()


async def _confirm_channel(
    conn: AbstractRobustConnection,
) -> tuple[AbstractChannel, aiormq.Channel]:
    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
    underlay = await channel.get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)
    return channel, underlay


def _message(queue: str, body: bytes, **headers: object) -> Outgoing:
    return Outgoing(
        exchange="", routing_key=queue, body=body, message_id=uuid.uuid4().hex, headers=headers
    )


async def test_a_batch_is_confirmed_and_arrives_intact_in_order(
    connection: AbstractRobustConnection,
) -> None:
    channel, underlay = await _confirm_channel(connection)
    queue = await channel.declare_queue(exclusive=True)
    big = b"x" * 300_000  # larger than one frame: split into several body frames
    messages = [_message(queue.name, f"m{i}".encode(), n=i) for i in range(50)]
    messages.append(_message(queue.name, big))
    outcomes = await publish_batch(underlay, messages, confirm_timeout=10)
    assert outcomes == [None] * len(messages)
    received = []
    async with queue.iterator() as it:
        async for incoming in it:
            received.append(incoming)
            await incoming.ack()
            if len(received) == len(messages):
                break
    assert [m.body for m in received] == [m.body for m in messages]
    assert [m.message_id for m in received] == [m.message_id for m in messages]
    assert received[3].headers == {"n": 3}
    assert received[0].delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_unroutable_and_refused_messages_fail_alone(
    connection: AbstractRobustConnection,
) -> None:
    channel, underlay = await _confirm_channel(connection)
    full = await channel.declare_queue(
        exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    ok = await channel.declare_queue(exclusive=True)
    messages = [
        _message(ok.name, b"fine"),
        _message(f"nowhere-{uuid.uuid4().hex}", b"unroutable"),
        _message(full.name, b"first fits"),
        _message(full.name, b"queue full: nacked"),
        _message(ok.name, b"also fine"),
    ]
    outcomes = await publish_batch(underlay, messages, confirm_timeout=10)
    assert outcomes[0] is None and outcomes[2] is None and outcomes[4] is None
    assert isinstance(outcomes[1], aiormq.exceptions.PublishError)
    assert isinstance(outcomes[3], aiormq.exceptions.DeliveryError)
    # The channel is still usable afterwards.
    assert await publish_batch(underlay, [_message(ok.name, b"later")], confirm_timeout=10) == [
        None
    ]
