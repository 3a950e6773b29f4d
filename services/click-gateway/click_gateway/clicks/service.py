"""Placeholder: the SmartLink click path (implemented in the clicks feature work)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from click_gateway.settings import GatewaySettings


@dataclass(frozen=True, slots=True)
class ClickRecord:
    """What a conversion needs to know about its click."""

    click_id: int
    created_at: datetime
    external_id: str | None
    publisher_id: int
    smartlink_id: int
    offer_id: int | None
    ip: str | None
    country: str | None
    os: str | None
    device: str | None
    sub1: str | None = None
    sub2: str | None = None
    sub3: str | None = None
    sub4: str | None = None
    sub5: str | None = None


class ClickService:
    def __init__(
        self,
        settings: GatewaySettings,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessionmaker = sessionmaker

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Raw ASGI handler for GET/HEAD /get/{code}."""
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def find_click(self, click_id: int) -> ClickRecord | None:
        """The click by internal id, whether still in the write buffer or in PostgreSQL."""
        return None
