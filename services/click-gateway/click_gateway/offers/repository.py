"""Offer SQL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import Offer


class OfferRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, **values: Any) -> Offer:
        offer = Offer(**values)
        self.session.add(offer)
        await self.session.flush()
        await self.session.refresh(offer)
        return offer

    async def get(self, offer_id: int) -> Offer | None:
        return await self.session.get(Offer, offer_id)

    async def update(self, offer_id: int, values: dict[str, Any]) -> Offer | None:
        # clock_timestamp(), not now(): the click cache polls updated_at and must
        # see every change as newer than what it has already read.
        statement = (
            update(Offer)
            .where(Offer.id == offer_id)
            .values(**values, updated_at=func.clock_timestamp())
            .returning(Offer)
            .execution_options(synchronize_session=False)
        )
        return (await self.session.scalars(statement)).one_or_none()

    async def list_after(
        self, after_id: int, limit: int, advertiser_id: int | None = None
    ) -> Sequence[Offer]:
        statement = select(Offer).where(Offer.id > after_id)
        if advertiser_id is not None:
            statement = statement.where(Offer.advertiser_id == advertiser_id)
        return (await self.session.scalars(statement.order_by(Offer.id).limit(limit))).all()

    async def existing_ids(self, offer_ids: Iterable[int]) -> set[int]:
        ids = list(offer_ids)
        if not ids:
            return set()
        result = await self.session.scalars(select(Offer.id).where(Offer.id.in_(ids)))
        return set(result.all())
