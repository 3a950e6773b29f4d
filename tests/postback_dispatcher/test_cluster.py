"""The dispatcher on a broker that goes away: cut mid-send, failover, start while down.

The broker is reached through TCP proxies (tests/support/tcp_proxy.py) that can
cut every connection and refuse new ones, the way a stopped node looks to a client.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import asyncpg
import httpx

from tests.postback_dispatcher.conftest import (
    create_publisher_with_settings,
    delivery_row,
    fresh_vhost,
    make_event,
    publish_event,
    publish_many,
    running_dispatcher,
)
from tests.support.polling import wait_for
from tests.support.servers import ReceivedRequest, Receiver
from tests.support.tcp_proxy import run_tcp_proxy


def _path(amqp_url: str) -> str:
    return "/" + amqp_url.rsplit("/", 1)[1]


async def _all_delivered(pg: asyncpg.Pool, conversion_ids: list[int]) -> bool:
    for conversion_id in conversion_ids:
        row = await delivery_row(pg, conversion_id)
        if row is None or row["status"] != "delivered":
            return False
    return True


async def test_sends_in_flight_when_the_broker_is_cut_finish_and_free_their_slots(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    """The receiver answers only after the cut: outcomes are written, nothing stays in flight."""
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/cut")
    release = asyncio.Event()

    async def held(_request: ReceivedRequest) -> int:
        await release.wait()
        return 200

    receiver.responder = held
    try:
        async with fresh_vhost() as amqp_url, run_tcp_proxy() as proxy:
            broker = proxy.amqp_url(unquote(_path(amqp_url)))
            async with running_dispatcher(database_url, broker) as dispatcher:
                events = [make_event(publisher_id) for _ in range(20)]
                await publish_many(amqp_url, events)

                async def all_arrived() -> bool:
                    return len(receiver.matching("/cut")) >= len(events)

                await wait_for(all_arrived, timeout=30, message="every send in flight")
                proxy.refuse()  # the node goes away while every answer is pending
                consumer = dispatcher.runtime.consumer

                async def cut_seen() -> bool:
                    return not consumer.broker_connected

                await wait_for(cut_seen, timeout=30, message="the dispatcher saw the cut")
                release.set()

                async def nothing_in_flight() -> bool:
                    return consumer.snapshot()["in_flight"] == 0

                await wait_for(nothing_in_flight, timeout=60, message="in_flight back to 0")
                proxy.allow()
                ids = [e.conversion_id for e in events]
                await wait_for(lambda: _all_delivered(pg, ids), timeout=60, message="delivered")

                # Messages flow again on the new connection.
                after = make_event(publisher_id)
                await publish_many(amqp_url, [after])
                await wait_for(
                    lambda: _all_delivered(pg, [after.conversion_id]),
                    timeout=60,
                    message="delivered after the reconnect",
                )
                await wait_for(nothing_in_flight, timeout=60, message="in_flight at the end")
                # Each conversion got one 2xx: the redelivered copies were not sent again.
                paths = [r for r in receiver.matching("/cut")]
                rows = [await delivery_row(pg, i) for i in ids]
                assert [r["attempts"] for r in rows] == [1] * len(events)
                assert len(paths) == len(events) + 1
    finally:
        receiver.responder = None
        receiver.clear()


async def test_postbacks_flow_through_the_next_node_when_the_first_is_down(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/failover")
    async with fresh_vhost() as amqp_url, run_tcp_proxy() as first, run_tcp_proxy() as second:
        path = unquote(_path(amqp_url))
        nodes = f"{first.amqp_url(path)},{second.amqp_url(path)}"
        async with running_dispatcher(database_url, nodes) as dispatcher:
            before = make_event(publisher_id)
            await publish_many(amqp_url, [before])
            await wait_for(lambda: _all_delivered(pg, [before.conversion_id]), timeout=30)
            assert first.connections_made >= 1 and second.connections_made == 0

            first.refuse()  # the node the dispatcher is on goes away for good
            consumer = dispatcher.runtime.consumer

            async def moved() -> bool:
                return second.connections_made >= 1 and consumer.broker_connected

            await wait_for(moved, timeout=30, message="reconnected through the second node")
            events = [make_event(publisher_id) for _ in range(5)]
            await publish_many(amqp_url, events)
            ids = [e.conversion_id for e in events]
            await wait_for(lambda: _all_delivered(pg, ids), timeout=60, message="delivered")

            # A retry (published by the dispatcher) and a dead letter (archived) go
            # through the second node, too.
            receiver.responder = lambda r: 503 if r.path == "/failover" else 200
            retried = make_event(publisher_id)
            await publish_many(amqp_url, [retried])

            async def dead() -> bool:
                row = await delivery_row(pg, retried.conversion_id)
                return row is not None and row["status"] == "dead"

            await wait_for(dead, timeout=60, message="retried, then dead-lettered")

            async def archived() -> bool:
                count = await pg.fetchval(
                    "SELECT count(*) FROM dead_letters WHERE conversion_id = $1",
                    retried.conversion_id,
                )
                return bool(count == 1)

            await wait_for(archived, timeout=60, message="dead letter archived")
            assert len(receiver.matching("/failover")) == 1 + len(events) + 3


async def test_a_dispatcher_started_while_the_broker_is_down_connects_when_it_answers(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/late")
    async with fresh_vhost() as amqp_url, run_tcp_proxy() as proxy:
        proxy.refuse()
        broker = proxy.amqp_url(unquote(_path(amqp_url)))
        async with (
            running_dispatcher(database_url, broker) as dispatcher,
            httpx.AsyncClient(base_url=dispatcher.base_url) as http,
        ):
            assert (await http.get("/healthz")).status_code == 200
            answer = await http.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["checks"]["broker"] == "unreachable"

            event = make_event(publisher_id)
            await publish_event(amqp_url, event)  # straight to the broker
            proxy.allow()

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await wait_for(ready, timeout=60, message="ready once the broker answers")
            await wait_for(
                lambda: _all_delivered(pg, [event.conversion_id]),
                timeout=60,
                message="consuming once connected",
            )
