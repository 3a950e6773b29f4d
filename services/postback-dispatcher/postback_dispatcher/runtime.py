"""Long-lived things a dispatcher process owns, started and stopped by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from postback_core.db.base import create_engine, create_sessionmaker
from postback_dispatcher.broker import ConfirmedPublisher
from postback_dispatcher.consumer import PostbackConsumer
from postback_dispatcher.sender import AiohttpPostbackSender, PostbackSender
from postback_dispatcher.settings import DispatcherSettings
from postback_dispatcher.ssrf import TargetGuard


@dataclass
class DispatcherRuntime:
    """``sender`` and ``publisher`` are shared with the web layer (test sends, replays)."""

    settings: DispatcherSettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    sender: PostbackSender
    publisher: ConfirmedPublisher
    consumer: PostbackConsumer

    @classmethod
    def build(cls, settings: DispatcherSettings) -> DispatcherRuntime:
        engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
        sessionmaker = create_sessionmaker(engine)
        guard = TargetGuard(enabled=not settings.postback_allow_private_targets)
        sender = AiohttpPostbackSender(
            timeout_seconds=settings.postback_timeout_seconds, guard=guard
        )
        publisher = ConfirmedPublisher()
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            sender=sender,
            publisher=publisher,
            consumer=PostbackConsumer(settings, sender=sender, publisher=publisher),
        )

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        try:
            await self.consumer.stop()
        finally:
            await self.sender.close()
            await self.engine.dispose()
