"""Admin endpoints for publishers and their postback settings."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse

from click_gateway.deps import AdminOnly, Runtime, Session
from click_gateway.key_rotation import KeyRotated, KeyRotation
from click_gateway.pagination import Page, Pagination
from click_gateway.publishers import service
from click_gateway.publishers.schemas import PublisherCreate, PublisherCreated, PublisherRead
from postback_core.macros import TemplateError
from postback_core.postback_settings import PostbackSettingsRead, PostbackSettingsUpdate
from postback_core.web import PathId

router = APIRouter(prefix="/api/v1/publishers", tags=["publishers"], dependencies=[AdminOnly])


def _not_found(publisher_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"publisher {publisher_id} not found")


def template_refused(exc: TemplateError) -> JSONResponse:
    """422 naming each unknown macro (same shape as the publisher API's)."""
    return JSONResponse(
        {"detail": str(exc), "unknown_macros": list(exc.unknown_macros)},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_publisher(data: PublisherCreate, session: Session) -> PublisherCreated:
    return await service.create_publisher(session, data)


@router.get("")
async def list_publishers(session: Session, page: Pagination) -> Page[PublisherRead]:
    return await service.list_publishers(session, page)


@router.get("/{publisher_id}")
async def get_publisher(publisher_id: PathId, session: Session) -> PublisherRead:
    try:
        return await service.get_publisher(session, publisher_id)
    except service.PublisherNotFound:
        raise _not_found(publisher_id) from None


@router.post("/{publisher_id}/rotate-key")
async def rotate_publisher_key(
    publisher_id: int, session: Session, runtime: Runtime, data: KeyRotation | None = None
) -> KeyRotated:
    """A new key at once; the old one keeps working until ``previous_key_expires_at``."""
    grace = data.grace_seconds if data is not None else None
    if grace is None:
        grace = runtime.settings.api_key_grace_seconds
    try:
        return await service.rotate_publisher_key(session, publisher_id, grace)
    except service.PublisherNotFound:
        raise _not_found(publisher_id) from None


@router.put(
    "/{publisher_id}/postback",
    response_model=PostbackSettingsRead,
    responses={422: {"description": "Refused template; unknown_macros names each typo"}},
)
async def put_postback_settings(
    publisher_id: PathId, data: PostbackSettingsUpdate, session: Session
) -> PostbackSettingsRead | JSONResponse:
    """Save the postback URL template; unknown macros are refused, weak templates warned."""
    try:
        return await service.update_postback_settings(session, publisher_id, data)
    except service.PublisherNotFound:
        raise _not_found(publisher_id) from None
    except TemplateError as exc:
        return template_refused(exc)


@router.get("/{publisher_id}/postback")
async def get_postback_settings(publisher_id: PathId, session: Session) -> PostbackSettingsRead:
    try:
        settings = await service.read_postback_settings(session, publisher_id)
    except service.PublisherNotFound:
        raise _not_found(publisher_id) from None
    if settings is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"publisher {publisher_id} has no postback settings"
        )
    return settings
