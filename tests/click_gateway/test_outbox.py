"""The transactional outbox relay: properties, latency, several relays, broker outages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import pytest

from click_gateway.app import create_app
from click_gateway.outbox.relay import OutboxRelay
from click_gateway.settings import GatewaySettings
from postback_core.db.base import asyncpg_dsn, create_engine, create_sessionmaker
from postback_core.topology import EVENTS_EXCHANGE
from tests.factories import (
    create_advertiser,
    create_click,
    create_offer,
    create_publisher,
    create_smartlink,
)
from tests.support.amqp_observer import observe_events
from tests.support.infra import create_test_database, create_test_vhost, delete_vhost, drop_database
from tests.support.polling import wait_for
from tests.support.servers import serve_asgi
from tests.support.tcp_proxy import run_tcp_proxy

T = TypeVar("T")


async def _value(value: T) -> T:
    return value


# -- the session gateway's relay ---------------------------------------------


async def test_readyz_reports_database_and_broker(gateway: httpx.AsyncClient) -> None:
    async def ready() -> httpx.Response | None:
        response = await gateway.get("/readyz")
        return response if response.status_code == 200 else None

    response = await wait_for(ready, message="gateway ready")
    assert response is not None
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


async def test_conversion_event_is_published_quickly_with_proper_properties(
    gateway: httpx.AsyncClient, amqp_url: str, database_url: str
) -> None:
    advertiser = await create_advertiser(gateway)
    offer = await create_offer(gateway, advertiser_id=advertiser["id"])
    link = await create_smartlink(gateway, offer_ids=[offer["id"]])
    click_id = await create_click(
        database_url,
        publisher_id=link["publisher_id"],
        smartlink_id=link["id"],
        offer_id=offer["id"],
    )
    async with observe_events(amqp_url) as observer:
        started = time.perf_counter()
        response = await gateway.post(
            "/api/v1/conversions",
            json={"click_id": click_id},
            headers={"X-Api-Key": advertiser["api_key"]},
        )
        assert response.status_code == 201
        conversion_id = response.json()["conversion_id"]
        received = await wait_for(
            lambda: _value(observer.for_conversion(conversion_id)),
            interval=0.001,
            message="conversion event",
        )
        latency = time.perf_counter() - started
    message = received[0]
    event = message.event()
    assert message.routing_key == "conversion.created"
    assert message.message_id == str(event.event_id)
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2  # persistent
    assert message.headers["x-schema-version"] == event.schema_version == 2  # the v2 contract
    assert latency < 5, f"POST → event took {latency * 1000:.1f} ms"


# -- an isolated database + vhost, so only the relays started here publish --------


@dataclass
class Isolated:
    database_url: str
    amqp_url: str
    vhost_path: str


@pytest.fixture(scope="module")
async def isolated() -> AsyncIterator[Isolated]:
    database_url = await create_test_database("postback_outbox_test")
    vhost, amqp_url = await create_test_vhost("postback-outbox-test")
    try:
        yield Isolated(database_url, amqp_url, urlsplit(amqp_url).path)
    finally:
        await delete_vhost(vhost)
        await drop_database(database_url)


@pytest.fixture
async def db(isolated: Isolated) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(isolated.database_url))
    yield conn
    await conn.close()


@asynccontextmanager
async def running_relay(settings: GatewaySettings) -> AsyncIterator[OutboxRelay]:
    engine = create_engine(settings.database_url, pool_size=1)
    relay = OutboxRelay(settings, create_sessionmaker(engine))
    await relay.start()
    try:
        await wait_for(lambda: _value(relay.broker_connected), message="relay connected")
        yield relay
    finally:
        await relay.stop()
        await engine.dispose()


async def _insert_events(db: asyncpg.Connection, routing_key: str, count: int) -> list[uuid.UUID]:
    event_ids = [uuid.uuid4() for _ in range(count)]
    await db.executemany(
        "INSERT INTO outbox (event_id, exchange, routing_key, payload) VALUES ($1, $2, $3, $4)",
        [
            (e, EVENTS_EXCHANGE, routing_key, orjson.dumps({"schema_version": 1, "n": i}))
            for i, e in enumerate(event_ids)
        ],
    )
    return event_ids


async def test_two_relays_never_publish_a_row_twice(
    isolated: Isolated, db: asyncpg.Connection
) -> None:
    routing_key = f"relaytest.{uuid.uuid4().hex}"
    settings = GatewaySettings(
        DATABASE_URL=isolated.database_url, AMQP_URL=isolated.amqp_url, OUTBOX_BATCH_SIZE=7
    )
    async with (
        observe_events(isolated.amqp_url, routing_key) as observer,
        running_relay(settings) as first,
        running_relay(settings) as second,
    ):
        batches = await asyncio.gather(
            *(_insert_on_own_connection(isolated, routing_key, 30) for _ in range(10))
        )
        expected = {str(e) for batch in batches for e in batch}
        await wait_for(
            lambda: _value(len(observer.received) >= len(expected)),
            message="all 300 events",
        )
        # Every row is marked published, by exactly one relay.
        await wait_for(
            lambda: db.fetchval(
                "SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL AND routing_key = $1",
                routing_key,
            ),
            message="all rows marked published",
        )
        received_ids = [m.message_id for m in observer.received]
        assert len(received_ids) == len(set(received_ids)) == 300
        assert set(received_ids) == expected
        assert first.published_count + second.published_count == 300
        attempts = await db.fetch(
            "SELECT DISTINCT publish_attempts FROM outbox WHERE routing_key = $1", routing_key
        )
        assert [r["publish_attempts"] for r in attempts] == [1]


async def _insert_on_own_connection(
    isolated: Isolated, routing_key: str, count: int
) -> list[uuid.UUID]:
    """Concurrent writers, each committing its own batch (as gateway requests do)."""
    conn = await asyncpg.connect(asyncpg_dsn(isolated.database_url))
    try:
        return await _insert_events(conn, routing_key, count)
    finally:
        await conn.close()


async def test_a_message_the_broker_refuses_does_not_block_the_rest(
    isolated: Isolated, db: asyncpg.Connection
) -> None:
    good_key = f"relaytest.{uuid.uuid4().hex}"
    settings = GatewaySettings(DATABASE_URL=isolated.database_url, AMQP_URL=isolated.amqp_url)
    async with observe_events(isolated.amqp_url, good_key) as observer:
        # Nothing is bound to this key: the broker returns the message as unroutable.
        [poison] = await _insert_events(db, f"nobody-listens.{uuid.uuid4().hex}", 1)
        good = await _insert_events(db, good_key, 3)
        async with running_relay(settings):
            await wait_for(lambda: _value(len(observer.received) == 3), message="the good events")
            row = await wait_for(
                lambda: db.fetchrow(
                    "SELECT * FROM outbox WHERE event_id = $1 AND last_error IS NOT NULL", poison
                ),
                message="the refusal recorded",
            )
        assert {m.message_id for m in observer.received} == {str(e) for e in good}
        assert row["published_at"] is None
        assert row["publish_attempts"] >= 1
        assert "PublishError" in row["last_error"] or "NO_ROUTE" in row["last_error"]
        await db.execute("DELETE FROM outbox WHERE event_id = $1", poison)


async def test_conversions_are_accepted_while_the_broker_is_down_and_published_after(
    isolated: Isolated, db: asyncpg.Connection
) -> None:
    async with run_tcp_proxy() as proxy:
        settings = GatewaySettings(
            DATABASE_URL=isolated.database_url,
            AMQP_URL=proxy.amqp_url(isolated.vhost_path),
            CLICK_FLUSH_INTERVAL_MS=50,
            OUTBOX_POLL_SECONDS=0.5,
        )
        async with (
            serve_asgi(create_app(settings)) as url,
            httpx.AsyncClient(base_url=url) as client,
            observe_events(isolated.amqp_url) as observer,
        ):
            await wait_for(lambda: _status(client, "/readyz", 200), message="second gateway ready")
            advertiser = await create_advertiser(client)
            offer = await create_offer(client, advertiser_id=advertiser["id"])
            publisher = await create_publisher(client)
            link = await create_smartlink(
                client, publisher_id=publisher["id"], offer_ids=[offer["id"]]
            )

            proxy.refuse()
            down = await wait_for(
                lambda: _status(client, "/readyz", 503), message="readyz sees the broker down"
            )
            assert down is not None
            assert down.json()["checks"] == {"database": "ok", "broker": "unreachable"}

            conversion_ids = []
            for _ in range(3):
                click_id = await create_click(
                    isolated.database_url,
                    publisher_id=publisher["id"],
                    smartlink_id=link["id"],
                    offer_id=offer["id"],
                )
                response = await client.post(
                    "/api/v1/conversions",
                    json={"click_id": click_id},
                    headers={"X-Api-Key": advertiser["api_key"]},
                )
                assert response.status_code == 201, response.text
                conversion_ids.append(response.json()["conversion_id"])
            # The relay keeps trying (and failing) to reach the broker meanwhile.
            refused = proxy.connections_refused
            await wait_for(
                lambda: _value(proxy.connections_refused > refused),
                message="the relay retrying the broker",
            )
            # Stored, waiting in the outbox; nothing reached the broker.
            waiting = await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            assert waiting == 3
            assert observer.received == []

            proxy.allow()
            await wait_for(
                lambda: _value(all(observer.for_conversion(c) for c in conversion_ids)),
                timeout=15,
                message="events published after the broker came back",
            )
            await wait_for(lambda: _status(client, "/readyz", 200), message="ready again")

            # The relay marks rows published in its own commit, just after the
            # broker's confirm (which is when the observer can already see them).
            async def outbox_drained() -> bool:
                unpublished = await db.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                return bool(unpublished == 0)

            await wait_for(outbox_drained, message="every outbox row marked published")
            assert all(len(observer.for_conversion(c)) == 1 for c in conversion_ids)
            assert proxy.connections_made >= 2  # it really reconnected through the proxy


async def _status(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response | None:
    response = await client.get(path)
    return response if response.status_code == status else None


async def test_relay_survives_losing_its_database_connection(
    isolated: Isolated, db: asyncpg.Connection
) -> None:
    routing_key = f"relaytest.{uuid.uuid4().hex}"
    settings = GatewaySettings(DATABASE_URL=isolated.database_url, AMQP_URL=isolated.amqp_url)
    async with (
        observe_events(isolated.amqp_url, routing_key) as observer,
        running_relay(settings),
    ):
        first = await _insert_events(db, routing_key, 1)
        await wait_for(lambda: _value(len(observer.received) == 1), message="first event")
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'click-gateway-outbox-relay' AND datname = current_database()"
        )
        assert killed >= 1
        second = await _insert_events(db, routing_key, 2)
        await wait_for(
            lambda: _value(len(observer.received) == 3), message="events after the reconnect"
        )
        assert {m.message_id for m in observer.received} == {str(e) for e in first + second}


async def test_relay_is_woken_by_the_insert_not_by_its_poll(
    isolated: Isolated, db: asyncpg.Connection
) -> None:
    routing_key = f"relaytest.{uuid.uuid4().hex}"
    settings = GatewaySettings(
        DATABASE_URL=isolated.database_url, AMQP_URL=isolated.amqp_url, OUTBOX_POLL_SECONDS=60
    )
    async with (
        observe_events(isolated.amqp_url, routing_key) as observer,
        running_relay(settings),
    ):
        for expected in range(1, 4):
            started = time.perf_counter()
            await _insert_events(db, routing_key, 1)
            await wait_for(
                lambda n=expected: _value(len(observer.received) == n),  # type: ignore[misc]
                interval=0.001,
                message="the event, long before the 60 s poll",
            )
            latency = time.perf_counter() - started
            assert latency < 2, f"insert → broker took {latency * 1000:.1f} ms"


async def test_the_relay_moves_to_another_broker_node_when_its_node_goes_away(
    isolated: Isolated, db: asyncpg.Connection
) -> None:
    """AMQP_URL lists two "nodes" (proxies to the test broker); the relay's node goes down."""
    routing_key = f"relaytest.{uuid.uuid4().hex}"
    async with run_tcp_proxy() as first, run_tcp_proxy() as second:
        settings = GatewaySettings(
            DATABASE_URL=isolated.database_url,
            AMQP_URL=f"{first.amqp_url(isolated.vhost_path)},{second.amqp_url(isolated.vhost_path)}",
            OUTBOX_POLL_SECONDS=0.5,
        )
        async with (
            observe_events(isolated.amqp_url, routing_key) as observer,
            running_relay(settings),
        ):
            before = await _insert_events(db, routing_key, 3)
            await wait_for(lambda: _value(len(observer.received) >= 3), message="via node one")
            assert first.connections_made >= 1

            first.refuse()  # for good: only the other node answers from now on
            after = await _insert_events(db, routing_key, 3)
            await wait_for(
                lambda: _value(len(observer.received) >= 6),
                timeout=15,
                message="events published through the other node",
            )
            assert second.connections_made >= 1
            assert {m.message_id for m in observer.received} >= {str(e) for e in before + after}
