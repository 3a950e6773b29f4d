"""Advertiser SQL."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import Advertiser


class AdvertiserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, *, name: str, api_key_hash: str) -> Advertiser:
        advertiser = Advertiser(name=name, api_key_hash=api_key_hash)
        self.session.add(advertiser)
        await self.session.flush()
        await self.session.refresh(advertiser)
        return advertiser

    async def get(self, advertiser_id: int) -> Advertiser | None:
        return await self.session.get(Advertiser, advertiser_id)

    async def exists(self, advertiser_id: int) -> bool:
        found = await self.session.scalar(
            select(Advertiser.id).where(Advertiser.id == advertiser_id)
        )
        return found is not None

    async def list_after(self, after_id: int, limit: int) -> Sequence[Advertiser]:
        result = await self.session.scalars(
            select(Advertiser).where(Advertiser.id > after_id).order_by(Advertiser.id).limit(limit)
        )
        return result.all()


async def active_advertiser_id_by_key_hash(
    db: asyncpg.Pool | asyncpg.Connection, api_key_hash: str
) -> int | None:
    """Raw asyncpg: used on the conversion hot path, outside any ORM session."""
    advertiser_id: int | None = await db.fetchval(
        "SELECT id FROM advertisers WHERE api_key_hash = $1 AND is_active", api_key_hash
    )
    return advertiser_id
