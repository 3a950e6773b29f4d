"""Admin endpoints for an offer's goals."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, HTTPException, Request, status

from click_gateway.deps import AdminOnly, Runtime, Session
from click_gateway.goals import service
from click_gateway.goals.schemas import GoalCreate, GoalRead, GoalUpdate

router = APIRouter(prefix="/api/v1/offers", tags=["goals"], dependencies=[AdminOnly])


def _refused(exc: Exception) -> HTTPException:
    if isinstance(exc, service.OfferNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, f"offer {exc.args[0]} not found")
    if isinstance(exc, service.GoalNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, f"goal {exc.args[0]} not found")
    if isinstance(exc, service.GoalNameTaken):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


_REFUSALS = (
    service.OfferNotFound,
    service.GoalNotFound,
    service.GoalNameTaken,
    service.InvalidGoal,
)


@router.get("/{offer_id}/goals")
async def list_goals(offer_id: int, session: Session) -> list[GoalRead]:
    try:
        return await service.list_goals(session, offer_id)
    except _REFUSALS as exc:
        raise _refused(exc) from None


@router.post("/{offer_id}/goals", status_code=status.HTTP_201_CREATED)
async def create_goal(
    offer_id: int, data: GoalCreate, request: Request, session: Session, runtime: Runtime
) -> GoalRead:
    try:
        created = await service.create_goal(
            session, offer_id, data, Decimal(runtime.settings.max_payout)
        )
    except _REFUSALS as exc:
        raise _refused(exc) from None
    request.app.state.conversion_recorder.forget_offer(offer_id)
    return created


@router.patch("/{offer_id}/goals/{goal_id}")
async def update_goal(
    offer_id: int,
    goal_id: int,
    data: GoalUpdate,
    request: Request,
    session: Session,
    runtime: Runtime,
) -> GoalRead:
    """Other gateway processes use the new terms within seconds (this one at once)."""
    try:
        updated = await service.update_goal(
            session, offer_id, goal_id, data, Decimal(runtime.settings.max_payout)
        )
    except _REFUSALS as exc:
        raise _refused(exc) from None
    request.app.state.conversion_recorder.forget_offer(offer_id)
    return updated
