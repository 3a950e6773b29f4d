"""All SQL of the publisher API. Every query is scoped by the caller's publisher id."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import DeliveryAttempt, PostbackSettings, Publisher


class PublisherRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def active_publisher_by_key_hash(self, api_key_hash: str) -> Publisher | None:
        """The current key, or the one it replaced while its grace period lasts."""
        return await self.session.scalar(
            select(Publisher).where(
                or_(
                    Publisher.api_key_hash == api_key_hash,
                    (Publisher.previous_api_key_hash == api_key_hash)
                    & (Publisher.previous_key_expires_at > func.now()),
                ),
                Publisher.is_active.is_(True),
            )
        )

    async def settings(self, publisher_id: int) -> PostbackSettings | None:
        return await self.session.scalar(
            select(PostbackSettings).where(PostbackSettings.publisher_id == publisher_id)
        )

    async def recent_attempts(
        self,
        publisher_id: int,
        *,
        limit: int,
        before_id: int | None = None,
        http_status: int | None = None,
        outcome: str | None = None,
        trigger: str | None = None,
    ) -> Sequence[DeliveryAttempt]:
        """Newest first, keyset on id (index ``ix_delivery_attempts_publisher_id_id``)."""
        stmt = select(DeliveryAttempt).where(DeliveryAttempt.publisher_id == publisher_id)
        if before_id is not None:
            stmt = stmt.where(DeliveryAttempt.id < before_id)
        if http_status is not None:
            stmt = stmt.where(DeliveryAttempt.http_status == http_status)
        if outcome:
            stmt = stmt.where(DeliveryAttempt.outcome == outcome)
        if trigger:
            stmt = stmt.where(DeliveryAttempt.trigger == trigger)
        stmt = stmt.order_by(DeliveryAttempt.id.desc()).limit(limit + 1)
        return (await self.session.scalars(stmt)).all()

    async def record_attempt(self, attempt: DeliveryAttempt) -> DeliveryAttempt:
        self.session.add(attempt)
        await self.session.flush()
        return attempt
