"""Outbox SQL: writing events (inside a cause's transaction) and claiming them to publish."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

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
# Claim and mark in one statement: the rows are locked (other relays skip
# them) and marked published inside the caller's transaction, which commits
# only after the broker confirmed them; rows it failed to publish are put back
# with ``unmark_failed`` in the same transaction. A crash before the commit
# leaves them unpublished (at-least-once).
CLAIM_BATCH = """
UPDATE outbox
SET published_at = clock_timestamp(), publish_attempts = publish_attempts + 1, last_error = NULL
WHERE id IN (
    SELECT id FROM outbox
    WHERE published_at IS NULL AND NOT (id = ANY($2::bigint[]))
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, event_id, exchange, routing_key, payload
"""
UNMARK_FAILED = """
UPDATE outbox SET published_at = NULL, last_error = $2 WHERE id = ANY($1::bigint[])
"""
DELETE_PUBLISHED_BEFORE = """
DELETE FROM outbox WHERE published_at < clock_timestamp() - make_interval(secs => $1)
"""


async def claim_batch(
    conn: asyncpg.Connection, limit: int, skip_ids: Sequence[int] = ()
) -> list[asyncpg.Record]:
    """Lock and mark up to ``limit`` unpublished rows, oldest first (call inside a tx).

    ``skip_ids``: rows the broker refused recently, left out until their retry time.
    """
    rows = await conn.fetch(CLAIM_BATCH, limit, list(skip_ids))
    return sorted(rows, key=lambda row: row["id"])


async def unmark_failed(conn: asyncpg.Connection, ids: list[int], error: str) -> None:
    """Claimed rows that were not published: back to unpublished, with the reason."""
    await conn.execute(UNMARK_FAILED, ids, error[:2000])


async def delete_published_before(conn: asyncpg.Connection, age_seconds: float) -> str:
    status: str = await conn.execute(DELETE_PUBLISHED_BEFORE, age_seconds)
    return status


UNPUBLISHED_SUMMARY = text(
    """
SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)
FROM outbox WHERE published_at IS NULL
"""
)


async def unpublished_summary(conn: AsyncConnection) -> tuple[int, float]:
    """Rows waiting to be published and the age of the oldest in seconds (metrics)."""
    row = (await conn.execute(UNPUBLISHED_SUMMARY)).one()
    return int(row[0]), float(row[1])
