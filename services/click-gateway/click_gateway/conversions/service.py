"""Recording a conversion and queueing its event, atomically and idempotently."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from click_gateway.clicks.service import ClickRecord, ClickService
from click_gateway.conversions.repository import ConversionRepository, StoredConversion
from click_gateway.conversions.schemas import ConversionRead
from click_gateway.outbox.repository import add_message
from postback_core.contracts import CONVERSION_CREATED, ConversionEvent, SubIds
from postback_core.topology import EVENTS_EXCHANGE

# A conversion that vanished between our failed insert and our read (nothing
# deletes conversions today) is retried this many times before giving up.
INSERT_ATTEMPTS = 3


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


def _read(stored: StoredConversion) -> ConversionRead:
    return ConversionRead(
        conversion_id=stored.id,
        click_id=stored.click_id,
        payout=stored.payout,
        txid=stored.txid or None,
        status=stored.status,
        created_at=stored.created_at,
    )


def build_event(
    *,
    event_id: uuid.UUID,
    stored: StoredConversion,
    click: ClickRecord,
    advertiser_id: int,
) -> ConversionEvent:
    """Everything the dispatcher needs to render any macro, without reading clicks."""
    return ConversionEvent(
        event_id=event_id,
        conversion_id=stored.id,
        click_id=click.click_id,
        external_id=click.external_id,
        publisher_id=click.publisher_id,
        smartlink_id=click.smartlink_id,
        offer_id=click.offer_id,
        advertiser_id=advertiser_id,
        payout=stored.payout,
        txid=stored.txid or None,
        country=click.country,
        ip=click.ip,
        os=click.os,
        device=click.device,
        sub_ids=SubIds(
            sub1=click.sub1, sub2=click.sub2, sub3=click.sub3, sub4=click.sub4, sub5=click.sub5
        ),
        occurred_at=stored.created_at,
    )


async def record_conversion(
    session: AsyncSession,
    clicks: ClickService,
    *,
    advertiser_id: int,
    click_id: int,
    payout: Decimal | None,
    txid: str | None,
    max_payout: Decimal,
) -> ConversionResult:
    """Store the conversion and its outbox event in the caller's transaction.

    Raises ``ConversionRefused`` (404 unknown click, 403 another advertiser's
    click, 422 payout above the cap). A repeat of (click_id, txid) returns the
    stored conversion with ``created=False`` and queues nothing.
    """
    if payout is not None and payout > max_payout:
        raise ConversionRefused(422, f"payout must be at most {max_payout}")
    click = await clicks.find_click(click_id)
    if click is None:
        raise ConversionRefused(404, f"click {click_id} not found")
    repository = ConversionRepository(session)
    terms = await repository.offer_terms(click.offer_id) if click.offer_id is not None else None
    if terms is None or terms.advertiser_id != advertiser_id:
        raise ConversionRefused(403, f"click {click_id} was not sent to one of your offers")
    txid = txid or ""
    for _ in range(INSERT_ATTEMPTS):
        event_id = uuid.uuid4()
        stored = await repository.insert_if_new(
            click_id=click_id,
            txid=txid,
            event_id=event_id,
            advertiser_id=advertiser_id,
            publisher_id=click.publisher_id,
            offer_id=click.offer_id,
            smartlink_id=click.smartlink_id,
            payout=payout if payout is not None else terms.payout,
        )
        if stored is not None:
            event = build_event(
                event_id=event_id, stored=stored, click=click, advertiser_id=advertiser_id
            )
            await add_message(
                session,
                event_id=event_id,
                exchange=EVENTS_EXCHANGE,
                routing_key=CONVERSION_CREATED,
                payload=event.to_json(),
            )
            return ConversionResult(_read(stored), created=True)
        existing = await repository.get_by_click_and_txid(click_id, txid)
        if existing is not None:
            return ConversionResult(_read(existing), created=False)
    raise ConversionRefused(409, "the conversion changed concurrently; retry")
