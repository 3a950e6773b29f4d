"""The SmartLink click path: ``GET /get/{code}`` → record the click → 302.

Built for speed (raw ASGI, see ``app.py``): the SmartLink and its offers come
from the in-memory catalogue, the click id is generated in-process, the
visitor is classified from cached lookups, and the click row goes to a write
buffer that COPYs to PostgreSQL every few milliseconds. No database round
trip and no blocking call happens while a click is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from click_gateway.clicks import repository
from click_gateway.clicks.buffer import ClickBuffer, ClickRow
from click_gateway.clicks.cache import CatalogCache
from click_gateway.clicks.ids import (
    CLICK_ID_EPOCH_MS,
    LOW_BITS,
    ClickIdGenerator,
    NodeLease,
    click_created_at,
    click_id_ms,
    is_plausible_click_id,
)
from click_gateway.clicks.repository import encode_inet, encode_timestamptz_ms
from click_gateway.clicks.visitor import (
    ADDRESS_CACHE_SIZE,
    MAX_USER_AGENT_LENGTH,
    ClientAddressResolver,
    classify_user_agent,
    country_of,
)
from click_gateway.settings import GatewaySettings
from postback_core.batching import MicroBatcher
from postback_core.db.base import asyncpg_dsn, keep_session_state
from postback_core.db.lanes import ConnectionLanes
from postback_core.enums import ClickOutcome

log = logging.getLogger(__name__)

CLICK_PATH_PREFIX = "/get/"
EXTERNAL_ID_PARAMS = ("cid", "clickid", "click_id", "external_id")
SUB_ID_PARAMS = ("sub1", "sub2", "sub3", "sub4", "sub5")
MAX_PARAM_LENGTH = 256
MAX_QUERY_LENGTH = 8192
PARTITION_MAINTENANCE_SECONDS = 3600.0
# A click younger than this may still sit in another gateway process's buffer.
RECENT_CLICK_SECONDS = 2.0
FIND_POLL_DEADLINE_SECONDS = 1.5
FIND_POLL_INTERVAL_SECONDS = 0.05
# Batched click lookups (conversions): queries in flight at once, one connection each.
LOOKUPS_IN_FLIGHT = 2

# Positions in ``ClickService.outcome_counts`` (a list: the cheapest counter there is).
_OUTCOME_INDEX = {outcome: index for index, outcome in enumerate(ClickOutcome)}
REDIRECTED = _OUTCOME_INDEX[ClickOutcome.REDIRECTED]
FALLBACK = _OUTCOME_INDEX[ClickOutcome.FALLBACK]
BOT = _OUTCOME_INDEX[ClickOutcome.BOT]
NOT_FOUND = _OUTCOME_INDEX[ClickOutcome.NOT_FOUND]
NO_OFFER = _OUTCOME_INDEX[ClickOutcome.NO_OFFER]
BUSY = _OUTCOME_INDEX[ClickOutcome.BUSY]
METHOD_NOT_ALLOWED = _OUTCOME_INDEX[ClickOutcome.METHOD_NOT_ALLOWED]

_REDIRECT_HEADERS_TAIL = (
    (b"cache-control", b"no-store"),
    (b"content-length", b"0"),
)


@dataclass(frozen=True, slots=True)
class ClickRecord:
    """What a conversion needs to know about its click."""

    click_id: int
    created_at: datetime
    external_id: str | None
    publisher_id: int
    smartlink_id: int
    offer_id: int | None
    ip: str | None
    country: str | None
    os: str | None
    device: str | None
    sub1: str | None = None
    sub2: str | None = None
    sub3: str | None = None
    sub4: str | None = None
    sub5: str | None = None
    user_agent: str | None = None


def _page(status: int, title: str, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = (
        "<!doctype html><html><head><meta charset=utf-8><title>"
        f"{title}</title></head><body><h1>{title}</h1><p>{message}</p></body></html>"
    ).encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
    ]
    return status, headers, body


NOT_FOUND_PAGE = _page(404, "Link not found", "This link does not exist or is no longer active.")
NO_OFFER_PAGE = _page(404, "No offer available", "There is no offer available for you right now.")
BUSY_PAGE = _page(503, "Try again shortly", "We could not handle your click right now.")
METHOD_PAGE = _page(405, "Method not allowed", "Use GET.")
METHOD_PAGE[1].append((b"allow", b"GET, HEAD"))
BUSY_PAGE[1].append((b"retry-after", b"1"))


def _clean(value: str, limit: int = MAX_PARAM_LENGTH) -> str | None:
    """Capped and free of NUL (PostgreSQL text can't hold it); None when empty."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    value = value.strip()[:limit]
    return value or None


# Query parameter → slot: sub1..sub5 are 0..4, the external id aliases 5..8 (in preference order).
_PARAM_SLOTS = {
    **{name: index for index, name in enumerate(SUB_ID_PARAMS)},
    **{name: len(SUB_ID_PARAMS) + rank for rank, name in enumerate(EXTERNAL_ID_PARAMS)},
}
_ALIAS_BASE = len(SUB_ID_PARAMS)


def parse_click_query(query: bytes) -> tuple[str | None, list[str | None]]:
    """The external click id (first non-empty alias, in alias order) and sub1..sub5.

    A hand-rolled ``parse_qsl`` for the click path: one dict lookup per
    parameter, and only the few parameters we keep are decoded, only when they
    carry escapes.
    """
    subs: list[str | None] = [None, None, None, None, None]
    if not query:
        return None, subs
    aliases: list[str | None] | None = None
    slots = _PARAM_SLOTS
    for pair in query[:MAX_QUERY_LENGTH].decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        if not value:
            continue
        slot = slots.get(name)
        if slot is None:
            if "%" not in name and "+" not in name:
                continue
            slot = slots.get(unquote_plus(name))
            if slot is None:
                continue
        if "%" in value or "+" in value:
            value = unquote_plus(value, errors="replace")
        if slot < _ALIAS_BASE:
            if subs[slot] is None:
                subs[slot] = _clean(value)
        else:
            if aliases is None:
                aliases = [None] * len(EXTERNAL_ID_PARAMS)
            rank = slot - _ALIAS_BASE
            if aliases[rank] is None and value.strip():
                aliases[rank] = value
    if aliases is not None:
        for candidate in aliases:
            if candidate is not None:
                external_id = _clean(candidate)
                if external_id:
                    return external_id, subs
    return None, subs


def record_from_row(row: ClickRow | asyncpg.Record) -> ClickRecord:
    """A buffered row (tuple in CLICK_COLUMNS order) or a fetched row as a ClickRecord."""
    if isinstance(row, tuple):
        values = dict(zip(repository.CLICK_COLUMNS, row, strict=True))
        values["created_at"] = click_created_at(values["click_id"])
        if values["ip"] is not None:
            values["ip"] = repository.decode_inet(values["ip"])
    else:
        values = dict(row)
    return ClickRecord(
        click_id=values["click_id"],
        created_at=values["created_at"],
        external_id=values["external_id"],
        publisher_id=values["publisher_id"],
        smartlink_id=values["smartlink_id"],
        offer_id=values["offer_id"],
        ip=values["ip"],
        country=values["country"],
        os=values["os"],
        device=values["device"],
        sub1=values["sub1"],
        sub2=values["sub2"],
        sub3=values["sub3"],
        sub4=values["sub4"],
        sub5=values["sub5"],
        user_agent=values["user_agent"],
    )


class ClickService:
    def __init__(
        self,
        settings: GatewaySettings,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessionmaker = sessionmaker
        self.dsn = asyncpg_dsn(settings.database_url)
        self.addresses = ClientAddressResolver(settings.trusted_proxies)
        # (peer, X-Forwarded-For) → (ip, country, ip as inet wire bytes), one lookup per click.
        self._locate = lru_cache(maxsize=ADDRESS_CACHE_SIZE)(self._locate_uncached)
        self.buffer = ClickBuffer(
            self.dsn,
            settings.click_flush_interval_ms,
            settings.click_flush_max_rows,
            spill_dir=Path(settings.click_spill_dir) if settings.click_spill_dir else None,
        )
        self.pool: asyncpg.Pool | None = None
        self.cache: CatalogCache | None = None
        self.lease: NodeLease | None = None
        self.ids: ClickIdGenerator | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._lookups: MicroBatcher[tuple[int, datetime], asyncpg.Record | None] | None = None
        self._lookup_lanes: ConnectionLanes | None = None
        self._lease_is_valid: Callable[[], bool] = lambda: False
        self._accepting = False
        # Clicks answered by this process, by ClickOutcome position (read by the metrics pump).
        self.outcome_counts = [0] * len(_OUTCOME_INDEX)
        self._created_ms = -1
        self._created_at_wire = b""

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=4,
            reset=keep_session_state,
            server_settings={"application_name": "click-gateway-catalogue"},
        )
        self._lookup_lanes = ConnectionLanes(
            self.dsn,
            LOOKUPS_IN_FLIGHT,
            application_name="click-gateway-click-lookup",
            # One plan, made once: the lookup prunes partitions at run time, so
            # a custom plan per execution (over every daily partition) is waste.
            server_settings={"plan_cache_mode": "force_generic_plan"},
        )
        await self._lookup_lanes.start()
        lanes = self._lookup_lanes
        self._lookups = MicroBatcher(
            lambda keys: lanes.run(lambda conn: repository.find_clicks(conn, keys)),
            max_in_flight=LOOKUPS_IN_FLIGHT,
            name="click-lookup",
        )
        await self._maintain_partitions()
        self.lease = NodeLease(self.pool)
        self.ids = await self.lease.start()
        self._lease_is_valid = self.lease.is_valid
        self.cache = CatalogCache(self.pool, self.settings.cache_refresh_seconds)
        await self.cache.start()
        await self.buffer.start()
        self._maintenance = asyncio.create_task(
            self._maintain_partitions_forever(), name="click-partitions"
        )
        self._accepting = True

    async def stop(self) -> None:
        """Stop taking clicks, flush every buffered click, release the id node."""
        self._accepting = False
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        if self.cache is not None:
            await self.cache.stop()
        await self.buffer.stop()
        if self.lease is not None:
            await self.lease.stop()
        if self._lookups is not None:
            await self._lookups.drain()
            self._lookups = None
        if self._lookup_lanes is not None:
            await self._lookup_lanes.close()
            self._lookup_lanes = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def _maintain_partitions(self) -> None:
        """Daily partitions for yesterday..+3 days; drop those past the retention."""
        assert self.pool is not None
        try:
            created = await repository.ensure_click_partitions(self.pool, 1, 3)
            cutoff = datetime.now(UTC).date() - timedelta(days=self.settings.click_retention_days)
            dropped = await repository.drop_click_partitions_before(self.pool, cutoff)
            if created or dropped:
                log.info("click partitions: %d created, %d dropped", created, dropped)
        except asyncpg.PostgresError as exc:
            # Another process may be doing the same right now; the default
            # partition still takes every click meanwhile.
            log.warning("click partition maintenance failed: %s", exc)

    async def _maintain_partitions_forever(self) -> None:
        while True:
            await asyncio.sleep(PARTITION_MAINTENANCE_SECONDS)
            try:
                await self._maintain_partitions()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("click partition maintenance failed")

    # --- the click --------------------------------------------------------------------

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Raw ASGI handler for GET/HEAD /get/{code}; HEAD answers alike but records nothing."""
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            self.outcome_counts[METHOD_NOT_ALLOWED] += 1
            await self._send_page(send, METHOD_PAGE, method)
            return
        cache = self.cache
        if cache is None or not self._accepting:
            self.outcome_counts[BUSY] += 1
            await self._send_page(send, BUSY_PAGE, method)
            return
        code = scope["path"][len(CLICK_PATH_PREFIX) :]
        if code.endswith("/"):
            code = code[:-1]
        smartlink = cache.smartlinks.get(code)
        if smartlink is None:
            smartlink = await cache.find_new(code)
            if smartlink is None:
                self.outcome_counts[NOT_FOUND] += 1
                await self._send_page(send, NOT_FOUND_PAGE, method)
                return

        user_agent = ""
        forwarded_for = None
        for name, value in scope["headers"]:
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                text = value.decode("latin-1")
                forwarded_for = text if forwarded_for is None else f"{forwarded_for},{text}"
        if len(user_agent) > MAX_USER_AGENT_LENGTH or "\x00" in user_agent:
            user_agent = user_agent.replace("\x00", "")[:MAX_USER_AGENT_LENGTH]
        client = scope["client"]
        ip, country, ip_wire = self._locate(client[0] if client else None, forwarded_for)
        os_family, device, is_bot = classify_user_agent(user_agent)

        offer = smartlink.choose(country, os_family, device)
        if offer is None:
            template = smartlink.fallback
            if template is None:
                self.outcome_counts[NO_OFFER] += 1
                await self._send_page(send, NO_OFFER_PAGE, method)
                return
            offer_id = None
            outcome = FALLBACK
        else:
            template = offer.url
            offer_id = offer.id
            outcome = REDIRECTED
        if not self.buffer.has_room() or not self._lease_is_valid():
            self.outcome_counts[BUSY] += 1
            await self._send_page(send, BUSY_PAGE, method)
            return
        self.outcome_counts[BOT if is_bot else outcome] += 1

        external_id, subs = parse_click_query(scope["query_string"])
        assert self.ids is not None
        click_id = self.ids.next_id()
        location = template.render(
            (  # SUPPORTED_URL_MACROS order
                click_id,
                external_id,
                smartlink.publisher_id,
                smartlink.id,
                offer_id,
                country,
                os_family,
                device,
                ip,
                *subs,
            )
        )
        if method == "HEAD":
            # Link checkers and previews: the same answer as GET, but no visit, so no click
            # (a recorded HEAD could be converted).
            await self._send_redirect(send, location)
            return
        # Busy gateways issue several ids per millisecond: reuse the encoding.
        ms = click_id >> LOW_BITS
        if ms != self._created_ms:
            self._created_ms = ms
            self._created_at_wire = encode_timestamptz_ms(ms + CLICK_ID_EPOCH_MS)
        self.buffer.add(
            click_id,
            (
                click_id,
                self._created_at_wire,
                external_id,
                smartlink.publisher_id,
                smartlink.id,
                offer_id,
                ip_wire,
                country,
                os_family,
                device,
                user_agent or None,
                subs[0],
                subs[1],
                subs[2],
                subs[3],
                subs[4],
                is_bot,
                method,
            ),
        )
        await self._send_redirect(send, location)

    @staticmethod
    async def _send_redirect(send: Any, location: str) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [(b"location", location.encode("latin-1")), *_REDIRECT_HEADERS_TAIL],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    def _locate_uncached(
        self, peer: str | None, forwarded_for: str | None
    ) -> tuple[str | None, str | None, bytes | None]:
        ip = self.addresses.resolve(peer, forwarded_for)
        if ip is None:
            return None, None, None
        return ip, country_of(ip), encode_inet(ip)

    @staticmethod
    async def _send_page(
        send: Any, page: tuple[int, list[tuple[bytes, bytes]], bytes], method: str
    ) -> None:
        status, headers, body = page
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    # --- lookups ------------------------------------------------------------------------

    async def find_click(self, click_id: int) -> ClickRecord | None:
        """The click by internal id, whether still in the write buffer or in PostgreSQL.

        A click issued in the last moments may still be in *another* gateway
        process's buffer (flushed within a second), so a miss on a very recent
        id is retried briefly before giving up.
        """
        if not is_plausible_click_id(click_id):
            return None
        age = time.time() - click_id_ms(click_id) / 1000
        if age < -60:
            return None  # from the future: not an id we issued
        created_at = click_created_at(click_id)
        deadline = time.monotonic() + FIND_POLL_DEADLINE_SECONDS
        while True:
            buffered = self.buffer.get(click_id)
            if buffered is not None:
                return record_from_row(buffered)
            row = await self._select(click_id, created_at)
            if row is not None:
                return record_from_row(row)
            # It may be among the clicks kept on disk during an outage.
            if self.buffer.has_backlog and await self.buffer.wait_backlog_written(
                FIND_POLL_DEADLINE_SECONDS
            ):
                continue
            if age > RECENT_CLICK_SECONDS or time.monotonic() > deadline:
                return None
            await asyncio.sleep(FIND_POLL_INTERVAL_SECONDS)

    async def _select(self, click_id: int, created_at: datetime) -> asyncpg.Record | None:
        if self._lookups is not None:
            # Concurrent lookups (conversions arriving together) share one query.
            return await self._lookups.submit((click_id, created_at))
        # Not started (e.g. a tool using the service directly): one short connection.
        conn = await asyncpg.connect(self.dsn)
        try:
            return await repository.find_click(conn, click_id, created_at)
        finally:
            await conn.close()
