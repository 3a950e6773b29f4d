"""Advertiser SQL."""

from __future__ import annotations

from collections.abc import Sequence

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

    async def active_id_by_key_hash(self, api_key_hash: str) -> int | None:
        return await self.session.scalar(
            select(Advertiser.id).where(
                Advertiser.api_key_hash == api_key_hash, Advertiser.is_active.is_(True)
            )
        )

    async def list_after(self, after_id: int, limit: int) -> Sequence[Advertiser]:
        result = await self.session.scalars(
            select(Advertiser).where(Advertiser.id > after_id).order_by(Advertiser.id).limit(limit)
        )
        return result.all()
