"""Outbox SQL: writing events (inside a cause's transaction) and claiming them to publish."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import OutboxMessage


async def add_message(
    session: AsyncSession, *, event_id: uuid.UUID, exchange: str, routing_key: str, payload: bytes
) -> None:
    """Queue an event in the caller's transaction: it exists iff the cause commits."""
    await session.execute(
        insert(OutboxMessage).values(
            event_id=event_id, exchange=exchange, routing_key=routing_key, payload=payload
        )
    )


# The relay uses a raw asyncpg connection: it is on the latency path of every
# conversion event, and it also LISTENs, which SQLAlchemy sessions don't do.
CLAIM_BATCH = """
SELECT id, event_id, exchange, routing_key, payload
FROM outbox
WHERE published_at IS NULL AND NOT (id = ANY($2::bigint[]))
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
MARK_PUBLISHED = """
UPDATE outbox
SET published_at = clock_timestamp(), publish_attempts = publish_attempts + 1, last_error = NULL
WHERE id = ANY($1::bigint[])
"""
RECORD_FAILURE = """
UPDATE outbox
SET publish_attempts = publish_attempts + 1, last_error = $2
WHERE id = ANY($1::bigint[]) AND published_at IS NULL
"""
DELETE_PUBLISHED_BEFORE = """
DELETE FROM outbox WHERE published_at < clock_timestamp() - make_interval(secs => $1)
"""


async def claim_batch(
    conn: asyncpg.Connection, limit: int, skip_ids: Sequence[int] = ()
) -> Sequence[asyncpg.Record]:
    """Lock up to ``limit`` unpublished rows; other relays skip them (call inside a tx).

    ``skip_ids``: rows the broker refused recently, left out until their retry time.
    """
    return await conn.fetch(CLAIM_BATCH, limit, list(skip_ids))


async def mark_published(conn: asyncpg.Connection, ids: list[int]) -> None:
    await conn.execute(MARK_PUBLISHED, ids)


async def record_failure(conn: asyncpg.Connection, ids: list[int], error: str) -> None:
    await conn.execute(RECORD_FAILURE, ids, error[:2000])


async def delete_published_before(conn: asyncpg.Connection, age_seconds: float) -> str:
    status: str = await conn.execute(DELETE_PUBLISHED_BEFORE, age_seconds)
    return status
