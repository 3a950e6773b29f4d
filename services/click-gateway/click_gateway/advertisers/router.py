"""Admin endpoints for advertisers."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from click_gateway.advertisers import service
from click_gateway.advertisers.schemas import AdvertiserCreate, AdvertiserCreated, AdvertiserRead
from click_gateway.deps import AdminOnly, Session
from click_gateway.pagination import Page, Pagination
from postback_core.web import PathId

router = APIRouter(prefix="/api/v1/advertisers", tags=["advertisers"], dependencies=[AdminOnly])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_advertiser(data: AdvertiserCreate, session: Session) -> AdvertiserCreated:
    return await service.create_advertiser(session, data)


@router.get("")
async def list_advertisers(session: Session, page: Pagination) -> Page[AdvertiserRead]:
    return await service.list_advertisers(session, page)


@router.get("/{advertiser_id}")
async def get_advertiser(advertiser_id: PathId, session: Session) -> AdvertiserRead:
    try:
        return await service.get_advertiser(session, advertiser_id)
    except service.AdvertiserNotFound:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"advertiser {advertiser_id} not found"
        ) from None
