"""Goal SQL (and the cap counters a cap change re-seeds)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import func, null, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import Goal

# The all-time row and today's row, recounted from the conversions themselves.
_RECOUNT = text(
    """
    INSERT INTO goal_counters (goal_id, day, count)
    SELECT :goal_id, d.day, (
        SELECT count(*) FROM conversions c
        WHERE c.goal_id = :goal_id AND c.status <> 'rejected'
          AND (d.day = '-infinity'::date
               OR (c.created_at >= d.day::timestamp AT TIME ZONE 'UTC'
                   AND c.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC')))
    FROM (VALUES ('-infinity'::date), (CAST(:today AS date))) AS d(day)
    ON CONFLICT (goal_id, day) DO UPDATE SET count = EXCLUDED.count
    """
)


class GoalRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, **values: Any) -> Goal:
        if "hold_days" in values and values["hold_days"] is None:
            values["hold_days"] = null()  # NULL (hold until decided), not the column default
        goal = Goal(**values)
        self.session.add(goal)
        await self.session.flush()
        await self.session.refresh(goal)
        return goal

    async def get(self, offer_id: int, goal_id: int) -> Goal | None:
        return await self.session.scalar(
            select(Goal).where(Goal.offer_id == offer_id, Goal.id == goal_id)
        )

    async def name_taken(self, offer_id: int, name: str, except_id: int | None = None) -> bool:
        statement = select(Goal.id).where(Goal.offer_id == offer_id, Goal.name == name)
        if except_id is not None:
            statement = statement.where(Goal.id != except_id)
        return await self.session.scalar(statement) is not None

    async def list_for_offer(self, offer_id: int) -> Sequence[Goal]:
        result = await self.session.scalars(
            select(Goal).where(Goal.offer_id == offer_id).order_by(Goal.id)
        )
        return result.all()

    async def update(self, goal_id: int, values: dict[str, Any]) -> Goal | None:
        statement = (
            update(Goal)
            .where(Goal.id == goal_id)
            .values(**values, updated_at=func.clock_timestamp())
            .returning(Goal)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return (await self.session.scalars(statement)).one_or_none()

    async def recount(self, goal_id: int, today: date) -> None:
        """Seed the cap counters from the conversions (a cap was set or changed)."""
        await self.session.execute(_RECOUNT, {"goal_id": goal_id, "today": today})
