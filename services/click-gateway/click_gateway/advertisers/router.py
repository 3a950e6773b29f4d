"""Admin endpoints for advertisers."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from click_gateway.advertisers import service
from click_gateway.advertisers.schemas import (
    AdvertiserCreate,
    AdvertiserCreated,
    AdvertiserRead,
    AdvertiserUpdate,
)
from click_gateway.deps import AdminOnly, Runtime, Session
from click_gateway.key_rotation import KeyRotated, KeyRotation
from click_gateway.pagination import Page, Pagination
from postback_core.web import PathId

router = APIRouter(prefix="/api/v1/advertisers", tags=["advertisers"], dependencies=[AdminOnly])


def _not_found(advertiser_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"advertiser {advertiser_id} not found")


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
        raise _not_found(advertiser_id) from None


@router.patch("/{advertiser_id}")
async def update_advertiser(
    advertiser_id: int, data: AdvertiserUpdate, request: Request, session: Session
) -> AdvertiserRead:
    """Name, active flag, allowed_ips; other gateway processes see it within 30 s."""
    try:
        updated = await service.update_advertiser(session, advertiser_id, data)
    except service.AdvertiserNotFound:
        raise _not_found(advertiser_id) from None
    except service.InvalidAdvertiser as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    request.app.state.advertiser_key_cache.forget(advertiser_id)
    return updated


@router.post("/{advertiser_id}/rotate-key")
async def rotate_advertiser_key(
    advertiser_id: int,
    request: Request,
    session: Session,
    runtime: Runtime,
    data: KeyRotation | None = None,
) -> KeyRotated:
    """A new key at once; the old one keeps working until ``previous_key_expires_at``.

    Other gateway processes may accept a key rotated out with ``grace_seconds: 0``
    for up to 30 s more (their key cache).
    """
    grace = data.grace_seconds if data is not None else None
    if grace is None:
        grace = runtime.settings.api_key_grace_seconds
    try:
        rotated = await service.rotate_advertiser_key(session, advertiser_id, grace)
    except service.AdvertiserNotFound:
        raise _not_found(advertiser_id) from None
    request.app.state.advertiser_key_cache.forget(advertiser_id)
    return rotated
