"""The in-memory SmartLink/offer catalogue that the click path reads instead of the database.

Loaded at start, then a cheap fingerprint query every ``cache_refresh_seconds``
decides whether to reload (it also notices an offer's default goal reaching,
or leaving, its cap: capped offers are left out of rotation); a full reload also happens every
``FULL_RELOAD_SECONDS`` as a safety net. Each load builds a new immutable
snapshot and swaps it in with one assignment, so a click never sees a
half-built catalogue. Offer URL templates are split into literal parts and
macro names at load time, so rendering a redirect is a join.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import asyncpg

from click_gateway.clicks import repository
from click_gateway.offers.macros import OFFER_URL_MACROS

log = logging.getLogger(__name__)

FULL_RELOAD_SECONDS = 60.0
# An unknown SmartLink code triggers a fingerprint check at most this often.
MISS_RECHECK_SECONDS = 0.2
# Per-SmartLink memo of (country, os, device) → eligible offers; bounded.
MAX_TARGETING_MEMO = 4096

_MACRO_SPLIT = re.compile(r"\{(" + "|".join(OFFER_URL_MACROS) + r")\}")
# Characters kept as-is in the literal parts of a template; anything else
# (spaces, non-ASCII) is percent-encoded so the Location header is valid.
_URL_SAFE = "!#$%&'()*+,-./:;=?@[]_~"


_MACRO_SLOT = {name: index for index, name in enumerate(OFFER_URL_MACROS)}
# Values made only of these need no percent-encoding (the common case: ids, codes).
_needs_quoting = re.compile(r"[^A-Za-z0-9_.~-]").search


@dataclass(frozen=True, slots=True)
class UrlTemplate:
    """``literals[0] + v(slots[0]) + literals[1] + … + literals[-1]``.

    ``slots`` index into a values tuple in ``OFFER_URL_MACROS`` order, so a
    click builds one tuple and rendering is a join.
    """

    literals: tuple[str, ...]
    names: tuple[str, ...]
    slots: tuple[int, ...]

    @classmethod
    def parse(cls, template: str) -> UrlTemplate:
        pieces = _MACRO_SPLIT.split(template.strip())
        literals = tuple(quote(piece, safe=_URL_SAFE) for piece in pieces[0::2])
        names = tuple(pieces[1::2])
        return cls(literals=literals, names=names, slots=tuple(_MACRO_SLOT[n] for n in names))

    def render(self, values: Sequence[Any]) -> str:
        """``values``: one per ``OFFER_URL_MACROS`` name, in that order."""
        literals = self.literals
        out = literals[0]
        index = 1
        # Values are percent-encoded only when needed (ids and codes rarely are).
        for slot in self.slots:
            value = values[slot]
            if value is None:
                out += literals[index]
            elif value.__class__ is int:
                out += str(value) + literals[index]
            else:
                text = value if value.__class__ is str else str(value)
                if _needs_quoting(text):
                    text = quote(text, safe="")
                out += text + literals[index]
            index += 1
        return out


@dataclass(frozen=True, slots=True)
class OfferEntry:
    id: int
    url: UrlTemplate
    weight: int
    countries: frozenset[str] | None  # None = any
    os: frozenset[str] | None  # lower-cased families; None = any
    devices: frozenset[str] | None

    def accepts(self, country: str | None, os_key: str, device: str) -> bool:
        if self.countries is not None and country not in self.countries:
            return False
        if self.os is not None and os_key not in self.os:
            return False
        return self.devices is None or device in self.devices


@dataclass(slots=True)
class SmartLinkEntry:
    id: int
    code: str
    publisher_id: int
    fallback: UrlTemplate | None
    offers: tuple[OfferEntry, ...]
    _memo: dict[tuple[str | None, str | None, str], tuple[tuple[OfferEntry, ...], list[int]]] = (
        field(default_factory=dict)
    )

    def eligible(
        self, country: str | None, os_family: str | None, device: str
    ) -> tuple[tuple[OfferEntry, ...], list[int]]:
        """Matching offers with positive weight, and their cumulative weights (memoised)."""
        key = (country, os_family, device)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        os_key = (os_family or "").lower()
        matching = tuple(
            o for o in self.offers if o.weight > 0 and o.accepts(country, os_key, device)
        )
        cumulative: list[int] = []
        total = 0
        for offer in matching:
            total += offer.weight
            cumulative.append(total)
        if len(self._memo) >= MAX_TARGETING_MEMO:
            self._memo.clear()
        self._memo[key] = (matching, cumulative)
        return matching, cumulative

    def choose(self, country: str | None, os_family: str | None, device: str) -> OfferEntry | None:
        """A weighted random choice among matching offers; None when nothing matches."""
        hit = self._memo.get((country, os_family, device))
        matching, cumulative = hit if hit is not None else self.eligible(country, os_family, device)
        if not matching:
            return None
        if len(matching) == 1:
            return matching[0]
        pick = random.random() * cumulative[-1]
        return matching[bisect.bisect_right(cumulative, pick)]


def _lower_set(values: Sequence[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    return frozenset(v.strip().lower() for v in values if v)


def _upper_set(values: Sequence[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    return frozenset(v.strip().upper() for v in values if v)


def build_catalog(
    rows: Sequence[Mapping[str, Any]], capped: frozenset[int] | set[int] = frozenset()
) -> dict[str, SmartLinkEntry]:
    """Group the catalogue query's rows (one per SmartLink x active offer) by code.

    Offers in ``capped`` (their default goal reached a cap) are left out, so
    rotation falls back exactly as when no offer matches the visitor.
    """
    offers: dict[int, OfferEntry] = {}
    links: dict[str, SmartLinkEntry] = {}
    link_offers: dict[str, list[OfferEntry]] = {}
    for row in rows:
        code = row["code"]
        if code not in links:
            fallback = row["fallback_url"]
            links[code] = SmartLinkEntry(
                id=row["smartlink_id"],
                code=code,
                publisher_id=row["publisher_id"],
                fallback=UrlTemplate.parse(fallback) if fallback else None,
                offers=(),
            )
            link_offers[code] = []
        offer_id = row["offer_id"]
        if offer_id is None or offer_id in capped:
            continue
        offer = offers.get(offer_id)
        if offer is None:
            offer = OfferEntry(
                id=offer_id,
                url=UrlTemplate.parse(row["url_template"]),
                weight=max(0, int(row["weight"])),
                countries=_upper_set(row["countries"]),
                os=_lower_set(row["os"]),
                devices=_lower_set(row["devices"]),
            )
            offers[offer_id] = offer
        link_offers[code].append(offer)
    for code, entry in links.items():
        entry.offers = tuple(link_offers[code])
    return links


class CatalogCache:
    """Holds the current snapshot (``smartlinks``: code → entry) and keeps it fresh."""

    def __init__(self, pool: asyncpg.Pool, refresh_seconds: float) -> None:
        self.pool = pool
        self.refresh_seconds = refresh_seconds
        self.smartlinks: dict[str, SmartLinkEntry] = {}
        self._fingerprint: tuple[Any, ...] | None = None
        self._loaded_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._miss_check: asyncio.Future[bool] | None = None
        self._miss_checked_at = -MISS_RECHECK_SECONDS

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._refresh_forever(), name="click-catalog-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self) -> None:
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            # One snapshot: the fingerprint and the rows describe the same state.
            fingerprint = await repository.catalog_fingerprint(conn)
            rows = await repository.load_catalog(conn)
            capped = await repository.capped_offer_ids(conn)
        self.smartlinks = build_catalog(rows, capped)
        self._fingerprint = fingerprint
        self._loaded_at = time.monotonic()

    async def refresh(self) -> bool:
        """Reload if anything changed (or the safety-net period passed); True if reloaded."""
        if time.monotonic() - self._loaded_at < FULL_RELOAD_SECONDS:
            fingerprint = await repository.catalog_fingerprint(self.pool)
            if fingerprint == self._fingerprint:
                return False
        await self.reload()
        return True

    async def find_new(self, code: str) -> SmartLinkEntry | None:
        """A code missing from the snapshot: was it created moments ago (maybe elsewhere)?

        Another gateway process (or worker) may have just created it, so a miss
        checks the fingerprint at once instead of answering 404 until the next
        refresh. Concurrent misses share one check, and checks start at most
        every ``MISS_RECHECK_SECONDS`` (a miss waits for the next one), so a
        flood of unknown codes costs a few cheap queries per second.
        """
        check = self._miss_check
        if check is None:
            now = time.monotonic()
            delay = max(0.0, self._miss_checked_at + MISS_RECHECK_SECONDS - now)
            self._miss_checked_at = now + delay
            check = self._miss_check = asyncio.ensure_future(self._refresh_after(delay))
            check.add_done_callback(self._miss_check_done)
        with contextlib.suppress(Exception):  # the periodic refresh logs failures
            await asyncio.shield(check)
        return self.smartlinks.get(code)

    async def _refresh_after(self, delay: float) -> bool:
        if delay:
            await asyncio.sleep(delay)
        return await self.refresh()

    def _miss_check_done(self, check: asyncio.Future[bool]) -> None:
        self._miss_check = None
        if not check.cancelled():
            check.exception()  # retrieved here; callers see it through the shield

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                if await self.refresh():
                    log.debug("SmartLink cache reloaded: %d links", len(self.smartlinks))
                if failing:
                    log.info("SmartLink cache refresh recovered")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    log.exception("SmartLink cache refresh failed; serving the last snapshot")
                failing = True
