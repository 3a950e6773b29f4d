"""All SQL for dead letters.

Listing is keyset-paginated on ``(dead_at DESC, id DESC)`` over open rows
only (``state = 'dead'``), which is exactly what the partial indexes
``ix_dead_letters_open_dead_at`` / ``ix_dead_letters_open_publisher`` cover,
so a page costs the same however many dead letters exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, Select, and_, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from postback_core.db.models import DeadLetter, DeliveryAttempt, PostbackSettings
from postback_core.enums import DeadLetterReason, DeadLetterState

OPEN = DeadLetterState.DEAD
REPLAYED = DeadLetterState.REPLAYED
PURGED = DeadLetterState.PURGED


@dataclass(frozen=True)
class DeadLetterFilters:
    publisher_id: int | None = None
    offer_id: int | None = None
    reason: DeadLetterReason | None = None
    last_status: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = [DeadLetter.state == OPEN]
        if self.publisher_id is not None:
            conds.append(DeadLetter.publisher_id == self.publisher_id)
        if self.offer_id is not None:
            conds.append(DeadLetter.offer_id == self.offer_id)
        if self.reason:
            conds.append(DeadLetter.reason == self.reason)
        if self.last_status is not None:
            conds.append(DeadLetter.last_status == self.last_status)
        if self.since is not None:
            conds.append(DeadLetter.dead_at >= self.since)
        if self.until is not None:
            conds.append(DeadLetter.dead_at < self.until)
        return conds


@dataclass(frozen=True)
class ClaimedDeadLetter:
    """A row switched to 'replayed' and what is needed to publish it again."""

    id: int
    sequence: int
    event_id: str | None
    payload: bytes | None


@dataclass(frozen=True)
class Totals:
    count: int
    payout_total: Decimal


@dataclass(frozen=True)
class PublisherExposure:
    publisher_id: int | None
    count: int
    payout_at_risk: Decimal
    oldest_dead_at: datetime
    newest_dead_at: datetime


class DeadLetterRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list_open(
        self,
        filters: DeadLetterFilters,
        *,
        limit: int,
        after: tuple[datetime, int] | None = None,
    ) -> Sequence[DeadLetter]:
        """One page (plus one row to tell whether another page exists)."""
        stmt: Select[DeadLetter] = select(DeadLetter).where(*filters.conditions())
        if after is not None:
            stmt = stmt.where(tuple_(DeadLetter.dead_at, DeadLetter.id) < tuple_(*after))
        stmt = stmt.order_by(DeadLetter.dead_at.desc(), DeadLetter.id.desc()).limit(limit + 1)
        return (await self.session.scalars(stmt)).all()

    async def get(self, dead_letter_id: int) -> DeadLetter | None:
        return await self.session.get(DeadLetter, dead_letter_id)

    async def security_token(self, publisher_id: int) -> str | None:
        """The publisher's current token, to mask it in what is shown."""
        return await self.session.scalar(
            select(PostbackSettings.security_token).where(
                PostbackSettings.publisher_id == publisher_id
            )
        )

    async def attempts_for_conversion(self, conversion_id: int) -> Sequence[DeliveryAttempt]:
        stmt = (
            select(DeliveryAttempt)
            .where(DeliveryAttempt.conversion_id == conversion_id)
            .order_by(DeliveryAttempt.id)
        )
        return (await self.session.scalars(stmt)).all()

    async def claim_for_replay(self, dead_letter_id: int) -> ClaimedDeadLetter | None:
        """Switch one open row to 'replayed'; None when it is not open (concurrency-safe)."""
        stmt = (
            update(DeadLetter)
            .where(DeadLetter.id == dead_letter_id, DeadLetter.state == OPEN)
            .values(state=REPLAYED, replayed_at=func.now())
            .returning(DeadLetter.id, DeadLetter.sequence, DeadLetter.event_id, DeadLetter.payload)
        )
        row = (await self.session.execute(stmt)).one_or_none()
        if row is None:
            return None
        return ClaimedDeadLetter(
            row.id, row.sequence, str(row.event_id) if row.event_id else None, row.payload
        )

    async def claim_batch_for_replay(
        self, filters: DeadLetterFilters, *, limit: int, dead_before: datetime
    ) -> list[ClaimedDeadLetter]:
        """Claim up to ``limit`` matching rows, oldest first, skipping rows others hold.

        ``dead_before`` keeps a bulk replay from chasing rows that dead-letter
        again while it runs.
        """
        candidates = (
            select(DeadLetter.id)
            .where(
                *filters.conditions(),
                DeadLetter.dead_at <= dead_before,
                DeadLetter.payload.is_not(None),
            )
            .order_by(DeadLetter.dead_at, DeadLetter.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(DeadLetter)
            .where(DeadLetter.id.in_(candidates), DeadLetter.state == OPEN)
            .values(state=REPLAYED, replayed_at=func.now())
            .returning(DeadLetter.id, DeadLetter.sequence, DeadLetter.event_id, DeadLetter.payload)
            .execution_options(synchronize_session=False)
        )
        rows = (await self.session.execute(stmt)).all()
        return [
            ClaimedDeadLetter(r.id, r.sequence, str(r.event_id) if r.event_id else None, r.payload)
            for r in sorted(rows, key=lambda r: r.id)
        ]

    async def reopen(self, dead_letter_ids: Sequence[int]) -> None:
        """Undo a claim whose publish failed: the row is listed again."""
        if not dead_letter_ids:
            return
        await self.session.execute(
            update(DeadLetter)
            .where(DeadLetter.id.in_(dead_letter_ids), DeadLetter.state == REPLAYED)
            .values(state=OPEN, replayed_at=None)
            .execution_options(synchronize_session=False)
        )

    async def purge(self, dead_letter_id: int) -> bool:
        result = await self.session.execute(
            update(DeadLetter)
            .where(DeadLetter.id == dead_letter_id, DeadLetter.state == OPEN)
            .values(state=PURGED)
            .returning(DeadLetter.id)
            .execution_options(synchronize_session=False)
        )
        return result.one_or_none() is not None

    async def purge_matching(self, filters: DeadLetterFilters) -> int:
        result = await self.session.execute(
            update(DeadLetter)
            .where(*filters.conditions())
            .values(state=PURGED)
            .returning(DeadLetter.id)
            .execution_options(synchronize_session=False)
        )
        return len(result.all())

    async def totals(self, filters: DeadLetterFilters, *, replayable_only: bool = False) -> Totals:
        conds = filters.conditions()
        if replayable_only:
            conds.append(DeadLetter.payload.is_not(None))
        stmt = select(
            func.count(DeadLetter.id), func.coalesce(func.sum(DeadLetter.payout), 0)
        ).where(and_(*conds))
        count, total = (await self.session.execute(stmt)).one()
        return Totals(int(count), Decimal(total or 0))

    async def exposure_by_publisher(self) -> list[PublisherExposure]:
        oldest = func.min(DeadLetter.dead_at)
        stmt = (
            select(
                DeadLetter.publisher_id,
                func.count(DeadLetter.id),
                func.coalesce(func.sum(DeadLetter.payout), 0),
                oldest,
                func.max(DeadLetter.dead_at),
            )
            .where(DeadLetter.state == OPEN)
            .group_by(DeadLetter.publisher_id)
            .order_by(oldest, DeadLetter.publisher_id)
        )
        return [
            PublisherExposure(pid, int(n), Decimal(total or 0), first, last)
            for pid, n, total, first, last in (await self.session.execute(stmt)).all()
        ]


async def open_summary(conn: AsyncConnection) -> tuple[int, Decimal]:
    """How many dead letters are open and the payout they hold (metrics)."""
    row = (
        await conn.execute(
            select(func.count(), func.coalesce(func.sum(DeadLetter.payout), 0)).where(
                DeadLetter.state == OPEN
            )
        )
    ).one()
    return int(row[0]), Decimal(str(row[1]))
