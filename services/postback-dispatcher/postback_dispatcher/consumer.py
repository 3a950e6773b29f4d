"""Placeholder: consumes conversion events (implemented in the dispatcher issue)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from postback_dispatcher.settings import DispatcherSettings


class PostbackConsumer:
    def __init__(
        self, settings: DispatcherSettings, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker

    @property
    def broker_connected(self) -> bool:
        return False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
