"""Advertiser SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from click_gateway.key_rotation import rotate_key_statement
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

    async def update(self, advertiser_id: int, values: dict[str, Any]) -> Advertiser | None:
        statement = (
            update(Advertiser)
            .where(Advertiser.id == advertiser_id)
            .values(**values)
            .returning(Advertiser)
            .execution_options(synchronize_session=False)
        )
        return (await self.session.scalars(statement)).one_or_none()

    async def rotate_key(
        self, advertiser_id: int, new_key_hash: str, grace_seconds: int
    ) -> Advertiser | None:
        statement = rotate_key_statement(Advertiser, advertiser_id, new_key_hash, grace_seconds)
        return (await self.session.scalars(statement)).one_or_none()

    async def list_after(self, after_id: int, limit: int) -> Sequence[Advertiser]:
        result = await self.session.scalars(
            select(Advertiser).where(Advertiser.id > after_id).order_by(Advertiser.id).limit(limit)
        )
        return result.all()


async def active_advertiser_by_key_hash(
    db: asyncpg.Pool | asyncpg.Connection, api_key_hash: str
) -> tuple[int, list[str] | None, datetime | None] | None:
    """(id, allowed_ips, when this key stops working or None) for a current or graced key.

    Raw asyncpg: used on the conversion hot path, outside any ORM session.
    """
    row = await db.fetchrow(
        """
        SELECT id, allowed_ips::text[] AS allowed_ips,
               CASE WHEN api_key_hash = $1 THEN NULL ELSE previous_key_expires_at END AS expires_at
        FROM advertisers
        WHERE is_active
          AND (api_key_hash = $1
               OR (previous_api_key_hash = $1 AND previous_key_expires_at > now()))
        """,
        api_key_hash,
    )
    if row is None:
        return None
    return row["id"], row["allowed_ips"], row["expires_at"]
