"""Placeholder: the transactional-outbox relay (implemented in the outbox feature work)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from click_gateway.settings import GatewaySettings


class OutboxRelay:
    def __init__(
        self, settings: GatewaySettings, sessionmaker: async_sessionmaker[AsyncSession]
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
