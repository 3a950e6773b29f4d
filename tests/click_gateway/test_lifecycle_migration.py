"""The lifecycle migration on a database with data: existing offers and conversions keep working."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
from alembic import command
from alembic.config import Config

from postback_core.db.base import MIGRATIONS_DIR, asyncpg_dsn, ensure_database
from tests.support.infra import PG_SERVER, drop_database, unique_name


def _alembic(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


@pytest.fixture
async def old_database() -> AsyncIterator[str]:
    """A database at the initial schema (revision 0001)."""
    url = f"{PG_SERVER}/{unique_name('postback_migration')}"
    await ensure_database(url)
    await asyncio.to_thread(command.upgrade, _alembic(url), "0001")
    yield url
    await drop_database(url)


async def test_existing_offers_get_a_default_goal_and_conversions_attach_to_it(
    old_database: str,
) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(old_database))
    try:
        advertiser = await conn.fetchval(
            "INSERT INTO advertisers (name, api_key_hash) VALUES ('a', 'h') RETURNING id"
        )
        offer = await conn.fetchval(
            "INSERT INTO offers (advertiser_id, name, url_template, payout)"
            " VALUES ($1, 'o', 'https://x.example/?c={click_id}', 0.65) RETURNING id",
            advertiser,
        )
        for txid in ("", "second-sale"):
            await conn.execute(
                "INSERT INTO conversions (click_id, txid, event_id, advertiser_id, publisher_id,"
                " offer_id, payout) VALUES (77, $1, gen_random_uuid(), $2, 1, $3, 0.65)",
                txid,
                advertiser,
                offer,
            )
    finally:
        await conn.close()

    await asyncio.to_thread(command.upgrade, _alembic(old_database), "head")

    conn = await asyncpg.connect(asyncpg_dsn(old_database))
    try:
        goal = await conn.fetchrow("SELECT * FROM goals WHERE offer_id = $1", offer)
        assert (goal["name"], goal["payout"], goal["hold_days"], goal["allow_multiple"]) == (
            "default",
            Decimal("0.6500"),
            0,
            True,
        )
        rows = await conn.fetch("SELECT goal_id, sequence, status FROM conversions")
        assert {(r["goal_id"], r["sequence"], r["status"]) for r in rows} == {
            (goal["id"], 1, "approved")
        }
        history = await conn.fetch("SELECT sequence, status, actor FROM conversion_status_history")
        assert [(h["sequence"], h["status"], h["actor"]) for h in history] == [
            (1, "approved", "advertiser")
        ] * 2
        window = await conn.fetchval("SELECT attribution_window_days FROM offers")
        assert window == 30
        # From now on the database keeps every offer's default goal, however it is written.
        new_offer = await conn.fetchval(
            "INSERT INTO offers (advertiser_id, name, url_template, payout)"
            " VALUES ($1, 'n', 'https://x.example/?c={click_id}', 0.10) RETURNING id",
            advertiser,
        )
        await conn.execute("UPDATE offers SET payout = 0.20 WHERE id = $1", new_offer)
        default = await conn.fetchrow(
            "SELECT name, payout, allow_multiple FROM goals WHERE offer_id = $1", new_offer
        )
        assert tuple(default) == ("default", Decimal("0.2000"), True)
        # Idempotency still holds: one (click, goal, txid).
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO conversions (click_id, goal_id, txid, event_id, advertiser_id,"
                " publisher_id, payout) VALUES (77, $1, '', gen_random_uuid(), 1, 1, 1)",
                goal["id"],
            )
    finally:
        await conn.close()

    await asyncio.to_thread(command.downgrade, _alembic(old_database), "-1")
    conn = await asyncpg.connect(asyncpg_dsn(old_database))
    try:
        assert await conn.fetchval("SELECT to_regclass('goals')") is None
        assert await conn.fetchval("SELECT count(*) FROM conversions") == 2
    finally:
        await conn.close()
