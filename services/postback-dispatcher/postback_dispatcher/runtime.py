"""Long-lived things a dispatcher process owns, started and stopped by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from postback_core.db.base import create_engine, create_sessionmaker
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from postback_dispatcher.consumer import PostbackConsumer
from postback_dispatcher.settings import DispatcherSettings


@dataclass
class DispatcherRuntime:
    settings: DispatcherSettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    consumer: PostbackConsumer

    @classmethod
    def build(cls, settings: DispatcherSettings) -> DispatcherRuntime:
        engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
        sessionmaker = create_sessionmaker(engine)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            consumer=PostbackConsumer(settings, sessionmaker),
        )

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.engine.dispose()
