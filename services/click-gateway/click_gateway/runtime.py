"""Long-lived things a gateway process owns, started and stopped by the lifespan."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from click_gateway.clicks.service import ClickService
from click_gateway.metrics import GatewayMetrics
from click_gateway.outbox.relay import OutboxRelay
from click_gateway.settings import GatewaySettings
from postback_core import amqp
from postback_core.db.base import create_engine, create_sessionmaker
from postback_core.topology import declare_topology

log = logging.getLogger(__name__)


@dataclass
class GatewayRuntime:
    settings: GatewaySettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    clicks: ClickService
    relay: OutboxRelay
    metrics: GatewayMetrics
    amqp: AbstractRobustConnection | None = field(default=None)

    @classmethod
    def build(cls, settings: GatewaySettings) -> GatewayRuntime:
        engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
        sessionmaker = create_sessionmaker(engine)
        clicks = ClickService(settings, engine, sessionmaker)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            clicks=clicks,
            relay=OutboxRelay(settings, sessionmaker),
            metrics=GatewayMetrics(clicks),
        )

    async def start(self) -> None:
        await self.metrics.start()
        await self.clicks.start()
        # The broker may be down at start: the relay keeps retrying on its own,
        # conversions are still accepted into the outbox meanwhile.
        await self.relay.start()

    async def stop(self) -> None:
        # Stop taking clicks first and flush them, then stop publishing.
        await self.clicks.stop()
        await self.relay.stop()
        await self.metrics.stop()  # after the last click: its count is kept
        await self.engine.dispose()


async def declare_broker_topology(settings: GatewaySettings) -> None:
    """Used by ``migrate``: make sure exchanges and queues exist before traffic."""
    connection = await amqp.connect(settings.amqp_url, connect_seconds=10)
    try:
        channel = await connection.channel()
        await declare_topology(channel, settings.postback_retry_delays)
    finally:
        await connection.close()
