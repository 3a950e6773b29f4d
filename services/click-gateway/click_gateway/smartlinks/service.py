"""SmartLinks: a publisher's link, the offers behind it and where unmatched visitors go."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from click_gateway.offers.service import missing_offer_ids
from click_gateway.pagination import Page, PageParams, is_storable_id
from click_gateway.publishers.repository import PublisherRepository
from click_gateway.smartlinks.repository import SmartLinkRepository, SmartLinkRow
from click_gateway.smartlinks.schemas import SmartLinkCreate, SmartLinkRead, SmartLinkUpdate

# 6 random bytes → 8 URL-safe characters, 48 bits: short enough to share,
# far too many to enumerate.
GENERATED_CODE_BYTES = 6
GENERATE_ATTEMPTS = 8


class SmartLinkNotFound(LookupError):
    pass


class InvalidSmartLink(ValueError):
    """Refused input (unknown publisher/offers); the message is the 422 ``detail``."""


class CodeTaken(ValueError):
    pass


def generate_code() -> str:
    return secrets.token_urlsafe(GENERATED_CODE_BYTES)


def _read(row: SmartLinkRow, base_url: str) -> SmartLinkRead:
    return SmartLinkRead(
        id=row.id,
        publisher_id=row.publisher_id,
        code=row.code,
        url=f"{base_url.rstrip('/')}/get/{row.code}",
        offer_ids=list(row.offer_ids),
        fallback_url=row.fallback_url,
        is_active=row.is_active,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _check_offers(session: AsyncSession, offer_ids: list[int]) -> None:
    missing = await missing_offer_ids(session, offer_ids)
    if missing:
        raise InvalidSmartLink(f"unknown offer id(s): {', '.join(map(str, missing))}")


async def create_smartlink(
    session: AsyncSession, data: SmartLinkCreate, base_url: str
) -> SmartLinkRead:
    if not await PublisherRepository(session).exists(data.publisher_id):
        raise InvalidSmartLink(f"publisher {data.publisher_id} does not exist")
    if not data.offer_ids and not data.fallback_url:
        raise InvalidSmartLink("give at least one offer id or a fallback_url")
    await _check_offers(session, data.offer_ids)
    repository = SmartLinkRepository(session)
    smartlink_id: int | None = None
    if data.code is not None:
        smartlink_id = await repository.insert_if_code_free(
            publisher_id=data.publisher_id, code=data.code, fallback_url=data.fallback_url
        )
        if smartlink_id is None:
            raise CodeTaken(data.code)
    else:
        for _ in range(GENERATE_ATTEMPTS):
            smartlink_id = await repository.insert_if_code_free(
                publisher_id=data.publisher_id, code=generate_code(), fallback_url=data.fallback_url
            )
            if smartlink_id is not None:
                break
        if smartlink_id is None:  # practically impossible with 48 random bits
            raise RuntimeError("could not generate a free smartlink code")
    await repository.replace_offers(smartlink_id, data.offer_ids)
    row = await repository.get(smartlink_id)
    assert row is not None
    return _read(row, base_url)


async def update_smartlink(
    session: AsyncSession, smartlink_id: int, data: SmartLinkUpdate, base_url: str
) -> SmartLinkRead:
    values: dict[str, Any] = {}
    for field in data.model_fields_set - {"offer_ids"}:
        value = getattr(data, field)
        if value is None and field != "fallback_url":
            raise InvalidSmartLink(f"{field} can't be null")
        values[field] = value
    if "offer_ids" in data.model_fields_set and data.offer_ids is None:
        raise InvalidSmartLink("offer_ids can't be null (send [] for none)")
    if data.offer_ids is not None:
        await _check_offers(session, data.offer_ids)
    if not is_storable_id(smartlink_id):
        raise SmartLinkNotFound(smartlink_id)
    repository = SmartLinkRepository(session)
    # Always bump updated_at (even for an offer-set-only change) so the click cache reloads.
    if not await repository.update(smartlink_id, values):
        raise SmartLinkNotFound(smartlink_id)
    if data.offer_ids is not None:
        await repository.replace_offers(smartlink_id, data.offer_ids)
    row = await repository.get(smartlink_id)
    assert row is not None
    return _read(row, base_url)


async def get_smartlink(session: AsyncSession, smartlink_id: int, base_url: str) -> SmartLinkRead:
    row = (
        await SmartLinkRepository(session).get(smartlink_id)
        if is_storable_id(smartlink_id)
        else None
    )
    if row is None:
        raise SmartLinkNotFound(smartlink_id)
    return _read(row, base_url)


async def list_smartlinks(
    session: AsyncSession, page: PageParams, base_url: str, publisher_id: int | None = None
) -> Page[SmartLinkRead]:
    rows = await SmartLinkRepository(session).list_after(
        page.after_id, page.limit + 1, publisher_id
    )
    items = [_read(r, base_url) for r in rows[: page.limit]]
    more = len(rows) > page.limit
    return Page(items=items, next_after_id=items[-1].id if more else None)
