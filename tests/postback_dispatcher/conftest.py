"""A real dispatcher for the delivery tests (and for anyone who needs one).

``dispatcher`` (session): the real app under uvicorn on the session's database
and vhost, private targets allowed (receivers are on loopback), short retry
delays and a short breaker cool-down. Tests that need other settings start
their own with ``running_dispatcher`` on a fresh vhost.

Helpers: ``publish_event`` (a ConversionEvent onto the events exchange, with
confirms), ``make_event``, ``create_publisher_with_settings`` (rows written
straight to the database), and small readers for deliveries/attempts/dead letters.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import asyncpg
import pytest

from postback_core.contracts import CONVERSION_CREATED, ConversionEvent
from postback_core.db.base import asyncpg_dsn
from postback_core.security import generate_api_key, hash_api_key
from postback_core.topology import EVENTS_EXCHANGE, declare_topology
from postback_dispatcher.app import create_app
from postback_dispatcher.runtime import DispatcherRuntime
from postback_dispatcher.settings import DispatcherSettings
from tests.support.infra import create_test_vhost, delete_vhost
from tests.support.servers import serve_asgi

DEFAULT_TEST_SETTINGS: dict[str, Any] = {
    "POSTBACK_ALLOW_PRIVATE_TARGETS": True,
    "POSTBACK_RETRY_DELAYS": "0.3,0.6",
    "POSTBACK_TIMEOUT_SECONDS": 3,
    "POSTBACK_BREAKER_THRESHOLD": 5,
    "POSTBACK_BREAKER_COOLDOWN_SECONDS": 0.5,
    "POSTBACK_SETTINGS_CACHE_SECONDS": 0,
    "DISPATCHER_CONCURRENCY": 64,
    # One in-process consumer unless a test asks for more (test_workers.py).
    "DISPATCHER_WORKERS": 1,
    "SHUTDOWN_GRACE_SECONDS": 3,
}

# Unique across runs and processes sharing a database.
_conversion_ids = itertools.count(int(time.time() * 1000) * 1000 + 500)


@dataclass
class DispatcherHandle:
    base_url: str
    runtime: DispatcherRuntime
    settings: DispatcherSettings
    database_url: str
    amqp_url: str

    async def publish(
        self, event: ConversionEvent | bytes, headers: Mapping[str, Any] | None = None
    ) -> None:
        await publish_event(self.amqp_url, event, headers)


@asynccontextmanager
async def running_dispatcher(
    database_url: str, amqp_url: str, **overrides: Any
) -> AsyncIterator[DispatcherHandle]:
    """Start a real dispatcher app; ``overrides`` are env-style setting names."""
    values = {**DEFAULT_TEST_SETTINGS, **overrides}
    settings = DispatcherSettings(DATABASE_URL=database_url, AMQP_URL=amqp_url, **values)
    app = create_app(settings)
    async with serve_asgi(app) as base_url:
        yield DispatcherHandle(base_url, app.state.runtime, settings, database_url, amqp_url)


@asynccontextmanager
async def fresh_vhost() -> AsyncIterator[str]:
    name, url = await create_test_vhost()
    try:
        yield url
    finally:
        await delete_vhost(name)


@pytest.fixture(scope="session")
async def dispatcher(database_url: str, amqp_url: str) -> AsyncIterator[DispatcherHandle]:
    async with running_dispatcher(database_url, amqp_url) as handle:
        yield handle


@pytest.fixture(scope="session")
async def pg(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=4)
    yield pool
    await pool.close()


# -- factories ----------------------------------------------------------------------


async def publish_event(
    amqp_url: str,
    event: ConversionEvent | bytes,
    headers: Mapping[str, Any] | None = None,
    *,
    retry_delays: tuple[float, ...] = (0.3, 0.6),
) -> None:
    """Publish like the gateway does (events exchange, conversion.created), with confirms."""
    body = event if isinstance(event, bytes) else event.to_json()
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_topology(channel, retry_delays)
        await topology.events.publish(
            aio_pika.Message(
                body,
                headers=dict(headers or {}),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=CONVERSION_CREATED,
        )
    finally:
        await connection.close()


async def publish_many(amqp_url: str, events: list[ConversionEvent]) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        for event in events:
            await exchange.publish(
                aio_pika.Message(event.to_json(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=CONVERSION_CREATED,
            )
    finally:
        await connection.close()


async def create_publisher_with_settings(
    pool: asyncpg.Pool, url_template: str | None, security_token: str | None = None
) -> int:
    """A publisher row, plus its postback_settings row when ``url_template`` is given."""
    async with pool.acquire() as conn, conn.transaction():
        publisher_id: int = await conn.fetchval(
            "INSERT INTO publishers (name, api_key_hash) VALUES ($1, $2) RETURNING id",
            f"pub-{uuid.uuid4().hex[:10]}",
            hash_api_key(generate_api_key("pub")),
        )
        if url_template is not None:
            await conn.execute(
                "INSERT INTO postback_settings (publisher_id, url_template, security_token)"
                " VALUES ($1, $2, $3)",
                publisher_id,
                url_template,
                security_token,
            )
    return publisher_id


async def set_postback_settings(
    pool: asyncpg.Pool, publisher_id: int, url_template: str, security_token: str | None = None
) -> None:
    await pool.execute(
        "INSERT INTO postback_settings (publisher_id, url_template, security_token)"
        " VALUES ($1, $2, $3) ON CONFLICT (publisher_id) DO UPDATE"
        " SET url_template = EXCLUDED.url_template, security_token = EXCLUDED.security_token",
        publisher_id,
        url_template,
        security_token,
    )


def make_event(publisher_id: int, **fields: Any) -> ConversionEvent:
    values: dict[str, Any] = {
        "conversion_id": next(_conversion_ids),
        "click_id": next(_conversion_ids),
        "external_id": f"ext-{uuid.uuid4().hex[:8]}",
        "publisher_id": publisher_id,
        "smartlink_id": 7,
        "offer_id": 42,
        "advertiser_id": 3,
        "payout": Decimal("0.50"),
        "country": "US",
        "ip": "203.0.113.9",
        "os": "Android",
        "device": "mobile",
        "occurred_at": datetime.now(UTC),
    }
    values.update(fields)
    return ConversionEvent(**values)


# -- readers --------------------------------------------------------------------------


async def delivery_row(pool: asyncpg.Pool, conversion_id: int) -> Any:
    """The deliveries row (an asyncpg Record) or None."""
    return await pool.fetchrow("SELECT * FROM deliveries WHERE conversion_id = $1", conversion_id)


async def attempt_rows(pool: asyncpg.Pool, conversion_id: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM delivery_attempts WHERE conversion_id = $1 ORDER BY id", conversion_id
    )


async def dead_letter_row(pool: asyncpg.Pool, event_key: str) -> Any:
    """The dead_letters row (an asyncpg Record) or None."""
    return await pool.fetchrow("SELECT * FROM dead_letters WHERE event_key = $1", event_key)
