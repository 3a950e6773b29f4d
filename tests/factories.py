"""Plain async factories for tests: catalogue objects through the admin API, clicks as rows.

Catalogue objects go through the real admin API (so tests exercise what
operators do); clicks are inserted straight into ``clicks`` with an id from
the click-id layout, so conversion tests don't depend on the redirect path.
"""

from __future__ import annotations

import random
import time
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import httpx

from click_gateway.clicks.ids import CLICK_ID_EPOCH_MS, LOW_BITS, click_created_at
from postback_core.db.base import asyncpg_dsn
from tests.conftest import ADMIN_TOKEN

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=body, headers=ADMIN_HEADERS)
    assert response.status_code == 201, (path, response.status_code, response.text)
    created: dict[str, Any] = response.json()
    return created


async def create_publisher(client: httpx.AsyncClient, *, name: str | None = None) -> dict[str, Any]:
    """``{id, name, api_key, ...}``"""
    return await _post(client, "/api/v1/publishers", {"name": name or unique_name("pub")})


async def create_advertiser(
    client: httpx.AsyncClient, *, name: str | None = None
) -> dict[str, Any]:
    """``{id, name, api_key, ...}``"""
    return await _post(client, "/api/v1/advertisers", {"name": name or unique_name("adv")})


async def create_offer(
    client: httpx.AsyncClient,
    *,
    advertiser_id: int | None = None,
    url_template: str = "https://advertiser.example/install?clickid={click_id}",
    payout: str | Decimal = "0.5000",
    **fields: Any,
) -> dict[str, Any]:
    """An offer (and an advertiser when none is given); extra ``fields`` go in the body."""
    if advertiser_id is None:
        advertiser_id = (await create_advertiser(client))["id"]
    body = {
        "advertiser_id": advertiser_id,
        "name": unique_name("offer"),
        "url_template": url_template,
        "payout": str(payout),
        **fields,
    }
    return await _post(client, "/api/v1/offers", body)


async def create_smartlink(
    client: httpx.AsyncClient,
    *,
    publisher_id: int | None = None,
    offer_ids: list[int] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A SmartLink (and a publisher / one offer when not given)."""
    if publisher_id is None:
        publisher_id = (await create_publisher(client))["id"]
    if offer_ids is None:
        offer_ids = [(await create_offer(client))["id"]]
    body = {"publisher_id": publisher_id, "offer_ids": offer_ids, **fields}
    return await _post(client, "/api/v1/smartlinks", body)


def new_click_id(at_ms: int | None = None) -> int:
    """An id in the click-id layout (creation ms in the high bits), random low bits."""
    ms = (at_ms if at_ms is not None else time.time_ns() // 1_000_000) - CLICK_ID_EPOCH_MS
    return (ms << LOW_BITS) | random.getrandbits(LOW_BITS)


async def create_click(
    database_url: str,
    *,
    publisher_id: int,
    smartlink_id: int,
    offer_id: int | None,
    click_id: int | None = None,
    external_id: str | None = None,
    ip: str | None = "203.0.113.7",
    country: str | None = "US",
    os: str | None = "Android",
    device: str | None = "mobile",
    user_agent: str | None = "Mozilla/5.0 (Linux; Android 14) test",
    sub_ids: dict[str, str] | None = None,
    age_seconds: float = 0.0,
) -> int:
    """Insert one click row directly; returns its click id.

    ``age_seconds`` back-dates the click (its id encodes the time, and
    ``created_at`` is derived from the id exactly as the click path does).
    """
    if click_id is None:
        click_id = new_click_id(time.time_ns() // 1_000_000 - int(age_seconds * 1000))
    subs = sub_ids or {}
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            """
            INSERT INTO clicks (click_id, created_at, external_id, publisher_id, smartlink_id,
                                offer_id, ip, country, os, device, user_agent,
                                sub1, sub2, sub3, sub4, sub5)
            VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8, $9, $10, $11, $12, $13, $14, $15, $16)
            """,
            click_id,
            click_created_at(click_id),
            external_id,
            publisher_id,
            smartlink_id,
            offer_id,
            ip,
            country,
            os,
            device,
            user_agent,
            *(subs.get(f"sub{i}") for i in range(1, 6)),
        )
    finally:
        await conn.close()
    return click_id
