"""Publisher SQL."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from click_gateway.key_rotation import rotate_key_statement
from postback_core.db.models import Publisher


class PublisherRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, *, name: str, api_key_hash: str) -> Publisher:
        publisher = Publisher(name=name, api_key_hash=api_key_hash)
        self.session.add(publisher)
        await self.session.flush()
        await self.session.refresh(publisher)
        return publisher

    async def get(self, publisher_id: int) -> Publisher | None:
        return await self.session.get(Publisher, publisher_id)

    async def exists(self, publisher_id: int) -> bool:
        found = await self.session.scalar(select(Publisher.id).where(Publisher.id == publisher_id))
        return found is not None

    async def rotate_key(
        self, publisher_id: int, new_key_hash: str, grace_seconds: int
    ) -> Publisher | None:
        statement = rotate_key_statement(Publisher, publisher_id, new_key_hash, grace_seconds)
        return (await self.session.scalars(statement)).one_or_none()

    async def list_after(self, after_id: int, limit: int) -> Sequence[Publisher]:
        result = await self.session.scalars(
            select(Publisher).where(Publisher.id > after_id).order_by(Publisher.id).limit(limit)
        )
        return result.all()
