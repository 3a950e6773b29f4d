"""Recording a conversion and queueing its event, atomically and idempotently.

Latency matters here (the postback chain's clock starts at this request), so
the path is two database round trips: find the click, then one statement that
writes the conversion and its outbox event. Both are group-committed: requests
arriving together share one lookup query and one insert statement (one commit,
one WAL flush), which is what lets one process take thousands per second.
Advertiser keys and offer terms come from short-lived in-process caches;
conversion ids are reserved from the identity sequence in blocks, so the event
can be complete before the insert.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from click_gateway.clicks.service import ClickRecord, ClickService
from click_gateway.conversions import repository
from click_gateway.conversions.repository import NewConversion, OfferTerms, StoredConversion
from click_gateway.conversions.schemas import ConversionRead
from postback_core.batching import MicroBatcher
from postback_core.contracts import CONVERSION_CREATED, ConversionEvent, SubIds
from postback_core.db.base import asyncpg_dsn, keep_session_state
from postback_core.db.lanes import ConnectionLanes
from postback_core.topology import EVENTS_EXCHANGE

log = logging.getLogger(__name__)

APPROVED = "approved"
MONEY_QUANTUM = Decimal("0.0001")  # the column's scale
ID_BLOCK_SIZE = 50
OFFER_TERMS_TTL_SECONDS = 2.0
# A conversion that vanished between our failed insert and our read (nothing
# deletes conversions today) is retried this many times before giving up.
INSERT_ATTEMPTS = 3
# Group commit: up to this many insert statements at once, each taking all the
# conversions that arrived while the others ran.
INSERTS_IN_FLIGHT = 2
MAX_INSERT_BATCH = 256


class ConversionRefused(Exception):
    """Maps to an HTTP error: ``status_code`` and ``detail``."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ConversionResult:
    conversion: ConversionRead
    created: bool


def _read(stored: StoredConversion | NewConversion) -> ConversionRead:
    return ConversionRead(
        conversion_id=stored.id,
        click_id=stored.click_id,
        payout=stored.payout,
        txid=stored.txid or None,
        status=stored.status,
        created_at=stored.created_at,
    )


def build_event(conversion: NewConversion, click: ClickRecord) -> ConversionEvent:
    """Everything the dispatcher needs to render any macro, without reading clicks."""
    return ConversionEvent(
        event_id=conversion.event_id,
        conversion_id=conversion.id,
        click_id=click.click_id,
        external_id=click.external_id,
        publisher_id=click.publisher_id,
        smartlink_id=click.smartlink_id,
        offer_id=click.offer_id,
        advertiser_id=conversion.advertiser_id,
        payout=conversion.payout,
        txid=conversion.txid or None,
        country=click.country,
        ip=click.ip,
        os=click.os,
        device=click.device,
        sub_ids=SubIds(
            sub1=click.sub1, sub2=click.sub2, sub3=click.sub3, sub4=click.sub4, sub5=click.sub5
        ),
        occurred_at=conversion.created_at,
    )


class ConversionRecorder:
    """Owns the conversion path's connection pool and its small caches (one per process)."""

    def __init__(
        self,
        database_url: str,
        max_payout: Decimal,
        pool_size: int = 10,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        """``on_committed`` is called after new outbox rows commit (wakes the relay)."""
        self.dsn = asyncpg_dsn(database_url)
        self.max_payout = max_payout
        self.pool_size = pool_size
        self._on_committed = on_committed
        self._pool: asyncpg.Pool | None = None
        self._ids: list[int] = []
        self._ids_lock = asyncio.Lock()
        self._offer_terms: dict[int, tuple[OfferTerms, float]] = {}
        self._lanes = ConnectionLanes(
            self.dsn, INSERTS_IN_FLIGHT, application_name="click-gateway-conversions"
        )
        self._inserts: MicroBatcher[tuple[NewConversion, bytes], bool] = MicroBatcher(
            self._insert_batch,
            max_batch=MAX_INSERT_BATCH,
            max_in_flight=INSERTS_IN_FLIGHT,
            name="conversion-insert",
        )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the conversion recorder is not started")
        return self._pool

    async def start(self) -> None:
        await self._lanes.start()
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                server_settings={"application_name": "click-gateway-conversions"},
                reset=keep_session_state,
            )

    async def stop(self) -> None:
        await self._inserts.drain()
        await self._lanes.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def forget_offer(self, offer_id: int) -> None:
        """An offer changed in this process: don't wait for the TTL."""
        self._offer_terms.pop(offer_id, None)

    async def _terms(self, offer_id: int) -> OfferTerms | None:
        cached = self._offer_terms.get(offer_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        terms = await repository.offer_terms(self.pool, offer_id)
        if terms is not None:
            if len(self._offer_terms) > 100_000:
                self._offer_terms.clear()
            self._offer_terms[offer_id] = (terms, now + OFFER_TERMS_TTL_SECONDS)
        return terms

    async def _next_id(self) -> int:
        async with self._ids_lock:
            if not self._ids:
                self._ids = list(reversed(await repository.reserve_ids(self.pool, ID_BLOCK_SIZE)))
            return self._ids.pop()

    async def record(
        self,
        clicks: ClickService,
        *,
        advertiser_id: int,
        click_id: int,
        payout: Decimal | None,
        txid: str | None,
    ) -> ConversionResult:
        """Store the conversion and its outbox event in one transaction.

        Raises ``ConversionRefused`` (404 unknown click, 403 another
        advertiser's click, 422 payout above the cap). A repeat of
        (click_id, txid) returns the stored conversion with ``created=False``
        and queues nothing.
        """
        if payout is not None and payout > self.max_payout:
            raise ConversionRefused(422, f"payout must be at most {self.max_payout}")
        click = await clicks.find_click(click_id)
        if click is None:
            raise ConversionRefused(404, f"click {click_id} not found")
        terms = await self._terms(click.offer_id) if click.offer_id is not None else None
        if terms is None or terms.advertiser_id != advertiser_id:
            raise ConversionRefused(403, f"click {click_id} was not sent to one of your offers")
        amount = (payout if payout is not None else terms.payout).quantize(MONEY_QUANTUM)
        txid = txid or ""
        for _ in range(INSERT_ATTEMPTS):
            conversion = NewConversion(
                id=await self._next_id(),
                click_id=click_id,
                txid=txid,
                event_id=uuid.uuid4(),
                advertiser_id=advertiser_id,
                publisher_id=click.publisher_id,
                offer_id=click.offer_id,
                smartlink_id=click.smartlink_id,
                payout=amount,
                status=APPROVED,
                created_at=datetime.now(UTC),
            )
            payload = build_event(conversion, click).to_json()
            inserted = await self._inserts.submit((conversion, payload))
            if inserted:
                return ConversionResult(_read(conversion), created=True)
            existing = await repository.get_by_click_and_txid(self.pool, click_id, txid)
            if existing is not None:
                return ConversionResult(_read(existing), created=False)
        raise ConversionRefused(409, "the conversion changed concurrently; retry")

    async def _insert_batch(
        self, batch: list[tuple[NewConversion, bytes]]
    ) -> list[bool | BaseException]:
        """One statement for the whole batch; if it fails, each row alone (isolation)."""
        results: list[bool | BaseException]
        try:
            results = list(await self._insert(batch))
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if len(batch) == 1:
                return [exc]
            log.warning("conversion batch of %d failed (%s); inserting one by one", len(batch), exc)
            results = []
            for item in batch:
                try:
                    results.extend(await self._insert([item]))
                except (asyncpg.PostgresError, asyncpg.InterfaceError) as one_exc:
                    results.append(one_exc)
        if self._on_committed is not None and any(r is True for r in results):
            self._on_committed()
        return results

    async def _insert(self, batch: list[tuple[NewConversion, bytes]]) -> list[bool]:
        return await self._lanes.run(
            lambda conn: repository.insert_many_with_events(
                conn, batch, exchange=EVENTS_EXCHANGE, routing_key=CONVERSION_CREATED
            )
        )
