"""Conversion SQL, on a plain asyncpg pool: this is the hot path of every conversion.

Idempotency lives in the unique constraint ``uq_conversions_click_id_txid``,
not in a read-then-write: the conversion and its outbox event are written by
one statement (so they commit together), and a repeated (click_id, txid)
inserts neither.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

import asyncpg

IDEMPOTENCY_CONSTRAINT = "uq_conversions_click_id_txid"

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


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


@dataclass(frozen=True, slots=True)
class NewConversion:
    id: int
    click_id: int
    txid: str
    event_id: uuid.UUID
    advertiser_id: int
    publisher_id: int
    offer_id: int | None
    smartlink_id: int | None
    payout: Decimal
    status: str
    created_at: datetime


async def offer_terms(db: Executor, offer_id: int) -> OfferTerms | None:
    row = await db.fetchrow("SELECT advertiser_id, payout FROM offers WHERE id = $1", offer_id)
    return OfferTerms(row["advertiser_id"], row["payout"]) if row is not None else None


async def reserve_ids(db: Executor, count: int) -> list[int]:
    """Conversion ids from the table's identity sequence, a block at a time."""
    rows = await db.fetch(
        "SELECT nextval(pg_get_serial_sequence('conversions', 'id')) AS id "
        "FROM generate_series(1, $1)",
        count,
    )
    return [row["id"] for row in rows]


# One statement, so one transaction: the outbox row exists iff the conversion
# row was inserted by this statement.
INSERT_WITH_EVENT = """
WITH new_conversion AS (
    INSERT INTO conversions (id, click_id, txid, event_id, advertiser_id, publisher_id,
                             offer_id, smartlink_id, payout, status, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT ON CONSTRAINT uq_conversions_click_id_txid DO NOTHING
    RETURNING event_id
)
INSERT INTO outbox (event_id, exchange, routing_key, payload)
SELECT event_id, $12::text, $13::text, $14::bytea FROM new_conversion
RETURNING id
"""


async def insert_with_event(
    db: Executor, conversion: NewConversion, *, exchange: str, routing_key: str, payload: bytes
) -> bool:
    """True when inserted; False when (click_id, txid) was already recorded.

    A concurrent duplicate waits on the unique index for the first
    transaction, then inserts nothing, so exactly one request creates it.
    """
    outbox_id = await db.fetchval(
        INSERT_WITH_EVENT,
        conversion.id,
        conversion.click_id,
        conversion.txid,
        conversion.event_id,
        conversion.advertiser_id,
        conversion.publisher_id,
        conversion.offer_id,
        conversion.smartlink_id,
        conversion.payout,
        conversion.status,
        conversion.created_at,
        exchange,
        routing_key,
        payload,
    )
    return outbox_id is not None


async def get_by_click_and_txid(db: Executor, click_id: int, txid: str) -> StoredConversion | None:
    row = await db.fetchrow(
        "SELECT id, payout, status, created_at FROM conversions WHERE click_id = $1 AND txid = $2",
        click_id,
        txid,
    )
    if row is None:
        return None
    return StoredConversion(
        id=row["id"],
        click_id=click_id,
        txid=txid,
        payout=row["payout"],
        status=row["status"],
        created_at=row["created_at"],
    )
