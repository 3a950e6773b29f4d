"""A postback's outcome is durable before its message is settled.

The database goes away between the claim and the outcome write (the receiver's
handler cuts the dispatcher's PostgreSQL connections through a proxy while the
postback is in flight). The dispatcher must neither ack the message with the
delivery row left ``pending`` and the attempt lost, nor send the postback twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from tests.postback_dispatcher.conftest import (
    attempt_rows,
    create_publisher_with_settings,
    delivery_row,
    fresh_vhost,
    make_event,
    running_dispatcher,
)
from tests.support.polling import wait_for
from tests.support.servers import ReceivedRequest, Receiver
from tests.support.tcp_proxy import TcpProxy, run_tcp_proxy


@asynccontextmanager
async def database_behind_proxy(database_url: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    async with run_tcp_proxy(target_port=5432) as proxy:
        yield database_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/"), proxy


async def _status(pg: asyncpg.Pool, conversion_id: int, status: str) -> Any:
    row = await delivery_row(pg, conversion_id)
    return row if row is not None and row["status"] == status else None


async def test_outcome_survives_the_database_going_away_mid_delivery(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    async with (
        database_behind_proxy(database_url) as (proxied_url, proxy),
        fresh_vhost() as amqp_url,
        running_dispatcher(proxied_url, amqp_url) as dispatcher,
    ):

        def cut_database(request: ReceivedRequest) -> int:
            proxy.refuse()  # claimed, now being sent: the outcome write will fail
            return 200

        receiver.responder = cut_database
        publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/cut")
        event = make_event(publisher_id)
        await dispatcher.publish(event)

        async def writes_refused() -> bool:
            # The outcome write has been tried (and refused) several times.
            return proxy.connections_refused >= 5

        await wait_for(writes_refused, timeout=30, message="refused outcome writes")
        receiver.responder = None
        proxy.allow()

        row = await wait_for(
            lambda: _status(pg, event.conversion_id, "delivered"),
            timeout=30,
            message="delivered once the database is back",
        )
        assert row["attempts"] == 1 and row["last_status"] == 200
        (attempt,) = await attempt_rows(pg, event.conversion_id)
        assert attempt["outcome"] == "delivered" and attempt["http_status"] == 200
        assert len(receiver.matching("/cut")) == 1  # not sent twice


async def test_unwritten_outcome_is_never_acked_when_the_dispatcher_stops(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    """Stopped while the outcome can't be written: the message returns to the queue.

    The next start delivers it again (at least once) and records it; the attempt
    limit counts both sends.
    """
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/stop")
    event = make_event(publisher_id)
    async with fresh_vhost() as amqp_url:
        async with database_behind_proxy(database_url) as (proxied_url, proxy):
            async with running_dispatcher(
                proxied_url, amqp_url, SHUTDOWN_GRACE_SECONDS=1
            ) as dispatcher:

                def cut_database(request: ReceivedRequest) -> int:
                    proxy.refuse()
                    return 200

                receiver.responder = cut_database
                await dispatcher.publish(event)

                async def writes_refused() -> bool:
                    return proxy.connections_refused >= 3

                await wait_for(writes_refused, timeout=30, message="refused outcome writes")
            # Stopped with the database still away: nothing about the send is recorded.
            row = await delivery_row(pg, event.conversion_id)
            assert row is not None and row["status"] == "pending"

        receiver.responder = None
        async with running_dispatcher(database_url, amqp_url):
            row = await wait_for(
                lambda: _status(pg, event.conversion_id, "delivered"),
                timeout=30,
                message="redelivered after the restart",
            )
        assert row["attempts"] == 2  # both sends counted against the limit
        attempts = await attempt_rows(pg, event.conversion_id)
        assert [a["outcome"] for a in attempts][-1] == "delivered"
        assert len(receiver.matching("/stop")) == 2


async def test_messages_wait_for_the_database_instead_of_bouncing_through_the_broker(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    """Database away before the claim: the message waits, unacked, and goes out once."""
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/wait")
    event = make_event(publisher_id)
    async with (
        database_behind_proxy(database_url) as (proxied_url, proxy),
        fresh_vhost() as amqp_url,
        running_dispatcher(proxied_url, amqp_url) as dispatcher,
    ):
        proxy.refuse()
        await dispatcher.publish(event)

        async def claims_refused() -> bool:
            return proxy.connections_refused >= 5

        await wait_for(claims_refused, timeout=30, message="refused claims")
        assert receiver.matching("/wait") == []
        proxy.allow()
        row = await wait_for(
            lambda: _status(pg, event.conversion_id, "delivered"),
            timeout=30,
            message="delivered once the database is back",
        )
        metrics = dispatcher.runtime.consumer.metrics
        # Never handed back to the broker (each bounce would use up its delivery limit).
        assert metrics.errors == 0 and metrics.database_waits >= 1
    assert row["attempts"] == 1
    assert len(receiver.matching("/wait")) == 1
