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
import orjson

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
# The batch travels as one JSON parameter: encoding a dozen typed arrays cost
# the client ~110 us per statement, more than the rest of the call.
INSERT_MANY_WITH_EVENTS = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS t(
        id bigint, click_id bigint, txid text, event_id uuid, advertiser_id bigint,
        publisher_id bigint, offer_id bigint, smartlink_id bigint, payout numeric,
        status text, created_at timestamptz, payload text)
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
    SELECT n.event_id, $2::text, $3::text, convert_to(i.payload, 'UTF8')
    FROM new_conversion AS n JOIN input AS i ON i.id = n.id
    ORDER BY n.id
)
SELECT id FROM new_conversion
"""


def _row(conversion: NewConversion, payload: bytes) -> dict[str, object]:
    return {
        "id": conversion.id,
        "click_id": conversion.click_id,
        "txid": conversion.txid,
        "event_id": str(conversion.event_id),
        "advertiser_id": conversion.advertiser_id,
        "publisher_id": conversion.publisher_id,
        "offer_id": conversion.offer_id,
        "smartlink_id": conversion.smartlink_id,
        "payout": format(conversion.payout, "f"),  # exact: a JSON string, never a float
        "status": conversion.status,
        "created_at": conversion.created_at.isoformat(),
        "payload": payload.decode(),
    }


async def insert_many_with_events(
    db: Executor,
    conversions: Sequence[tuple[NewConversion, bytes]],
    *,
    exchange: str,
    routing_key: str,
) -> list[bool]:
    """Per conversion: True when inserted, False when (click_id, txid) already existed.

    Payloads are UTF-8 JSON (the event contract), stored byte for byte.
    """
    rows = await db.fetch(
        INSERT_MANY_WITH_EVENTS,
        orjson.dumps([_row(c, payload) for c, payload in conversions]).decode(),
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
