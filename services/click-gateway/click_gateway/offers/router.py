"""Admin endpoints for offers."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse

from click_gateway.deps import AdminOnly, Runtime, Session
from click_gateway.offers import service
from click_gateway.offers.macros import OfferTemplateError
from click_gateway.offers.schemas import OfferCreate, OfferRead, OfferUpdate
from click_gateway.pagination import MAX_BIGINT, Page, Pagination
from postback_core.web import PathId

router = APIRouter(prefix="/api/v1/offers", tags=["offers"], dependencies=[AdminOnly])


def _unprocessable(exc: Exception) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def _template_refused(exc: OfferTemplateError) -> JSONResponse:
    return JSONResponse(
        {"detail": str(exc), "unknown_macros": list(exc.unknown_macros)},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=OfferRead)
async def create_offer(
    data: OfferCreate, session: Session, runtime: Runtime
) -> OfferRead | JSONResponse:
    try:
        return await service.create_offer(session, data, Decimal(runtime.settings.max_payout))
    except OfferTemplateError as exc:
        return _template_refused(exc)
    except service.InvalidOffer as exc:
        raise _unprocessable(exc) from None


@router.get("")
async def list_offers(
    session: Session,
    page: Pagination,
    advertiser_id: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
) -> Page[OfferRead]:
    return await service.list_offers(session, page, advertiser_id)


@router.get("/{offer_id}")
async def get_offer(offer_id: PathId, session: Session) -> OfferRead:
    try:
        return await service.get_offer(session, offer_id)
    except service.OfferNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"offer {offer_id} not found") from None


@router.patch("/{offer_id}", response_model=OfferRead)
async def update_offer(
    offer_id: PathId, data: OfferUpdate, request: Request, session: Session, runtime: Runtime
) -> OfferRead | JSONResponse:
    """Change targeting, weight, payout or is_active; the click cache picks it up."""
    try:
        updated = await service.update_offer(
            session, offer_id, data, Decimal(runtime.settings.max_payout)
        )
        # This process's conversions see a new payout at once (others within seconds).
        request.app.state.conversion_recorder.forget_offer(offer_id)
        return updated
    except service.OfferNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"offer {offer_id} not found") from None
    except OfferTemplateError as exc:
        return _template_refused(exc)
    except service.InvalidOffer as exc:
        raise _unprocessable(exc) from None
