"""SQL the publisher pages need beyond the publisher API's (session re-check)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import Publisher


async def get_publisher(session: AsyncSession, publisher_id: int) -> Publisher | None:
    return await session.get(Publisher, publisher_id)
