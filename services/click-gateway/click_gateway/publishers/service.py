"""Publisher accounts and their postback settings (admin side)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from click_gateway.key_rotation import KeyRotated
from click_gateway.pagination import Page, PageParams, is_storable_id
from click_gateway.publishers.repository import PublisherRepository
from click_gateway.publishers.schemas import PublisherCreate, PublisherCreated, PublisherRead
from postback_core.postback_settings import (
    PostbackSettingsRead,
    PostbackSettingsUpdate,
    get_postback_settings,
    save_postback_settings,
)
from postback_core.security import generate_api_key, hash_api_key


class PublisherNotFound(LookupError):
    pass


async def create_publisher(session: AsyncSession, data: PublisherCreate) -> PublisherCreated:
    api_key = generate_api_key("pub")
    publisher = await PublisherRepository(session).create(
        name=data.name, api_key_hash=hash_api_key(api_key)
    )
    return PublisherCreated(**PublisherRead.model_validate(publisher).model_dump(), api_key=api_key)


async def rotate_publisher_key(
    session: AsyncSession, publisher_id: int, grace_seconds: int
) -> KeyRotated:
    """The publisher API and pages accept the old key until ``previous_key_expires_at``."""
    api_key = generate_api_key("pub")
    publisher = (
        await PublisherRepository(session).rotate_key(
            publisher_id, hash_api_key(api_key), grace_seconds
        )
        if is_storable_id(publisher_id)
        else None
    )
    if publisher is None or publisher.previous_key_expires_at is None:
        raise PublisherNotFound(publisher_id)
    return KeyRotated(api_key=api_key, previous_key_expires_at=publisher.previous_key_expires_at)


async def get_publisher(session: AsyncSession, publisher_id: int) -> PublisherRead:
    publisher = (
        await PublisherRepository(session).get(publisher_id)
        if is_storable_id(publisher_id)
        else None
    )
    if publisher is None:
        raise PublisherNotFound(publisher_id)
    return PublisherRead.model_validate(publisher)


async def list_publishers(session: AsyncSession, page: PageParams) -> Page[PublisherRead]:
    rows = await PublisherRepository(session).list_after(page.after_id, page.limit + 1)
    items = [PublisherRead.model_validate(r) for r in rows[: page.limit]]
    more = len(rows) > page.limit
    return Page(items=items, next_after_id=items[-1].id if more else None)


async def _ensure_publisher(session: AsyncSession, publisher_id: int) -> None:
    if not is_storable_id(publisher_id) or not await PublisherRepository(session).exists(
        publisher_id
    ):
        raise PublisherNotFound(publisher_id)


async def read_postback_settings(
    session: AsyncSession, publisher_id: int
) -> PostbackSettingsRead | None:
    await _ensure_publisher(session, publisher_id)
    return await get_postback_settings(session, publisher_id)


async def update_postback_settings(
    session: AsyncSession, publisher_id: int, data: PostbackSettingsUpdate
) -> PostbackSettingsRead:
    """Raises ``TemplateError`` for a template that can't be saved."""
    await _ensure_publisher(session, publisher_id)
    return await save_postback_settings(session, publisher_id, data)
