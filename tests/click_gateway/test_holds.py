"""The hold job: held conversions are approved when the hold ends, exactly once, by any gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from click_gateway.clicks import repository as clicks_repository
from click_gateway.clicks.ids import click_created_at
from click_gateway.clicks.service import ClickRecord, record_from_row
from click_gateway.conversions.holds import HoldExpiry
from click_gateway.conversions.service import ConversionRecorder
from postback_core.contracts import ConversionEventV2, decode_conversion_event
from postback_core.db.base import asyncpg_dsn
from tests.factories import (
    ADMIN_HEADERS,
    create_advertiser,
    create_click,
    create_offer,
    create_publisher,
    create_smartlink,
)


def in_days(days: float) -> Any:
    return lambda: datetime.now(UTC) + timedelta(days=days)


@pytest.fixture
async def recorders(database_url: str) -> AsyncIterator[list[ConversionRecorder]]:
    """Two independent recorders: the conversion side of two gateway processes."""
    pair = [ConversionRecorder(database_url, Decimal("10000")) for _ in range(2)]
    for recorder in pair:
        await recorder.start()
    yield pair
    for recorder in pair:
        await recorder.stop()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    yield conn
    await conn.close()


def click_finder(db: asyncpg.Connection) -> Any:
    lock = asyncio.Lock()  # one test connection, shared by both jobs

    async def find(click_id: int) -> ClickRecord | None:
        async with lock:
            row = await clicks_repository.find_click(db, click_id, click_created_at(click_id))
        return record_from_row(row) if row is not None else None

    return find


async def _held_conversions(
    gateway: httpx.AsyncClient, database_url: str, count: int, hold_days: int | None
) -> tuple[list[int], dict[str, str]]:
    advertiser = await create_advertiser(gateway)
    offer = await create_offer(gateway, advertiser_id=advertiser["id"])
    publisher = await create_publisher(gateway)
    link = await create_smartlink(gateway, publisher_id=publisher["id"], offer_ids=[offer["id"]])
    goal = await gateway.post(
        f"/api/v1/offers/{offer['id']}/goals",
        json={"name": "trial", "payout": "3", "hold_days": hold_days},
        headers=ADMIN_HEADERS,
    )
    assert goal.status_code == 201
    headers = {"X-Api-Key": advertiser["api_key"]}
    ids: list[int] = []
    for _ in range(count):
        click_id = await create_click(
            database_url,
            publisher_id=publisher["id"],
            smartlink_id=link["id"],
            offer_id=offer["id"],
        )
        response = await gateway.post(
            "/api/v1/conversions", json={"click_id": click_id, "goal": "trial"}, headers=headers
        )
        assert response.json()["status"] == "pending", response.text
        ids.append(response.json()["conversion_id"])
    return ids, headers


async def _status_events(db: asyncpg.Connection, ids: list[int]) -> list[ConversionEventV2]:
    rows = await db.fetch(
        "SELECT payload FROM outbox WHERE routing_key = 'conversion.status_changed' ORDER BY id"
    )
    events = [decode_conversion_event(r["payload"]) for r in rows]
    return [e for e in events if isinstance(e, ConversionEventV2) and e.conversion_id in ids]


async def test_two_jobs_racing_approve_each_held_conversion_exactly_once(
    gateway: httpx.AsyncClient,
    database_url: str,
    recorders: list[ConversionRecorder],
    db: asyncpg.Connection,
) -> None:
    ids, headers = await _held_conversions(gateway, database_url, 30, hold_days=1)
    rejected_early = ids.pop()
    response = await gateway.patch(
        f"/api/v1/conversions/{rejected_early}",
        json={"status": "rejected"},
        headers=headers,
    )
    assert response.status_code == 200

    finder = click_finder(db)
    too_early = HoldExpiry(recorders[0], finder, 60, clock=in_days(0.9))
    await too_early.run_once()
    assert await _status_events(db, ids) == []  # the hold has not ended yet

    jobs = [HoldExpiry(r, finder, 60, clock=in_days(1.01), batch_size=7) for r in recorders]
    counts = await asyncio.gather(
        *(job.run_once() for job in jobs), *(job.run_once() for job in jobs)
    )
    assert sum(counts) >= len(ids)  # (other tests' due holds may be approved too)

    events = await _status_events(db, ids)
    assert sorted(e.conversion_id for e in events) == sorted(ids)  # one each
    assert {(e.previous_status, e.status, e.sequence) for e in events} == {
        ("pending", "approved", 2)
    }
    history = await db.fetch(
        "SELECT conversion_id, actor, reason FROM conversion_status_history "
        "WHERE conversion_id = ANY($1::bigint[]) AND sequence > 1",
        ids,
    )
    assert sorted(h["conversion_id"] for h in history) == sorted(ids)
    assert {(h["actor"], h["reason"]) for h in history} == {("hold_expiry", "hold ended")}
    statuses = await db.fetch(
        "SELECT status, hold_until FROM conversions WHERE id = ANY($1::bigint[])", ids
    )
    assert {(s["status"], s["hold_until"]) for s in statuses} == {("approved", None)}
    assert (
        await db.fetchval("SELECT status FROM conversions WHERE id = $1", rejected_early)
        == "rejected"
    )
    # Another pass finds nothing more to do.
    await jobs[0].run_once()
    assert len(await _status_events(db, ids)) == len(ids)


async def test_a_hold_without_end_waits_for_a_decision(
    gateway: httpx.AsyncClient,
    database_url: str,
    recorders: list[ConversionRecorder],
    db: asyncpg.Connection,
) -> None:
    ids, _ = await _held_conversions(gateway, database_url, 2, hold_days=None)
    await HoldExpiry(recorders[0], click_finder(db), 60, clock=in_days(3650)).run_once()
    assert await _status_events(db, ids) == []
    statuses = await db.fetch("SELECT status FROM conversions WHERE id = ANY($1::bigint[])", ids)
    assert {s["status"] for s in statuses} == {"pending"}
