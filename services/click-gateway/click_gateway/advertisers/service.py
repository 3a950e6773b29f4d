"""Advertiser accounts, resolving an advertiser from its API key, and its address allowlist."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from click_gateway.advertisers.repository import (
    AdvertiserRepository,
    active_advertiser_by_key_hash,
)
from click_gateway.advertisers.schemas import (
    AdvertiserCreate,
    AdvertiserCreated,
    AdvertiserRead,
    AdvertiserUpdate,
)
from click_gateway.key_rotation import KeyRotated
from click_gateway.pagination import Page, PageParams, is_storable_id
from postback_core.security import generate_api_key, hash_api_key

MAX_API_KEY_LENGTH = 200
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AdvertiserNotFound(LookupError):
    pass


class InvalidAdvertiser(ValueError):
    """Refused input; the message is the 422 ``detail``."""


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


async def update_advertiser(
    session: AsyncSession, advertiser_id: int, data: AdvertiserUpdate
) -> AdvertiserRead:
    """Name, active flag and allowed_ips (null: any address)."""
    values: dict[str, Any] = {}
    for field in data.model_fields_set:
        value = getattr(data, field)
        if value is None and field != "allowed_ips":
            raise InvalidAdvertiser(f"{field} can't be null")
        values[field] = value
    if not is_storable_id(advertiser_id):
        raise AdvertiserNotFound(advertiser_id)
    repository = AdvertiserRepository(session)
    advertiser = (
        await repository.update(advertiser_id, values)
        if values
        else await repository.get(advertiser_id)
    )
    if advertiser is None:
        raise AdvertiserNotFound(advertiser_id)
    return AdvertiserRead.model_validate(advertiser)


async def rotate_advertiser_key(
    session: AsyncSession, advertiser_id: int, grace_seconds: int
) -> KeyRotated:
    api_key = generate_api_key("adv")
    advertiser = (
        await AdvertiserRepository(session).rotate_key(
            advertiser_id, hash_api_key(api_key), grace_seconds
        )
        if is_storable_id(advertiser_id)
        else None
    )
    if advertiser is None or advertiser.previous_key_expires_at is None:
        raise AdvertiserNotFound(advertiser_id)
    return KeyRotated(api_key=api_key, previous_key_expires_at=advertiser.previous_key_expires_at)


async def advertiser_exists(session: AsyncSession, advertiser_id: int) -> bool:
    return is_storable_id(advertiser_id) and await AdvertiserRepository(session).exists(
        advertiser_id
    )


async def list_advertisers(session: AsyncSession, page: PageParams) -> Page[AdvertiserRead]:
    rows = await AdvertiserRepository(session).list_after(page.after_id, page.limit + 1)
    items = [AdvertiserRead.model_validate(r) for r in rows[: page.limit]]
    more = len(rows) > page.limit
    return Page(items=items, next_after_id=items[-1].id if more else None)


@dataclass(frozen=True, slots=True)
class AdvertiserKey:
    """What an API key unlocks: the advertiser, and where its requests may come from."""

    advertiser_id: int
    allowed_networks: tuple[IPNetwork, ...] | None  # None: any address

    def allows(self, address: str | None) -> bool:
        """Whether a request from ``address`` (the resolved client address) is accepted."""
        if self.allowed_networks is None:
            return True
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.allowed_networks)


def address_refused(key: AdvertiserKey, address: str | None) -> str:
    """The 403 detail for a request from outside the allowlist."""
    return (
        f"conversions for advertiser {key.advertiser_id} are accepted only from its "
        f"allowed_ips; this request came from {address or 'an unknown address'}"
    )


class AdvertiserKeyCache:
    """API key → advertiser, remembered briefly in-process.

    Every conversion carries a key; caching the (hashed) key saves a query per
    conversion. Only hits are cached, so a freshly created key works at once;
    a deactivated advertiser (or a changed allowlist) takes effect within
    ``ttl_seconds``, and a rotated-out key is never remembered past its expiry.
    """

    def __init__(self, ttl_seconds: float = 30.0, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[AdvertiserKey, float]] = {}

    def forget(self, advertiser_id: int) -> None:
        """This process changed the advertiser: don't wait for the TTL."""
        for key_hash, (key, _) in list(self._entries.items()):
            if key.advertiser_id == advertiser_id:
                self._entries.pop(key_hash, None)

    async def lookup(
        self, db: asyncpg.Pool | asyncpg.Connection, api_key: str | None
    ) -> AdvertiserKey | None:
        if not api_key or len(api_key) > MAX_API_KEY_LENGTH:
            return None
        key_hash = hash_api_key(api_key)
        now = time.monotonic()
        cached = self._entries.get(key_hash)
        if cached is not None and cached[1] > now:
            return cached[0]
        found = await active_advertiser_by_key_hash(db, key_hash)
        if found is None:
            self._entries.pop(key_hash, None)
            return None
        advertiser_id, allowed_ips, expires_at = found
        key = AdvertiserKey(
            advertiser_id,
            None
            if allowed_ips is None
            else tuple(ipaddress.ip_network(n, strict=False) for n in allowed_ips),
        )
        lifetime = self.ttl_seconds
        if expires_at is not None:
            lifetime = min(lifetime, (expires_at - datetime.now(UTC)).total_seconds())
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude but bounded; real fleets have few advertisers
        self._entries[key_hash] = (key, now + lifetime)
        return key

    async def advertiser_id(
        self, db: asyncpg.Pool | asyncpg.Connection, api_key: str | None
    ) -> int | None:
        key = await self.lookup(db, api_key)
        return None if key is None else key.advertiser_id
