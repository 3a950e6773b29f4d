"""Goals of an offer.

The ``default`` goal mirrors the offer's payout both ways: the database creates
it with the offer and follows payout changes (a trigger, see migration 0003);
changing the default goal's payout here changes the offer's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from click_gateway.goals.repository import GoalRepository
from click_gateway.goals.schemas import GoalCreate, GoalRead, GoalUpdate
from click_gateway.offers.repository import OfferRepository
from click_gateway.pagination import is_storable_id
from postback_core.db.models import DEFAULT_GOAL, Goal

CAP_FIELDS = ("daily_cap", "total_cap")
NULLABLE_FIELDS = frozenset({"payout", "revenue_share_percent", "hold_days", *CAP_FIELDS})


class OfferNotFound(LookupError):
    pass


class GoalNotFound(LookupError):
    pass


class InvalidGoal(ValueError):
    """Refused input; the message is the 422 ``detail``."""


class GoalNameTaken(ValueError):
    """The offer already has a goal of that name (409)."""


async def _ensure_offer(session: AsyncSession, offer_id: int) -> None:
    if not is_storable_id(offer_id) or await OfferRepository(session).get(offer_id) is None:
        raise OfferNotFound(offer_id)


def _check_payout(payout: Decimal | None, max_payout: Decimal) -> None:
    if payout is not None and payout > max_payout:
        raise InvalidGoal(f"payout must be at most {max_payout}")


def _today() -> Any:
    return datetime.now(UTC).date()


async def create_goal(
    session: AsyncSession, offer_id: int, data: GoalCreate, max_payout: Decimal
) -> GoalRead:
    await _ensure_offer(session, offer_id)
    _check_payout(data.payout, max_payout)
    repository = GoalRepository(session)
    if await repository.name_taken(offer_id, data.name):
        raise GoalNameTaken(f"offer {offer_id} already has a goal named {data.name!r}")
    goal = await repository.create(offer_id=offer_id, **data.model_dump())
    if goal.daily_cap is not None or goal.total_cap is not None:
        await repository.recount(goal.id, _today())
    return GoalRead.model_validate(goal)


async def list_goals(session: AsyncSession, offer_id: int) -> list[GoalRead]:
    await _ensure_offer(session, offer_id)
    goals = await GoalRepository(session).list_for_offer(offer_id)
    return [GoalRead.model_validate(g) for g in goals]


def _changes(goal: Goal, data: GoalUpdate, max_payout: Decimal) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in data.model_fields_set:
        value = getattr(data, field)
        if value is None and field not in NULLABLE_FIELDS:
            raise InvalidGoal(f"{field} can't be null")
        values[field] = value
    if values.get("payout") is not None and values.get("revenue_share_percent") is not None:
        raise InvalidGoal("give exactly one of payout and revenue_share_percent")
    if values.get("payout") is not None:
        values["revenue_share_percent"] = None
    elif values.get("revenue_share_percent") is not None:
        values["payout"] = None
    payout = values.get("payout", goal.payout)
    share = values.get("revenue_share_percent", goal.revenue_share_percent)
    if (payout is None) == (share is None):
        raise InvalidGoal("give exactly one of payout and revenue_share_percent")
    _check_payout(payout, max_payout)
    if goal.name == DEFAULT_GOAL:
        if values.get("name", DEFAULT_GOAL) != DEFAULT_GOAL:
            raise InvalidGoal("the default goal can't be renamed")
        if payout is None:
            raise InvalidGoal("the default goal pays the offer's payout: it needs a fixed payout")
    return values


async def update_goal(
    session: AsyncSession, offer_id: int, goal_id: int, data: GoalUpdate, max_payout: Decimal
) -> GoalRead:
    """Raises ``GoalNotFound``, ``InvalidGoal``, ``GoalNameTaken``."""
    repository = GoalRepository(session)
    goal = (
        await repository.get(offer_id, goal_id)
        if is_storable_id(offer_id) and is_storable_id(goal_id)
        else None
    )
    if goal is None:
        raise GoalNotFound(goal_id)
    values = _changes(goal, data, max_payout)
    if "name" in values and await repository.name_taken(offer_id, values["name"], goal_id):
        raise GoalNameTaken(f"offer {offer_id} already has a goal named {values['name']!r}")
    if not values:
        return GoalRead.model_validate(goal)
    updated = await repository.update(goal_id, values)
    assert updated is not None
    if goal.name == DEFAULT_GOAL and "payout" in values:
        await OfferRepository(session).update(offer_id, {"payout": values["payout"]})
    if any(field in values for field in CAP_FIELDS) and (
        updated.daily_cap is not None or updated.total_cap is not None
    ):
        await repository.recount(goal_id, _today())
    return GoalRead.model_validate(updated)
