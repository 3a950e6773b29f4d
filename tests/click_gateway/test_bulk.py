"""Bulk reporting: JSON or CSV, one result per row, idempotent when re-sent."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from click_gateway.clicks.ids import click_created_at
from postback_core.db.base import asyncpg_dsn
from tests.factories import (
    ADMIN_HEADERS,
    create_advertiser,
    create_offer,
    create_publisher,
    create_smartlink,
    new_click_id,
)


@dataclass
class Setup:
    key: str
    offer_id: int
    publisher_id: int
    smartlink_id: int

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.key}


@pytest.fixture
async def setup(gateway: httpx.AsyncClient) -> Setup:
    advertiser = await create_advertiser(gateway)
    offer = await create_offer(gateway, advertiser_id=advertiser["id"], payout="0.5")
    publisher = await create_publisher(gateway)
    link = await create_smartlink(gateway, publisher_id=publisher["id"], offer_ids=[offer["id"]])
    goal = await gateway.post(
        f"/api/v1/offers/{offer['id']}/goals",
        json={"name": "review", "payout": "1", "hold_days": None},
        headers=ADMIN_HEADERS,
    )
    assert goal.status_code == 201
    return Setup(advertiser["api_key"], offer["id"], publisher["id"], link["id"])


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    yield conn
    await conn.close()


async def _clicks(db: asyncpg.Connection, s: Setup, count: int) -> list[int]:
    """Many click rows in one round trip (ids a millisecond apart, a few seconds old)."""
    start = time.time_ns() // 1_000_000 - 5_000 - count
    ids = [new_click_id(start + n) for n in range(count)]
    await db.executemany(
        "INSERT INTO clicks (click_id, created_at, publisher_id, smartlink_id, offer_id)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(i, click_created_at(i), s.publisher_id, s.smartlink_id, s.offer_id) for i in ids],
    )
    return ids


async def _bulk(
    gateway: httpx.AsyncClient, s: Setup, rows: Any, content_type: str = "application/json"
) -> httpx.Response:
    body = rows if isinstance(rows, bytes) else orjson.dumps(rows)
    return await gateway.post(
        "/api/v1/conversions/bulk",
        content=body,
        headers={**s.headers, "Content-Type": content_type},
        timeout=120,
    )


async def _events(db: asyncpg.Connection, conversion_ids: list[int]) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM conversion_status_history WHERE conversion_id = ANY($1::bigint[])",
        conversion_ids,
    )
    return count


async def test_a_json_file_of_reports_and_changes_is_idempotent(
    gateway: httpx.AsyncClient, setup: Setup, db: asyncpg.Connection
) -> None:
    clicks = await _clicks(db, setup, 300)
    rows: list[dict[str, Any]] = [{"click_id": c, "txid": f"t{n}"} for n, c in enumerate(clicks)]
    rows.append({"click_id": clicks[0], "goal": "review"})
    rows.append({"click_id": "nope"})
    rows.append({"click_id": clicks[1], "goal": "unknown"})
    rows.append({"click_id": clicks[0], "txid": "t0", "status": "rejected", "reason": "fraud"})
    rows.append({"conversion_id": 1, "status": "rejected", "reason": "nul\x00"})
    first = await _bulk(gateway, setup, rows)
    assert first.status_code == 200, first.text
    results = first.json()["results"]
    assert [r["row"] for r in results] == list(range(len(rows)))
    assert [r["status_code"] for r in results] == [201] * 301 + [422, 422, 200, 422]
    assert results[301]["detail"] and "unknown" in results[302]["detail"]
    assert results[300]["conversion"]["status"] == "pending"
    assert results[303]["conversion"]["status"] == "rejected"
    assert results[303]["conversion"]["conversion_id"] == results[0]["conversion"]["conversion_id"]
    assert (first.json()["created"], first.json()["failed"]) == (301, 3)
    ids = [r["conversion"]["conversion_id"] for r in results if r.get("conversion")]
    written = await _events(db, ids)

    again = await _bulk(gateway, setup, rows)
    assert again.status_code == 200
    assert [r["status_code"] for r in again.json()["results"]] == [200] * 301 + [422, 422, 200, 422]
    repeated = again.json()["results"]
    assert [r["conversion"] for r in repeated[1:301]] == [r["conversion"] for r in results[1:301]]
    assert repeated[0]["conversion"]["conversion_id"] == results[0]["conversion"]["conversion_id"]
    assert repeated[0]["conversion"]["status"] == "rejected"  # as the first file left it
    assert await _events(db, ids) == written  # nothing new recorded or changed


async def test_a_csv_file_with_a_header(
    gateway: httpx.AsyncClient, setup: Setup, db: asyncpg.Connection
) -> None:
    clicks = await _clicks(db, setup, 3)
    csv = "click_id,goal,txid,payout\n" + "".join(
        f"{c},review,tx-{n},{'2.5' if n == 0 else ''}\n" for n, c in enumerate(clicks)
    )
    response = await _bulk(gateway, setup, csv.encode(), "text/csv; charset=utf-8")
    assert response.status_code == 200, response.text
    conversions = [r["conversion"] for r in response.json()["results"]]
    assert [c["payout"] for c in conversions] == ["2.5000", "1.0000", "1.0000"]
    assert {c["goal"] for c in conversions} == {"review"}
    change = f"conversion_id,status,reason\n{conversions[1]['conversion_id']},approved,checked\n"
    changed = await _bulk(gateway, setup, change.encode(), "text/csv")
    assert changed.json()["results"][0]["conversion"]["status"] == "approved"


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"click_id": 1}', "application/json", 422),
        (b"[]", "application/json", 422),
        (b"[1,", "application/json", 422),
        (b"click_id,colour\n1,red\n", "text/csv", 422),
        (b"click_id\n1\x00\n", "text/csv", 422),
        (b"\xff\xfe", "text/csv", 422),
        (b"click_id,txid\n1," + b"t" * 200_000 + b"\n", "text/csv", 422),
        (orjson.dumps([{"click_id": 1}] * 10_001), "application/json", 413),
        (b"click_id\n" + b"1\n" * 10_001, "text/csv", 413),
    ],
)
async def test_unreadable_or_oversized_files_are_refused_whole(
    gateway: httpx.AsyncClient, setup: Setup, body: bytes, content_type: str, status: int
) -> None:
    response = await _bulk(gateway, setup, body, content_type)
    assert response.status_code == status, response.text[:300]
    assert response.json()["detail"]


async def test_ten_thousand_rows_in_one_request(
    gateway: httpx.AsyncClient, setup: Setup, db: asyncpg.Connection
) -> None:
    clicks = await _clicks(db, setup, 10_000)
    started = time.monotonic()
    response = await _bulk(gateway, setup, [{"click_id": c} for c in clicks])
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text[:300]
    assert response.json()["created"] == 10_000
    stored = await db.fetchval(
        "SELECT count(*) FROM conversions WHERE click_id = ANY($1::bigint[])", clicks
    )
    assert stored == 10_000
    print(f"10,000 bulk conversions in {elapsed:.1f} s")
