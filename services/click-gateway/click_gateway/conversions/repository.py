"""Conversion SQL, on a plain asyncpg pool: this is the hot path of every conversion.

Idempotency lives in the unique constraint ``uq_conversions_click_id_txid``,
not in a read-then-write: the conversion and its outbox event are written by
one statement (so they commit together), and a repeated (click_id, txid)
inserts neither.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
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


# One statement, so one transaction: an outbox row exists iff its conversion row
# was inserted by this statement. It takes a batch (group commit: one commit for
# many requests); the unique constraint still decides each row on its own, also
# between duplicates inside one batch, and RETURNING names the rows inserted.
INSERT_MANY_WITH_EVENTS = """
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::uuid[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::bigint[], $9::numeric[], $10::text[],
                         $11::timestamptz[], $12::bytea[])
        AS t(id, click_id, txid, event_id, advertiser_id, publisher_id, offer_id,
             smartlink_id, payout, status, created_at, payload)
),
new_conversion AS (
    INSERT INTO conversions (id, click_id, txid, event_id, advertiser_id, publisher_id,
                             offer_id, smartlink_id, payout, status, created_at)
    SELECT id, click_id, txid, event_id, advertiser_id, publisher_id,
           offer_id, smartlink_id, payout, status, created_at
    FROM input
    ON CONFLICT ON CONSTRAINT uq_conversions_click_id_txid DO NOTHING
    RETURNING id, event_id
),
new_event AS (
    INSERT INTO outbox (event_id, exchange, routing_key, payload)
    SELECT n.event_id, $13::text, $14::text, i.payload
    FROM new_conversion AS n JOIN input AS i ON i.id = n.id
    ORDER BY n.id
)
SELECT id FROM new_conversion
"""


async def insert_many_with_events(
    db: Executor,
    conversions: Sequence[tuple[NewConversion, bytes]],
    *,
    exchange: str,
    routing_key: str,
) -> list[bool]:
    """Per conversion: True when inserted, False when (click_id, txid) already existed."""
    rows = await db.fetch(
        INSERT_MANY_WITH_EVENTS,
        [c.id for c, _ in conversions],
        [c.click_id for c, _ in conversions],
        [c.txid for c, _ in conversions],
        [c.event_id for c, _ in conversions],
        [c.advertiser_id for c, _ in conversions],
        [c.publisher_id for c, _ in conversions],
        [c.offer_id for c, _ in conversions],
        [c.smartlink_id for c, _ in conversions],
        [c.payout for c, _ in conversions],
        [c.status for c, _ in conversions],
        [c.created_at for c, _ in conversions],
        [payload for _, payload in conversions],
        exchange,
        routing_key,
    )
    inserted = {row["id"] for row in rows}
    return [c.id in inserted for c, _ in conversions]


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
