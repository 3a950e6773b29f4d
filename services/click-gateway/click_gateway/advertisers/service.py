"""Advertiser accounts, and resolving an advertiser from its API key."""

from __future__ import annotations

import time

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from click_gateway.advertisers.repository import (
    AdvertiserRepository,
    active_advertiser_id_by_key_hash,
)
from click_gateway.advertisers.schemas import AdvertiserCreate, AdvertiserCreated, AdvertiserRead
from click_gateway.pagination import Page, PageParams, is_storable_id
from postback_core.security import generate_api_key, hash_api_key

MAX_API_KEY_LENGTH = 200


class AdvertiserNotFound(LookupError):
    pass


async def create_advertiser(session: AsyncSession, data: AdvertiserCreate) -> AdvertiserCreated:
    api_key = generate_api_key("adv")
    advertiser = await AdvertiserRepository(session).create(
        name=data.name, api_key_hash=hash_api_key(api_key)
    )
    return AdvertiserCreated(
        **AdvertiserRead.model_validate(advertiser).model_dump(), api_key=api_key
    )


async def get_advertiser(session: AsyncSession, advertiser_id: int) -> AdvertiserRead:
    advertiser = (
        await AdvertiserRepository(session).get(advertiser_id)
        if is_storable_id(advertiser_id)
        else None
    )
    if advertiser is None:
        raise AdvertiserNotFound(advertiser_id)
    return AdvertiserRead.model_validate(advertiser)


async def advertiser_exists(session: AsyncSession, advertiser_id: int) -> bool:
    return is_storable_id(advertiser_id) and await AdvertiserRepository(session).exists(
        advertiser_id
    )


async def list_advertisers(session: AsyncSession, page: PageParams) -> Page[AdvertiserRead]:
    rows = await AdvertiserRepository(session).list_after(page.after_id, page.limit + 1)
    items = [AdvertiserRead.model_validate(r) for r in rows[: page.limit]]
    more = len(rows) > page.limit
    return Page(items=items, next_after_id=items[-1].id if more else None)


class AdvertiserKeyCache:
    """API key → advertiser id, remembered briefly in-process.

    Every conversion carries a key; caching the (hashed) key saves a query per
    conversion. Only hits are cached, so a freshly created key works at once;
    a deactivated advertiser keeps working for at most ``ttl_seconds``.
    """

    def __init__(self, ttl_seconds: float = 30.0, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[int, float]] = {}

    async def advertiser_id(
        self, db: asyncpg.Pool | asyncpg.Connection, api_key: str | None
    ) -> int | None:
        if not api_key or len(api_key) > MAX_API_KEY_LENGTH:
            return None
        key_hash = hash_api_key(api_key)
        now = time.monotonic()
        cached = self._entries.get(key_hash)
        if cached is not None and cached[1] > now:
            return cached[0]
        advertiser_id = await active_advertiser_id_by_key_hash(db, key_hash)
        if advertiser_id is None:
            self._entries.pop(key_hash, None)
            return None
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude but bounded; real fleets have few advertisers
        self._entries[key_hash] = (advertiser_id, now + self.ttl_seconds)
        return advertiser_id
