"""Several broker nodes in AMQP_URL: connect to one that answers, move on when it goes away.

Two TCP proxies in front of the test broker stand in for two cluster nodes:
refusing one is, to a client, that node going down.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aio_pika
import pytest

from postback_core.amqp import FailoverConnection, broker_urls, connect, connect_robust
from tests.support.infra import unique_name
from tests.support.polling import wait_for
from tests.support.tcp_proxy import run_tcp_proxy


def vhost_path(amqp_url: str) -> str:
    return urlsplit(amqp_url).path or "/"


def test_amqp_url_lists_nodes_and_refuses_what_is_not_a_broker_url() -> None:
    assert broker_urls("amqp://a:5672/, amqp://b:5672/ ,") == ("amqp://a:5672/", "amqp://b:5672/")
    with pytest.raises(ValueError, match="amqp"):
        broker_urls("amqp://a:5672/,http://b/")
    with pytest.raises(ValueError, match="no broker"):
        broker_urls(" , ")


async def test_connect_skips_a_node_that_is_down(amqp_url: str) -> None:
    async with run_tcp_proxy() as down, run_tcp_proxy() as up:
        down.refuse()
        setting = f"{down.amqp_url(vhost_path(amqp_url))},{up.amqp_url(vhost_path(amqp_url))}"
        connection = await connect(setting, connect_seconds=3)
        try:
            channel = await connection.channel()
            await channel.declare_queue(unique_name("probe"), auto_delete=True)
        finally:
            await connection.close()
        assert up.connections_made == 1
        assert down.connections_refused >= 1


async def test_a_robust_connection_moves_to_another_node_and_keeps_consuming(
    amqp_url: str,
) -> None:
    path = vhost_path(amqp_url)
    async with run_tcp_proxy() as first, run_tcp_proxy() as second:
        connection = await connect_robust(
            f"{first.amqp_url(path)},{second.amqp_url(path)}", reconnect_interval=0.2
        )
        assert isinstance(connection, FailoverConnection)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(unique_name("failover"), durable=True)
            received: list[bytes] = []

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                received.append(message.body)
                await message.ack()

            await queue.consume(on_message)
            await channel.default_exchange.publish(
                aio_pika.Message(b"before"), routing_key=queue.name
            )
            await wait_for(lambda: _value(received == [b"before"]), message="first message")

            first.refuse()  # the node we are on goes down for good

            async def moved() -> bool:
                return second.connections_made >= 1 and connection.connected.is_set()

            await wait_for(moved, timeout=15, message="reconnected through the other node")
            publisher = await connect(second.amqp_url(path))
            try:
                publish_channel = await publisher.channel()
                await publish_channel.default_exchange.publish(
                    aio_pika.Message(b"after"), routing_key=queue.name
                )
            finally:
                await publisher.close()
            await wait_for(
                lambda: _value(received == [b"before", b"after"]),
                timeout=15,
                message="the consumer restored on the other node",
            )
            await queue.delete(if_unused=False, if_empty=False)
        finally:
            await asyncio.wait_for(connection.close(), 10)


async def _value(value: bool) -> bool:
    return value
