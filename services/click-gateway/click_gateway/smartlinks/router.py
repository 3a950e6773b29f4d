"""Admin endpoints for SmartLinks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status

from click_gateway.deps import AdminOnly, Runtime, Session
from click_gateway.pagination import MAX_BIGINT, Page, Pagination
from click_gateway.smartlinks import service
from click_gateway.smartlinks.schemas import SmartLinkCreate, SmartLinkRead, SmartLinkUpdate
from postback_core.web import PathId

router = APIRouter(prefix="/api/v1/smartlinks", tags=["smartlinks"], dependencies=[AdminOnly])


def _base_url(request: Request, runtime: Runtime) -> str:
    """PUBLIC_BASE_URL when set (behind a CDN/proxy), else the URL this request came to."""
    return runtime.settings.public_base_url or str(request.base_url)


def _not_found(smartlink_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"smartlink {smartlink_id} not found")


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_smartlink(
    data: SmartLinkCreate, request: Request, session: Session, runtime: Runtime
) -> SmartLinkRead:
    try:
        return await service.create_smartlink(session, data, _base_url(request, runtime))
    except service.InvalidSmartLink as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except service.CodeTaken:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"smartlink code {data.code!r} is already taken"
        ) from None


@router.get("")
async def list_smartlinks(
    request: Request,
    session: Session,
    runtime: Runtime,
    page: Pagination,
    publisher_id: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
) -> Page[SmartLinkRead]:
    return await service.list_smartlinks(session, page, _base_url(request, runtime), publisher_id)


@router.get("/{smartlink_id}")
async def get_smartlink(
    smartlink_id: PathId, request: Request, session: Session, runtime: Runtime
) -> SmartLinkRead:
    try:
        return await service.get_smartlink(session, smartlink_id, _base_url(request, runtime))
    except service.SmartLinkNotFound:
        raise _not_found(smartlink_id) from None


@router.patch("/{smartlink_id}")
async def update_smartlink(
    smartlink_id: PathId,
    data: SmartLinkUpdate,
    request: Request,
    session: Session,
    runtime: Runtime,
) -> SmartLinkRead:
    """Enable/disable, replace the offer set or change the fallback; the click cache follows."""
    try:
        return await service.update_smartlink(
            session, smartlink_id, data, _base_url(request, runtime)
        )
    except service.SmartLinkNotFound:
        raise _not_found(smartlink_id) from None
    except service.InvalidSmartLink as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
