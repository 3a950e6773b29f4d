"""The batched click lookup must stay an index probe into one partition per key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from click_gateway.clicks.ids import click_created_at
from click_gateway.clicks.repository import FIND_CLICKS, find_clicks
from postback_core.db.base import asyncpg_dsn
from tests.factories import create_click, new_click_id


@pytest.fixture
async def db(database_url: str, gateway_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    yield conn
    await conn.close()


async def test_lookup_probes_only_the_keys_partitions(db: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    keys = [(1, now), (2, now - timedelta(days=1))]
    plan = "\n".join(
        row[0]
        for row in await db.fetch(
            f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {FIND_CLICKS}",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
    )
    assert "Seq Scan on clicks" not in plan, plan
    assert "Hash Join" not in plan, plan
    assert "Index" in plan, plan
    partitions_probed = [line for line in plan.splitlines() if "Scan" in line and "clicks_" in line]
    executed = [line for line in partitions_probed if "never executed" not in line]
    # Run-time pruning: one partition per key was touched, the rest never ran.
    assert len(executed) <= len(keys), plan


async def test_lookup_answers_in_key_order_with_none_for_misses(
    db: asyncpg.Connection, database_url: str
) -> None:
    older = await create_click(
        database_url, publisher_id=7, smartlink_id=8, offer_id=None, age_seconds=86_400 * 2
    )
    newer = await create_click(database_url, publisher_id=7, smartlink_id=8, offer_id=9)
    missing = new_click_id()
    keys = [(c, click_created_at(c)) for c in (newer, missing, older, newer)]
    rows = await find_clicks(db, keys)
    assert [row["click_id"] if row else None for row in rows] == [newer, None, older, newer]
    assert [row["offer_id"] if row else None for row in rows] == [9, None, None, 9]
