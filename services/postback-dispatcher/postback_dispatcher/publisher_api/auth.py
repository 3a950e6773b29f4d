"""Publisher authentication by API key (``X-Api-Key``), with a short-lived lookup cache.

Keys are stored only as SHA-256 digests; a successful lookup is cached for a
few seconds so a busy publisher page does not hit the database per request,
while a revoked key stops working within that window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security

from postback_core.db.base import unit_of_work
from postback_core.security import hash_api_key
from postback_core.web import PUBLISHER_KEY
from postback_dispatcher.deps import Runtime
from postback_dispatcher.publisher_api.repository import PublisherRepository

API_KEY_HEADER = "X-Api-Key"
MAX_CACHE_SECONDS = 30.0
MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class CurrentPublisher:
    id: int
    name: str


class PublisherKeyCache:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = min(ttl_seconds, MAX_CACHE_SECONDS)
        self._entries: dict[str, tuple[float, CurrentPublisher]] = {}

    def get(self, key_hash: str) -> CurrentPublisher | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        expires_at, publisher = entry
        if time.monotonic() >= expires_at:
            self._entries.pop(key_hash, None)
            return None
        return publisher

    def put(self, key_hash: str, publisher: CurrentPublisher) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= MAX_CACHED_KEYS:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self.ttl, publisher)


def _cache(request: Request, runtime: Runtime) -> PublisherKeyCache:
    cache: PublisherKeyCache | None = getattr(request.app.state, "publisher_key_cache", None)
    if cache is None:
        cache = PublisherKeyCache(runtime.settings.settings_cache_seconds)
        request.app.state.publisher_key_cache = cache
    return cache


async def publisher_for_key(
    request: Request, runtime: Runtime, api_key: str | None
) -> CurrentPublisher | None:
    """The active publisher owning ``api_key``, or None."""
    if not api_key or len(api_key) > 200:
        return None
    key_hash = hash_api_key(api_key.strip())
    cache = _cache(request, runtime)
    cached = cache.get(key_hash)
    if cached is not None:
        return cached
    async with unit_of_work(runtime.sessionmaker) as session:
        row = await PublisherRepository(session).active_publisher_by_key_hash(key_hash)
        if row is None:
            return None
        publisher = CurrentPublisher(row.id, row.name)
    cache.put(key_hash, publisher)
    return publisher


async def require_publisher(
    request: Request,
    runtime: Runtime,
    _: Annotated[object, Security(PUBLISHER_KEY)] = None,
) -> CurrentPublisher:
    publisher = await publisher_for_key(request, runtime, request.headers.get(API_KEY_HEADER))
    if publisher is None:
        raise HTTPException(
            status_code=401,
            detail=f"publisher authentication required: {API_KEY_HEADER}: <your api key>",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    return publisher


Me = Annotated[CurrentPublisher, Depends(require_publisher)]
