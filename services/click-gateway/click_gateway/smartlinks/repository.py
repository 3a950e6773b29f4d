"""SmartLink SQL (the link and its offer set)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import SmartLink, SmartLinkOffer


@dataclass(frozen=True, slots=True)
class SmartLinkRow:
    id: int
    publisher_id: int
    code: str
    fallback_url: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    offer_ids: list[int]


class SmartLinkRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_if_code_free(
        self, *, publisher_id: int, code: str, fallback_url: str | None
    ) -> int | None:
        """The new id, or None when the code is taken (the unique index decides)."""
        statement = (
            pg_insert(SmartLink)
            .values(publisher_id=publisher_id, code=code, fallback_url=fallback_url)
            .on_conflict_do_nothing(index_elements=[SmartLink.code])
            .returning(SmartLink.id)
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def update(self, smartlink_id: int, values: dict[str, Any]) -> bool:
        # clock_timestamp(): the click cache polls updated_at (see offers).
        statement = (
            update(SmartLink)
            .where(SmartLink.id == smartlink_id)
            .values(**values, updated_at=func.clock_timestamp())
            .returning(SmartLink.id)
        )
        return (await self.session.execute(statement)).scalar_one_or_none() is not None

    async def replace_offers(self, smartlink_id: int, offer_ids: list[int]) -> None:
        await self.session.execute(
            delete(SmartLinkOffer).where(SmartLinkOffer.smartlink_id == smartlink_id)
        )
        if offer_ids:
            await self.session.execute(
                insert(SmartLinkOffer),
                [{"smartlink_id": smartlink_id, "offer_id": o} for o in offer_ids],
            )

    def _select(self) -> Any:
        offer_ids = func.coalesce(
            func.array_agg(
                aggregate_order_by(SmartLinkOffer.offer_id, SmartLinkOffer.offer_id)
            ).filter(SmartLinkOffer.offer_id.is_not(None)),
            text("'{}'::bigint[]"),
        )
        return (
            select(
                SmartLink.id,
                SmartLink.publisher_id,
                SmartLink.code,
                SmartLink.fallback_url,
                SmartLink.is_active,
                SmartLink.created_at,
                SmartLink.updated_at,
                offer_ids.label("offer_ids"),
            )
            .outerjoin(SmartLinkOffer, SmartLinkOffer.smartlink_id == SmartLink.id)
            .group_by(SmartLink.id)
        )

    async def get(self, smartlink_id: int) -> SmartLinkRow | None:
        row = (
            await self.session.execute(self._select().where(SmartLink.id == smartlink_id))
        ).first()
        return SmartLinkRow(**row._mapping) if row is not None else None

    async def list_after(
        self, after_id: int, limit: int, publisher_id: int | None = None
    ) -> Sequence[SmartLinkRow]:
        statement = self._select().where(SmartLink.id > after_id)
        if publisher_id is not None:
            statement = statement.where(SmartLink.publisher_id == publisher_id)
        rows = await self.session.execute(statement.order_by(SmartLink.id).limit(limit))
        return [SmartLinkRow(**row._mapping) for row in rows]
