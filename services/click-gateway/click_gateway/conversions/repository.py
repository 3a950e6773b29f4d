"""Conversion SQL. Idempotency lives in the unique constraint, not in a read-then-write."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import Conversion, Offer

IDEMPOTENCY_CONSTRAINT = "uq_conversions_click_id_txid"


@dataclass(frozen=True, slots=True)
class OfferTerms:
    advertiser_id: int
    payout: Decimal


@dataclass(frozen=True, slots=True)
class StoredConversion:
    id: int
    click_id: int
    txid: str
    payout: Decimal
    status: str
    created_at: datetime


class ConversionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def offer_terms(self, offer_id: int) -> OfferTerms | None:
        row = (
            await self.session.execute(
                select(Offer.advertiser_id, Offer.payout).where(Offer.id == offer_id)
            )
        ).first()
        return OfferTerms(advertiser_id=row[0], payout=row[1]) if row is not None else None

    async def insert_if_new(
        self,
        *,
        click_id: int,
        txid: str,
        event_id: uuid.UUID,
        advertiser_id: int,
        publisher_id: int,
        offer_id: int | None,
        smartlink_id: int | None,
        payout: Decimal,
    ) -> StoredConversion | None:
        """The new row, or None when (click_id, txid) is already recorded.

        A concurrent duplicate waits here for the first transaction and then
        gets None, so exactly one request creates the conversion.
        """
        statement = (
            insert(Conversion)
            .values(
                click_id=click_id,
                txid=txid,
                event_id=event_id,
                advertiser_id=advertiser_id,
                publisher_id=publisher_id,
                offer_id=offer_id,
                smartlink_id=smartlink_id,
                payout=payout,
            )
            .on_conflict_do_nothing(constraint=IDEMPOTENCY_CONSTRAINT)
            .returning(Conversion.id, Conversion.payout, Conversion.status, Conversion.created_at)
        )
        row = (await self.session.execute(statement)).first()
        if row is None:
            return None
        return StoredConversion(
            id=row.id,
            click_id=click_id,
            txid=txid,
            payout=row.payout,
            status=row.status,
            created_at=row.created_at,
        )

    async def get_by_click_and_txid(self, click_id: int, txid: str) -> StoredConversion | None:
        row = (
            await self.session.execute(
                select(
                    Conversion.id,
                    Conversion.payout,
                    Conversion.status,
                    Conversion.created_at,
                ).where(Conversion.click_id == click_id, Conversion.txid == txid)
            )
        ).first()
        if row is None:
            return None
        return StoredConversion(
            id=row.id,
            click_id=click_id,
            txid=txid,
            payout=row.payout,
            status=row.status,
            created_at=row.created_at,
        )
